"""What a patch queue on release X holds (`make queue`, `make export`, `make discard`
read it the same way): the line of X, or on a release without a line the base's series
less what X's rebase report drops."""

from . import config, lines, moving, patch_queue, scratch, series
from .errors import SeriesError


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
