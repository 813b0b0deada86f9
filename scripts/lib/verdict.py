"""Sort a patch on a new release from evidence: whether it applies (trial.py) and how its
`Tests:` behave on the base, on vanilla X and on X with the series.

A test's outcome on one side is one of
  pass        it ran and passed
  fail        its own check fired (AssertionError)
  error       it stopped on another exception: the bug itself (a crash the test
              provokes) or a setup that no longer works; which one, the base tells
  cannot-run  it could not get to its checks: collection/import error, or an
              ImportError / AttributeError / TypeError / NameError (an API that moved)
  n/a         not applicable: the release has no such code path at all, so no bug of
              this kind can be in it (the seam's applies_only_if: a reason starting
              with NOT_APPLICABLE_REASON); neither a pass nor a gap in the evidence
  skip        skipped here (e.g. needs CUDA): no evidence either way
A test that asks the seam (tests/seam) for something the release lacks is skipped
with a reason starting with CANNOT_RUN: that is cannot-run, not skip.
An `error` or `cannot-run` on X that is not the one the base had means the test no
longer runs on X; the same one as on the base is the bug still being there.
"""

import re
from dataclasses import dataclass

from . import pytest_run

CLEAN = "applies-cleanly"
CONTEXT_MOVED = "applies-3way"
LEFT_OUT = "left-out"
ABSORBED = "absorbed-upstream"
CONFLICTS = "conflicts"
TESTS_FAIL = "applies-tests-fail"
PORTING = "tests-cannot-run"
PARTIAL = "partly-absorbed"

CATEGORIES = {
    CLEAN: "applies cleanly (tests fail on vanilla X, pass with the series)",
    CONTEXT_MOVED: "context moved: applies with a 3-way merge against the base's files (tests fail on vanilla X, pass with the series): refreshed as merged",
    ABSORBED: "absorbed upstream (its tests pass on vanilla X): drop it",
    LEFT_OUT: "left out by the maintainer: X's line records why (`# dropped NAME: why`); not applied",
    PARTIAL: "partly absorbed (some of its tests pass on vanilla X, others still fail): keep what X lacks",
    CONFLICTS: "conflicts (hunks below): refresh it",
    TESTS_FAIL: "applies, but its tests fail with the series on X",
    PORTING: "tests no longer run on X (API changed: they stop before their checks, unlike on the base): port the adapter the evidence names (tests/seam/<file>)",
}

CANNOT_RUN = "cannot run on sglang"  # tests/seam/__init__.py gives these reasons
NOT_APPLICABLE_REASON = "not applicable to sglang"
_ASSERTION = re.compile(r"^(E\s+)?(AssertionError\b|assert )")
_API_MOVED = re.compile(r"^(E\s+)?(ImportError|ModuleNotFoundError|AttributeError|TypeError|NameError)\b")
_PATHS = re.compile(r"\(?(/[^\s:'\")]+)+\)?")


@dataclass
class Outcome:
    status: str  # pass / fail / error / cannot-run / n/a / skip
    message: str = ""
    judged: str = ""  # a pass judged on some parts only (tree cores): which ones; message says why not the rest

    def kind(self) -> str:
        """What happened, comparable across sites and releases: for a failed check only that
        it failed; for an error its exception type; for cannot-run the message without paths."""
        if self.status in ("pass", "fail", "n/a", "skip"):
            return self.status
        if self.status == "error":
            return "error:" + self.message.split(":", 1)[0].strip()
        return f"cannot-run:{_PATHS.sub('<path>', self.message).strip()}"


STATUSES = ("pass", "fail", "error", "cannot-run", "n/a", "skip")


def outcomes_for(results: dict, node_id: str) -> Outcome:
    """One test id's outcome from pytest_run.outcomes(); the worst of its test cases."""
    if "__run__" in results:
        return Outcome("cannot-run", _first_line(results["__run__"][1]) or "pytest did not run")
    chosen = pytest_run.select(results, node_id)
    if not chosen:
        return Outcome("cannot-run", collection_error(results, node_id) or "not collected (the test id is not found)")
    by_part: dict = {}
    for key, (outcome, message) in chosen.items():
        by_part.setdefault(pytest_run.variant(key), []).append(_status(outcome, message))
    per_case = [o for cases in by_part.values() for o in cases]
    # A check that fails is evidence whatever else could not run.
    for status in ("fail", "error"):
        for part, cases in by_part.items():
            failed = [o for o in cases if o.status == status]
            if failed:
                # an error's message stays as raised: rebase compares its kind across releases
                return Outcome(status, _on(part, failed[0].message) if status == "fail" else failed[0].message)
    if set(by_part) != {None}:
        return _judged_parts(by_part, pytest_run.tree_core_default(results))
    by_status = {status: [o for o in per_case if o.status == status] for status in STATUSES}
    cannot = by_status["cannot-run"]
    if cannot and by_status["pass"]:
        return Outcome("pass", f"{len(cannot)} of {len(per_case)} cases cannot run: {cannot[0].message}")
    for status in ("cannot-run", "pass", "n/a", "skip"):
        if by_status[status]:
            return by_status[status][0]
    return Outcome("skip")


def _part_outcome(cases: list) -> Outcome:
    """A variant's outcome (its cases did not fail): cannot-run if one could not run,
    pass if one passed (the others skipped as not applicable there), else n/a or skip."""
    for status in ("cannot-run", "pass", "n/a", "skip"):
        found = [o for o in cases if o.status == status]
        if found:
            return found[0]
    return Outcome("skip")


def _judged_parts(by_part: dict, default: str | None) -> Outcome:
    """A test collected once per variant (TestX[python], TestX[rust]) that failed nowhere.
    A part that passed is judged; one that skipped or could not run is not, and is never
    counted as a pass. The release's default part (its default tree core) must be among
    the judged ones for the whole to pass: otherwise what the release runs was not judged."""
    parts = {part: _part_outcome(cases) for part, cases in by_part.items()}
    judged = sorted(str(p) for p, o in parts.items() if o.status == "pass")
    missing = {p: o for p, o in parts.items() if o.status != "pass"}
    if not missing:
        return Outcome("pass")
    if not judged:
        if all(o.status == "n/a" for o in missing.values()):
            # no such code path on any core: the release's reason, not a core's
            return next(iter(missing.values()))
        for status in ("cannot-run", "n/a", "skip"):
            for part, o in missing.items():
                if o.status == status:
                    return Outcome(status, _on(part, o.message))
    scope = "; ".join([", ".join(judged)] + [f"{p} not judged: {_clip(o.message, 200)}" for p, o in missing.items()])
    if default is None or default in missing:
        whose = "the release's default" if default is not None else "which part is the release's default is unknown"
        return Outcome("cannot-run", f"judged on {', '.join(judged)} only ({whose} not judged): {scope}")
    return Outcome("pass", scope, judged=", ".join(judged))


def _on(part, message: str) -> str:
    return f"[{part}] {message}" if part is not None else message


def seam_refused(outcome: str, message: str) -> bool:
    """The seam's skip: the test could not reach its checks on this release."""
    return outcome == "skipped" and message.startswith(CANNOT_RUN)


def not_applicable(outcome: str, message: str) -> bool:
    """The seam's skip where the release has no such code path (nothing to judge)."""
    return outcome == "skipped" and message.startswith(NOT_APPLICABLE_REASON)


def _status(outcome: str, message: str) -> Outcome:
    if outcome == "passed":
        return Outcome("pass")
    if outcome == "skipped":
        kind = "cannot-run" if seam_refused(outcome, message) else "n/a" if not_applicable(outcome, message) else "skip"
        return Outcome(kind, message)
    if outcome == "error" or _API_MOVED.match(message):
        return Outcome("cannot-run", message)
    return Outcome("fail" if _ASSERTION.match(message) else "error", message)


def collection_error(results: dict, node_id: str) -> str | None:
    """Why the test's file could not be collected, if it could not: its import error, or
    the seam's CannotRun raised while importing it (verbatim)."""
    problem = pytest_run.collection_problem(results, node_id)
    return problem[1] if problem else None


def _first_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""


def summary(outcomes: list[Outcome]) -> str:
    """'pass' when every test that ran passed, else the worst status seen."""
    statuses = {o.status for o in outcomes}
    for status in ("cannot-run", "error", "fail"):
        if status in statuses:
            return status
    return "pass" if "pass" in statuses else "skip"


def absorbed(base: list[Outcome], vanilla: list[Outcome]) -> bool:
    """X has the fix, judged before anything is applied: its tests pass on vanilla X, and not
    already on the vanilla base (a patch that keeps the base's behaviour is judged by the
    series on X instead)."""
    return summary(vanilla) == "pass" and not (bool(base) and all(b.status == "pass" for b in base))


def categorize(applies: bool, base: list[Outcome], vanilla: list[Outcome], patched: list[Outcome] | None,
               three_way: bool = False) -> tuple[str, str]:
    """(category, one sentence of evidence). Precedence: absorbed (upstream fixed it: drop,
    whatever its text does) > tests that cannot run > conflicts > tests that fail > clean
    (applied as it is, or with a 3-way merge: context moved)."""
    # A patch whose tests pass on the vanilla base keeps the base's behaviour where another
    # patch changes it: vanilla X passing them too is no sign that X has the patch.
    keeps_base = bool(base) and all(b.status == "pass" for b in base)
    if absorbed(base, vanilla):
        return ABSORBED, "every test that ran passes on vanilla X"
    if summary(vanilla) == "pass":
        if not applies:
            return CONFLICTS, ("does not apply; its tests pass on the vanilla base and on vanilla X alike, so only "
                               "the series on X can show whether X still needs it: refresh it")
    passing = [i for i, v in enumerate(vanilla) if v.status == "pass"]
    still = [i for i, v in enumerate(vanilla) if v.status in ("fail", "error")]
    if passing and still:
        return PARTIAL, (f"tests {_ids(passing)} pass on vanilla X, tests {_ids(still)} still fail there "
                         f"({vanilla[still[0]].message}); " + ("it applies" if applies else "it does not apply"))
    if applies:
        for b, o in zip(base, patched or []):
            if o.status == "cannot-run" or (o.status == "error" and o.kind() != b.kind()):
                return PORTING, (f"applies, but with the series on X a test cannot run ({o.message}); on the base it "
                                 f"was {_said(b)}; {port_advice(o)}")
        failing = [o for o in patched or [] if o.status in ("fail", "error")]
        if failing:
            return TESTS_FAIL, f"applies; with the series on X a test still fails: {failing[0].message}"
        clean, how = (CONTEXT_MOVED, "applies with a 3-way merge (its context moved)") if three_way else (CLEAN, "applies")
        if summary(patched or []) == "skip":
            return clean, f"{how}; its tests are skipped here (no evidence on this machine: run them where they can run)"
        if keeps_base and summary(vanilla) == "pass":
            return clean, f"{how}; its tests pass on the vanilla base, on vanilla X and with the series on X"
        return clean, f"{how}; its tests fail on vanilla X and pass with the series"
    # Not applied: only vanilla evidence. A failure like the base's is the bug still there;
    # an error or cannot-run the base did not have is a test that no longer runs on X.
    for b, v in zip(base, vanilla):
        if v.status in ("cannot-run", "error") and v.kind() != b.kind():
            return PORTING, (f"does not apply, and a test cannot run on vanilla X ({v.message}); on the base it "
                             f"was {_said(b)}; {port_advice(v)}")
    if keeps_base:
        return CONFLICTS, ("does not apply; its tests fail on vanilla X though they pass on the vanilla base "
                           "(X changed what the patch keeps as the base had it)")
    return CONFLICTS, "does not apply; its tests fail on vanilla X as they do on the base (the bug is still there)"


_ADAPTER = re.compile(r"tests/seam/\w+\.py")


def port_advice(o: Outcome) -> str:
    """What to port when a test that runs elsewhere cannot run here: the adapter the
    seam's reason names (tests/seam/<file>), else the seam."""
    found = _ADAPTER.findall(o.message)
    if found:
        return f"port the adapter {found[-1]} to this release"
    return "port the adapter in tests/seam/ that builds this test's fixtures to this release"


def _ids(indexes: list[int]) -> str:
    """1-based positions in the patch's `Tests:` list, as the report numbers them."""
    return ", ".join(f"#{i + 1}" for i in indexes)


def _said(o: Outcome) -> str:
    return o.status + (f" ({o.message})" if o.message and o.status != "pass" else "")


PRESENT, FIXED, CANNOT, NOT_APPLICABLE = "present", "fixed", "cannot-run", "not-applicable"
# states in which a release needs no patch for the fix: it has it, or cannot have its bug
HELD = (FIXED, NOT_APPLICABLE)


def fix_state(outcomes: list[Outcome]) -> tuple[str, str]:
    """A fix's state on one release from its tests' outcomes there, with the reason.
    A check that fails is the bug (present), even when another test cannot run; a
    fix is fixed only when every test that ran passed and none was left unable to run;
    not applicable when every test found the release without the code path it guards."""
    failed = [o for o in outcomes if o.status in ("fail", "error")]
    cannot = [o for o in outcomes if o.status == "cannot-run"]
    passed = [o for o in outcomes if o.status == "pass"]
    if failed:
        extra = f"; {len(cannot)} cannot run" if cannot else ""
        return PRESENT, f"{len(failed)} of {len(outcomes)} test ids fail ({_clip(failed[0].message)}){extra}"
    if cannot:
        return CANNOT, " ".join(cannot[0].message.split())  # the seam's reason, verbatim
    if passed:
        skipped = [o for o in outcomes if o.status in ("skip", "n/a")]
        partly = [o for o in passed if o.message]  # passed, with cases or parts that could not be judged
        return FIXED, (f"{len(passed)} of {len(outcomes)} test ids pass"
                       + (f", {len(skipped)} skipped ({_clip(skipped[0].message)})" if skipped else "")
                       + (f"; {' '.join(partly[0].message.split())}" if partly else ""))
    if outcomes and all(o.status == "n/a" for o in outcomes):
        return NOT_APPLICABLE, _clip(outcomes[0].message)
    return CANNOT, "every test skipped here: " + _clip(outcomes[0].message if outcomes else "no tests")


def fix_scope(outcomes: list[Outcome]) -> str:
    """For a fix judged fixed on some parts only (one tree core of two): the short
    wording for its cell, e.g. "python; rust not judged"; "" when judged in full."""
    partly = [o for o in outcomes if o.status == "pass" and o.judged]
    if not partly:
        return ""
    judged = sorted({p for o in partly for p in o.judged.split(", ")})
    every = sorted({p for o in outcomes for p in _parts_named(o)} | set(judged))
    rest = [p for p in every if p not in judged]
    return "; ".join([", ".join(judged)] + [f"{p} not judged" for p in rest])


_NOT_JUDGED = re.compile(r"(\w+) not judged:")


def _parts_named(o: Outcome) -> list[str]:
    return _NOT_JUDGED.findall(o.message)


def _clip(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
