"""A test collected once per tree core (TestX[python], TestX[rust]) is judged part by part:
a part that skipped or could not run is never folded into a pass, the wording says which
parts were judged, and a fix a release has counts as held only when the release's default
part (its default tree core, recorded by tests/conftest.py in the run's report) passed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scripts import matrix, prove  # noqa: E402
from scripts.lib import pytest_run, verdict  # noqa: E402

ID = "tests/registered/mem_cache/test_x.py::TestX"
KEY = "tests.registered.mem_cache.test_x.TestX[{}]::test_y"
SKIP = ("skipped", "not applicable to sglang 0.5.20: the Rust tree core builds no write-through backup on demand")
CANNOT = ("skipped", "cannot run on sglang 0.5.21: the Rust tree core does not tell a node's host lock [tests/seam/radix.py]")


def results(default=None, **parts) -> dict:
    out = {KEY.format(core): result for core, result in parts.items()}
    if default is not None:
        out[pytest_run.TREE_CORE_DEFAULT] = ("property", default)
    return out


def test_a_skip_on_one_core_is_not_folded_into_a_pass():
    o = verdict.outcomes_for(results("python", python=("passed", ""), rust=SKIP), ID)
    assert o.status == "pass" and o.judged == "python"
    assert o.message.startswith("python; rust not judged: not applicable")
    state, why = verdict.fix_state([o])
    assert state == verdict.FIXED and "rust not judged" in why
    assert verdict.fix_scope([o]) == "python; rust not judged"
    cell = {"state": state, "why": why, "judged": verdict.fix_scope([o])}
    assert matrix.cell_text(cell) == "fixed (python; rust not judged)"


def test_the_default_core_not_judged_is_no_fix_held():
    for unjudged in (SKIP, CANNOT):
        o = verdict.outcomes_for(results("rust", python=("passed", ""), rust=unjudged), ID)
        assert o.status == "cannot-run", o
        assert "default" in o.message and "rust not judged" in o.message
        assert verdict.fix_state([o])[0] == verdict.CANNOT
    # an older record, made before the default was recorded: not a pass either
    assert verdict.outcomes_for(results(python=("passed", ""), rust=SKIP), ID).status == "cannot-run"


def test_every_core_judged_is_a_plain_pass_and_a_failure_anywhere_is_the_bug():
    o = verdict.outcomes_for(results("rust", python=("passed", ""), rust=("passed", "")), ID)
    assert (o.status, o.message, o.judged) == ("pass", "", "")
    assert verdict.fix_scope([o]) == ""
    failed = verdict.outcomes_for(results("rust", python=("passed", ""), rust=("failed", "AssertionError: 3 != 0")), ID)
    assert failed.status == "fail" and failed.message.startswith("[rust] AssertionError")
    assert verdict.fix_state([failed])[0] == verdict.PRESENT


def test_prove_holds_a_fix_only_on_the_default_core_and_never_on_a_skip():
    both = results("python", python=("passed", ""), rust=SKIP)
    word = prove.summarize(pytest_run.select(both, ID), pytest_run.tree_core_default(both))
    assert word == "passed (python; rust not-applicable, not judged)"
    held = {"patches": [], "guards": [], "base_fixes": [{"fix": "#1", "test": ID, "vanilla": word}]}
    assert prove.proven(held)
    on_rust = results("rust", python=("passed", ""), rust=SKIP)
    word = prove.summarize(pytest_run.select(on_rust, ID), pytest_run.tree_core_default(on_rust))
    assert word.startswith("cannot-run")
    assert not prove.proven({"patches": [], "guards": [], "base_fixes": [{"fix": "#1", "test": ID, "vanilla": word}]})
    skipped = {"patches": [], "guards": [], "base_fixes": [{"fix": "#1", "test": ID, "vanilla": "skipped"}]}
    assert not prove.proven(skipped)


def test_the_default_core_is_read_from_the_report(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest"><properties><property name="tree_core_default" value="rust"/>'
        '</properties><testcase classname="tests.registered.mem_cache.test_x.TestX[rust]" name="test_y"/>'
        '</testsuite></testsuites>')
    read = pytest_run.read_report(report)
    assert pytest_run.tree_core_default(read) == "rust"
    assert list(pytest_run.select(read, ID)) == [KEY.format("rust")]
    assert pytest_run.variant(KEY.format("rust")) == "rust" and pytest_run.variant("a.TestX::t") is None


def test_code_under_test_that_produced_nothing_is_a_failure_and_prove_says_broken():
    """The seam asserts (never refuses) when the code under test produced nothing, e.g. a
    verify forward run without planned metadata (0007's worker flag reverted): the patched
    side fails, and prove says BROKEN instead of 'not proven here'."""
    nothing = ("failed", "AssertionError: the target forward ran without attention metadata planned for the verify batch")
    assert verdict.outcomes_for({"t.TestV::test_m": nothing}, "t.py::TestV").status == "fail"
    word = prove.summarize({"t.TestV::test_m": nothing})
    assert word == "failed"
    assert prove.verdict([("failed", word)], good=1).startswith("BROKEN")
    refused = ("skipped", "cannot run on sglang 0.5.12: the DSV4 metadata has no core_attn_metadata.copy_ [tests/seam/x.py]")
    assert prove.verdict([("failed", prove.summarize({"t.TestV::test_m": refused}))], good=1).startswith("not proven")


def test_no_code_path_on_any_core_is_the_releases_reason_not_a_cores():
    other = ("skipped", SKIP[1].replace("the Rust tree core builds", "neither core builds"))
    o = verdict.outcomes_for(results("python", python=SKIP, rust=other), ID)
    assert o.status == "n/a" and o.message.startswith("not applicable to sglang 0.5.20")
    assert verdict.fix_state([o]) == (verdict.NOT_APPLICABLE, o.message)
    # one core without the code path, the other unable to run: never held
    mixed = verdict.outcomes_for(results("python", python=SKIP, rust=CANNOT), ID)
    assert mixed.status == "cannot-run" and mixed.message.startswith("[rust] cannot run")
