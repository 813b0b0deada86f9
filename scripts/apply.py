"""make apply: fetch the pinned upstream, apply its series (all or nothing), build the
patched wheel and prepare the test environment. The series is the release's line
(lib/lines.py): patches/lines/X.series for release X (the base when none is named)."""

import argparse
from pathlib import Path

from scripts.lib import build, config, envs, git, hints, lines, scratch, series
from scripts.lib.errors import SeriesError, run_main


def apply_series(paths: config.Paths, rel: config.Release, tools: envs.Tools) -> dict:
    """Apply the release's series on a fresh `applied` branch; returns the recorded state.
    The caller holds the tree (scratch.exclusive)."""
    patches = lines.load(paths, rel.version)  # every entry checked before the tree is touched
    _refuse_paths_outside_python(patches)
    file = lines.series_file(paths, rel.version)
    fp = series.fingerprint(patches, file)
    for fix, why in lines.lacking(file).items():
        print(f"warning: sglang {rel.version} lacks {fix} and its line carries no port of it ({why}); "
              "the wheel built here does not have that fix")
    empty = series.declared_empty(file) if not patches else None
    if empty:
        print(f"sglang {rel.version} needs no patch of the series ({lines.label(paths, rel.version)}: {empty}); "
              "the build is vanilla's files with the record of an empty series, and `make prove` proves the guards")
    repo = scratch.ensure_baseline(paths, rel, tools)
    if scratch.recover_interrupted(paths, rel.version, repo):
        print("the previous `make apply` was interrupted; starting again from the baseline")
    scratch.require_clean(repo)
    state = scratch.read_state(paths, rel.version)
    _refuse_foreign_commits(repo, state)
    if state and state["fingerprint"] == fp and git.current_branch(repo) == scratch.APPLIED:
        print(f"series already applied on sglang {rel.version} ({len(patches)} patches)")
        return state

    # From here until the state is written, an interruption is undone by the next run.
    scratch.write_state(paths, rel.version, None)
    scratch.applying(paths, rel.version).touch()
    git.checkout_fresh(repo, scratch.APPLIED, scratch.BASELINE)
    applied = []
    for patch in patches:
        proc = git.am(repo, patch.path)
        if proc.returncode != 0:
            git.am_abort(repo)
            git.checkout_fresh(repo, scratch.APPLIED, scratch.BASELINE)
            scratch.applying(paths, rel.version).unlink()
            raise SeriesError(series.describe_failure(patch, proc.stderr + proc.stdout) + "; the tree is back at the baseline")
        applied.append({"patch": patch.name, "subject": patch.subject, "commit": git.rev(repo, "HEAD"), **patch.headers})
        print(f"applied {patch.name}", flush=True)
    state = {"upstream": rel.version, "wheel_sha256": rel.sha256, "fingerprint": fp,
             "series": lines.label(paths, rel.version), "head": git.rev(repo, "HEAD"), "patches": applied}
    scratch.write_state(paths, rel.version, state)
    scratch.applying(paths, rel.version).unlink()
    return state


def _refuse_paths_outside_python(patches: list[series.Patch]) -> None:
    """The wheel is built from python/ only: a change anywhere else would be lost silently."""
    for patch in patches:
        for path in git.patch_paths(patch.path) or []:
            if not path.startswith("python/") or ".." in Path(path).parts:
                raise SeriesError(
                    f"{patch.name} changes {path}, outside python/ (only python/ goes into the wheel); "
                    "give it upstream's layout (python/sglang/...) and run again"
                )


def _refuse_foreign_commits(repo: Path, state: dict | None) -> None:
    """Never move the `applied` branch past commits that apply itself did not make."""
    if not git.ref_exists(repo, scratch.APPLIED):
        return
    expected = state["head"] if state else git.rev(repo, scratch.BASELINE)
    if git.rev(repo, scratch.APPLIED) != expected:
        raise SeriesError(
            f"branch '{scratch.APPLIED}' in {repo} has commits that `make apply` did not make; "
            "turn them into patches with `make export`, or drop them with `make discard`"
        )




def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="release to apply on (default: the pinned base)")
    parser.add_argument("--no-env", action="store_true", help="apply and build only; do not prepare the test venv")
    args = parser.parse_args(argv)
    config.require_python()
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    tools = envs.tools(paths)
    with scratch.exclusive(paths, rel.version):
        apply_series(paths, rel, tools)
        wheel = build.build(paths, rel, tools)
        print(f"built {wheel.name}", flush=True)
        if args.no_env:
            return
        build.install_sites(paths, rel)
    up = hints.up(paths, rel.version)
    print(f"test environment ready; run `make test{up}`")


if __name__ == "__main__":
    run_main(main)
