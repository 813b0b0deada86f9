"""make test / make test-vanilla / make test-manual: run a test tier against an
installed sglang (the patched build or the vanilla upstream wheel) in the locked venv.

Everything after `--` goes to pytest as is (make's PYTEST_ARGS): options, and test ids
that replace the tier's default folders. pytest itself tells the two apart: the
defaults are its `testpaths`, used only when no test id is given.

The tooling tests (tests/tooling) need no sglang: `make test` runs them at the same
time as the registered ones, in the pinned tools' venv, spread over pytest-xdist
workers; their output follows the registered tests'. They judge the scripts, not the
series: once they pass, `make test` runs them again only when a file they judge changed
(every file of the checkout but the series, the docs and the registered checks: see
tooling_inputs), or when PYTEST_ARGS names them. The
record of a pass is kept in the shared cache by the digest of those files, so a fresh
clone of a checkout that passed reuses it too."""

import argparse
import datetime
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.lib import build, config, envs, git, lines, pytest_run, scratch
from scripts.lib.errors import SeriesError, run_main

TIERS = {
    "registered": ["tests/registered"],
    "manual": ["tests/manual"],
}
# tooling tests exercise scripts/ on a synthetic upstream; they do not depend on the flavor
TOOLING = "tests/tooling"
# options that need one process (a debugger at the terminal) or choose the workers themselves
_SERIAL = ("--pdb", "--trace", "-n", "--numprocesses", "--dist", "no:xdist")
# A skip reason that says the test needed a GPU (the registered tests say "needs a CUDA device").
NO_CUDA = re.compile(r"\b(cuda|gpus?)\b", re.IGNORECASE)


def default_targets(flavor: str, tier: str) -> list[str]:
    return TIERS[tier]


# pytest options whose value is the next argument (that value is never a test id)
_TAKES_VALUE = {"-k", "-m", "-o", "-p", "-c", "-W", "--deselect", "--ignore", "--ignore-glob", "--basetemp",
                "--rootdir", "--confcutdir", "--junitxml", "--override-ini", "-n", "--numprocesses", "--dist"}


def split_ids(root: Path, pytest_args: list[str]) -> tuple[list[str] | None, list[str] | None]:
    """(the arguments for the registered run, those for the tooling run; None: no such run).
    A test id under tests/tooling goes to the tooling run only, any other one to the registered
    run only; options go to both."""
    ids, tooling = set(), set()
    for i, arg in enumerate(pytest_args):
        target = root / arg.split("::", 1)[0]
        if arg.startswith("-") or (i and pytest_args[i - 1] in _TAKES_VALUE) or not target.exists():
            continue
        ids.add(i)
        if target.resolve().is_relative_to(root / TOOLING):
            tooling.add(i)
    registered_args = [a for i, a in enumerate(pytest_args) if i not in tooling]
    tooling_args = [a for i, a in enumerate(pytest_args) if i not in ids or i in tooling]
    return (registered_args if not ids or ids - tooling else None,
            tooling_args if not ids or tooling else None)


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
    registered_args, tooling_args = split_ids(paths.root, args.pytest_args)
    if args.flavor != "patched" or args.tier != "registered":
        registered_args, tooling_args = args.pytest_args, None
    cache = paths.release_dir(rel.version) / "pytest-cache"
    asked = shlex.join(args.pytest_args) or " ".join(defaults + ([TOOLING] if tooling_args is not None else []))
    deselect = []
    if args.flavor == "patched":  # a downstream-only fix the release's line leaves out is no claim of it
        for test_id, why in lines.left_out_tests(paths, rel.version, paths.root).items():
            print(f"deselected {test_id}: {why}")
            deselect.append(f"--deselect={test_id}")
    print(f"testing {wheel.name} ({args.flavor}) with pytest {asked}", flush=True)
    inputs = tooling_inputs(paths.root) if tooling_args == [] else None
    if inputs and passed_before(paths, inputs):
        print(f"{TOOLING}: not run again: {passed_before(paths, inputs)}", flush=True)
        tooling_args = None
    with tempfile.TemporaryDirectory() as tmp:
        tooling = start_tooling(paths, tooling_args, cache / "tooling", Path(tmp) / "tooling.log") \
            if tooling_args is not None else None
        try:
            code = 5
            results: dict = {}
            if registered_args is not None:
                junit = Path(tmp) / "junit.xml"
                code = pytest_run.run(venv, site, [], paths.root, pytest_options(paths.root, defaults, registered_args) + deselect,
                                      cache_dir=cache / f"{args.flavor}-{args.tier}", junit=junit)
                results = pytest_run.read_report(junit)
            if tooling is not None:
                if registered_args is not None:
                    print(f"\n{TOOLING} (run alongside, in the pinned tools' venv):", flush=True)
                tooling_code = finish_tooling(*tooling)
                if tooling_code == 0 and inputs:
                    record_pass(paths, inputs)
                code = combine(code, tooling_code)
        except BaseException:
            if tooling is not None:
                pytest_run.stop_tree(tooling[0], signal.SIGTERM)
            raise
    if code == 5:
        raise SeriesError(f"pytest collected no tests ({asked}); "
                          "check the test ids and -k/-m expressions in PYTEST_ARGS")
    if args.require_cuda:
        require_cuda_ran(results)
    sys.exit(code)


# What the tooling tests never read: the series (`make lint` checks it on every run), the
# docs, and the checks they judge nothing of (the registered and manual tiers, the reverts,
# the fix registry: the registered run and `make prove` judge those). A file added, moved or
# removed there still counts (a test may name a folder); an edit does not.
NOT_READ = ("patches/", "docs/")
NAMES_ONLY = ("tests/registered/", "tests/manual/", "tests/reverts/", "tests/fixes.toml")


def tooling_inputs(root: Path) -> str | None:
    """Digest of what the tooling tests judge: every file git sees in the working tree
    (tracked, or new and not ignored) but NOT_READ, only the names of NAMES_ONLY, and the
    interpreter. None outside a git checkout."""
    listed = git.run(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", check=False, text=False)
    if listed.returncode != 0:
        return None
    digest = hashlib.sha256(sys.version.encode())
    for name in sorted({n.decode() for n in listed.stdout.split(b"\0") if n}):
        path = root / name
        if name.startswith(NOT_READ) or not path.is_file():
            continue
        digest.update(name.encode() + b"\0" + (b"" if name.startswith(NAMES_ONLY) else path.read_bytes()) + b"\0")
    return digest.hexdigest()


def _passes(paths: config.Paths, inputs: str) -> Path:
    # in the shared cache, by content: a fresh clone of a checkout that passed reuses it too
    return paths.cache / "tooling-passed" / f"{inputs}.json"


def passed_before(paths: config.Paths, inputs: str) -> str | None:
    """Why the tooling tests need not run again (they passed on these very inputs), or None."""
    try:
        record = json.loads(_passes(paths, inputs).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("inputs") != inputs:
        return None
    return (f"they passed at {record.get('when')} and nothing they judge has changed since (scripts/, tests/tooling, "
            f"tests/seam, ci/ ...: every file but {', '.join(NOT_READ + NAMES_ONLY)}); "
            f"run them anyway with `make test PYTEST_ARGS={TOOLING}`")


def record_pass(paths: config.Paths, inputs: str) -> None:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    record = _passes(paths, inputs)
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"inputs": inputs, "when": when}) + "\n")
    os.replace(partial, record)


def start_tooling(paths: config.Paths, pytest_args: list[str], cache: Path, log: Path):
    """The tooling tests in the background, in the tools' venv (pytest, pytest-xdist), output to `log`."""
    serial = any(a.split("=")[0] in _SERIAL for a in pytest_args)
    workers = [] if serial else ["-n", str(max(2, os.cpu_count() or 1))]
    home = envs.tools(paths).uv.parent.parent
    cmd = pytest_run.command(home, [], [*workers, *pytest_options(paths.root, [TOOLING], pytest_args)], cache)
    out = open(log, "w+")
    # the make commands the tests run use this verb's interpreter, not a launcher's shim
    # (pyenv's costs a dozen shell processes per command)
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.Popen(cmd, cwd=paths.root, env=env, stdout=out, stderr=subprocess.STDOUT), out


def finish_tooling(proc: subprocess.Popen, out) -> int:
    code = proc.wait()
    out.seek(0)
    sys.stdout.write(out.read())
    sys.stdout.flush()
    out.close()
    return code


def combine(registered: int, tooling: int) -> int:
    """One exit code: a failure anywhere fails; 5 (no tests) only when neither run collected any."""
    if registered == 5 or tooling == 5:
        return tooling if registered == 5 else registered
    return max(registered, tooling)


if __name__ == "__main__":
    run_main(main)
