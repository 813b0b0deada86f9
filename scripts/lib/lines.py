"""Which series each pinned release gets: a line per release over shared patch files.

  patches/series             the base's line (upstream/releases.json "base")
  patches/lines/<X>.series   the line of release X: the fixes X lacks, in order
  patches/lines/<X>/         the copies of patches ported to X (a move or export writes them)

A line's entries are paths relative to patches/: `0004-....patch` is the base's file,
`lines/0.5.14/0004-....patch` its copy ported to 0.5.14; a copy serves every line that
names it. A release that lacks none of the fixes has a line that says so
(`# no patches: ...`), and one not judged yet has no line: `make apply` then names the
command that makes one. Adding or dropping a patch on a line is an edit of its file."""

import shutil
import time
from pathlib import Path

from . import config, fixes, git, series
from .pins import version_key
from .errors import SeriesError

LINES = "lines"


def series_file(paths: config.Paths, version: str) -> Path:
    if version == config.base_version(paths):
        return series.series_file(paths.patches)
    return paths.patches / LINES / f"{version}.series"


def ported_dir(paths: config.Paths, version: str) -> Path:
    return paths.patches / LINES / version


def exists(paths: config.Paths, version: str) -> bool:
    return series_file(paths, version).is_file()


def label(paths: config.Paths, version: str) -> str:
    return series.display(paths.patches, series_file(paths, version))


def load(paths: config.Paths, version: str) -> list[series.Patch]:
    """Release `version`'s series; a release without a line names the commands that make one."""
    if not exists(paths, version):
        up = f"UPSTREAM_VERSION={version}"
        raise SeriesError(f"sglang {version} has no line ({label(paths, version)}) yet; `make rebase {up}` shows which "
                          f"fixes it lacks and `make rebase {up} WRITE=1 LINE=1` writes its line")
    file = series_file(paths, version)
    patches = series.load(paths.patches, file)
    if not patches and version != config.base_version(paths) and series.declared_empty(file) is None:
        raise SeriesError(f"{label(paths, version)} lists no patch and does not say that sglang {version} needs none; "
                          f"fill it with `make rebase UPSTREAM_VERSION={version} WRITE=1 LINE=1`")
    return patches


def versions(paths: config.Paths) -> list[str]:
    """Every release with a line, the base first, the others in release order."""
    others = [f.name[: -len(".series")] for f in (paths.patches / LINES).glob("*.series")]
    return [config.base_version(paths)] + sorted(others, key=version_key)


def all_files(paths: config.Paths) -> list[Path]:
    """Every series file in patches/ (the base's and each line's)."""
    return [series.series_file(paths.patches), *sorted((paths.patches / LINES).glob("*.series"))]


def referenced(paths: config.Paths, skip: Path | None = None) -> set[Path]:
    """Every patch file some series names (but `skip`): a file another line uses is never
    rewritten or removed for this one."""
    found = set()
    for file in all_files(paths):
        if file != skip and file.exists():
            found |= {(paths.patches / e).resolve() for e in series.entries(paths.patches, file)}
    return found


def require_committed(paths: config.Paths) -> None:
    """Refuse to write patches/ over changes a maintainer has not committed (they would be lost)."""
    top = paths.patches
    while not (top / ".git").exists() and top != top.parent:
        top = top.parent
    if not (top / ".git").exists():
        return  # not in a git work tree: the callers keep a copy (keep_copy)
    changes = git.git(top, "status", "--porcelain", "--", str(paths.patches)).stdout.splitlines()
    if changes:
        files = ", ".join(line[3:] for line in changes[:4]) + (" ..." if len(changes) > 4 else "")
        raise SeriesError(f"patches/ has uncommitted changes ({files}); keep them with `git add -A patches && git commit` "
                          "(or set them aside with `git stash push -- patches`), then run again")


def keep_copy(paths: config.Paths, why: str) -> Path | None:
    """A copy of patches/ under build/ before it is written, when git does not keep one."""
    top = paths.patches
    while not (top / ".git").exists() and top != top.parent:
        top = top.parent
    if (top / ".git").exists() or not paths.patches.exists():
        return None
    copy = paths.build / "patches-copies" / f"{time.strftime('%Y%m%dT%H%M%S')}-{why}"
    shutil.copytree(paths.patches, copy, dirs_exist_ok=True)
    print(f"patches/ as it was is kept in {copy}")
    return copy


def left_out_fixes(paths: config.Paths, version: str, tests_root: Path) -> dict:
    """{fix: why} for the downstream-only fixes (tests/fixes.toml upstream = "none") that
    the release's line drops with a recorded reason (`# dropped NAME: why`). No release has
    them, so their tests fail on vanilla by design: they are no claim of this line (`make
    test` deselects them, `make prove` lists them as not judged, both saying why). A fix
    that some upstream release has is always judged."""
    registry = fixes.load(tests_root, required=False)
    found = {}
    for name, why in series.dropped(series_file(paths, version)).items():
        path = paths.patches / name
        if path.is_file():
            tests = set(series.parse(path).tests)
            found.update({f.pr: why for f in registry if set(f.tests) == tests and f.upstream == "none"})
    return found


def left_out_tests(paths: config.Paths, version: str, tests_root: Path) -> dict:
    """{test id: why} of left_out_fixes()."""
    registry = {f.pr: f for f in fixes.load(tests_root, required=False)}
    return {t: f"{pr} is left out of {label(paths, version)}: {why}"
            for pr, why in left_out_fixes(paths, version, tests_root).items() for t in registry[pr].tests}
