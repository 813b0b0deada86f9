"""What a patch queue on release X holds (`make queue`, `make export`, `make discard`
read it the same way): the line of X, or on a release without a line the line its move
starts from (the one X's rebase report judged) less what that report drops."""

import json

from . import config, lines, moving, patch_queue, scratch, series
from .errors import SeriesError


def moving_to(paths: config.Paths, version: str) -> bool:
    """A queue on `version` moves a line there (the release has no line of its own yet)."""
    return not lines.exists(paths, version)


def start(paths: config.Paths, version: str) -> str:
    """The line a move to `version` starts from: the one its rebase report judged, else
    the newest line below it."""
    try:
        judged = json.loads(moving.report_path(paths, version).read_text()).get("base")
    except (OSError, ValueError):
        judged = None
    return judged if judged and lines.exists(paths, judged) else lines.start_for(paths, version)


def source(paths: config.Paths, version: str) -> tuple:
    """(series file, its patches) a queue on `version` starts from."""
    if moving_to(paths, version):
        version = start(paths, version)
    return lines.series_file(paths, version), lines.load(paths, version)


def unexported(paths: config.Paths, repo, version: str, patches: list[series.Patch]) -> patch_queue.Changes:
    """What `make export` would change in patches/ if run now (`patches`: the ones the queue holds)."""
    exported = patch_queue.export(repo, scratch.BASELINE, patch_queue.QUEUE, old_names=subjects(patches))
    file, _ = source(paths, version)
    return patch_queue.diff_against(paths.patches, exported, [p.entry for p in patches],
                                    lines.referenced(paths, skip=file))


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
