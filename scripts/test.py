"""make test / make test-vanilla / make test-manual: run a test tier against an
installed sglang (the patched build or the vanilla upstream wheel) in the locked venv.

Everything after `--` goes to pytest as is (make's PYTEST_ARGS): options, and test ids
that replace the tier's default folders. pytest itself tells the two apart: the
defaults are its `testpaths`, used only when no test id is given."""

import argparse
import re
import shlex
import sys
import tempfile
from pathlib import Path

from scripts import build
from scripts.lib import config, envs, lines, pytest_run, scratch
from scripts.lib.errors import SeriesError, run_main

TIERS = {
    # tooling tests exercise scripts/ on a synthetic upstream; they do not depend on the flavor
    "registered": ["tests/registered", "tests/tooling"],
    "manual": ["tests/manual"],
}
# A skip reason that says the test needed a GPU (the registered tests say "needs a CUDA device").
NO_CUDA = re.compile(r"\b(cuda|gpus?)\b", re.IGNORECASE)


def default_targets(flavor: str, tier: str) -> list[str]:
    if flavor == "vanilla" and tier == "registered":
        return ["tests/registered"]
    return TIERS[tier]


def pytest_options(root: Path, defaults: list[str], pytest_args: list[str]) -> list[str]:
    # testpaths apply only when pytest runs from its rootdir with no test ids: `-k expr`
    # keeps the defaults, `path::Class::test` replaces them.
    return ["--rootdir", str(root), "-o", "testpaths=" + " ".join(defaults), *pytest_args]


def require_cuda_ran(results: dict) -> None:
    """On a GPU runner a test skipped for lack of CUDA is a failure: it tested nothing."""
    missed = pytest_run.skipped_for(results, NO_CUDA)
    if missed:
        first, reason = next(iter(missed.items()))
        raise SeriesError(
            f"{len(missed)} test(s) skipped for lack of CUDA although REQUIRE_CUDA is set (first: {first}: {reason}); "
            "run on a machine whose test venv sees a GPU (torch.cuda.is_available()), or drop REQUIRE_CUDA=1"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flavor", choices=["patched", "vanilla"], default="patched")
    parser.add_argument("--tier", choices=sorted(TIERS), default="registered")
    parser.add_argument("--upstream", help="release (default: the pinned base)")
    parser.add_argument("--require-cuda", action="store_true",
                        help="fail when a test skips for lack of CUDA (GPU runners; make REQUIRE_CUDA=1)")
    parser.add_argument("pytest_args", nargs="*", help="after `--`: pytest options and test ids, passed as they are")
    args = parser.parse_args(argv)
    config.require_python()
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    venv = envs.venv(paths, rel.version)
    if args.flavor == "patched":
        wheel = build.patched_wheel(paths, rel.version)
    else:
        wheel = scratch.upstream_wheel(paths, rel)
    with scratch.exclusive(paths, rel.version):  # a `make apply` running now may be replacing the build
        site = envs.install_site(paths, venv, wheel, build.site(paths, rel.version, args.flavor))
    defaults = default_targets(args.flavor, args.tier)
    options = pytest_options(paths.root, defaults, args.pytest_args)
    cache = paths.release_dir(rel.version) / "pytest-cache" / f"{args.flavor}-{args.tier}"
    if args.flavor == "patched":  # a downstream-only fix the release's line leaves out is no claim of it
        for test_id, why in lines.left_out_tests(paths, rel.version, paths.root).items():
            print(f"deselected {test_id}: {why}")
            options.append(f"--deselect={test_id}")
    asked = shlex.join(args.pytest_args) or " ".join(defaults)
    print(f"testing {wheel.name} ({args.flavor}) with pytest {asked}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        code = pytest_run.run(venv, site, [], paths.root, options, cache_dir=cache, junit=junit)
        results = pytest_run.read_report(junit)
    if code == 5:
        raise SeriesError(f"pytest collected no tests ({asked}); "
                          "check the test ids and -k/-m expressions in PYTEST_ARGS")
    if args.require_cuda:
        require_cuda_ran(results)
    sys.exit(code)


if __name__ == "__main__":
    run_main(main)
