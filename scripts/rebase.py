"""make rebase UPSTREAM_VERSION=X: how a line fares on sglang X, sorted by evidence.

The line judged is the newest one below X (FROM=Y names another): a new release
is judged against the patches closest to it, line-only patches included.

1. fetch X's pinned wheel (sha256-checked) and build its pristine scratch tree;
2. evidence first: run each patch's `Tests:` on the start line's vanilla wheel and on X's,
   each in its own release's locked venv; a patch whose fix X has is dropped, with its
   reason, before anything is applied;
3. try the others in order, cumulatively (lib/trial.py): as they are, else with a 3-way
   merge against the blobs of the release each was written on (taken from its wheel);
4. run the tests on X with the patches that applied;
5. sort every patch (lib/verdict.py), write report.md + report.json and a proposed
   series (absorbed patches dropped, the rest refreshed) under build/X/rebase/.

patches/ changes only with --write (WRITE=1: X's line, and X becomes the base; with
--line, LINE=1: X's line only), and only when every kept patch applies and its tests pass on X. A
WRITE=1 that cannot adopt says so as soon as the evidence shows it: at once when a
report for this series and these tests is there, else before the tests on patched X.
"""

import argparse
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts.lib import build, config, envs, evidence, fixes, git, hints, lines, moving, patch_queue, report, scratch, series, trial, verdict, wheels
from scripts.lib.errors import SeriesError, run_main

PROPOSED = "rebase-proposed"


def rebase_dir(paths: config.Paths, version: str) -> Path:
    return paths.release_dir(version) / "rebase"


def trial_site(paths: config.Paths, rel: config.Release, tools: envs.Tools, venv: Path, repo: Path, count: int) -> Path:
    """X with the patches that applied, installed like `make apply` installs the patched wheel.
    Re-packed only when the trial branch moved (a warm re-run skips it)."""
    head = git.rev(repo, trial.BRANCH)
    site = build.site(paths, rel.version, "rebased")
    stamp = rebase_dir(paths, rel.version) / ".site-head"
    if stamp.exists() and stamp.read_text() == head and (site / envs.SITE_STAMP).exists():
        return site
    work = rebase_dir(paths, rel.version) / ".build"
    shutil.rmtree(work, ignore_errors=True)
    root = wheels.unpack(tools.wheel, scratch.upstream_wheel(paths, rel), work)
    build.replace_contents(repo, head, root)  # the same swap `make apply`'s build does
    wheel = wheels.pack(tools.wheel, root, rebase_dir(paths, rel.version) / "dist", f"{build.LABEL}.{count}")
    shutil.rmtree(work)
    envs.install_site(paths, venv, wheel, site)
    stamp.write_text(head)
    return site


def run_tests(paths: config.Paths, venv: Path, site: Path, ids: list[str], cwd: Path, fresh: bool = False) -> tuple[dict, bool]:
    """({test id: verdict.Outcome}, whether they are a stored run's); one file's import or
    collection error hides no other's. An unchanged site, venv and tests reuse their
    outcomes (lib/evidence.py)."""
    results, reused = evidence.outcomes(paths, venv, site, ids, cwd, fresh=fresh)
    return {t: verdict.outcomes_for(results, t) for t in ids}, reused


def proposed_series(repo: Path, trials: list[trial.Trial]) -> list[patch_queue.Exported]:
    """The kept patches (the trial never applied a dropped one) as their trial commits
    re-export them; a kept patch that does not apply is carried as it is (a person ports
    it on `make queue UPSTREAM_VERSION=X`)."""
    out = []
    for t in trials:
        if t.applies:
            (exported,) = patch_queue.export(repo, f"{t.commit}~1", t.commit)
            out.append(exported)
        else:
            out.append(patch_queue.Exported(t.patch.name, t.patch.subject, t.patch.path.read_text()))
    return out


BLOCKING = (verdict.TESTS_FAIL, verdict.PORTING)


def blocked(rows: list[dict]) -> list[dict]:
    """Kept patches WRITE=1 cannot adopt: they do not apply even 3-way, or their tests do
    not pass with the series on X (a partly absorbed one is adopted as merged, keeping what
    X lacks, once its tests pass)."""
    def failing(r: dict) -> bool:
        return any(t["patched"] is None or t["patched"]["status"] not in ("pass", "skip") for t in r["tests"])

    return [r for r in rows if r["category"] not in (verdict.ABSORBED, verdict.LEFT_OUT)
            and (not r["applies"] or r["category"] in BLOCKING or (r["category"] == verdict.PARTIAL and failing(r)))]


def refusal(version: str, stuck: list[str], failing: list[str] = ()) -> str:
    def make(verb: str, **flags) -> str:
        return hints.command(verb, version, **flags)

    why = ([f"{', '.join(stuck)} do(es) not apply on sglang {version}, not even 3-way"] if stuck else []) + (
        [f"the tests of {', '.join(failing)} do not pass with the series on sglang {version}"] if failing else [])
    return (f"WRITE=1 cannot adopt the series on sglang {version}: {'; '.join(why)}; port them on the queue: "
            f"{make('queue')}, resolve in build/{version}/tree and `git add -A`, {make('queue', CONTINUE='1')}, "
            f"then {make('export')} (it moves the base to {version}; add LINE=1 to write only the line of {version})")


def _clean(text: str, paths: config.Paths) -> str:
    """Machine paths out of messages, so the report is the same on every machine."""
    for prefix, label in ((str(paths.build), "build"), (str(paths.cache), "$CACHE"), (str(paths.root), ".")):
        text = text.replace(prefix, label)
    return re.sub(r"0x[0-9a-f]{6,}", "0x…", text)  # object addresses differ per run


def _checkout(root: Path) -> dict:
    """Which commit of this repo the patches and tests came from (to re-run the same evidence)."""
    if not git.is_repo(root):
        return {"commit": None, "dirty": None}
    return {"commit": git.rev(root, "HEAD"), "dirty": bool(git.dirty(root))}


def _side(o: verdict.Outcome | None, paths: config.Paths) -> dict | None:
    return None if o is None else {"status": o.status, "message": _clean(o.message, paths)[:300]}


def guard_row(fix: fixes.Fix, runs: dict, paths: config.Paths) -> dict:
    """A fix the series does not carry (already in the base): its state on every side."""
    row = {"fix": fix.pr, "title": fix.title, "tests": list(fix.tests)}
    for side in ("base", "vanilla", "patched"):
        if side in runs:
            state, why = verdict.fix_state([runs[side][t] for t in fix.tests])
            row[side] = {"state": state, "why": _clean(why, paths)}
        else:
            row[side] = None
    states = [row[s]["state"] for s in ("vanilla", "patched") if row[s] is not None]
    # holds: True, False (a check fails on X), or None (its tests cannot run on X: no verdict)
    row["holds"] = (False if verdict.PRESENT in states else None if verdict.CANNOT in states
                    else all(s in verdict.HELD for s in states))
    return row


def _progress(line: str) -> None:
    # one write per line: the two vanilla sides report from their own threads
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()  # a long step's progress shows while it runs, also into a file


def rebase(paths: config.Paths, version: str, tests_root: Path | None = None, venv_of=None, log=_progress,
           fresh: bool = False, start: str | None = None) -> dict:
    """The whole report as a dict (also written to build/X/rebase/). `venv_of(version)` and
    `tests_root` are the seams the tooling tests use; by default the locked venvs and this repo."""
    tests_root = tests_root or paths.root
    venv_of = venv_of or (lambda v: envs.venv(paths, v))
    base = lines.start_for(paths, version, start)  # the line judged: "base" in the report
    rel, base_rel = config.release(paths, version), config.release(paths, base)
    patches = lines.load(paths, base)
    log(f"judging the line of sglang {base} ({lines.label(paths, base)}, {len(patches)} patches) on sglang {version}")
    tools = envs.tools(paths)
    repo = scratch.ensure_baseline(paths, rel, tools)
    if patch_queue.am_in_progress(repo) and git.current_branch(repo) == trial.BRANCH:
        # this report's own trial, cut short by a kill: nobody else's work is in it
        (git.gitdir(repo) / "index.lock").unlink(missing_ok=True)
        git.am_abort(repo)
        log("the previous `make rebase` was interrupted; its unfinished trial is dropped")
    if patch_queue.am_in_progress(repo):
        raise SeriesError(f"{repo} is in the middle of a git am/rebase that is not this report's (a `make queue` "
                          f"conflict?); drop it with `git -C {repo} am --abort` (or resolve it and run "
                          f"{hints.command('queue', version, CONTINUE='1')}), then run the report again")
    scratch.require_clean(repo)

    registry = fixes.load(tests_root, required=False)
    guards = [f for f in registry if not any(set(f.tests) == set(p.tests) for p in patches)]
    ids = sorted({t for p in patches for t in p.tests} | {t for g in guards for t in g.tests})
    x_venv = venv_of(version)
    sites = {
        "base": (venv_of(base), envs.install_site(paths, venv_of(base), scratch.upstream_wheel(paths, base_rel), build.site(paths, base, "vanilla"))),
        "vanilla": (x_venv, envs.install_site(paths, x_venv, scratch.upstream_wheel(paths, rel), build.site(paths, version, "vanilla"))),
    }

    def run_side(side: str) -> dict:
        t0 = time.monotonic()
        venv, site = sites[side]
        found, reused = run_tests(paths, venv, site, ids, tests_root, fresh)
        label = {"base": f"sglang {base}", "vanilla": f"sglang {version}"}.get(side, side)
        log(evidence.reused_line(label, len(ids)) if reused
            else f"ran {len(ids)} test ids on {side} ({time.monotonic() - t0:.1f}s)")
        return found

    # Evidence first: the vanilla sides are independent pytest processes (mostly importing
    # torch and sglang): run them together, before anything is applied.
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(("base", "vanilla"), pool.map(run_side, ("base", "vanilla"))))
    outcomes = {p.name: ([runs["base"][i] for i in p.tests], [runs["vanilla"][i] for i in p.tests]) for p in patches}
    declared = moving.left_out(paths, version, patches)
    absorbed = {p.name: moving.drop_reason(version, fixes.carried_by(registry, p.tests), p)
                for p in patches if p.name not in declared and verdict.absorbed(*outcomes[p.name])}
    for name, why in {**absorbed, **declared}.items():
        log(f"dropped {name} before applying anything: {why}")

    started = time.monotonic()
    kept = [p for p in patches if p.name not in absorbed and p.name not in declared]
    git.checkout_fresh(repo, trial.BRANCH, scratch.BASELINE)
    reverse = {p.name: git.reverse_applies(repo, p.path) for p in patches if p not in kept}  # a hint for the report
    scratch.import_bases(paths, repo, tools, patches)  # the blobs `git am --3way` merges with
    trials = {t.patch.name: t for t in trial.try_series(repo, kept, three_way=True)}
    log(f"tried {len(kept)} patches on sglang {version}: {sum(t.applies and not t.three_way for t in trials.values())} "
        f"apply as they are, {sum(t.three_way for t in trials.values())} with a 3-way merge "
        f"({time.monotonic() - started:.1f}s)")
    if any(t.applies for t in trials.values()):
        sites["patched"] = (x_venv, trial_site(paths, rel, tools, x_venv, repo, sum(t.applies for t in trials.values())))
        runs["patched"] = run_side("patched")

    rows = []
    for p in patches:
        t = trials.get(p.name)
        base_o, van_o = outcomes[p.name]
        pat_o = [runs["patched"][i] for i in p.tests] if t and t.applies else None
        category, why = verdict.categorize(bool(t and t.applies), base_o, van_o, pat_o, three_way=bool(t and t.three_way))
        if p.name in declared:
            category, why = verdict.LEFT_OUT, declared[p.name]
        rows.append({
            "patch": p.name, "subject": p.subject, "category": category, "evidence": _clean(why, paths),
            "applies": bool(t and t.applies), "three_way": bool(t and t.three_way), "tried": t is not None,
            "reverse_applies": bool(t.reverse_applies) if t else reverse[p.name],
            "conflicts": [vars(h) for h in t.conflicts] if t else [],
            "drop_reason": absorbed.get(p.name) or declared.get(p.name),
            "tests": [{"id": i, "base": _side(b, paths), "vanilla": _side(v, paths),
                       "patched": _side(o, paths) if pat_o else None}
                      for i, b, v, o in zip(p.tests, base_o, van_o, pat_o or [None] * len(p.tests))],
        })

    guard_rows = [guard_row(g, runs, paths) for g in guards]
    out = rebase_dir(paths, version)
    proposed = proposed_series(repo, [trials[p.name] for p in kept])
    changes = patch_queue.diff_against(paths.patches, proposed, series.entries(paths.patches, lines.series_file(paths, base)))
    notes = {r["patch"]: f"{r['category']}: see report.md" for r in rows
             if r["category"] not in (verdict.CLEAN, verdict.ABSORBED, verdict.LEFT_OUT)}
    shutil.rmtree(out / "patches", ignore_errors=True)
    (out / "patches").mkdir(parents=True)
    patch_queue.write(out / "patches", proposed, comments=notes)
    for r in rows:
        r["proposed"] = ("dropped" if r["category"] in (verdict.ABSORBED, verdict.LEFT_OUT)
                         else "kept as is (does not apply)" if not r["applies"]
                         else "refreshed (3-way merged)" if r["three_way"]
                         else "refreshed" if r["patch"] in changes.refreshed else "unchanged")

    up = f"UPSTREAM_VERSION={version}"
    data = {
        "upstream": version, "base": base,
        "wheel": {"file": rel.wheel, "sha256": rel.sha256},
        "environment": {"lock": f"env/{version}.lock", "base_lock": f"env/{base}.lock"},
        "command": f"make rebase {up}",
        "tests_from": _checkout(paths.root),
        "tests_digest": evidence.tests_digest(tests_root),
        "pins": [rel.sha256, base_rel.sha256],
        "categories": verdict.CATEGORIES,
        "series": series.fingerprint(patches),
        "patches": rows,
        "guards": guard_rows,
        "summary": {c: [r["patch"] for r in rows if r["category"] == c] for c in verdict.CATEGORIES},
        "proposed_series": f"build/{version}/rebase/patches",
        "proposed_changes": changes.summary(),
        "writes": {f"make rebase {up} WRITE=1": f"patches/lines/{version}.series, and sglang {version} becomes the base",
                   f"make rebase {up} WRITE=1 LINE=1": f"patches/lines/{version}.series only; the base stays "
                                                       f"sglang {config.base_version(paths)}"},
        "rerun": [
            f"make pin {up}        # only if not pinned yet: records the wheel and writes env/{version}.lock",
            f"make rebase {up}     # this report",
            f"make queue {up}      # the series as git commits on {version}; conflicts stop with 3-way markers",
            *[f"make test-vanilla {up} PYTEST_ARGS='{i}'" for i in ids],
        ],
    }
    md, js = report.write(data, out)
    log(f"wrote {md} and {js}")
    return data


def strict_problems(data: dict) -> list[str]:
    """What STRICT=1 fails on: a kept patch that no longer applies, a guard that fails on X."""
    stuck = [r["patch"] for r in data["patches"] if not r["applies"] and r["category"] not in (verdict.ABSORBED, verdict.LEFT_OUT)]
    broken = [g["fix"] for g in data["guards"] if g["holds"] is False]
    unjudged = [g for g in data["guards"] if g["holds"] is None]
    return ([f"{len(stuck)} patch(es) no longer apply ({', '.join(stuck)})"] if stuck else []) + (
        [f"guard(s) {', '.join(broken)} fail"] if broken else []) + (
        [f"guard(s) {', '.join(g['fix'] for g in unjudged)} cannot run (not a failure: "
         + "; ".join(guard_advice(g) for g in unjudged) + ")"] if unjudged else [])


def guard_advice(g: dict) -> str:
    """Which adapter to port so a guard's tests run on X again."""
    side = next(g[s] for s in ("vanilla", "patched") if g[s] is not None and g[s]["state"] == verdict.CANNOT)
    return f"{g['fix']}: {verdict.port_advice(verdict.Outcome('cannot-run', side['why']))}"


def refuse_blocked(data: dict) -> None:
    stuck = blocked(data["patches"])
    if stuck:
        raise SeriesError(refusal(data["upstream"], [r["patch"] for r in stuck if not r["applies"]],
                                  [r["patch"] for r in stuck if r["applies"]]))


def current_report(paths: config.Paths, version: str, tests_root: Path, start: str | None = None) -> dict | None:
    """X's report when it judged the line it starts from with these tests on these pins:
    WRITE=1 acts on it without running a test again."""
    base = lines.start_for(paths, version, start)
    try:
        data = moving.load(paths, version, lines.load(paths, base))
    except SeriesError:
        return None
    if data.get("base") != base:
        return None
    pins = [config.release(paths, version).sha256, config.release(paths, base).sha256]
    fresh = data.get("tests_digest") == evidence.tests_digest(tests_root) and data.get("pins") == pins
    return data if fresh else None


def write_to_patches(paths: config.Paths, data: dict, line: bool = False) -> patch_queue.Changes:
    version = data["upstream"]
    moving.load(paths, version, lines.load(paths, data["base"]))  # the report judged that line as it is now
    refuse_blocked(data)
    proposed_dir = paths.build / version / "rebase" / "patches"
    exported = [patch_queue.Exported(Path(n).name, "", (proposed_dir / n).read_text()) for n in series.entries(proposed_dir, proposed_dir / "series")]
    changes = moving.adopt(paths, version, exported, moving.drop_reasons(data), line)
    message = rebase_dir(paths, version) / "COMMIT_MSG"
    message.write_text(moving.commit_message(version, data["base"], changes, line))
    shown = message.relative_to(paths.root) if message.is_relative_to(paths.root) else message
    print(f"commit it with: git add -A patches upstream env README.md && git commit -F {shown}")
    return changes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="pinned release to move to (see `make pin`)")
    parser.add_argument("--from", dest="start", help="the line to start from (default: the newest line below X)")
    parser.add_argument("--write", action="store_true", help="also write the proposed series to patches/ and make X the base")
    parser.add_argument("--line", action="store_true", help="with --write: write X's line (patches/lines/X.series); the base stays")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a patch no longer applies (for CI)")
    parser.add_argument("--copy-to", type=Path, help="also copy report.md/.json there as <X>.md/<X>.json")
    parser.add_argument("--tests-root", type=Path, help="where the Tests: ids live (default: this repo)")
    parser.add_argument("--fresh", action="store_true", help="run every side's tests again, even where stored (lib/evidence.py)")
    args = parser.parse_args(argv)
    config.require_python()
    paths = config.Paths.from_env()
    if not args.upstream:
        raise SeriesError("name the release to move to: `make rebase UPSTREAM_VERSION=X` (pin it first with `make pin UPSTREAM_VERSION=X`)")
    config.release(paths, args.upstream)  # an unpinned X ends here, before anything is made under build/X
    if args.line and not args.write:
        raise SeriesError(f"LINE=1 says where WRITE=1 writes; run {hints.command('rebase', args.upstream, WRITE='1', LINE='1')}")
    # Seams for the tooling tests (a synthetic upstream): where the Tests: ids live, one venv for every release.
    tests_root = args.tests_root or paths.tests_root
    venv_of = (lambda v: Path(os.environ["SGLANG_SERIES_VENV"])) if os.environ.get("SGLANG_SERIES_VENV") else None
    data = None
    if args.write:  # refuse early: on the report already made for this series, before any test runs
        lines.require_committed(paths)
        data = current_report(paths, args.upstream, tests_root, args.start)
        if data:
            print(f"acting on {rebase_dir(paths, args.upstream) / 'report.json'} (made for this series, these tests and pins)")
            refuse_blocked(data)
        else:
            print(f"no report for this series on sglang {args.upstream} yet: making it first ({hints.command('rebase', args.upstream)})")
    if data is None:
        with scratch.exclusive(paths, args.upstream):  # the trial branches live in X's scratch tree
            data = rebase(paths, args.upstream, tests_root, venv_of, fresh=args.fresh, start=args.start)
    for category, names in data["summary"].items():
        if names:
            print(f"{category}: {', '.join(names)}")
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        out = rebase_dir(paths, args.upstream)
        for ext in ("md", "json"):
            shutil.copy(out / f"report.{ext}", args.copy_to / f"{args.upstream}.{ext}")
    if args.write:
        changes = write_to_patches(paths, data, args.line)
        print(changes.summary() + (f"; wrote {lines.label(paths, args.upstream)}" if args.line
                                   else f"; base is now sglang {args.upstream}"))
    problems = strict_problems(data)
    if problems:
        print(f"{'error' if args.strict else 'warning'}: on sglang {args.upstream}: {'; '.join(problems)}; "
              f"see {rebase_dir(paths, args.upstream) / 'report.md'}", file=sys.stderr)
    if args.strict and problems:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
