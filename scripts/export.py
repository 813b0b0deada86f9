"""make export: write the scratch tree's patch queue back to patches/ and patches/series.

The branch exported is `queue` (from `make queue`), or `applied` when that is the one
checked out and carries commits of your own. The output is deterministic: the same
commits give byte-identical files on every run and machine (see lib/patch_queue.py)."""

import argparse

from scripts.queue import require_idle, subjects
from scripts.lib import config, git, moving, patch_queue, pins, scratch, series
from scripts.lib.errors import SeriesError, run_main


def source_branch(repo, up: str = "") -> str:
    current = git.current_branch(repo)
    if current in (patch_queue.QUEUE, scratch.APPLIED):
        return current
    if git.ref_exists(repo, patch_queue.QUEUE):
        return patch_queue.QUEUE
    raise SeriesError(f"{repo} has no queue branch; create it with `make queue{up}`")


def export_series(paths: config.Paths, rel: config.Release) -> patch_queue.Changes:
    repo = scratch.tree(paths, rel.version)
    up = "" if rel.version == config.base_version(paths) else f" UPSTREAM_VERSION={rel.version}"
    if not git.is_repo(repo):
        raise SeriesError(f"no scratch tree for sglang {rel.version}; create the queue with `make queue{up}`")
    require_idle(repo, f"`make export{up}`")
    branch = source_branch(repo, up)
    state = scratch.read_state(paths, rel.version)
    known = {p["commit"]: p["patch"] for p in state["patches"]} if state else {}
    old = series.entries(paths.patches)
    # On X, the patches its rebase report drops are dropped here with the report's reason.
    reasons = moving.drop_reasons(moving.load(paths, rel.version, series.load(paths.patches))) if up else {}
    exported = patch_queue.export(repo, scratch.BASELINE, branch, known, subjects(paths, old))
    changes = patch_queue.write(paths.patches, exported, old, reasons=reasons)
    if branch == scratch.APPLIED and git.rev(repo, branch) != (state["head"] if state else git.rev(repo, scratch.BASELINE)):
        # The commits live on as the queue; `applied` goes back to what `make apply` expects.
        git.checkout_fresh(repo, patch_queue.QUEUE, scratch.APPLIED)
        git.git(repo, "branch", "-f", scratch.APPLIED, scratch.BASELINE)
        scratch.write_state(paths, rel.version, None)
        print(f"your commits on '{scratch.APPLIED}' are now branch '{patch_queue.QUEUE}'")
    if up:
        base = config.base_version(paths)
        pins.set_base(paths, rel.version)
        message = paths.release_dir(rel.version) / "rebase" / "COMMIT_MSG"
        message.write_text(moving.commit_message(rel.version, base, changes))
        print(f"the series now targets sglang {rel.version}: upstream/releases.json base = {rel.version}; "
              f"commit it with `git add -A patches upstream && git commit -F {message}`")
    return changes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="release whose queue to export (default: the pinned base)")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    with scratch.exclusive(paths, rel.version):
        changes = export_series(paths, rel)
    print(changes.summary() if changes.any else "patches/ already matches the queue: nothing to write")


if __name__ == "__main__":
    run_main(main)
