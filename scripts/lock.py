"""make lock / make lock-tools: regenerate a hashed lock with uv.

The test lock of a release resolves env/<version>.in with packages uploaded no
later than the release's `exclude_newer` date (upstream/releases.json), so the
dependencies that drifted since the release stay at their contemporaneous versions.
uv resolves through the package index it is configured with (UV_DEFAULT_INDEX /
UV_INDEX_URL, uv.toml).
"""

import argparse

from scripts.lib import config, envs
from scripts.lib.errors import run_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream")
    parser.add_argument("--tools", action="store_true", help="regenerate env/tools.lock instead")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    if args.tools:
        envs.compile_lock(paths, paths.env / "tools.in", paths.env / "tools.lock", [], "make lock-tools")
        return
    envs.lock_release(paths, config.release(paths, args.upstream))


if __name__ == "__main__":
    run_main(main)
