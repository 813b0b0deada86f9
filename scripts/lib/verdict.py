"""Sort a patch on a new release from evidence: whether it applies (trial.py) and how its
`Tests:` behave on the base, on vanilla X and on X with the series.

A test's outcome on one side is one of
  pass        it ran and passed
  fail        it ran and an assertion failed
  cannot-run  it could not get to its assertions: collection/import error, or an
              ImportError / AttributeError / TypeError / NameError (an API that moved)
  skip        skipped here (e.g. needs CUDA): no evidence either way
"""

import re
from dataclasses import dataclass

from . import pytest_run

CLEAN = "applies-cleanly"
ABSORBED = "absorbed-upstream"
CONFLICTS = "conflicts"
TESTS_FAIL = "applies-tests-fail"
PORTING = "tests-cannot-run"

CATEGORIES = {
    CLEAN: "applies cleanly (tests fail on vanilla X, pass with the series)",
    ABSORBED: "absorbed upstream (its tests pass on vanilla X): drop it",
    CONFLICTS: "conflicts (hunks below): refresh it",
    TESTS_FAIL: "applies, but its tests fail with the series on X",
    PORTING: "tests no longer run on X (API changed): port the patch and its tests",
}

_API_MOVED = re.compile(r"^(E\s+)?(ImportError|ModuleNotFoundError|AttributeError|TypeError|NameError)\b")
_PATHS = re.compile(r"\(?(/[^\s:'\")]+)+\)?")


@dataclass
class Outcome:
    status: str  # pass / fail / cannot-run / skip
    message: str = ""

    def signature(self) -> str:
        """Status and error without file paths: comparable across sites and releases."""
        return f"{self.status}:{_PATHS.sub('<path>', self.message).strip()}"


def outcomes_for(results: dict, node_id: str) -> Outcome:
    """One test id's outcome from pytest_run.outcomes(); the worst of its test cases."""
    if "__run__" in results:
        return Outcome("cannot-run", _first_line(results["__run__"][1]) or "pytest did not run")
    chosen = pytest_run.select(results, node_id)
    if not chosen:
        errors = [m for key, (o, m) in results.items() if o == "error" and _same_file(key, node_id)]
        return Outcome("cannot-run", errors[0] if errors else "not collected (the test id is not found)")
    per_case = [_status(outcome, message) for outcome, message in chosen.values()]
    for status in ("cannot-run", "fail", "pass", "skip"):
        found = [o for o in per_case if o.status == status]
        if found:
            return found[0]
    return Outcome("skip")


def _status(outcome: str, message: str) -> Outcome:
    if outcome == "passed":
        return Outcome("pass")
    if outcome == "skipped":
        return Outcome("skip", message)
    if outcome == "error" or _API_MOVED.match(message):
        return Outcome("cannot-run", message)
    return Outcome("fail", message)


def _same_file(key: str, node_id: str) -> bool:
    """A collection error is reported against the module (tests.x.test_y), not a test."""
    module = node_id.split("::")[0][:-3].replace("/", ".")
    return module in key


def _first_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""


def summary(outcomes: list[Outcome]) -> str:
    """'pass' when every test that ran passed, else the worst status seen."""
    statuses = {o.status for o in outcomes}
    for status in ("cannot-run", "fail"):
        if status in statuses:
            return status
    return "pass" if "pass" in statuses else "skip"


def categorize(applies: bool, base: list[Outcome], vanilla: list[Outcome], patched: list[Outcome] | None) -> tuple[str, str]:
    """(category, one sentence of evidence). Precedence: absorbed (upstream fixed it: drop,
    whatever its text does) > tests that cannot run > conflicts > tests that fail > clean."""
    on_vanilla = summary(vanilla)
    if on_vanilla == "pass":
        return ABSORBED, "every test that ran passes on vanilla X"
    if applies:
        on_patched = summary(patched or [])
        if on_patched == "cannot-run":
            o = next(o for o in patched if o.status == "cannot-run")
            return PORTING, f"applies, but with the series on X a test cannot run: {o.message}"
        if on_patched == "fail":
            o = next(o for o in patched if o.status == "fail")
            return TESTS_FAIL, f"applies; with the series on X a test still fails: {o.message}"
        if on_patched == "skip":
            return CLEAN, "applies; its tests are skipped here (no evidence on this machine: run them where they can run)"
        return CLEAN, "applies; its tests fail on vanilla X and pass with the series"
    # Not applied: only vanilla evidence. A failure that looks like the base's is the bug
    # still there; a cannot-run the base did not have is an API that moved.
    moved = [(b, v) for b, v in zip(base, vanilla) if v.status == "cannot-run" and v.signature() != b.signature()]
    if moved:
        return PORTING, f"does not apply, and a test cannot run on vanilla X (on the base it was {moved[0][0].status}): {moved[0][1].message}"
    return CONFLICTS, "does not apply; its tests fail on vanilla X as they do on the base (the bug is still there)"
