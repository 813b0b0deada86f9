"""make test / make test-vanilla / make test-manual: run a test tier against an
installed sglang (the patched build or the vanilla upstream wheel) in the locked venv."""

import argparse
import sys

from scripts import build
from scripts.lib import config, envs, pytest_run, scratch
from scripts.lib.errors import SeriesError, run_main

TIERS = {
    # tooling tests exercise scripts/ on a synthetic upstream; they do not depend on the flavor
    "registered": ["tests/registered", "tests/tooling"],
    "manual": ["tests/manual"],
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flavor", choices=["patched", "vanilla"], default="patched")
    parser.add_argument("--tier", choices=sorted(TIERS), default="registered")
    parser.add_argument("--upstream", help="release (default: the pinned base)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments or test ids")
    args = parser.parse_args(argv)
    config.require_python()
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    venv = envs.venv(paths, rel.version)
    if args.flavor == "patched":
        wheel = build.patched_wheel(paths, rel.version)
    else:
        wheel = scratch.upstream_wheel(paths, rel)
    site = envs.install_site(paths, venv, wheel, build.site(paths, rel.version, args.flavor))
    targets = [a for a in args.pytest_args if not a.startswith("-")] or TIERS[args.tier]
    if args.flavor == "vanilla" and targets == TIERS["registered"]:
        targets = ["tests/registered"]
    options = [a for a in args.pytest_args if a.startswith("-")]
    print(f"testing {wheel.name} ({args.flavor}) with {', '.join(targets)}", flush=True)
    code = pytest_run.run(venv, site, targets, paths.root, options)
    if code == 5:
        raise SeriesError(f"pytest collected no tests from {', '.join(targets)}")
    sys.exit(code)


if __name__ == "__main__":
    run_main(main)
