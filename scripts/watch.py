"""The rebase watch's list: every sglang release on the package index newer than the base, patch
releases included, with a cp311 manylinux x86_64 wheel and no committed report yet
(docs/rebase/<X>.md). Printed as a JSON list for a CI job matrix, oldest first.

A maintainer marks a release reported by committing its report:
`make rebase UPSTREAM_VERSION=X COPY_TO=docs/rebase`."""

import argparse
import json

from scripts.lib import config, pins
from scripts.lib.errors import run_main

REPORTS = "docs/rebase"


def unreported(paths: config.Paths, newer: list[str]) -> list[str]:
    out = []
    for version in newer:
        try:
            pins.version_key(version)
        except ValueError:  # another scheme: not something the series moves to
            continue
        if not (paths.root / REPORTS / f"{version}.md").exists():
            out.append(version)
    return sorted(out, key=pins.version_key)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=0, help="at most this many, oldest first (0: all)")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    # uv skips yanked releases and pre-releases, and those without a cp311 manylinux x86_64 wheel
    found = unreported(paths, pins.versions_newer_than(paths, config.base_version(paths)))
    print(json.dumps(found[: args.limit] if args.limit else found))


if __name__ == "__main__":
    run_main(main)
