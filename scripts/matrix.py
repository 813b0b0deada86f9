"""make matrix: which of the series' fixes each pinned upstream release has.

Runs every fix's tests (tests/fixes.toml) against each pinned vanilla release, the
tests of one release in one pytest process in that release's locked venv, and reads
each fix's state from them:

  present     its tests reach their checks and fail there, as on the base
  fixed       its tests pass; "fixed (python; rust not judged)" where a radix check
              passed on one tree core and could not be judged on the other (never on
              the release's default core: then the fix is not held, cannot-run)
  cannot-run  its tests cannot reach their checks on that release (the reason says why)
  not-applicable  the release has no such code path, so it cannot have the bug (the
              reason says what is missing); a line carries nothing for it

A release whose wheel, venv and tests are unchanged since its last run reuses that run's
outcomes (lib/evidence.py; FRESH=1 runs them again). Writes build/matrix/matrix.json ([{"fix", "release", "state", "why"}, "judged"
where judged in part]) and
build/matrix/matrix.md; --publish also writes docs/matrix.md, the README's copy and
docs/matrix.json, the evidence each fix's first release is read from.

FIXES=#a,#b judges only those fixes (a fix just added), RELEASES=a,b only those releases:
with PUBLISH=1 their cells of docs/matrix.json are replaced and every other cell is kept
as published (a cell never judged is `not-judged`).

On CI the releases fan out, one job each (ci/matrix.yml): `make matrix RELEASES=X
PART=file` writes X's records only, and `make matrix MERGE=dir` (PUBLISH=1 too) makes the
matrix from those parts with the same assembly as one machine's run (assemble()), so the
merged matrix.json is the one a single `make matrix` writes.
"""

import argparse
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts.lib import build, config, envs, evidence, fixes, pins, scratch, verdict
from scripts.lib.errors import SeriesError, run_main

DOC = "docs/matrix.md"
README_MARKS = ("<!-- matrix:begin -->", "<!-- matrix:end -->")


def release_results(paths: config.Paths, version: str, venv: Path, tests: list[str], tests_root: Path,
                    extra: list[str], fresh: bool) -> dict:
    rel = config.release(paths, version)
    site = envs.install_site(paths, venv, scratch.upstream_wheel(paths, rel), build.site(paths, version, "vanilla"))
    results, reused = evidence.outcomes(paths, venv, site, tests, tests_root, extra=extra, fresh=fresh)
    if reused:
        print(evidence.reused_line(f"sglang {version}", len(tests)), flush=True)
    return results


def judge(paths: config.Paths, versions: list[str], fix_list: list[fixes.Fix], tests_root: Path, venv_of,
          extra: list[str] = (), fresh: bool = False, jobs: int = 2) -> dict:
    """{(fix, release): {"state", "why"}} of every fix on each release, `jobs` releases at a time."""
    tests = sorted({t for f in fix_list for t in f.tests})
    if not tests:
        raise SeriesError(f"{fixes.REGISTRY} names no tests")
    print(f"{len(tests)} test ids of {len(fix_list)} fixes on {len(versions)} releases, {jobs} at a time", flush=True)
    cells = {}

    def one(version: str) -> None:
        t0 = time.monotonic()
        results = release_results(paths, version, venv_of(version), tests, tests_root, list(extra), fresh)
        for fix in fix_list:
            outcomes = [verdict.outcomes_for(results, t) for t in fix.tests]
            state, why = verdict.fix_state(outcomes)
            judged = verdict.fix_scope(outcomes) if state == verdict.FIXED else ""
            cells[(fix.pr, version)] = {"state": state, "why": why, **({"judged": judged} if judged else {})}
        states = ", ".join(f"{f.pr} {cell_text(cells[(f.pr, version)])}" for f in fix_list)
        print(f"sglang {version} ({time.monotonic() - t0:.0f} s): {states}", flush=True)

    # One pytest process per release, mostly importing torch and sglang: a few at a time.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, versions))
    return cells


def cell_text(cell: dict) -> str:
    """A cell's state, and which parts judged it where only some did:
    "fixed (python; rust not judged)"."""
    return f"{cell['state']} ({cell['judged']})" if cell.get("judged") else cell["state"]


def assemble(fix_list: list[fixes.Fix], versions: list[str], cells: dict) -> list[dict]:
    """The matrix's records ([{"fix", "release", "state", "why"}], fix by fix in the catalog's
    order, each over `versions`): one machine's run and a merge of CI's parts both write these."""
    return [{"fix": f.pr, "release": v, **cells[(f.pr, v)]} for f in fix_list for v in versions]


def write_part(path: Path, fix_list: list[fixes.Fix], versions: list[str], cells: dict, seconds: float,
               tests_root: Path) -> None:
    """One CI job's part: its releases' records, and what they rest on (merge() checks it)."""
    part = {"tests": evidence.tests_digest(tests_root), "fixes": [f.pr for f in fix_list], "seconds": round(seconds, 1),
            "records": assemble(fix_list, versions, cells)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(part, indent=2) + "\n")
    print(f"wrote {path} (the part of {', '.join(versions)}; `make matrix MERGE={path.parent}` merges the parts)")


def merge(folder: Path, fix_list: list[fixes.Fix], tests_root: Path) -> tuple[list[str], dict, float, int]:
    """(releases oldest first, cells, the longest part's seconds, how many parts) of the parts
    (*.json) under `folder`."""
    files = sorted(folder.rglob("*.json")) if folder.is_dir() else []
    if not files:
        raise SeriesError(f"{folder} holds no parts (*.json); make one per release with "
                          f"`make matrix RELEASES=X PART={folder}/X.json`")
    digest, wanted = evidence.tests_digest(tests_root), [f.pr for f in fix_list]
    cells, source, seconds = {}, {}, 0.0
    for file in files:
        try:
            part = json.loads(file.read_text())
            records, tests, prs, took = part["records"], part["tests"], part["fixes"], float(part["seconds"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SeriesError(f"{file} is not a part of `make matrix PART=...` ({exc}); make it again")
        if tests != digest or prs != wanted:
            raise SeriesError(f"{file} was made with other tests or fixes than this checkout's; merge on the commit "
                              "that made the parts, or make them again here")
        for version in {r["release"] for r in records}:
            if version in source:
                raise SeriesError(f"sglang {version} is in both {source[version]} and {file}; keep one of them")
            source[version] = file
        cells.update({(r["fix"], r["release"]): {k: r[k] for k in ("state", "why", "judged") if k in r} for r in records})
        seconds = max(seconds, took)
    versions = sorted(source, key=pins.version_key)
    for fix in fix_list:
        for version in versions:
            if (fix.pr, version) not in cells:
                raise SeriesError(f"{source[version]} has no outcome of {fix.pr} on sglang {version}; make it again "
                                  f"with `make matrix RELEASES={version} PART={source[version]}`")
    return versions, cells, seconds, len(files)


def render(fix_list: list[fixes.Fix], versions: list[str], cells: dict, seconds: float, parts: int = 0,
           ran: tuple[int, int] | None = None) -> str:
    """The table and its notes; `ran` = (releases, fixes) judged now where that is a part of
    the table, the other cells being as published before."""
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
        if cells[(fix.pr, v)]["state"] in ("cannot-run", "not-applicable") or cells[(fix.pr, v)].get("judged")
        or "cannot run" in cells[(fix.pr, v)]["why"]
    ]
    unjudged = sorted({v for fix in fix_list for v in versions if cells[(fix.pr, v)]["state"] == NOT_JUDGED},
                      key=pins.version_key)
    text = "\n".join(lines) + "\n"
    if notes:
        text += ("\nWhat could not run, was not judged in full or in part, or does not apply:\n\n"
                 + "\n".join(notes) + "\n")
    if unjudged:
        text += (f"\n`not-judged`: a fix added since {', '.join(unjudged)} were last judged; "
                 "`make matrix PUBLISH=1` judges every cell.\n")
    if parts:
        return text + f"\n`make matrix` over {len(versions)} releases in {parts} parts took {seconds:.0f} s in the longest.\n"
    if ran:
        return text + (f"\nThe last `make matrix` judged {ran[1]} of {len(fix_list)} fixes on {ran[0]} of "
                       f"{len(versions)} releases, in {seconds:.0f} s; every other cell is as published before.\n")
    return text + f"\n`make matrix` over {len(versions)} releases took {seconds:.0f} s.\n"


def selected(fix_list: list[fixes.Fix], wanted: str | None) -> list[fixes.Fix]:
    """The fixes FIXES=#a,#b names (all without it); an unknown one is a one-line error."""
    if not wanted:
        return fix_list
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = [n for n in names if n not in {f.pr for f in fix_list}]
    if unknown or not names:
        raise SeriesError(f"FIXES names {', '.join(unknown) or 'nothing'}, not a fix of {fixes.REGISTRY}; "
                          f"give some of {', '.join(f.pr for f in fix_list)}")
    return [f for f in fix_list if f.pr in names]


NOT_JUDGED = "not-judged"


def with_published(paths: config.Paths, fix_list: list[fixes.Fix], versions: list[str], cells: dict) -> dict:
    """The cells judged now, over every release in `versions`: a cell not judged now keeps
    its published state (docs/matrix.json); one never published is not-judged, which the
    lines read as no evidence (lib/lines.py keeps what a line has of it)."""
    published = {(r["fix"], r["release"]): {k: r[k] for k in ("state", "why", "judged") if k in r}
                 for r in fixes.evidence(paths.root)}
    return {(f.pr, v): cells.get((f.pr, v)) or published.get((f.pr, v))
            or {"state": NOT_JUDGED, "why": "not judged on this release since the fix was added"}
            for f in fix_list for v in versions}


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
    rows = table.split("\n\n", 1)[0] + "\n"  # the README shows the table; docs/matrix.md its notes too
    readme.write_text(pattern.sub(lambda _: f"{begin}\n{rows}\nNotes: `{DOC}`.\n{end}", text))
    print(f"wrote {DOC}, {fixes.EVIDENCE} and the README's table")


def write(paths: config.Paths, fix_list: list[fixes.Fix], versions: list[str], cells: dict, table: str,
          publish_too: bool) -> None:
    records = assemble(fix_list, versions, cells)
    out = paths.build / "matrix"
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "matrix.md").write_text(table)
    print("\n" + table + f"\nwrote {out / 'matrix.json'}")
    if publish_too:
        publish(paths, table, records)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--releases", help="comma-separated pinned releases (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="releases tested at once (default 2)")
    parser.add_argument("--publish", action="store_true", help=f"also write {DOC} and the README's table")
    parser.add_argument("--fresh", action="store_true", help="run every release's tests again, even where stored (lib/evidence.py)")
    parser.add_argument("--part", help="write only these releases' outcomes to this file (one CI job's part)")
    parser.add_argument("--merge", help="the matrix from the parts (*.json) in this folder; runs no test")
    parser.add_argument("--fixes", help="comma-separated fixes (their pr in tests/fixes.toml) to judge; the others' "
                                        "published rows are kept")
    parser.add_argument("--list", action="store_true", help="print the releases it would run, as a JSON list")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest options (after --)")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    pinned = pins.pinned_versions(paths)
    versions = args.releases.split(",") if args.releases else pinned
    if args.list:  # for CI's fan-out: one job per release
        print(json.dumps(versions))
        return
    config.require_python()
    if args.merge and (args.part or args.releases or args.fresh or args.pytest_args or args.fixes):
        raise SeriesError("MERGE=dir reads the parts as they are; give it without RELEASES, PART, FRESH, FIXES or PYTEST_ARGS")
    fix_list = fixes.load(paths.root)
    judged = selected(fix_list, args.fixes)
    if args.merge:
        versions, cells, seconds, parts = merge(Path(args.merge), fix_list, paths.root)
        write(paths, fix_list, versions, cells, render(fix_list, versions, cells, seconds, parts), args.publish)
        return
    for v in versions:
        config.release(paths, v)  # unknown -> one line naming the pins
    if args.part and args.publish:
        raise SeriesError("PART=file writes one job's part only; publish from the merge: `make matrix MERGE=dir PUBLISH=1`")
    started = time.monotonic()
    if args.part and args.fixes:
        raise SeriesError("PART=file is one job's part of the whole matrix; give it without FIXES")
    cells = judge(paths, versions, judged, paths.root, lambda v: envs.venv(paths, v), args.pytest_args, args.fresh,
                  args.jobs)
    ran = None
    if args.fixes or (args.releases and args.publish):  # a part of the matrix: the rest as published
        ran = (len(versions), len(judged))
        versions = pinned
        cells = with_published(paths, fix_list, versions, cells)
    if args.part:
        write_part(Path(args.part), fix_list, versions, cells, time.monotonic() - started, paths.root)
        return
    write(paths, fix_list, versions, cells, render(fix_list, versions, cells, time.monotonic() - started, ran=ran),
          args.publish)


if __name__ == "__main__":
    run_main(main)
