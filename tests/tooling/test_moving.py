"""Moving the series to a new release on a synthetic upstream: a patch whose fix the new
release has only in part is not called absorbed, a guard (a fix the base already has)
that fails on the new release is reported and fails STRICT, and WRITE=1 drops an absorbed
patch with the release and the upstream PR that absorbed it."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rebase_fixtures import BASE, BASE_FILES, NEW, TEST_FILE, patch_text, pool_lines  # noqa: E402
from synthetic import Upstream  # noqa: E402

from scripts import rebase  # noqa: E402
from scripts.lib import config, verdict  # noqa: E402
from scripts.lib.errors import SeriesError  # noqa: E402

# 2.0.0 has 0001's fix, half of 0002's (LINE_12 but not LINE_14), none of 0003's, and it
# broke the guarded LINE_40.
NEW_FILES = {
    "sglang/__init__.py": "VERSION = '2.0.0'\n",
    "sglang/pool.py": "".join(pool_lines({10: "LINE_10 = 'ten'", 12: "LINE_12 = 'twelve'", 40: "LINE_40 = 'forty'"})),
}
TESTS = '''import unittest

from sglang import pool


class TestTen(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_10, "ten")


class TestTwelve(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_12, "twelve")


class TestFourteen(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_14, "fourteen")


class TestFive(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_5, "five")


class TestFortyGuard(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_40, 40)
'''
FIXES = f'''[[fix]]
pr = "#10"
title = "line ten"
tests = ["{TEST_FILE}::TestTen"]

[[fix]]
pr = "#12"
title = "lines twelve and fourteen"
upstream = "none"
tests = ["{TEST_FILE}::TestTwelve", "{TEST_FILE}::TestFourteen"]

[[fix]]
pr = "#5"
title = "line five"
upstream = "none"
tests = ["{TEST_FILE}::TestFive"]

[[fix]]
pr = "#40"
title = "line forty stays a number"
tests = ["{TEST_FILE}::TestFortyGuard"]
'''


def two_lines_patch(subject: str, tests: str) -> str:
    """0002 changes lines 12 and 14 (one hunk): patch_text with a second line edited."""
    text = patch_text(12, "LINE_12 = 'twelve'", subject, tests)
    return text.replace("-LINE_14 = 14\n", "-LINE_14 = 14\n", 1).replace(
        " LINE_14 = 14\n", "-LINE_14 = 14\n+LINE_14 = 'fourteen'\n", 1)


ALL = ["0001-ten.patch", "0002-twelve-fourteen.patch", "0003-five.patch"]


class Moves(Upstream):
    def __init__(self, tmp: Path, names: list[str]):
        super().__init__(tmp)
        self.pin_files(BASE, BASE_FILES)
        self.pin_files(NEW, NEW_FILES)
        self.tests_root = tmp / "tests-root"
        (self.tests_root / "tests").mkdir(parents=True)
        (self.tests_root / TEST_FILE).write_text(TESTS)
        (self.tests_root / "tests/fixes.toml").write_text(FIXES)
        # the matrix's evidence, which a fix's first release is read off
        (self.tests_root / "docs").mkdir()
        (self.tests_root / "docs/matrix.json").write_text(json.dumps([
            {"fix": "#10", "release": BASE, "state": "present", "why": ""},
            {"fix": "#10", "release": NEW, "state": "fixed", "why": ""}]))
        self.add_raw_patch("0001-ten.patch", patch_text(10, "LINE_10 = 'ten'", "pool: set line 10", f"{TEST_FILE}::TestTen"))
        self.add_raw_patch("0002-twelve-fourteen.patch", two_lines_patch(
            "pool: set lines 12 and 14", f"{TEST_FILE}::TestTwelve {TEST_FILE}::TestFourteen"))
        self.add_raw_patch("0003-five.patch", patch_text(5, "LINE_5 = 'five'", "pool: set line 5", f"{TEST_FILE}::TestFive"))
        for name in set(ALL) - set(names):
            self.patch_path(name).unlink()
        self.write_series(names)


def move(tmp_path, monkeypatch, names=ALL):
    up = Moves(tmp_path, names)
    for key, value in up.env.items():
        if key.startswith(("SGLANG_SERIES_", "UV_DEFAULT_INDEX")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    paths = config.Paths.from_env()
    data = rebase.rebase(paths, NEW, tests_root=up.tests_root, venv_of=lambda v: Path(sys.prefix), log=lambda *_: None)
    return up, paths, data


@pytest.fixture
def moved(tmp_path, monkeypatch):
    return move(tmp_path, monkeypatch)


@pytest.fixture
def moved_applying(tmp_path, monkeypatch):
    """Without the partly absorbed 0002, whose hunk no longer applies on 2.0.0."""
    return move(tmp_path, monkeypatch, ["0001-ten.patch", "0003-five.patch"])


def test_verdicts_absorbed_partly_absorbed_and_still_needed(moved):
    _, _, data = moved
    rows = {r["patch"]: r for r in data["patches"]}
    assert {n: r["category"] for n, r in rows.items()} == {
        "0001-ten.patch": verdict.ABSORBED,
        "0002-twelve-fourteen.patch": verdict.PARTIAL,
        "0003-five.patch": verdict.CLEAN,
    }
    partial = rows["0002-twelve-fourteen.patch"]
    assert "tests #1 pass on vanilla X, tests #2 still fail" in partial["evidence"]
    assert [t["vanilla"]["status"] for t in partial["tests"]] == ["pass", "fail"]
    assert rows["0001-ten.patch"]["drop_reason"].startswith("absorbed upstream: sglang 2.0.0 has #10, first released in 2.0.0")
    assert partial["drop_reason"] is None


def test_a_guard_failing_on_the_new_release_is_reported_and_fails_strict(moved):
    up, paths, data = moved
    (guard,) = data["guards"]
    assert guard["fix"] == "#40" and not guard["holds"]
    assert guard["base"]["state"] == verdict.FIXED and guard["vanilla"]["state"] == verdict.PRESENT
    assert "| #40 line forty stays a number |" in (paths.build / NEW / "rebase" / "report.md").read_text()
    assert "**NO**" in (paths.build / NEW / "rebase" / "report.md").read_text()
    assert "guard(s) #40 fail" in rebase.strict_problems(data)


def test_write_keeps_what_the_new_release_lacks_of_a_partly_absorbed_patch(moved):
    """0002's hunk no longer applies as it is (2.0.0 has line 12); the 3-way merge keeps
    line 14 only, its tests pass with the series, and WRITE=1 adopts it as merged."""
    up, paths, data = moved
    partial = next(r for r in data["patches"] if r["patch"] == "0002-twelve-fourteen.patch")
    assert partial["applies"] and partial["three_way"]
    assert [t["patched"]["status"] for t in partial["tests"]] == ["pass", "pass"]
    rebase.write_to_patches(paths, data)
    (entry,) = [l for l in up.series.read_text().splitlines() if "0002" in l and not l.startswith("#")]
    diff = (up.patches / entry).read_text().split("\ndiff --git", 1)[1]
    assert "+LINE_14 = 'fourteen'" in diff and "LINE_12 = 'twelve'" not in diff.replace(" LINE_12 = 'twelve'", "")


def test_write_drops_the_absorbed_patch_with_its_reason(moved_applying):
    up, paths, data = moved_applying
    changes = rebase.write_to_patches(paths, data)
    assert changes.dropped == ["0001-ten.patch"]
    series = up.series.read_text()
    # 0003 only moved on 2.0.0 (other blob ids, hunk offsets): 1.0.0's file applies as it is
    assert [l for l in series.splitlines() if l and not l.startswith("#")] == [f"lines/{BASE}/0003-five.patch"]
    # The 1.0.0 series stays whole as its line, so no patch file goes away.
    assert sorted(p.name for p in (up.patches / "lines" / BASE).glob("*.patch")) == ["0001-ten.patch", "0003-five.patch"]
    assert (up.patches / "lines" / f"{BASE}.series").is_file()
    assert "# dropped 0001-ten.patch: absorbed upstream: sglang 2.0.0 has #10" in series
    message = (paths.build / NEW / "rebase" / "COMMIT_MSG").read_text()
    assert "Dropped 0001-ten.patch: absorbed upstream: sglang 2.0.0 has #10" in message
    assert config.base_version(paths) == NEW


def test_write_refuses_a_report_made_for_another_series(moved):
    up, paths, data = moved
    (up.patch_path("0003-five.patch")).write_text((up.patch_path("0003-five.patch")).read_text() + "\n")
    with pytest.raises(SeriesError, match="judged another series"):
        rebase.write_to_patches(paths, data)
