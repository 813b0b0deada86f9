"""make prove: show both sides of every claim the series makes.

- each patch's tests (its `Tests:` header) fail on vanilla upstream and pass on the
  patched build; a patch whose tests already pass on vanilla (it keeps what vanilla
  does where an earlier patch, or a later release, changed it) is judged instead by
  the patched build with that patch taken back out (`git apply -R`);
- each guard of a fix the base already has (tests/reverts/: a patch that puts the
  old bug back, with the guard tests in its `Tests:` header) passes on vanilla and
  fails on vanilla + that revert; a release whose code moved has its own copy of a
  revert (tests/reverts/README.md says which one applies where);
- every other fix of tests/fixes.toml that the base has (absorbed by upstream, no
  revert carried) is listed with its tests' outcome on vanilla: one side only.

Tests skipped here (no GPU) are shown as such, never as passing. A side whose installed
files, venv and tests are unchanged since it last ran reuses that run's outcomes
(lib/evidence.py, in the shared cache); FRESH=1 runs every side again.
"""

import argparse
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts.lib import build, config, envs, evidence, fixes, git, lines, pins, pytest_run, series
from scripts.lib import verdict as verdict_
from scripts.lib.errors import SeriesError, run_main

REVERTS = "tests/reverts"


def _word(results: list) -> str:
    kinds = {"cannot-run" if verdict_.seam_refused(*result) else "not-applicable" if verdict_.not_applicable(*result)
             else result[0] for result in results}
    for kind in ("failed", "error", "passed", "cannot-run", "not-applicable", "skipped"):
        if kind in kinds:
            return kind
    return "missing"


def summarize(chosen: dict, default: str | None = None) -> str:
    """One word for a group of test results: failed > error > passed > cannot-run > not-applicable
    (the release has no such code path) > skipped > missing.
    (Stricter than lib/verdict.py: here an error where a test must pass is a failure.)
    A test collected once per tree core (TestX[python], TestX[rust]) passes only where
    every core passed, or the cores that did include the release's `default` one; then
    the word says which were judged: "passed (python; rust skipped)". Without the default
    core it is "cannot-run (...)": what the release runs was not judged."""
    by_part: dict = {}
    for key, result in chosen.items():
        by_part.setdefault(pytest_run.variant(key), []).append(result)
    words = {part: _word(results) for part, results in by_part.items()}
    if set(words) <= {None}:
        return words.get(None, "missing")
    for kind in ("failed", "error"):
        if kind in words.values():
            return f"{kind} ({', '.join(sorted(str(p) for p, w in words.items() if w == kind))})"
    judged = sorted(str(p) for p, w in words.items() if w == "passed")
    missing = {p: w for p, w in words.items() if w != "passed"}
    if not missing:
        return "passed"
    if not judged:
        return next(k for k in ("cannot-run", "not-applicable", "skipped", "missing") if k in missing.values())
    note = "; ".join([", ".join(judged)] + [f"{p} {w}, not judged" for p, w in missing.items()])
    if default is None or default in missing:
        return f"cannot-run ({note}: the release's default tree core {default or '(unknown)'} was not judged)"
    return f"passed ({note})"


def _kind(word: str) -> str:
    return word.split(" ", 1)[0]


def verdict(sides: list[tuple[str, str]], good: int) -> str:
    """sides: (before, after) per test; `good` is the side that must pass (0 or 1). A test
    that finds no such code path (not-applicable) judges nothing either way."""
    bad = 1 - good
    sides = [(_kind(a), _kind(b)) for a, b in sides]
    if any(side[good] not in ("passed", "skipped", "cannot-run", "not-applicable") for side in sides):
        return "BROKEN: fails where it must pass"
    if any(side[bad] in ("failed", "error") and side[good] == "passed" for side in sides):
        return "proven"
    return "not proven here (passes on both sides, skipped, or cannot run)"


def revert_for(tests_root: Path, version: str, patch: series.Patch) -> series.Patch:
    """The copy of a revert that applies to `version`: the one in the folder named after the
    highest release <= version that holds it, else the top-level file (the oldest)."""
    root = tests_root / REVERTS
    chosen = pins.newest_at_or_below([d.name for d in root.iterdir() if d.is_dir() and (d / patch.name).is_file()], version)
    return series.parse(root / chosen / patch.name) if chosen else patch


def site_with(paths: config.Paths, version: str, start: Path, patch: series.Patch, reverse: bool = False) -> Path:
    """A copy of the installed sglang at `start` with `patch` applied (or taken back out with
    reverse); patch paths python/sglang/... -> sglang/..."""
    site = build.site(paths, version, f"{'without' if reverse else 'revert'}-{patch.path.stem}")
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(start, site, symlinks=True)
    # The site lies inside this repo's work tree: stop git from finding that repo, or it
    # would resolve the patch's paths against the repo root and skip them silently.
    proc = git.run(None, "apply", "-p2", *(["-R"] if reverse else []), str(patch.path), check=False, cwd=site,
                   env={"GIT_CEILING_DIRECTORIES": str(site.parent)})
    if proc.returncode == 0:
        evidence.derive(site, start, patch.path, reverse)
    else:
        where = patch.path.relative_to(paths.root) if patch.path.is_relative_to(paths.root) else patch.path
        first = proc.stderr.strip().splitlines()[0]
        if reverse:
            raise SeriesError(f"{where} cannot be taken back out of the patched {version} build ({first}); "
                              f"a later patch changes the same lines: prove it with tests that fail on vanilla {version}")
        raise SeriesError(f"{where} does not apply on vanilla {version}: {first}; "
                          f"add a copy made for {version} under {REVERTS}/{version}/ (see {REVERTS}/README.md)")
    return site


def table(title: str, columns: tuple[str, str], rows: list[dict]) -> None:
    print(f"\n{title}\n\n| patch | test | {columns[0]} | {columns[1]} | verdict |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['patch']} | {row['test']} | {row['before']} | {row['after']} | {row['verdict']} |")


def judge(patches: list[series.Patch], before: dict, after: dict, good: int) -> list[dict]:
    rows = []
    for patch in patches:
        sides = [(summarize(pytest_run.select(before, t), pytest_run.tree_core_default(before)),
                  summarize(pytest_run.select(after, t), pytest_run.tree_core_default(after))) for t in patch.tests]
        result = verdict(sides, good)
        rows += [{"patch": patch.name, "test": t, "before": b, "after": a, "verdict": result} for t, (b, a) in zip(patch.tests, sides)]
    return rows


def prove(paths: config.Paths, rel: config.Release, venv: Path, sites: dict, tests_root: Path,
          pytest_args: list[str] = (), fresh: bool = False) -> dict:
    """Both sides of every claim, printed as tables; returns the rows by kind."""
    patches = lines.load(paths, rel.version)
    reverts = [revert_for(tests_root, rel.version, r) for r in series.load(tests_root / REVERTS, tests_root / REVERTS / "series", allow_empty=True)]
    carried = [set(p.tests) for p in patches + reverts]
    left_out = lines.left_out_fixes(paths, rel.version, tests_root)
    registry = [f for f in fixes.load(tests_root) if set(f.tests) not in carried]
    absorbed = [f for f in registry if f.pr not in left_out]
    for f in registry:
        if f.pr in left_out:
            print(f"not judged on sglang {rel.version}: {f.pr} ({f.title}), which no upstream release has, "
                  f"is left out of {lines.label(paths, rel.version)}: {left_out[f.pr]}")

    def run(site: Path, items: list, label: str) -> dict:
        ids = sorted({t for p in items for t in p.tests})
        # per file, cannot-run allowed: one file's import error hides no other's result, and
        # the very run `make matrix` and `make rebase` make of a vanilla release (shared)
        results, reused = evidence.outcomes(paths, venv, site, ids, tests_root, extra=pytest_args, fresh=fresh)
        if reused:
            print(evidence.reused_line(label, len(ids)), flush=True)
        return results

    def reverted(revert: series.Patch) -> dict:  # vanilla with the fix taken back out, and its tests there
        return run(site_with(paths, rel.version, sites["vanilla"], revert), [revert], f"vanilla {rel.version} + {revert.name}")

    # Each side is its own pytest process, mostly importing torch and sglang: two at a time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        sides = [pool.submit(run, sites["vanilla"], patches + reverts + absorbed, f"vanilla {rel.version}"),
                 pool.submit(run, sites["patched"], patches, f"patched {rel.version}")]
        guard_runs = [pool.submit(reverted, r) for r in reverts]
        vanilla, patched = (side.result() for side in sides)
        guard_runs = [g.result() for g in guard_runs]
    rows = judge(patches, vanilla, patched, good=1)
    # Tests that pass on vanilla too: the patch keeps vanilla's behaviour where another
    # patch changed it; the evidence is the series without it.
    keepers = [p for p in patches if all(_kind(r["before"]) == "passed" for r in rows if r["patch"] == p.name)]
    rows = [r for r in rows if r["patch"] not in {p.name for p in keepers}]
    table(f"Patches: vanilla {rel.version} vs patched", (f"vanilla {rel.version}", "patched"), rows)
    if keepers:
        kept_rows = []
        for patch in keepers:
            without = run(site_with(paths, rel.version, sites["patched"], patch, reverse=True), [patch],
                          f"patched {rel.version} without {patch.name}")
            kept_rows += judge([patch], without, patched, good=1)
        table(f"Patches whose tests pass on vanilla {rel.version} too: patched without the patch vs patched",
              ("without the patch", "patched"), kept_rows)
        rows += kept_rows
    guard_rows = []
    for revert, with_revert in zip(reverts, guard_runs):
        guard_rows += judge([revert], vanilla, with_revert, good=0)
    table(f"Guards of fixes already in {rel.version}: vanilla vs vanilla + revert", (f"vanilla {rel.version}", "with the revert"), guard_rows)
    default = pytest_run.tree_core_default(vanilla)
    base_rows = [{"fix": f.pr, "test": t, "vanilla": summarize(pytest_run.select(vanilla, t), default)}
                 for f in absorbed for t in f.tests]
    if base_rows:
        print(f"\nFixes upstream {rel.version} has, without a revert here (one side: they must pass on vanilla, "
              f"judged on the release's default configuration; a skip is no evidence; not-applicable: the "
              f"release has no such code path, so it cannot have the bug)\n\n"
              f"| fix | test | vanilla {rel.version} |\n|---|---|---|")
        for r in base_rows:
            print(f"| {r['fix']} | {r['test']} | {r['vanilla']} |")
    return {"patches": rows, "guards": guard_rows, "base_fixes": base_rows}


def proven(result: dict) -> bool:
    """Every patch and guard proven, and every fix the release has held: its tests passed
    on vanilla (a skip judged nothing), or found no such code path in the release."""
    return (all(r["verdict"] == "proven" for r in result["patches"] + result["guards"])
            and all(_kind(r["vanilla"]) in ("passed", "not-applicable") for r in result["base_fixes"]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument("--fresh", action="store_true", help="run every side's tests again, even where stored (lib/evidence.py)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest options (after --)")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    sites = build.both_sites(paths, rel)
    result = prove(paths, rel, envs.venv(paths, rel.version), sites, paths.root, args.pytest_args, args.fresh)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if proven(result) else 1)


if __name__ == "__main__":
    run_main(main)
