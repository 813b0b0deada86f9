"""make discard: drop local edits and commits in the scratch tree; it goes back to the baseline."""

import argparse

from scripts.lib import config, scratch
from scripts.lib.errors import run_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    with scratch.exclusive(paths, rel.version):
        scratch.discard(paths, rel.version)
    print(f"{scratch.tree(paths, rel.version)} is back at the baseline; run `make apply`")


if __name__ == "__main__":
    run_main(main)
