"""make discard: drop local edits and commits in the scratch tree, the queue branch
included; it goes back to the baseline. patches/ is not touched."""

import argparse

from scripts.lib import config, hints, scratch
from scripts.lib.queue_plan import moving_to
from scripts.lib.errors import run_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    with scratch.exclusive(paths, rel.version):
        scratch.discard(paths, rel.version)
    up = hints.up(paths, rel.version)
    then = (f"start the move again with `make queue{up}`" if moving_to(paths, rel.version)
            else f"run `make apply{up}` (or `make queue{up}` to edit the series)")
    print(f"{scratch.tree(paths, rel.version)} is back at the baseline and has no queue; {then}")


if __name__ == "__main__":
    run_main(main)
