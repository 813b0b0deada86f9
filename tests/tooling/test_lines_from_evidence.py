"""A fix is the unit and every line an equal: the lines come from the evidence (the
matrix) and the ports there are, and a new release is judged from the newest line at or
below it. On the synthetic upstream (1.0.0 the base, 2.0.0, and a new 3.0.0)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rebase_fixtures import BASE, CHANGES, NEW, TEST_FILE, Releases, patch_text  # noqa: E402

from scripts import rebase  # noqa: E402
from scripts.lib import config, lines, series  # noqa: E402

FIXES = {"#5": "TestFive", "#10": "TestTen", "#20": "TestTwenty", "#30": "TestThirty", "#40": "TestForty"}


def evidence(up, states: dict) -> None:
    """tests/fixes.toml (one fix per synthetic patch, in series order, and #40 with no
    patch yet) and a published matrix {(fix, release): state}."""
    rows = []
    for pr, test in FIXES.items():
        rows.append(f'[[fix]]\npr = "{pr}"\ntitle = "{pr}"\ntests = ["{TEST_FILE}::{test}"]\n')
    (up.tests_root / "tests" / "fixes.toml").write_text("\n".join(rows))
    (up.tests_root / "docs").mkdir(exist_ok=True)
    records = [{"fix": f, "release": r, "state": s, "why": ""} for (f, r), s in states.items()]
    (up.tests_root / "docs" / "matrix.json").write_text(json.dumps(records))


@pytest.fixture
def up(tmp_path, monkeypatch):
    up = Releases(tmp_path)
    # 0005 names a second test file: keep the registry simple with a patch of one test each
    up.write_series([n for n in CHANGES if not n.startswith("0005")])
    up.patch_path("0005-thirty-five.patch").unlink()
    for key, value in {**up.env, "SGLANG_SERIES_TESTS_ROOT": str(up.tests_root)}.items():
        if key.startswith(("SGLANG_SERIES_", "UV_DEFAULT_INDEX")):
            monkeypatch.setenv(key, value)
    return up


def entries(up, version: str) -> list[str]:
    return series.entries(up.patches, up.patches / "lines" / f"{version}.series")


def test_a_line_is_what_the_evidence_says_the_release_lacks(up):
    paths = config.Paths.from_env()
    # 2.0.0 has #10 (upstream absorbed it); #20 has a port written on 2.0.0; #40 has no patch at all
    up.add_raw_patch(f"lines/{NEW}/0003-twenty.patch", patch_text(20, "LINE_20 = 'twenty'", "pool: set line 20",
                                                                 f"{TEST_FILE}::TestTwenty"))
    states = {(f, r): "present" for f in FIXES for r in (BASE, NEW)}
    states[("#10", NEW)] = "fixed"
    evidence(up, states)
    base = lines.derive(paths, BASE, up.tests_root)
    assert base.entries == [f"lines/{BASE}/{n}" for n in ("0001-five.patch", "0002-ten.patch", "0003-twenty.patch",
                                                           "0004-thirty.patch")]
    assert list(base.lacking) == ["#40"]
    new = lines.derive(paths, NEW, up.tests_root)
    assert new.entries == [f"lines/{BASE}/0001-five.patch", f"lines/{NEW}/0003-twenty.patch",
                           f"lines/{BASE}/0004-thirty.patch"]  # the newest port at or below 2.0.0, #10 left out
    assert list(new.lacking) == ["#40"]

    # A maintainer's word keeps a fix off a line and survives the rewrite, with every comment.
    line = up.patches / "lines" / f"{NEW}.series"
    line.write_text("# the line of 2.0.0\n# dropped 0004-thirty.patch: upstream's reset of line 30 is right\n")
    proc = up.make("lines", "WRITE=1", env={"SGLANG_SERIES_TESTS_ROOT": str(up.tests_root)})
    assert proc.returncode == 0, proc.stderr
    assert f"wrote patches/lines/{NEW}.series" in proc.stdout
    text = line.read_text()
    assert text.startswith("# the line of 2.0.0\n# dropped 0004-thirty.patch: upstream's reset of line 30 is right\n")
    assert entries(up, NEW) == [f"lines/{BASE}/0001-five.patch", f"lines/{NEW}/0003-twenty.patch"]
    assert "# lacks #40: no port at or below sglang 2.0.0 yet" in text
    assert lines.differs(paths, NEW, up.tests_root) is None
    assert "| 2.0.0 | `patches/lines/2.0.0.series` | 0001 (1.0.0), 0003 | #40 |" in proc.stdout
    # ... and the apply of a line that lacks a port warns that the wheel lacks that fix
    applied = up.run("apply", "--no-env")
    assert applied.returncode == 0, applied.stderr
    assert f"warning: sglang {BASE} lacks #40 and its line carries no port of it" in applied.stdout

    # A line that no longer says what the evidence says is named, with the command that rewrites it.
    line.write_text(line.read_text().replace(f"lines/{NEW}/0003-twenty.patch", f"lines/{BASE}/0003-twenty.patch"))
    said = lines.differs(paths, NEW, up.tests_root)
    assert said == "names 1.0.0/0001, 1.0.0/0003 where the evidence asks for 1.0.0/0001, 2.0.0/0003"


def test_a_fix_the_release_cannot_have_is_neither_carried_nor_unjudged(up):
    paths = config.Paths.from_env()
    states = {(f, r): "present" for f in FIXES for r in (BASE, NEW)}
    states[("#10", NEW)] = "not-applicable"  # 2.0.0 has no such code path at all
    states[("#40", NEW)] = "not-applicable"
    evidence(up, states)
    new = lines.derive(paths, NEW, up.tests_root)
    assert f"lines/{BASE}/0002-ten.patch" not in new.entries and f"lines/{BASE}/0001-five.patch" in new.entries
    assert "#40" not in new.lacking and not {"#10", "#40"} & set(new.unjudged)


def test_a_new_release_is_judged_from_the_newest_line_below_it(up):
    paths = config.Paths.from_env()
    # 2.0.0's line carries a patch only it has (a port), which a move to 3.0.0 must see
    up.add_raw_patch(f"lines/{NEW}/0003-twenty.patch", patch_text(20, "LINE_20 = 'twenty'", "pool: set line 20",
                                                                 f"{TEST_FILE}::TestTwenty"))
    (up.patches / "lines" / f"{NEW}.series").write_text(f"# the line of 2.0.0\nlines/{NEW}/0003-twenty.patch\n")
    up.pin_files("3.0.0", {"sglang/__init__.py": "VERSION = '3.0.0'\n", "sglang/pool.py": "".join(
        f"LINE_{i} = {i}\n" for i in range(1, 41))})
    assert lines.start_for(paths, "3.0.0") == NEW
    assert lines.start_for(paths, "3.0.0", BASE) == BASE
    data = rebase.rebase(paths, "3.0.0", tests_root=up.tests_root, venv_of=lambda v: Path(sys.prefix), log=lambda *_: None)
    assert data["base"] == NEW
    assert [r["patch"] for r in data["patches"]] == ["0003-twenty.patch"]
    assert data["patches"][0]["category"] == "applies-cleanly"
