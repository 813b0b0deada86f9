"""make lines: which patches each pinned release gets (its line, lib/lines.py), as a
table. WRITE=1 rewrites every pinned release's line from the evidence (docs/matrix.json:
the fixes it lacks, each from its newest port at or below it; comments and a maintainer's
drops kept); PUBLISH=1 also writes the table and the title into README.md."""

import argparse
import datetime

from scripts.lib import config, fixes, lines, pins, readme
from scripts.lib.errors import SeriesError, run_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the lines from the evidence and the ports")
    parser.add_argument("--publish", action="store_true", help="also write the table and the title into README.md")
    parser.add_argument("--others", action="store_true", help="only list the releases with a line other than the base")
    parser.add_argument("--base", action="store_true", help="only the base release (the line plain `make apply` builds)")
    parser.add_argument("--today", action="store_true", help="only the release whose line the CPU lane proves today, in turn")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    if args.base:
        print(config.base_version(paths))
        return
    others = lines.versions(paths)[1:]
    if args.others or args.today:
        day = datetime.datetime.now(datetime.timezone.utc).date().toordinal()
        for version in ([others[day % len(others)]] if args.today and others else others if args.others else []):
            print(version)
        return
    if args.write:
        lines.require_committed(paths)
        lines.keep_copy(paths, "lines")
        judged = {r["release"] for r in fixes.evidence(paths.tests_root)}
        for version in sorted(config.load_releases(paths)["releases"], key=pins.version_key):
            if version not in judged and not lines.exists(paths, version):
                print(f"sglang {version}: no evidence yet (`make matrix RELEASES={version}`), no line written")
            elif lines.write_derived(paths, version, paths.tests_root):
                print(f"wrote {lines.label(paths, version)}")
    print(readme.lines_table(paths), end="")
    if args.publish:
        if not readme.refresh(paths):
            raise SeriesError("no README.md with the lines block next to this patches/; nothing to publish")
        print("wrote the README's title and table of lines")


if __name__ == "__main__":
    run_main(main)
