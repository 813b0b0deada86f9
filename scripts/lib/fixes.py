"""tests/fixes.toml: the upstream fixes the series carries or guards, with their tests."""

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import SeriesError

REGISTRY = "tests/fixes.toml"


@dataclass(frozen=True)
class Fix:
    pr: str  # "#25065"
    title: str
    upstream: str  # first release that has it
    tests: tuple[str, ...]


def load(root: Path, required: bool = True) -> list[Fix]:
    path = root / REGISTRY
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if not required:
            return []
        raise SeriesError(f"{REGISTRY} is missing; restore it with `git checkout -- {REGISTRY}`")
    except tomllib.TOMLDecodeError as exc:
        raise SeriesError(f"{REGISTRY} is not valid TOML ({exc}); fix it or `git checkout` it")
    try:
        return [Fix(f["pr"], f["title"], f["upstream"], tuple(f["tests"])) for f in data.get("fix", [])]
    except KeyError as exc:
        raise SeriesError(f"{REGISTRY}: a [[fix]] lacks {exc}; each needs pr, title, upstream and tests")


def carried_by(fixes: list[Fix], tests: list[str]) -> Fix | None:
    """The fix whose tests are exactly these (a patch's or a revert's `Tests:`)."""
    wanted = set(tests)
    return next((f for f in fixes if set(f.tests) == wanted), None)
