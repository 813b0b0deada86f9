"""The rebase watch's list: every sglang release on PyPI newer than the base, patch
releases included, with a cp311 manylinux x86_64 wheel and no committed report yet
(docs/rebase/<X>.md). Printed as a JSON list for a CI job matrix, oldest first.

A maintainer marks a release reported by committing its report:
`make rebase UPSTREAM_VERSION=X COPY_TO=docs/rebase`."""

import argparse
import json

from scripts.lib import config, pins
from scripts.lib.errors import run_main

REPORTS = "docs/rebase"


def unreported(paths: config.Paths, meta: dict) -> list[str]:
    base = pins.version_key(config.base_version(paths))
    out = []
    for version, files in meta["releases"].items():
        try:
            newer = pins.version_key(version) > base
        except ValueError:  # a pre-release or other scheme: not something the series moves to
            continue
        has_wheel = any(pins.WHEEL.match(f["filename"]) and not f.get("yanked") for f in files)
        if newer and has_wheel and not (paths.root / REPORTS / f"{version}.md").exists():
            out.append(version)
    return sorted(out, key=pins.version_key)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=0, help="at most this many, oldest first (0: all)")
    args = parser.parse_args(argv)
    found = unreported(config.Paths.from_env(), pins.project())
    print(json.dumps(found[: args.limit] if args.limit else found))


if __name__ == "__main__":
    run_main(main)
