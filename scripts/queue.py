"""make queue: turn a release's line into branch `queue` of its scratch tree, one commit per
patch with its full message and headers. Edit, reorder, squash or rebase it with plain git
(`git rebase -i baseline`, `git commit --amend`), then `make export` writes it back.

On a release with a line (patches/lines/X.series) the queue holds that line, and
`make export UPSTREAM_VERSION=X` writes it back. On a release without one the queue
moves the line that X's rebase report judged (the newest line below X) there, acting on
the verdicts of `make rebase UPSTREAM_VERSION=X` (build/X/rebase/report.json): a patch
upstream absorbed is not replayed, and `make export` drops it with the report's reason.
A patch that does not apply stops the import with `git am --3way`'s conflict markers in
the tree (merged against the blobs of the release it was written on, taken from that
release's wheel), for a person to resolve; `make queue UPSTREAM_VERSION=X CONTINUE=1`
then goes on with the rest."""

import argparse

from scripts.lib import config, envs, git, hints, lines, moving, patch_queue, scratch, series
from scripts.lib.queue_plan import moving_to, replayed, require_idle, source, unexported
from scripts.lib.errors import SeriesError, run_main
















def build_queue(paths: config.Paths, rel: config.Release, force: bool = False) -> int:
    up = hints.up(paths, rel.version)
    _, patches = source(paths, rel.version)
    patches, report = replayed(paths, rel, patches)
    tools = envs.tools(paths)
    repo = scratch.ensure_baseline(paths, rel, tools)
    require_idle(repo, f"`make queue{up}`")
    if git.ref_exists(repo, patch_queue.QUEUE) and not force:
        pending = unexported(paths, repo, rel.version, patches)
        if pending.any:
            raise SeriesError(f"branch queue in {repo} differs from patches/ ({pending.summary()}); keep it with "
                              f"`make export{up}`, or rebuild it from patches/ with `make queue{up} FORCE=1`")
    # the blobs each patch names, from the release it was written on, for `git am --3way`
    scratch.import_bases(paths, repo, tools, [p for p in patches if not p.entry.startswith(f"lines/{rel.version}/")])
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
    what = f"{patch.name} does not apply: {where}" if where else series.describe_failure(patch, proc.stdout + proc.stderr).split(";")[0]
    raise SeriesError(f"{what} on sglang {rel.version}; "
                      f"resolve it in {repo} (`git status`, edit the files, `git add -A`), then "
                      f"`make queue{up} CONTINUE=1` applies the rest and `make export{up}` writes the series "
                      f"({export_writes(paths, rel.version)}); `make discard{up}` drops the queue instead")


def export_writes(paths: config.Paths, version: str) -> str:
    """What `make export` on this queue writes, said in every hint that leads there."""
    up = hints.up(paths, version)
    if not moving_to(paths, version):
        return f"into {lines.label(paths, version)}"
    return f"the line of {version}, which becomes the base; `make export{up} LINE=1` writes the line and keeps the base"


def continue_queue(paths: config.Paths, rel: config.Release) -> int:
    """Go on with a queue import that stopped on a conflict the person has resolved and staged."""
    up = hints.up(paths, rel.version)
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
    parser.add_argument("--upstream", help="release to build the queue on (default: the base)")
    parser.add_argument("--force", action="store_true", help="rebuild the queue even if it holds changes not exported yet")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="go on after resolving the conflict an import stopped on")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    with scratch.exclusive(paths, rel.version):
        count = continue_queue(paths, rel) if args.resume else build_queue(paths, rel, args.force)
    repo = scratch.tree(paths, rel.version)
    up = hints.up(paths, rel.version)
    print(f"branch queue in {repo}: {count} commits on baseline (sglang {rel.version}); "
          f"edit with git (e.g. `git rebase -i baseline`), then `make export{up}` ({export_writes(paths, rel.version)})")


if __name__ == "__main__":
    run_main(main)
