"""make rebase UPSTREAM_VERSION=X: how the series fares on sglang X, sorted by evidence.

1. fetch X's pinned wheel (sha256-checked) and build its pristine scratch tree;
2. try each patch in order, cumulatively, exactly (lib/trial.py);
3. run each patch's `Tests:` on the base's vanilla wheel, on X's vanilla wheel and on X
   with the patches that applied, each in its own release's locked venv;
4. sort every patch (lib/verdict.py), write report.md + report.json and a proposed
   series (absorbed patches dropped, the rest refreshed) under build/X/rebase/.

patches/ changes only with --write (WRITE=1), and only when every kept patch applies.
"""

import argparse
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scripts import build
from scripts.lib import config, envs, fixes, git, moving, patch_queue, pins, pytest_run, report, scratch, series, trial, verdict, wheels
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
    if stamp.exists() and stamp.read_text() == head and (site / ".wheel-sha256").exists():
        return site
    work = rebase_dir(paths, rel.version) / ".build"
    shutil.rmtree(work, ignore_errors=True)
    root = wheels.unpack(tools.wheel, scratch.upstream_wheel(paths, rel), work)
    build._replace_contents(repo, head, root)  # the same swap `make apply`'s build does
    wheel = wheels.pack(tools.wheel, root, rebase_dir(paths, rel.version) / "dist", f"{build.LABEL}.{count}")
    shutil.rmtree(work)
    envs.install_site(paths, venv, wheel, site)
    stamp.write_text(head)
    return site


def run_tests(venv: Path, site: Path, ids: list[str], cwd: Path) -> dict:
    """{test id: verdict.Outcome}; one file's import or collection error hides no other's."""
    results = pytest_run.outcomes_per_file(venv, site, ids, cwd, extra_env=pytest_run.ALLOW_CANNOT_RUN)
    return {t: verdict.outcomes_for(results, t) for t in ids}


def proposed_series(repo: Path, trials: list[trial.Trial], keep: list[bool]) -> list[patch_queue.Exported]:
    """The kept patches re-applied without the dropped ones and re-exported; a kept patch that
    does not apply is carried as it is (a person ports it on `make queue UPSTREAM_VERSION=X`)."""
    git.checkout_fresh(repo, PROPOSED, scratch.BASELINE)
    out = []
    for t, k in zip(trials, keep):
        if not k:
            continue
        if patch_queue.am_named(repo, t.patch.path, t.patch.name).returncode != 0:
            git.am_abort(repo)
            out.append(patch_queue.Exported(t.patch.name, t.patch.subject, t.patch.path.read_text()))
            continue
        (exported,) = patch_queue.export(repo, "HEAD~1", "HEAD")
        out.append(exported)
    git.checkout_fresh(repo, trial.BRANCH, git.rev(repo, trial.BRANCH))
    return out


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
                    else all(s == verdict.FIXED for s in states))
    return row


def rebase(paths: config.Paths, version: str, tests_root: Path | None = None, venv_of=None, log=print) -> dict:
    """The whole report as a dict (also written to build/X/rebase/). `venv_of(version)` and
    `tests_root` are the seams the tooling tests use; by default the locked venvs and this repo."""
    tests_root = tests_root or paths.root
    venv_of = venv_of or (lambda v: envs.venv(paths, v))
    base = config.base_version(paths)
    rel, base_rel = config.release(paths, version), config.release(paths, base)
    patches = series.load(paths.patches)
    tools = envs.tools(paths)
    repo = scratch.ensure_baseline(paths, rel, tools)
    if patch_queue.am_in_progress(repo):
        raise SeriesError(f"{repo} is in the middle of a git am/rebase; finish or abort it, then run the report again")
    scratch.require_clean(repo)

    started = time.monotonic()
    trials = trial.try_series(repo, patches)
    log(f"tried {len(patches)} patches on sglang {version}: {sum(t.applies for t in trials)} apply "
        f"({time.monotonic() - started:.1f}s)")

    registry = fixes.load(tests_root, required=False)
    guards = [f for f in registry if not any(set(f.tests) == set(p.tests) for p in patches)]
    ids = sorted({t for p in patches for t in p.tests} | {t for g in guards for t in g.tests})
    x_venv = venv_of(version)
    sites = {
        "base": (venv_of(base), envs.install_site(paths, venv_of(base), scratch.upstream_wheel(paths, base_rel), build.site(paths, base, "vanilla"))),
        "vanilla": (x_venv, envs.install_site(paths, x_venv, scratch.upstream_wheel(paths, rel), build.site(paths, version, "vanilla"))),
    }
    applied = [t for t in trials if t.applies]
    if applied:
        sites["patched"] = (x_venv, trial_site(paths, rel, tools, x_venv, repo, len(applied)))
    def run_side(side: str) -> dict:
        t0 = time.monotonic()
        venv, site = sites[side]
        found = run_tests(venv, site, ids, tests_root)
        log(f"ran {len(ids)} test ids on {side} ({time.monotonic() - t0:.1f}s)")
        return found

    # The sides are independent pytest processes, mostly importing torch and sglang: run them together.
    with ThreadPoolExecutor(max_workers=len(sites)) as pool:
        runs = dict(zip(sites, pool.map(run_side, sites)))

    rows, keep = [], []
    for t in trials:
        tests = t.patch.tests
        base_o = [runs["base"][i] for i in tests]
        van_o = [runs["vanilla"][i] for i in tests]
        pat_o = [runs["patched"][i] for i in tests] if t.applies else None
        category, evidence = verdict.categorize(t.applies, base_o, van_o, pat_o)
        keep.append(category != verdict.ABSORBED)
        rows.append({
            "patch": t.patch.name, "subject": t.patch.subject, "category": category, "evidence": _clean(evidence, paths),
            "applies": t.applies, "reverse_applies": t.reverse_applies,
            "conflicts": [vars(h) for h in t.conflicts],
            "drop_reason": (moving.drop_reason(version, fixes.carried_by(registry, tests), t.patch)
                            if category == verdict.ABSORBED else None),
            "tests": [{"id": i, "base": _side(b, paths), "vanilla": _side(v, paths),
                       "patched": _side(p, paths) if pat_o else None}
                      for i, b, v, p in zip(tests, base_o, van_o, pat_o or [None] * len(tests))],
        })

    guard_rows = [guard_row(g, runs, paths) for g in guards]
    out = rebase_dir(paths, version)
    proposed = proposed_series(repo, trials, keep)
    old = series.entries(paths.patches)
    changes = patch_queue.diff_against(paths.patches, proposed, old)
    notes = {r["patch"]: f"{r['category']}: see report.md" for r in rows if r["category"] != verdict.CLEAN and r["category"] != verdict.ABSORBED}
    shutil.rmtree(out / "patches", ignore_errors=True)
    (out / "patches").mkdir(parents=True)
    shutil.copy(series.series_file(paths.patches), out / "patches" / "series")  # keeps the header comments
    patch_queue.write(out / "patches", proposed, [], notes)
    for r in rows:
        r["proposed"] = ("dropped" if r["category"] == verdict.ABSORBED
                         else "kept as is (does not apply)" if not r["applies"]
                         else "refreshed" if r["patch"] in changes.refreshed else "unchanged")

    up = f"UPSTREAM_VERSION={version}"
    data = {
        "upstream": version, "base": base,
        "wheel": {"file": rel.wheel, "sha256": rel.sha256, "url": rel.url},
        "environment": {"lock": f"env/{version}.lock", "base_lock": f"env/{base}.lock"},
        "command": f"make rebase {up}",
        "tests_from": _checkout(paths.root),
        "categories": verdict.CATEGORIES,
        "series": moving.fingerprint(patches),
        "patches": rows,
        "guards": guard_rows,
        "summary": {c: [r["patch"] for r in rows if r["category"] == c] for c in verdict.CATEGORIES},
        "proposed_series": f"build/{version}/rebase/patches",
        "proposed_changes": changes.summary(),
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
    stuck = [r["patch"] for r in data["patches"] if not r["applies"] and r["category"] != verdict.ABSORBED]
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


def write_to_patches(paths: config.Paths, data: dict) -> patch_queue.Changes:
    version = data["upstream"]
    moving.load(paths, version, series.load(paths.patches))  # the report judged patches/ as it is now
    blocked = [r["patch"] for r in data["patches"] if r["category"] != verdict.ABSORBED and not r["applies"]]
    if blocked:
        raise SeriesError(f"{', '.join(blocked)} do(es) not apply on sglang {version}; port them first "
                          f"(`make queue UPSTREAM_VERSION={version}`, resolve, `make export UPSTREAM_VERSION={version}`)")
    proposed_dir = paths.build / version / "rebase" / "patches"
    exported = [patch_queue.Exported(n, "", (proposed_dir / n).read_text()) for n in series.entries(proposed_dir)]
    changes = patch_queue.write(paths.patches, exported, series.entries(paths.patches), reasons=moving.drop_reasons(data))
    message = rebase_dir(paths, version) / "COMMIT_MSG"
    message.write_text(moving.commit_message(version, data["base"], changes))
    pins.set_base(paths, version)
    print(f"commit it with: git add -A patches upstream env && git commit -F {message.relative_to(paths.root) if message.is_relative_to(paths.root) else message}")
    return changes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="pinned release to move to (see `make pin`)")
    parser.add_argument("--write", action="store_true", help="also write the proposed series to patches/ and make X the base")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a patch no longer applies (for CI)")
    parser.add_argument("--copy-to", type=Path, help="also copy report.md/.json there as <X>.md/<X>.json")
    parser.add_argument("--tests-root", type=Path, help="where the Tests: ids live (default: this repo)")
    args = parser.parse_args(argv)
    config.require_python()
    paths = config.Paths.from_env()
    if not args.upstream:
        raise SeriesError("name the release to move to: `make rebase UPSTREAM_VERSION=X` (pin it first with `make pin UPSTREAM_VERSION=X`)")
    if args.upstream == config.base_version(paths):
        raise SeriesError(f"sglang {args.upstream} is already the base; pick a newer pinned release")
    config.release(paths, args.upstream)  # an unpinned X ends here, before anything is made under build/X
    with scratch.exclusive(paths, args.upstream):  # the trial branches live in X's scratch tree
        data = rebase(paths, args.upstream, args.tests_root)
    for category, names in data["summary"].items():
        if names:
            print(f"{category}: {', '.join(names)}")
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        out = rebase_dir(paths, args.upstream)
        for ext in ("md", "json"):
            shutil.copy(out / f"report.{ext}", args.copy_to / f"{args.upstream}.{ext}")
    if args.write:
        print(write_to_patches(paths, data).summary() + f"; base is now sglang {args.upstream}")
    problems = strict_problems(data)
    if problems:
        print(f"{'error' if args.strict else 'warning'}: on sglang {args.upstream}: {'; '.join(problems)}; "
              f"see {rebase_dir(paths, args.upstream) / 'report.md'}", file=sys.stderr)
    if args.strict and problems:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
