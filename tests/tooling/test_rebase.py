"""make rebase on a synthetic upstream: every category comes out of the evidence (apply,
tests on base / vanilla X / X with the series), the report and the proposed series are
written to the scratch area, and patches/ changes only when asked."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rebase_fixtures import BASE, NEW, Releases  # noqa: E402

from scripts import rebase  # noqa: E402
from scripts.lib import config, verdict  # noqa: E402
from scripts.lib.errors import SeriesError  # noqa: E402

EXPECTED = {
    "0001-five.patch": verdict.CLEAN,
    "0002-ten.patch": verdict.ABSORBED,
    "0003-twenty.patch": verdict.CONFLICTS,
    "0004-thirty.patch": verdict.TESTS_FAIL,
    "0005-thirty-five.patch": verdict.PORTING,
}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One report for the module: the up-front cost is a few seconds."""
    tmp = tmp_path_factory.mktemp("rebase")
    up = Releases(tmp)
    mp = pytest.MonkeyPatch()
    for key, value in up.env.items():
        if key.startswith(("SGLANG_SERIES_", "UV_DEFAULT_INDEX")):
            mp.setenv(key, value)
    mp.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the synthetic tests need no plugin: faster runs
    paths = config.Paths.from_env()
    # The running interpreter's environment has pytest; the synthetic sglang needs nothing else.
    data = rebase.rebase(paths, NEW, tests_root=up.tests_root, venv_of=lambda v: Path(sys.prefix), log=lambda *_: None)
    yield up, paths, data
    mp.undo()


def row(data, name):
    return next(r for r in data["patches"] if r["patch"] == name)


def test_each_patch_is_sorted_by_its_evidence(done):
    _, _, data = done
    assert {r["patch"]: r["category"] for r in data["patches"]} == EXPECTED


def test_evidence_behind_each_category(done):
    _, _, data = done
    clean = row(data, "0001-five.patch")["tests"][0]
    assert (clean["base"]["status"], clean["vanilla"]["status"], clean["patched"]["status"]) == ("fail", "fail", "pass")

    absorbed = row(data, "0002-ten.patch")
    assert not absorbed["applies"] and absorbed["reverse_applies"]
    assert absorbed["tests"][0]["vanilla"]["status"] == "pass"

    conflict = row(data, "0003-twenty.patch")
    assert not conflict["applies"] and not conflict["reverse_applies"]
    assert [(h["file"], h["index"], h["of"], h["reason"]) for h in conflict["conflicts"]] == [
        ("python/sglang/pool.py", 1, 1, "context does not match")]
    assert conflict["tests"][0]["patched"] is None

    failing = row(data, "0004-thirty.patch")
    assert failing["applies"] and failing["tests"][0]["patched"]["status"] == "fail"
    assert "AssertionError" in failing["tests"][0]["patched"]["message"]

    porting = row(data, "0005-thirty-five.patch")
    assert porting["applies"]
    assert porting["tests"][0]["base"]["status"] == "fail"  # an assertion on the base...
    assert porting["tests"][0]["patched"]["status"] == "cannot-run"  # ...a TypeError on X
    assert "TypeError" in porting["tests"][0]["patched"]["message"]
    broken = porting["tests"][1]
    assert (broken["base"]["status"], broken["vanilla"]["status"]) == ("fail", "cannot-run")
    assert "collection failure: ImportError: cannot import name 'BASE_ONLY'" in broken["vanilla"]["message"]


def test_reports_and_proposed_series_are_written_but_patches_untouched(done):
    up, paths, data = done
    out = paths.build / NEW / "rebase"
    assert json.loads((out / "report.json").read_text()) == data
    md = (out / "report.md").read_text()
    for name, category in EXPECTED.items():
        assert f"`{name}` | **{category}**" in md
    assert "hunk 1 of 1" in md and str(paths.build) not in md
    proposed = [l.split()[0] for l in (out / "patches" / "series").read_text().splitlines() if l and not l.startswith("#")]
    assert proposed == [n for n in EXPECTED if n != "0002-ten.patch"]  # absorbed dropped
    assert (out / "patches" / "0003-twenty.patch").read_bytes() == (up.patch_path("0003-twenty.patch")).read_bytes()
    refreshed = (out / "patches" / "0005-thirty-five.patch").read_text()
    assert "@@ -32,7 +32,7 @@" in refreshed  # re-made on 2.0.0 without 0002's context
    assert len(list((up.patches / "lines" / BASE).glob("*.patch"))) == 5
    assert config.base_version(paths) == BASE


def test_write_refuses_while_a_kept_patch_does_not_apply(done):
    _, paths, data = done
    with pytest.raises(SeriesError, match="0003-twenty.patch do"):
        rebase.write_to_patches(paths, data)


def test_cannot_run_on_vanilla_is_told_apart_from_the_bug_still_being_there():
    o = verdict.Outcome
    # does not apply; the base failed by assertion, X cannot even construct the object
    assert verdict.categorize(False, [o("fail", "AssertionError: 1 != 2")],
                              [o("cannot-run", "TypeError: f() got an unexpected keyword argument 'size'")], None)[0] == verdict.PORTING
    # does not apply; the same ImportError on the base and on X: the fix is simply not there
    same = o("cannot-run", "ImportError: cannot import name 'fixed' from 'sglang.pool' (/a/site/sglang/pool.py)")
    moved = o("cannot-run", "ImportError: cannot import name 'fixed' from 'sglang.pool' (/b/site/sglang/pool.py)")
    assert verdict.categorize(False, [same], [moved], None)[0] == verdict.CONFLICTS
    # not an assertion, not an API error, but not what the base did either: setup no longer works on X
    assert verdict.categorize(False, [o("fail", "AssertionError: page 128 written twice")],
                              [o("error", "ValueError: Global server args is not set yet!")], None)[0] == verdict.PORTING
    # the same crash on the base and on X is the bug itself; with the series it is still there
    crash = o("error", "RuntimeError: shape mismatch")
    assert verdict.categorize(False, [crash], [crash], None)[0] == verdict.CONFLICTS
    assert verdict.categorize(True, [crash], [crash], [crash])[0] == verdict.TESTS_FAIL
    # passing on the base, failing on X, not applying: X changed what the patch keeps
    kept = verdict.categorize(False, [o("pass")], [o("fail", "AssertionError: 43 != 1")], None)
    assert kept[0] == verdict.CONFLICTS and "pass on the vanilla base" in kept[1]
    # passing on the base and on X: no sign that X has it; the series decides
    keeps = verdict.categorize(False, [o("pass")], [o("pass")], None)
    assert keeps[0] == verdict.CONFLICTS and "only the series" in keeps[1]
    assert verdict.categorize(True, [o("pass")], [o("pass")], [o("pass")])[0] == verdict.CLEAN
    assert verdict.categorize(True, [o("pass")], [o("pass")], [o("fail", "AssertionError: 43 != 1")])[0] == verdict.TESTS_FAIL
    # tests skipped everywhere are no evidence of absorption
    assert verdict.categorize(False, [o("skip")], [o("skip")], None)[0] == verdict.CONFLICTS


def test_unpinned_or_missing_release_is_one_line_that_says_what_to_do(tmp_path):
    up = Releases(tmp_path)
    for args, hint in ((["--upstream", "9.9.9"], "make pin UPSTREAM_VERSION=9.9.9"),
                       ([], "make rebase UPSTREAM_VERSION=X"),
                       (["--upstream", BASE], f"no line of a release below sglang {BASE} to start from")):
        proc = up.run("rebase", *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and hint in lines[0], proc.stderr
    assert not (up.build / "9.9.9").exists()


def test_a_report_killed_mid_trial_is_recovered_by_the_next_one(done):
    """kill -9 during `make rebase` leaves its trial's `git am` half done in X's tree: the next
    report drops it by itself (it was the report's own) and reports as usual."""
    up, paths, _ = done
    patch = up.patch_path("0003-twenty.patch")  # does not apply on NEW: git am stops half way
    up.git_in(NEW, "checkout", "-q", "-B", "rebase-trial", "baseline")
    am = subprocess.run(["git", "-C", str(up.tree_of(NEW)), "am", str(patch)], capture_output=True, text=True)
    assert am.returncode != 0 and (up.tree_of(NEW) / ".git/rebase-apply").exists()
    said = []
    data = rebase.rebase(paths, NEW, tests_root=up.tests_root, venv_of=lambda v: Path(sys.prefix), log=said.append)
    assert "the previous `make rebase` was interrupted; its unfinished trial is dropped" in said
    assert {r["patch"]: r["category"] for r in data["patches"]} == EXPECTED


def test_a_queue_conflict_in_the_tree_is_not_the_reports_to_drop(done):
    up, paths, _ = done
    patch = up.patch_path("0003-twenty.patch")
    up.git_in(NEW, "checkout", "-q", "-B", "queue", "baseline")
    subprocess.run(["git", "-C", str(up.tree_of(NEW)), "am", str(patch)], capture_output=True, text=True)
    with pytest.raises(SeriesError) as err:
        rebase.rebase(paths, NEW, tests_root=up.tests_root, venv_of=lambda v: Path(sys.prefix), log=lambda *_: None)
    command = f"git -C {up.tree_of(NEW)} am --abort"
    assert f"drop it with `{command}`" in str(err.value)
    subprocess.run(command.split(), check=True)  # what the error says to do
    data = rebase.rebase(paths, NEW, tests_root=up.tests_root, venv_of=lambda v: Path(sys.prefix), log=lambda *_: None)
    assert {r["patch"]: r["category"] for r in data["patches"]} == EXPECTED


def test_a_rerun_reuses_the_outcomes_until_a_test_changes(done):
    """Every side (the base's and X's vanilla wheels, X with the series) reruns only when
    its installed files, the venv or tests/ changed."""
    up, paths, first = done
    said = []
    again = rebase.rebase(paths, NEW, tests_root=up.tests_root, venv_of=lambda v: Path(sys.prefix), log=said.append)
    reused = [line for line in said if "reused the outcomes" in line]
    assert sorted(line.split(":")[0] for line in reused) == ["patched", f"sglang {BASE}", f"sglang {NEW}"], said
    assert not [line for line in said if line.startswith("ran ")], said
    assert again["patches"] == first["patches"] and again["guards"] == first["guards"]

    said.clear()
    rebase.rebase(paths, NEW, tests_root=up.tests_root, venv_of=lambda v: Path(sys.prefix), log=said.append, fresh=True)
    assert not [line for line in said if "reused the outcomes" in line], said  # FRESH=1
    assert sum(line.startswith("ran ") for line in said) == 3, said

    note = up.tests_root / "tests" / "NOTE.txt"
    note.write_text("any change under tests/ is new evidence\n")
    try:
        said.clear()
        rebase.rebase(paths, NEW, tests_root=up.tests_root, venv_of=lambda v: Path(sys.prefix), log=said.append)
    finally:
        note.unlink()
    assert not [line for line in said if "reused the outcomes" in line], said
    assert sum(line.startswith("ran ") for line in said) == 3, said
