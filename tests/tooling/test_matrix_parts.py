"""The matrix fanned out as CI runs it (ci/matrix.yml): one part per release (`make matrix
RELEASES=X PART=file`), merged (`make matrix MERGE=dir`) into the very matrix.json that
one machine's `make matrix` writes, on a synthetic upstream with two releases."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import ORIGINAL, VERSION, Upstream  # noqa: E402

from scripts import matrix  # noqa: E402
from scripts.lib import config, fixes  # noqa: E402
from scripts.lib.errors import SeriesError  # noqa: E402

NEW = "1.1.0"
TEST_FILE = "tests/test_synthetic_matrix.py"
TESTS = '''import unittest

from sglang import pool


class TestTen(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_10, "ten")


class TestTwelve(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_12, 12)
'''


@pytest.fixture
def judged(tmp_path, monkeypatch):
    """1.0.0 lacks #10 (LINE_10 is not "ten"), 1.1.0 has it; both have #12."""
    up = Upstream(tmp_path)
    up.pin_files(NEW, {**ORIGINAL, "sglang/pool.py": ORIGINAL["sglang/pool.py"].replace("LINE_10 = 10", "LINE_10 = 'ten'")})
    for key, value in up.env.items():
        if key.startswith(("SGLANG_SERIES_", "UV_DEFAULT_INDEX")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    root = tmp_path / "tests-root"
    (root / "tests").mkdir(parents=True)
    (root / TEST_FILE).write_text(TESTS)
    (root / fixes.REGISTRY).write_text(
        f'[[fix]]\npr = "#10"\ntitle = "ten"\ntests = ["{TEST_FILE}::TestTen"]\n\n'
        f'[[fix]]\npr = "#12"\ntitle = "twelve"\ntests = ["{TEST_FILE}::TestTwelve"]\n')
    paths = config.Paths.from_env()
    fix_list = fixes.load(root)

    def judge(versions: list[str], fresh: bool = False) -> dict:
        return matrix.judge(paths, versions, fix_list, root, lambda v: Path(sys.prefix), fresh=fresh)

    return paths, fix_list, root, judge


def written(paths, fix_list, versions, cells) -> str:
    matrix.write(paths, fix_list, versions, cells, "table\n", publish_too=False)
    return (paths.build / "matrix" / "matrix.json").read_text()


def test_the_merged_parts_are_the_one_machine_matrix(judged, tmp_path):
    paths, fix_list, root, judge = judged
    one_machine = written(paths, fix_list, [VERSION, NEW], judge([VERSION, NEW]))
    assert [(r["fix"], r["release"], r["state"]) for r in json.loads(one_machine)] == [
        ("#10", VERSION, "present"), ("#10", NEW, "fixed"), ("#12", VERSION, "fixed"), ("#12", NEW, "fixed")]
    # each job on its own runner: its own run (fresh), newest first, to show the merge orders releases
    parts = tmp_path / "parts"
    for version in (NEW, VERSION):
        matrix.write_part(parts / f"matrix-part-{version}" / f"{version}.json", fix_list, [version],
                          judge([version], fresh=True), 1.0, root)
    versions, cells, _, count = matrix.merge(parts, fix_list, root)
    shutil.rmtree(paths.build / "matrix")
    assert versions == [VERSION, NEW] and count == 2
    assert written(paths, fix_list, versions, cells) == one_machine


def test_a_merge_refuses_parts_that_do_not_make_one_matrix(tmp_path):
    root = tmp_path / "root"
    (root / "tests").mkdir(parents=True)
    (root / fixes.REGISTRY).write_text('[[fix]]\npr = "#1"\ntitle = "one"\ntests = ["tests/test_a.py::T"]\n\n'
                                       '[[fix]]\npr = "#2"\ntitle = "two"\ntests = ["tests/test_a.py::U"]\n')
    fix_list = fixes.load(root)
    parts = tmp_path / "parts"
    with pytest.raises(SeriesError, match=r"holds no parts .*`make matrix RELEASES=X PART="):
        matrix.merge(parts, fix_list, root)
    cells = {(pr, "1.0"): {"state": "present", "why": ""} for pr in ("#1", "#2")}
    matrix.write_part(parts / "a.json", fix_list, ["1.0"], cells, 1.0, root)
    matrix.write_part(parts / "b.json", fix_list, ["1.0"], cells, 1.0, root)
    with pytest.raises(SeriesError, match=r"sglang 1.0 is in both .*a.json and .*b.json"):
        matrix.merge(parts, fix_list, root)
    (parts / "b.json").unlink()
    data = json.loads((parts / "a.json").read_text())
    (parts / "a.json").write_text(json.dumps(dict(data, records=data["records"][:1])))
    with pytest.raises(SeriesError, match=r"a.json has no outcome of #2 on sglang 1.0; .*`make matrix RELEASES=1.0 PART="):
        matrix.merge(parts, fix_list, root)
    (root / "tests" / "test_a.py").write_text("changed = True\n")  # the evidence would rest on other tests
    with pytest.raises(SeriesError, match="made with other tests or fixes than this checkout's"):
        matrix.merge(parts, fix_list, root)
    (parts / "a.json").write_text("{")
    with pytest.raises(SeriesError, match=r"a.json is not a part of `make matrix PART=...`"):
        matrix.merge(parts, fix_list, root)


def test_a_fix_judged_alone_keeps_the_other_fixes_published_rows(tmp_path):
    """FIXES=#20 (or RELEASES=...): the cells judged now join every other published cell,
    and a cell never judged reads not-judged, never as a pass or a gap."""
    (tmp_path / "docs").mkdir()
    registry = [fixes.Fix("#10", "ten", "", ("a",)), fixes.Fix("#20", "twenty", "", ("b",))]
    published = [{"fix": "#10", "release": r, "state": s, "why": ""} for r, s in ((VERSION, "present"), (NEW, "fixed"))]
    (tmp_path / "docs" / "matrix.json").write_text(json.dumps(published))
    paths = config.Paths(root=tmp_path, cache=tmp_path, build=tmp_path, patches=tmp_path, releases=tmp_path, env=tmp_path)
    assert [f.pr for f in matrix.selected(registry, "#20")] == ["#20"]
    new = {("#20", VERSION): {"state": "present", "why": ""}}  # judged on 1.0.0 only
    cells = matrix.with_published(paths, registry, [VERSION, NEW], new)
    records = matrix.assemble(registry, [VERSION, NEW], cells)
    assert records[:2] == published
    assert records[2] == {"fix": "#20", "release": VERSION, "state": "present", "why": ""}
    assert records[3]["state"] == matrix.NOT_JUDGED
    table = matrix.render(registry, [VERSION, NEW], cells, 1.0)
    assert "| #20 twenty | present | not-judged |" in table and "a fix added since 1.1.0 were last judged" in table
    with pytest.raises(SeriesError, match="FIXES names #99, not a fix of tests/fixes.toml"):
        matrix.selected(registry, "#99")
