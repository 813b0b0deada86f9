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


def run_suite(tmp_path, *args, env=None, target=None):
    """pytest over a copy of the policy (tests/conftest.py + the seam's base) and CHECKS
    (or `target`)."""
    root = tmp_path / "tests"
    (root / "seam").mkdir(parents=True, exist_ok=True)
    shutil.copy(TESTS / "conftest.py", root / "conftest.py")
    shutil.copy(TESTS / "seam" / "__init__.py", root / "seam" / "__init__.py")
    (root / "test_checks.py").write_text(CHECKS)
    environ = {"PATH": "/usr/bin:/bin", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(target or root), *args],
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
    assert verdict.fix_state([o("pass"), o("skip", "needs a CUDA device")]) == (
        verdict.FIXED, "1 of 2 test ids pass, 1 skipped (needs a CUDA device)")
    state, why = verdict.fix_state([o("pass"), o("fail", "AssertionError: lost_tokens=1340")])
    assert state == verdict.PRESENT and "1 of 2 test ids fail (AssertionError: lost_tokens=1340)" in why
    assert verdict.fix_state([o("pass"), o("cannot-run", "cannot run on sglang 9: no pool")]) == (
        verdict.CANNOT, "cannot run on sglang 9: no pool")
    assert verdict.fix_state([o("skip", "needs a CUDA device")])[0] == verdict.CANNOT


def test_a_release_without_the_code_path_is_not_applicable_not_cannot_run():
    na = "not applicable to sglang 9: MatchResult reports no SWA host hit"
    assert verdict._status("skipped", na).status == "n/a"
    o = verdict.Outcome
    assert verdict.fix_state([o("n/a", na), o("n/a", na)]) == (verdict.NOT_APPLICABLE, na)
    # one test without the path and one that needs CUDA: nothing was judged, not "not applicable"
    assert verdict.fix_state([o("n/a", na), o("skip", "needs a CUDA device")])[0] == verdict.CANNOT
    assert verdict.fix_state([o("n/a", na), o("fail", "AssertionError: x")])[0] == verdict.PRESENT
    assert verdict.fix_state([o("n/a", na), o("pass")])[0] == verdict.FIXED
    fix_list = [fixes.Fix("#1", "one", "2", ("t::A",))]
    cells = {("#1", "1"): {"state": "present", "why": "1 of 1 fail"}, ("#1", "2"): {"state": verdict.NOT_APPLICABLE, "why": na}}
    table = matrix.render(fix_list, ["1", "2"], cells, 3.0, ran=(1, 1))
    assert "| #1 one | present | not-applicable |" in table and f"- #1 on 2: {na}" in table
    assert "judged 1 of 1 fixes on 1 of 2 releases" in table and "over 2 releases" not in table


def test_matrix_table_lists_every_fix_and_why_one_cannot_run():
    fix_list = [fixes.Fix("#1", "one", "2", ("t::A",)), fixes.Fix("#2", "two", "1", ("t::B",))]
    cells = {("#1", "1"): {"state": "present", "why": "1 of 1 fail"}, ("#1", "2"): {"state": "fixed", "why": "ok"},
             ("#2", "1"): {"state": "fixed", "why": "ok"}, ("#2", "2"): {"state": "cannot-run", "why": "no pool"}}
    table = matrix.render(fix_list, ["1", "2"], cells, 12.0)
    assert "| #1 one | present | fixed |" in table and "| #2 two | fixed | cannot-run |" in table
    assert "- #2 on 2: no pool" in table and "over 2 releases took 12 s" in table


ADAPTER = '''"""A toy adapter over the synthetic upstream's sglang."""
import seam
from sglang import pool


@seam.building("the pool's dspark view")
def dspark_view():
    return pool.CONFIG.is_dspark  # the release has no CONFIG: a raw AttributeError


def missing_home():
    return seam.locate("Pool", "sglang.pool:Pool", "sglang.pools:Pool")
'''

ADAPTER_CHECKS = '''import unittest

from seam import toy


class TestThroughTheAdapter(unittest.TestCase):
    def test_fixture_the_release_cannot_build(self):
        toy.dspark_view()

    def test_class_the_release_moved(self):
        toy.missing_home()
'''


def test_a_raw_exception_from_an_adapter_is_cannot_run_naming_release_and_adapter(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import Upstream

    (tmp_path / "upstream").mkdir()
    up = Upstream(tmp_path / "upstream")
    (tmp_path / "tests" / "seam").mkdir(parents=True)
    (tmp_path / "tests" / "seam" / "toy.py").write_text(ADAPTER)
    (tmp_path / "tests" / "test_adapter.py").write_text(ADAPTER_CHECKS)
    # the synthetic upstream's wheel is importable as is (pure Python): its version is the release
    proc = run_suite(tmp_path, "--allow-cannot-run", target=tmp_path / "tests" / "test_adapter.py",
                     env={"PYTHONPATH": str(up.wheel)})
    assert "2 cannot-run" in proc.stdout, proc.stdout
    assert ("test_fixture_the_release_cannot_build: cannot run on sglang 1.0.0: cannot build the pool's dspark "
            "view (AttributeError: module 'sglang.pool' has no attribute 'CONFIG') [tests/seam/toy.py]") in proc.stdout
    assert "cannot run on sglang 1.0.0: Pool not found (looked at sglang.pool:Pool, sglang.pools (" in proc.stdout
    assert "[tests/seam/toy.py]" in proc.stdout.split("test_class_the_release_moved")[-1]
    assert proc.returncode == 0 and " failed" not in proc.stdout and " error" not in proc.stdout


BROKEN = '''raise ImportError("cannot import name 'HostPoolGroup' from 'sglang.pool'")
'''
SKIPPED_AT_IMPORT = '''import seam
seam.require(False, "ComponentType not found (looked at sglang.x)")
'''


def test_a_file_that_cannot_be_imported_hides_no_other_files_results(tmp_path):
    from scripts.lib import pytest_run

    root = tmp_path / "tests"
    run_suite(tmp_path)  # lays out the policy and test_checks.py
    (root / "test_broken.py").write_text(BROKEN)
    (root / "test_seam_refuses.py").write_text(SKIPPED_AT_IMPORT)
    ids = ["tests/test_broken.py::TestX", "tests/test_checks.py::TestChecks::test_reaches_its_check",
           "tests/test_seam_refuses.py::TestY", "tests/test_checks.py::TestChecks::test_needs_what_the_release_lacks"]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    results = pytest_run.outcomes_per_file(venv, Path(tmp_path / "no-site"), ids, tmp_path,
                                           extra_env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **pytest_run.ALLOW_CANNOT_RUN})
    got = {t: verdict.outcomes_for(results, t) for t in ids}
    assert got[ids[1]].status == "pass"
    assert got[ids[3]].status == "cannot-run"
    assert got[ids[0]].status == "cannot-run" and "cannot import name 'HostPoolGroup'" in got[ids[0]].message
    # the seam's reason, verbatim, not "not collected"
    assert got[ids[2]] == verdict.Outcome("cannot-run", "cannot run on sglang unknown: ComponentType not found (looked at sglang.x)")


def test_a_class_collected_per_tree_core_belongs_to_its_test_id():
    from scripts.lib import pytest_run

    results = {"tests.a.test_x.TestY[rust]::test_z": ("passed", ""), "tests.a.test_x.TestYZ::test_z": ("failed", "")}
    assert list(pytest_run.select(results, "tests/a/test_x.py::TestY")) == ["tests.a.test_x.TestY[rust]::test_z"]
    assert list(pytest_run.select(results, "tests/a/test_x.py::TestY::test_z")) == ["tests.a.test_x.TestY[rust]::test_z"]


def test_a_guard_that_cannot_run_is_not_a_failure_and_names_the_adapter_to_port():
    from scripts import rebase
    from scripts.lib import config, report

    fix = fixes.Fix("#7", "seven", "", ("t.py::T",))
    why = "cannot run on sglang 9: HostPoolGroup not found [tests/seam/radix.py]"
    runs = {"base": {"t.py::T": verdict.Outcome("pass")}, "vanilla": {"t.py::T": verdict.Outcome("cannot-run", why)}}
    row = rebase.guard_row(fix, runs, config.Paths.from_env())
    assert row["holds"] is None and row["vanilla"] == {"state": "cannot-run", "why": why}
    data = {"upstream": "9", "base": "1", "patches": [], "guards": [row]}
    (problem,) = rebase.strict_problems(data)
    assert "fail" not in problem.replace("not a failure", "")
    assert problem == "guard(s) #7 cannot run (not a failure: #7: port the adapter tests/seam/radix.py to this release)"
    table = "\n".join(report.guards(data))
    assert "| cannot-run |" in table and "**NO**" not in table
    assert verdict.categorize(False, [verdict.Outcome("fail", "AssertionError")], [verdict.Outcome("cannot-run", why)],
                              None)[1].endswith("port the adapter tests/seam/radix.py to this release")


def test_first_released_is_read_off_the_matrix():
    rec = [{"fix": "#1", "release": v, "state": s, "why": ""} for v, s in
           (("0.5.12", "present"), ("0.5.12.post1", "fixed"), ("0.5.13", "cannot-run"), ("0.5.14", "fixed"))]
    rec += [{"fix": "#2", "release": v, "state": "fixed", "why": ""} for v in ("0.5.12", "0.5.13")]
    rec += [{"fix": "#3", "release": "0.5.12", "state": "present", "why": ""}]
    assert fixes.first_released(rec, "#1") == "0.5.12.post1"
    assert fixes.first_released(rec, "#2") == "0.5.12 or earlier"
    assert fixes.first_released(rec, "#3") == "" and fixes.first_released(rec, "#4") == ""


def test_the_registry_refuses_a_hand_written_first_release(tmp_path):
    import pytest

    from scripts.lib.errors import SeriesError

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/fixes.toml").write_text('[[fix]]\npr = "#1"\ntitle = "t"\nupstream = "0.5.13"\ntests = ["a"]\n')
    with pytest.raises(SeriesError, match="comes from the matrix"):
        fixes.load(tmp_path)


CORES = '''"""Stands in for tests/seam/radix.py: a release with two tree cores."""
_core = [None]


def tree_cores():
    return ["python", "rust"]


def use_core(core):
    _core[0] = core


def current_core():
    return _core[0]


def default_core():
    return "rust"
'''

ON_EVERY_CORE = '''import unittest

from seam import radix


class TestOnTheTree(unittest.TestCase):
    runs_on_every_tree_core = True

    def test_sees_its_core(self):
        self.assertEqual(radix.current_core(), self.tree_core)
        print("ran on", radix.current_core())
'''


def test_a_radix_check_runs_once_per_tree_core_the_core_in_its_id(tmp_path):
    from scripts.lib import pytest_run

    (tmp_path / "tests" / "seam").mkdir(parents=True)
    (tmp_path / "tests" / "seam" / "radix.py").write_text(CORES)
    (tmp_path / "tests" / "test_tree.py").write_text(ON_EVERY_CORE)
    proc = run_suite(tmp_path, "-v", "-s", "--junitxml", str(tmp_path / "j.xml"), target=tmp_path / "tests" / "test_tree.py")
    assert proc.returncode == 0, proc.stdout
    assert "test_tree.py::TestOnTheTree[python]::test_sees_its_core" in proc.stdout
    assert "test_tree.py::TestOnTheTree[rust]::test_sees_its_core" in proc.stdout and "2 passed" in proc.stdout
    assert "ran on python" in proc.stdout and "ran on rust" in proc.stdout
    results = pytest_run.read_report(tmp_path / "j.xml")
    assert sorted(pytest_run.select(results, "tests/test_tree.py::TestOnTheTree")) == [
        "tests.test_tree.TestOnTheTree[python]::test_sees_its_core", "tests.test_tree.TestOnTheTree[rust]::test_sees_its_core"]
    assert pytest_run.tree_core_default(results) == "rust"  # what the release runs, recorded with the run


def test_a_test_per_tree_core_is_judged_by_the_cores_that_ran():
    """TestX[python] / TestX[rust]: a failing check is evidence whatever else could not run;
    a pass on one core with the other unable to run passes, saying what it could not judge,
    where the one that ran is the release's default core; else the release is not judged."""
    from scripts.lib import pytest_run

    cannot = ("skipped", "cannot run on sglang 9.9: no node objects [tests/seam/radix.py]")
    ran = {"passed": ("passed", ""), "failed": ("failed", "AssertionError: leaf lost")}
    node = "tests/registered/test_x.py::TestX"
    for python, expected in (("passed", "pass"), ("failed", "fail")):
        results = {"tests.registered.test_x.TestX[python]::test_y": ran[python],
                   "tests.registered.test_x.TestX[rust]::test_y": cannot,
                   pytest_run.TREE_CORE_DEFAULT: ("property", "python")}
        outcome = verdict.outcomes_for(results, node)
        assert outcome.status == expected
    assert outcome.message == "[python] AssertionError: leaf lost"
    passing = {"tests.registered.test_x.TestX[python]::test_y": ran["passed"],
               "tests.registered.test_x.TestX[rust]::test_y": cannot,
               pytest_run.TREE_CORE_DEFAULT: ("property", "python")}
    assert verdict.outcomes_for(passing, node).message == f"python; rust not judged: {cannot[1]}"
    state, why = verdict.fix_state([verdict.outcomes_for(passing, node)])
    assert state == verdict.FIXED and why.startswith("1 of 1 test ids pass; python; rust not judged: cannot run on sglang 9.9")
    passing[pytest_run.TREE_CORE_DEFAULT] = ("property", "rust")
    assert verdict.fix_state([verdict.outcomes_for(passing, node)])[0] == verdict.CANNOT
    only_cannot = {"tests.registered.test_x.TestX[rust]::test_y": cannot}
    assert verdict.fix_state([verdict.outcomes_for(only_cannot, node)])[0] == verdict.CANNOT
