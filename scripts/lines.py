"""make lines: which patches each pinned release gets (its line, lib/lines.py), as a
table; PUBLISH=1 also writes it and the title into README.md (a move does that itself)."""

import argparse

from scripts.lib import config, readme
from scripts.lib.errors import SeriesError, run_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--publish", action="store_true", help="also write the table and the title into README.md")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    print(readme.lines_table(paths), end="")
    if args.publish:
        if not readme.refresh(paths):
            raise SeriesError("no README.md with the lines block next to this patches/; nothing to publish")
        print("wrote the README's title and table of lines")


if __name__ == "__main__":
    run_main(main)
