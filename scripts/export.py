"""make export: write the scratch tree's patch queue back to the series it came from.

The branch exported is `queue` (from `make queue`), or `applied` when that is the one
checked out and carries commits of your own. What it writes:
  - on a release X with a line: patches/lines/X.series, a changed or new patch written
    to X's folder (patches/lines/X/), a file another line still uses never rewritten;
  - on a release X without a line (a move): X's line, holding what the queue holds, and
    X becomes the base; with --line (LINE=1) the base stays. Patches X's rebase report
    calls absorbed are dropped with its reason.
A patch is dropped only with a reason: the report's, or a `# dropped NAME: why` line the
maintainer put in the series. patches/ with uncommitted changes is refused.
The output is deterministic: the same commits give byte-identical files on every run and
machine (see lib/patch_queue.py)."""

import argparse

from scripts.lib import config, git, hints, lines, moving, patch_queue, scratch
from scripts.lib.queue_plan import moving_to, require_idle, source, start, subjects
from scripts.lib.errors import SeriesError, run_main


def source_branch(repo, up: str = "", state: dict | None = None) -> str:
    """`queue`, or `applied` when it is checked out and carries commits `make apply` did not make."""
    current = git.current_branch(repo)
    own = git.rev(repo, scratch.APPLIED) != (state["head"] if state else git.rev(repo, scratch.BASELINE)) \
        if git.ref_exists(repo, scratch.APPLIED) else False
    if current == patch_queue.QUEUE or (current == scratch.APPLIED and own):
        return current
    if git.ref_exists(repo, patch_queue.QUEUE):
        return patch_queue.QUEUE
    raise SeriesError(f"{repo} has no queue branch; create it with `make queue{up}`")


def export_series(paths: config.Paths, rel: config.Release, line: bool = False) -> patch_queue.Changes:
    repo = scratch.tree(paths, rel.version)
    up = hints.up(paths, rel.version)
    if not git.is_repo(repo):
        raise SeriesError(f"no scratch tree for sglang {rel.version}; create the queue with `make queue{up}`")
    require_idle(repo, f"`make export{up}`")
    move = moving_to(paths, rel.version)
    if line and not move:
        raise SeriesError(f"LINE=1 writes a new line, and sglang {rel.version} has one already; run `make export{up}`")
    state = scratch.read_state(paths, rel.version)
    branch = source_branch(repo, up, state)
    lines.require_committed(paths)
    known = {p["commit"]: p["patch"] for p in state["patches"]} if state else {}
    file, patches = source(paths, rel.version)
    exported = patch_queue.export(repo, scratch.BASELINE, branch, known, subjects(patches))
    if move:
        base = start(paths, rel.version)
        reasons = moving.drop_reasons(moving.load(paths, rel.version, lines.load(paths, base)))
        changes = moving.adopt(paths, rel.version, exported, reasons, line)
        message = paths.release_dir(rel.version) / "rebase" / "COMMIT_MSG"
        message.write_text(moving.commit_message(rel.version, base, changes, line))
        where = (f"wrote {lines.label(paths, rel.version)}" if line
                 else f"wrote {lines.label(paths, rel.version)}; upstream/releases.json base = {rel.version}")
        print(f"{where}; commit it with `git add -A patches upstream env README.md && git commit -F {message}`")
    else:
        shared = lines.referenced(paths, skip=file)
        if patch_queue.diff_against(paths.patches, exported, [p.entry for p in patches], shared).any:
            lines.keep_copy(paths, "export")
        changes = patch_queue.write(paths.patches, exported, file, ported=lines.ported_dir(paths, rel.version),
                                    shared=shared)
    if branch == scratch.APPLIED and git.rev(repo, branch) != (state["head"] if state else git.rev(repo, scratch.BASELINE)):
        # The commits live on as the queue; `applied` goes back to what `make apply` expects.
        git.checkout_fresh(repo, patch_queue.QUEUE, scratch.APPLIED)
        git.git(repo, "branch", "-f", scratch.APPLIED, scratch.BASELINE)
        scratch.write_state(paths, rel.version, None)
        print(f"your commits on '{scratch.APPLIED}' are now branch '{patch_queue.QUEUE}'")
    return changes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="release whose queue to export (default: the base)")
    parser.add_argument("--line", action="store_true", help="on a release without a line: write its line, keep the base")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    with scratch.exclusive(paths, rel.version):
        changes = export_series(paths, rel, args.line)
    print(changes.summary() if changes.any else "patches/ already matches the queue: nothing to write")


if __name__ == "__main__":
    run_main(main)
