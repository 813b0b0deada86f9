"""tests/fixes.toml: the upstream fixes the series carries or guards, with their tests.

The first release that has a fix is not written there: it is read off the matrix's
evidence (docs/matrix.json, written by `make matrix PUBLISH=1`), the one source for it."""

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import SeriesError

REGISTRY = "tests/fixes.toml"
EVIDENCE = "docs/matrix.json"
DOWNSTREAM = "none"  # `upstream = "none"`: a fix only this series carries


@dataclass(frozen=True)
class Fix:
    pr: str  # "#25065"
    title: str
    upstream: str  # first release that has it (from the matrix), "none" (downstream only), "" (no evidence yet)
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
    records = evidence(root)
    fixes = []
    for f in data.get("fix", []):
        try:
            pr, title, tests = f["pr"], f["title"], tuple(f["tests"])
        except KeyError as exc:
            raise SeriesError(f"{REGISTRY}: a [[fix]] lacks {exc}; each needs pr, title and tests")
        said = f.get("upstream")
        if said not in (None, DOWNSTREAM):
            raise SeriesError(f"{REGISTRY}: {pr} says upstream = {said!r}; the first release with a fix comes from "
                              f"the matrix ({EVIDENCE}), so remove that line (only upstream = \"none\" stays, "
                              "for a fix only this series carries)")
        fixes.append(Fix(pr, title, DOWNSTREAM if said == DOWNSTREAM else first_released(records, pr), tests))
    return fixes


def evidence(root: Path) -> list[dict]:
    """The published matrix: [{"fix", "release", "state", "why"}], releases oldest first."""
    try:
        return json.loads((root / EVIDENCE).read_text())
    except FileNotFoundError:
        return []
    except json.JSONDecodeError as exc:
        raise SeriesError(f"{EVIDENCE} is not valid JSON ({exc}); restore it with `git checkout -- {EVIDENCE}`")


def first_released(records: list[dict], pr: str) -> str:
    """The oldest release whose tests show the fix and after which no release lacks it
    ("X or earlier" when that is the oldest release measured); "" without evidence."""
    row = [(r["release"], r["state"]) for r in records if r["fix"] == pr]
    measured = [(v, s) for v, s in row if s in ("fixed", "present")]
    if not measured or measured[-1][1] != "fixed":
        return ""
    first = len(measured) - 1
    while first > 0 and measured[first - 1][1] == "fixed":
        first -= 1
    version = measured[first][0]
    return f"{version} or earlier" if version == row[0][0] else version


def carried_by(fixes: list[Fix], tests: list[str]) -> Fix | None:
    """The fix whose tests are exactly these (a patch's or a revert's `Tests:`)."""
    wanted = set(tests)
    return next((f for f in fixes if set(f.tests) == wanted), None)
