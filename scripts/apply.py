"""make apply: fetch the pinned upstream, apply its series (all or nothing), build the
patched wheel and prepare the test environment. The series is the release's line
(lib/lines.py): patches/lines/X.series for release X (the base when none is named)."""

import argparse

from scripts.lib import build, config, envs, hints, scratch
from scripts.lib.applying import apply_series
from scripts.lib.errors import run_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="release to apply on (default: the pinned base)")
    parser.add_argument("--no-env", action="store_true", help="apply and build only; do not prepare the test venv")
    args = parser.parse_args(argv)
    config.require_python()
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    tools = envs.tools(paths)
    with scratch.exclusive(paths, rel.version):
        apply_series(paths, rel, tools)
        wheel = build.build(paths, rel, tools)
        print(f"built {wheel.name}", flush=True)
        if args.no_env:
            return
        build.install_sites(paths, rel)
    up = hints.up(paths, rel.version)
    print(f"test environment ready; run `make test{up}`")


if __name__ == "__main__":
    run_main(main)
