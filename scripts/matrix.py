"""make matrix: which of the series' fixes each pinned upstream release has.

Runs every fix's tests (tests/fixes.toml) against each pinned vanilla release, the
tests of one release in one pytest process in that release's locked venv, and reads
each fix's state from them:

  present     its tests reach their checks and fail there, as on the base
  fixed       its tests pass; "fixed (python; rust not judged)" where a radix check
              passed on one tree core and could not be judged on the other (never on
              the release's default core: then the fix is not held, cannot-run)
  cannot-run  its tests cannot reach their checks on that release (the reason says why)

A release whose wheel, venv and tests are unchanged since its last run reuses that run's
outcomes (lib/evidence.py; FRESH=1 runs them again). Writes build/matrix/matrix.json ([{"fix", "release", "state", "why"}, "judged"
where judged in part]) and
build/matrix/matrix.md; --publish also writes docs/matrix.md, the README's copy and
docs/matrix.json, the evidence each fix's first release is read from.
"""

import argparse
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from scripts import build
from scripts.lib import config, envs, evidence, fixes, pins, scratch, verdict
from scripts.lib.errors import SeriesError, run_main

DOC = "docs/matrix.md"
README_MARKS = ("<!-- matrix:begin -->", "<!-- matrix:end -->")


def release_results(paths: config.Paths, version: str, tests: list[str], extra: list[str], fresh: bool) -> dict:
    rel = config.release(paths, version)
    venv = envs.venv(paths, version)
    site = envs.install_site(paths, venv, scratch.upstream_wheel(paths, rel), build.site(paths, version, "vanilla"))
    results, reused = evidence.outcomes(paths, venv, site, tests, paths.root, extra=extra, fresh=fresh)
    if reused:
        print(evidence.reused_line(f"sglang {version}", len(tests)), flush=True)
    return results


def cell_text(cell: dict) -> str:
    """A cell's state, and which parts judged it where only some did:
    "fixed (python; rust not judged)"."""
    return f"{cell['state']} ({cell['judged']})" if cell.get("judged") else cell["state"]


def render(fix_list: list[fixes.Fix], versions: list[str], cells: dict, seconds: float) -> str:
    lines = [
        "| fix | " + " | ".join(versions) + " |",
        "|---|" + "---|" * len(versions),
    ]
    for fix in fix_list:
        row = [cell_text(cells[(fix.pr, v)]) for v in versions]
        lines.append(f"| {fix.pr} {fix.title} | " + " | ".join(row) + " |")
    # a cell that cannot run, or that was judged in part only (one tree core of two)
    notes = [
        f"- {fix.pr} on {v}: {cells[(fix.pr, v)]['why']}"
        for fix in fix_list for v in versions
        if cells[(fix.pr, v)]["state"] == "cannot-run" or cells[(fix.pr, v)].get("judged")
        or "cannot run" in cells[(fix.pr, v)]["why"]
    ]
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\nWhat could not run or was not judged, in full or in part:\n\n" + "\n".join(notes) + "\n"
    return text + f"\n`make matrix` over {len(versions)} releases took {seconds:.0f} s.\n"


def publish(paths: config.Paths, table: str, records: list[dict]) -> None:
    # the evidence itself too: "first released in" is read off it (scripts/lib/fixes.py)
    (paths.root / fixes.EVIDENCE).write_text(json.dumps(records, indent=2) + "\n")
    doc = paths.root / DOC
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(
        "# Which fix each upstream release has\n\n"
        "Made by `make matrix PUBLISH=1`: every fix's tests (tests/fixes.toml) run on each\n"
        "pinned vanilla release. present = the bug is there; fixed = the fix is there.\n\n" + table
    )
    readme = paths.root / "README.md"
    text = readme.read_text()
    begin, end = README_MARKS
    if begin not in text or end not in text:
        raise SeriesError(f"README.md lacks the {begin} ... {end} block; add it where the table belongs")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    readme.write_text(pattern.sub(lambda _: f"{begin}\n{table}{end}", text))
    print(f"wrote {DOC}, {fixes.EVIDENCE} and the README's table")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--releases", help="comma-separated pinned releases (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="releases tested at once (default 2)")
    parser.add_argument("--publish", action="store_true", help=f"also write {DOC} and the README's table")
    parser.add_argument("--fresh", action="store_true", help="run every release's tests again, even where stored (lib/evidence.py)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest options (after --)")
    args = parser.parse_args(argv)
    config.require_python()
    paths = config.Paths.from_env()
    pinned = pins.pinned_versions(paths)
    versions = args.releases.split(",") if args.releases else pinned
    for v in versions:
        config.release(paths, v)  # unknown -> one line naming the pins
    fix_list = fixes.load(paths.root)
    tests = sorted({t for f in fix_list for t in f.tests})
    if not tests:
        raise SeriesError(f"{fixes.REGISTRY} names no tests")
    started, cells = time.monotonic(), {}
    print(f"{len(tests)} test ids of {len(fix_list)} fixes on {len(versions)} releases, {args.jobs} at a time", flush=True)

    def judge(version: str) -> None:
        t0 = time.monotonic()
        results = release_results(paths, version, tests, args.pytest_args, args.fresh)
        for fix in fix_list:
            outcomes = [verdict.outcomes_for(results, t) for t in fix.tests]
            state, why = verdict.fix_state(outcomes)
            judged = verdict.fix_scope(outcomes) if state == verdict.FIXED else ""
            cells[(fix.pr, version)] = {"state": state, "why": why, **({"judged": judged} if judged else {})}
        states = ", ".join(f"{f.pr} {cell_text(cells[(f.pr, version)])}" for f in fix_list)
        print(f"sglang {version} ({time.monotonic() - t0:.0f} s): {states}", flush=True)

    # One pytest process per release, mostly importing torch and sglang: a few at a time.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(judge, versions))
    records = [{"fix": f.pr, "release": v, **cells[(f.pr, v)]} for f in fix_list for v in versions]
    table = render(fix_list, versions, cells, time.monotonic() - started)
    out = paths.build / "matrix"
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "matrix.md").write_text(table)
    print("\n" + table + f"\nwrote {out / 'matrix.json'}")
    if args.publish:
        publish(paths, table, records)


if __name__ == "__main__":
    run_main(main)
