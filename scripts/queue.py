"""make queue: turn patches/series into branch `queue` of the scratch tree, one commit per
patch with its full message and headers. Edit, reorder, squash or rebase it with plain git
(`git rebase -i baseline`, `git commit --amend`), then `make export` writes it back.

On a release other than the base (UPSTREAM_VERSION=X) the queue acts on the verdicts of
`make rebase UPSTREAM_VERSION=X` (build/X/rebase/report.json): a patch upstream absorbed is
not replayed, and `make export` drops it with the report's reason. A patch that does not
apply stops the import with `git am --3way`'s conflict markers in the tree, for a person to
resolve; `make queue UPSTREAM_VERSION=X CONTINUE=1` then goes on with the rest."""

import argparse

from scripts.apply import describe_failure
from scripts.lib import config, envs, git, moving, patch_queue, scratch, series
from scripts.lib.errors import SeriesError, run_main


def unexported(paths: config.Paths, repo, names: list[str]) -> patch_queue.Changes:
    """What `make export` would change in patches/ if run now (`names`: the patches the queue holds)."""
    exported = patch_queue.export(repo, scratch.BASELINE, patch_queue.QUEUE, old_names=subjects(paths, names))
    return patch_queue.diff_against(paths.patches, exported, names)


def replayed(paths: config.Paths, rel: config.Release, patches: list[series.Patch]) -> tuple[list[series.Patch], dict | None]:
    """The patches a queue on rel holds (all on the base; on X, those its rebase report
    keeps) and that report."""
    if rel.version == config.base_version(paths):
        return patches, None
    report = moving.load(paths, rel.version, patches)
    reasons = moving.drop_reasons(report)
    for name, why in reasons.items():
        print(f"not replayed {name}: {why}")
    return [p for p in patches if p.name not in reasons], report


def subjects(paths: config.Paths, names: list[str]) -> dict:
    return {series.parse(paths.patches / n).subject: n for n in names if (paths.patches / n).is_file()}


def require_idle(repo, hint: str) -> None:
    if patch_queue.am_in_progress(repo):
        raise SeriesError(f"{repo} is in the middle of a git am/rebase; finish it (`git am --continue` or `--skip`) "
                          f"or drop it (`git am --abort`), then run {hint} again")
    scratch.require_clean(repo)


def fetch_base_objects(paths: config.Paths, rel: config.Release, repo) -> None:
    """Give X's tree the blobs the patches were made against (the base's scratch tree), so
    `git am --3way` can merge a patch that no longer applies instead of only refusing it."""
    base = config.base_version(paths)
    base_repo = scratch.tree(paths, base)
    if rel.version != base and git.is_repo(base_repo):
        git.git(repo, "fetch", "-q", "--no-tags", str(base_repo), "+refs/heads/*:refs/base/*", "+refs/tags/baseline:refs/base/baseline")


def build_queue(paths: config.Paths, rel: config.Release, force: bool = False) -> int:
    up = "" if rel.version == config.base_version(paths) else f" UPSTREAM_VERSION={rel.version}"
    patches, report = replayed(paths, rel, series.load(paths.patches))
    repo = scratch.ensure_baseline(paths, rel, envs.tools(paths))
    require_idle(repo, f"`make queue{up}`")
    if git.ref_exists(repo, patch_queue.QUEUE) and not force:
        pending = unexported(paths, repo, [p.name for p in patches])
        if pending.any:
            raise SeriesError(f"branch queue in {repo} differs from patches/ ({pending.summary()}); keep it with "
                              f"`make export{up}`, or rebuild it from patches/ with `make queue{up} FORCE=1`")
    fetch_base_objects(paths, rel, repo)
    git.checkout_fresh(repo, patch_queue.QUEUE, scratch.BASELINE)
    if not patches:
        return 0
    proc = patch_queue.am_series(repo, [(p.path, p.name) for p in patches], three_way=True)
    stop_on_conflict(proc, patches, report, rel, repo, up)
    return len(patches)


def stop_on_conflict(proc, patches: list[series.Patch], report: dict | None, rel: config.Release, repo, up: str) -> None:
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
                      f"`make queue{up} CONTINUE=1` applies the rest; `make discard{up}` drops the queue")


def continue_queue(paths: config.Paths, rel: config.Release) -> int:
    """Go on with a queue import that stopped on a conflict the person has resolved and staged."""
    up = "" if rel.version == config.base_version(paths) else f" UPSTREAM_VERSION={rel.version}"
    repo = scratch.tree(paths, rel.version)
    if not git.is_repo(repo) or not patch_queue.am_in_progress(repo):
        raise SeriesError(f"no stopped queue import for sglang {rel.version}; start one with `make queue{up}`")
    if git.git(repo, "diff", "--name-only", "--diff-filter=U", check=False).stdout.strip():
        raise SeriesError(f"{repo} still has unmerged files (`git status`); resolve and `git add` them, "
                          f"then `make queue{up} CONTINUE=1`")
    patches, report = replayed(paths, rel, series.load(paths.patches))
    proc = patch_queue.am_continue(repo)
    stop_on_conflict(proc, patches, report, rel, repo, up)
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
    print(f"branch queue in {repo}: {count} commits on baseline (sglang {rel.version}); "
          "edit with git (e.g. `git rebase -i baseline`), then `make export`")


if __name__ == "__main__":
    run_main(main)
