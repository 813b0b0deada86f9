"""The cannot-run outcome: a test that asks the seam for something the installed release
lacks is told apart from a pass, a failing check and an ordinary skip, by pytest (through
tests/conftest.py), by the verdicts and by the matrix."""

import shutil
import subprocess
import sys
from pathlib import Path

from scripts import matrix
from scripts.lib import fixes, verdict

TESTS = Path(__file__).resolve().parents[1]

CHECKS = '''import unittest

import seam


class TestChecks(unittest.TestCase):
    def test_reaches_its_check(self):
        self.assertEqual(1 + 1, 2)

    def test_needs_what_the_release_lacks(self):
        seam.require(False, "no DeepSeekV4TokenToKVPool here")

    def test_needs_a_gpu(self):
        self.skipTest("needs a CUDA device")
'''


def run_suite(tmp_path, *args, env=None):
    """pytest over a copy of the policy (tests/conftest.py + the seam's base) and CHECKS."""
    root = tmp_path / "tests"
    (root / "seam").mkdir(parents=True, exist_ok=True)
    shutil.copy(TESTS / "conftest.py", root / "conftest.py")
    shutil.copy(TESTS / "seam" / "__init__.py", root / "seam" / "__init__.py")
    (root / "test_checks.py").write_text(CHECKS)
    environ = {"PATH": "/usr/bin:/bin", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(root), *args],
                          cwd=tmp_path, env=environ, capture_output=True, text=True)


def test_cannot_run_fails_the_suite_it_was_meant_for(tmp_path):
    proc = run_suite(tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "1 passed, 1 skipped, 1 cannot-run" in proc.stdout
    assert "tests that cannot reach their checks on this release" in proc.stdout
    assert "test_needs_what_the_release_lacks: cannot run on sglang" in proc.stdout
    assert "no DeepSeekV4TokenToKVPool here" in proc.stdout


def test_a_caller_judging_a_release_reads_it_without_failing(tmp_path):
    assert run_suite(tmp_path, "--allow-cannot-run").returncode == 0
    assert run_suite(tmp_path, env={"SGLANG_SERIES_ALLOW_CANNOT_RUN": "1"}).returncode == 0


def test_verdicts_read_cannot_run_apart_from_skips():
    status = verdict._status
    assert status("skipped", "cannot run on sglang 0.5.15: no state_dtype").status == "cannot-run"
    assert status("skipped", "needs a CUDA device").status == "skip"
    o = verdict.Outcome
    # a release whose tests cannot reach their checks is never called absorbed
    assert verdict.categorize(False, [o("fail", "AssertionError")], [o("cannot-run", "cannot run on sglang 2: x")], None)[0] \
        == verdict.PORTING


def test_fix_state_per_release():
    o = verdict.Outcome
    assert verdict.fix_state([o("pass"), o("pass")])[0] == verdict.FIXED
    assert verdict.fix_state([o("pass"), o("skip", "needs a CUDA device")]) == (verdict.FIXED, "1 of 2 test ids pass, 1 skipped")
    state, why = verdict.fix_state([o("pass"), o("fail", "AssertionError: lost_tokens=1340")])
    assert state == verdict.PRESENT and "1 of 2 test ids fail (AssertionError: lost_tokens=1340)" in why
    assert verdict.fix_state([o("pass"), o("cannot-run", "cannot run on sglang 9: no pool")]) == (
        verdict.CANNOT, "cannot run on sglang 9: no pool")
    assert verdict.fix_state([o("skip", "needs a CUDA device")])[0] == verdict.CANNOT


def test_matrix_table_lists_every_fix_and_why_one_cannot_run():
    fix_list = [fixes.Fix("#1", "one", "2", ("t::A",)), fixes.Fix("#2", "two", "1", ("t::B",))]
    cells = {("#1", "1"): {"state": "present", "why": "1 of 1 fail"}, ("#1", "2"): {"state": "fixed", "why": "ok"},
             ("#2", "1"): {"state": "fixed", "why": "ok"}, ("#2", "2"): {"state": "cannot-run", "why": "no pool"}}
    table = matrix.render(fix_list, ["1", "2"], cells, 12.0)
    assert "| #1 one | present | fixed |" in table and "| #2 two | fixed | cannot-run |" in table
    assert "- #2 on 2: no pool" in table and "over 2 releases took 12 s" in table
