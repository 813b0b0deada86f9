"""make queue: turn patches/series into branch `queue` of the scratch tree, one commit per
patch with its full message and headers. Edit, reorder, squash or rebase it with plain git
(`git rebase -i baseline`, `git commit --amend`), then `make export` writes it back.

On a release with a line (patches/lines/X.series) the queue holds that line, and
`make export UPSTREAM_VERSION=X` writes it back. On a release without one the queue
moves the base's series there, acting on the verdicts of `make rebase UPSTREAM_VERSION=X`
(build/X/rebase/report.json): a patch upstream absorbed is not replayed, and `make export`
drops it with the report's reason. A patch that does not apply stops the import with
`git am --3way`'s conflict markers in the tree (merged against the base's blobs, taken
from the base's wheel), for a person to resolve; `make queue UPSTREAM_VERSION=X CONTINUE=1`
then goes on with the rest."""

import argparse

from scripts.lib.applying import describe_failure
from scripts.lib import config, envs, git, lines, moving, patch_queue, scratch, series
from scripts.lib.errors import SeriesError, run_main


def up_of(paths: config.Paths, version: str) -> str:
    """' UPSTREAM_VERSION=X' for every hint about a release other than the base."""
    return "" if version == config.base_version(paths) else f" UPSTREAM_VERSION={version}"


def moving_to(paths: config.Paths, version: str) -> bool:
    """A queue on `version` moves the base's series there (no line of its own yet)."""
    return version != config.base_version(paths) and not lines.exists(paths, version)


def source(paths: config.Paths, version: str) -> tuple:
    """(series file, its patches) a queue on `version` starts from."""
    if moving_to(paths, version):
        return series.series_file(paths.patches), series.load(paths.patches)
    return lines.series_file(paths, version), lines.load(paths, version)


def unexported(paths: config.Paths, repo, patches: list[series.Patch]) -> patch_queue.Changes:
    """What `make export` would change in patches/ if run now (`patches`: the ones the queue holds)."""
    exported = patch_queue.export(repo, scratch.BASELINE, patch_queue.QUEUE, old_names=subjects(patches))
    return patch_queue.diff_against(paths.patches, exported, [p.entry for p in patches])


def replayed(paths: config.Paths, rel: config.Release, patches: list[series.Patch]) -> tuple[list[series.Patch], dict | None]:
    """The patches a queue on rel holds (a line: all of them; a move to X: those X's rebase
    report keeps) and that report."""
    if not moving_to(paths, rel.version):
        return patches, None
    report = moving.load(paths, rel.version, patches)
    reasons = moving.drop_reasons(report)
    for name, why in reasons.items():
        print(f"not replayed {name}: {why}")
    return [p for p in patches if p.name not in reasons], report


def subjects(patches: list[series.Patch]) -> dict:
    return {p.subject: p.name for p in patches}


def require_idle(repo, hint: str) -> None:
    if patch_queue.am_in_progress(repo):
        raise SeriesError(f"{repo} is in the middle of a git am/rebase; finish it (`git am --continue` or `--skip`) "
                          f"or drop it (`git am --abort`), then run {hint} again")
    scratch.require_clean(repo)


def build_queue(paths: config.Paths, rel: config.Release, force: bool = False) -> int:
    up = up_of(paths, rel.version)
    _, patches = source(paths, rel.version)
    patches, report = replayed(paths, rel, patches)
    tools = envs.tools(paths)
    repo = scratch.ensure_baseline(paths, rel, tools)
    require_idle(repo, f"`make queue{up}`")
    if git.ref_exists(repo, patch_queue.QUEUE) and not force:
        pending = unexported(paths, repo, patches)
        if pending.any:
            raise SeriesError(f"branch queue in {repo} differs from patches/ ({pending.summary()}); keep it with "
                              f"`make export{up}`, or rebuild it from patches/ with `make queue{up} FORCE=1`")
    if rel.version != config.base_version(paths):  # the blobs a patch made on the base names, for `git am --3way`
        base = config.release(paths, config.base_version(paths))
        scratch.import_base(paths, repo, base, tools, series.load(paths.patches))
    git.checkout_fresh(repo, patch_queue.QUEUE, scratch.BASELINE)
    if not patches:
        return 0
    proc = patch_queue.am_series(repo, [(p.path, p.name) for p in patches], three_way=True)
    stop_on_conflict(paths, proc, patches, report, rel, repo, up)
    return len(patches)


def stop_on_conflict(paths: config.Paths, proc, patches: list[series.Patch], report: dict | None, rel: config.Release, repo, up: str) -> None:
    """A patch that needs a person: name it, its hunk, and the command that goes on.
    The am session stays open on purpose: this is the person's workspace."""
    if proc.returncode == 0:
        return
    name = patch_queue.stopped_at(repo)
    patch = next((p for p in patches if p.name == name), patches[0])
    where = moving.conflicts(report, patch.name)
    what = f"{patch.name} does not apply: {where}" if where else describe_failure(patch, proc.stdout + proc.stderr).split(";")[0]
    raise SeriesError(f"{what} on sglang {rel.version}; "
                      f"resolve it in {repo} (`git status`, edit the files, `git add -A`), then "
                      f"`make queue{up} CONTINUE=1` applies the rest and `make export{up}` writes the series "
                      f"({export_writes(paths, rel.version)}); `make discard{up}` drops the queue instead")


def export_writes(paths: config.Paths, version: str) -> str:
    """What `make export` on this queue writes, said in every hint that leads there."""
    up = up_of(paths, version)
    if not moving_to(paths, version):
        return f"into {lines.label(paths, version)}"
    return f"the base moves to {version}; `make export{up} LINE=1` writes only the line of {version}"


def continue_queue(paths: config.Paths, rel: config.Release) -> int:
    """Go on with a queue import that stopped on a conflict the person has resolved and staged."""
    up = up_of(paths, rel.version)
    repo = scratch.tree(paths, rel.version)
    if not git.is_repo(repo) or not patch_queue.am_in_progress(repo):
        raise SeriesError(f"no stopped queue import for sglang {rel.version}; start one with `make queue{up}`")
    if git.git(repo, "diff", "--name-only", "--diff-filter=U", check=False).stdout.strip():
        raise SeriesError(f"{repo} still has unmerged files (`git status`); resolve and `git add` them, "
                          f"then `make queue{up} CONTINUE=1`")
    patches, report = replayed(paths, rel, source(paths, rel.version)[1])
    proc = patch_queue.am_continue(repo)
    stop_on_conflict(paths, proc, patches, report, rel, repo, up)
    return int(git.git(repo, "rev-list", "--count", f"{scratch.BASELINE}..HEAD").stdout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="release to build the queue on (default: the pinned base)")
    parser.add_argument("--force", action="store_true", help="rebuild the queue even if it holds changes not exported yet")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="go on after resolving the conflict an import stopped on")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    with scratch.exclusive(paths, rel.version):
        count = continue_queue(paths, rel) if args.resume else build_queue(paths, rel, args.force)
    repo = scratch.tree(paths, rel.version)
    up = up_of(paths, rel.version)
    print(f"branch queue in {repo}: {count} commits on baseline (sglang {rel.version}); "
          f"edit with git (e.g. `git rebase -i baseline`), then `make export{up}` ({export_writes(paths, rel.version)})")


if __name__ == "__main__":
    run_main(main)
