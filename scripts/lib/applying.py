"""Apply a release's line to its scratch tree (all or nothing): what `make apply` does
before it builds the wheel, and what every command that needs a release's patched build
(apply, wheelhouse) calls. The series is the release's line (lib/lines.py)."""

from pathlib import Path

from . import config, envs, git, lines, scratch, series
from .errors import SeriesError


def apply_series(paths: config.Paths, rel: config.Release, tools: envs.Tools) -> dict:
    """Apply the release's series on a fresh `applied` branch; returns the recorded state.
    The caller holds the tree (scratch.exclusive)."""
    patches = lines.load(paths, rel.version)  # every entry checked before the tree is touched
    _refuse_paths_outside_python(patches)
    file = lines.series_file(paths, rel.version)
    fp = lines.fingerprint(paths, rel.version)
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
