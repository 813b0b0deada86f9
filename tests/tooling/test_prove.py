"""make prove on a synthetic upstream: a patch is proven by tests that fail on vanilla and
pass patched; a patch whose tests already pass on vanilla (it keeps vanilla's behaviour
where an earlier patch changed it) is proven by the patched build with it taken back out;
a guard by vanilla vs vanilla with its revert."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import VERSION, Upstream, _format_patch  # noqa: E402

from scripts import prove  # noqa: E402
from scripts.lib import build  # noqa: E402
from scripts.lib import config, envs, evidence, series  # noqa: E402
from scripts.lib.errors import SeriesError  # noqa: E402

TEST_FILE = "tests/test_synthetic_prove.py"
TESTS = '''import unittest

from sglang import pool


class TestTen(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_10, "ten")


class TestTwelveStaysANumber(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_12, 12)


class TestFortyStaysANumber(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_40, 40)
'''
POOL = "python/sglang/pool.py"


def lines(**changes) -> list[str]:
    """The synthetic pool.py with LINE_n set to the given texts (line_10="'ten'")."""
    text = dict(ORIGINAL_LINES)
    for key, value in changes.items():
        text[int(key.split("_")[1])] = f"LINE_{key.split('_')[1]} = {value}\n"
    return [text[n] for n in sorted(text)]


ORIGINAL_LINES = {n: f"LINE_{n} = {n}\n" for n in range(1, 41)}


def patch(old: list[str], new: list[str], subject: str, tests: str) -> str:
    return _format_patch(POOL, old, new, subject).replace("Tests: tests/tooling/synthetic.py", f"Tests: {tests}")


@pytest.fixture
def proving(tmp_path, monkeypatch):
    """0001 fixes LINE_10 but breaks LINE_12, which vanilla gets right; a 0002 made on top
    of it may put LINE_12 back. Returns a function that applies the series and proves it."""
    up = Upstream(tmp_path)
    for key, value in up.env.items():
        if key.startswith(("SGLANG_SERIES_", "UV_DEFAULT_INDEX")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    root = tmp_path / "tests-root"
    (root / "tests/reverts").mkdir(parents=True)
    (root / TEST_FILE).write_text(TESTS)
    # a revert that puts a bug back in vanilla: LINE_40 stops being a number
    (root / "tests/reverts/revert-40.patch").write_text(
        patch(lines(), lines(line_40="'forty'"), "put the bug back", f"{TEST_FILE}::TestFortyStaysANumber"))
    (root / "tests/reverts/series").write_text("revert-40.patch\n")
    (root / "tests/fixes.toml").write_text(
        f'[[fix]]\npr = "#40"\ntitle = "forty"\ntests = ["{TEST_FILE}::TestFortyStaysANumber"]\n')
    after_first = lines(line_10="'ten'", line_12="'oops'")
    up.add_raw_patch("0001-ten.patch", patch(lines(), after_first, "set line 10", f"{TEST_FILE}::TestTen"))

    def run(line_12: str | None, fresh: bool = False) -> dict:
        names = ["0001-ten.patch"]
        if line_12 is not None:
            up.add_raw_patch("0002-twelve.patch", patch(after_first, lines(line_10="'ten'", line_12=line_12),
                                                         "keep line 12 a number", f"{TEST_FILE}::TestTwelveStaysANumber"))
            names.append("0002-twelve.patch")
        up.write_series(names)
        proc = up.run("apply", "--no-env")
        assert proc.returncode == 0, proc.stderr
        paths = config.Paths.from_env()
        rel = config.release(paths, VERSION)
        venv = Path(sys.prefix)  # the running interpreter has pytest; the synthetic sglang needs nothing else
        sites = {
            "vanilla": envs.install_site(paths, venv, up.wheel, build.site(paths, VERSION, "vanilla")),
            "patched": envs.install_site(paths, venv, build.patched_wheel(paths, VERSION), build.site(paths, VERSION, "patched")),
        }
        return prove.prove(paths, rel, venv, sites, root, fresh=fresh)

    run.tests_root = root
    return run


def test_a_patch_that_keeps_vanilla_behaviour_is_proven_without_it(proving):
    result = proving("12")
    rows = {r["patch"]: r for r in result["patches"]}
    assert (rows["0001-ten.patch"]["before"], rows["0001-ten.patch"]["after"]) == ("failed", "passed")
    kept = rows["0002-twelve.patch"]  # passes on vanilla; without 0002 the series breaks it
    assert (kept["before"], kept["after"], kept["verdict"]) == ("failed", "passed", "proven")
    assert [(g["before"], g["after"], g["verdict"]) for g in result["guards"]] == [("passed", "failed", "proven")]
    assert prove.proven(result)


def test_a_keeper_whose_test_still_fails_is_not_proven(proving):
    result = proving("'still wrong'")
    kept = next(r for r in result["patches"] if r["patch"] == "0002-twelve.patch")
    assert (kept["before"], kept["after"]) == ("failed", "failed") and kept["verdict"].startswith("BROKEN")
    assert not prove.proven(result)


def test_a_keeper_that_cannot_be_taken_out_says_what_to_do(proving, tmp_path):
    proving("12")
    paths = config.Paths.from_env()
    keeper = series.parse(tmp_path / "patches/lines/1.0.0/0002-twelve.patch")
    # vanilla lacks 0001's line 10, the context 0002 was made on: as if a later patch
    # had rewritten the lines 0002 touches
    with pytest.raises(SeriesError, match="cannot be taken back out of the patched 1.0.0 build"):
        prove.site_with(paths, VERSION, build.site(paths, VERSION, "vanilla"), keeper, reverse=True)


def test_an_unchanged_side_reuses_its_outcomes_until_something_it_rests_on_changes(proving, capsys):
    """Each side (vanilla, patched, the guard's vanilla + revert, patched without the keeper)
    reruns only when its installed files, the venv or tests/ changed; FRESH=1 reruns all."""
    first = proving("12")
    capsys.readouterr()

    def reused(**kwargs) -> list[str]:
        again = proving("12", **kwargs)  # `make apply` again: the same series packs the same wheel
        assert again == first
        return sorted(line.split(":")[0] for line in capsys.readouterr().out.splitlines() if "reused the outcomes" in line)

    assert reused() == [f"patched {VERSION}", f"patched {VERSION} without 0002-twelve.patch",
                        f"vanilla {VERSION}", f"vanilla {VERSION} + revert-40.patch"]
    assert reused(fresh=True) == []
    stored = sorted((config.Paths.from_env().cache / "outcomes").glob("*.json"))
    assert len(stored) == 4
    for record in stored:  # damaged records (a full disk, a hand edit) are run again, never read
        record.write_text(record.read_text()[:20])
    assert reused() == []
    assert reused() != []  # and stored again
    (proving.tests_root / "tests/NOTE.txt").write_text("any change under tests/ is new evidence\n")
    assert reused() == []


def test_a_site_made_by_a_patch_is_not_the_wheel_it_was_copied_from(proving, tmp_path):
    """A guard's site carries its own stamp: its origin's and the revert's content, so it
    never reuses vanilla's outcomes, and another revert makes another site."""
    proving("12")
    paths = config.Paths.from_env()
    vanilla = build.site(paths, VERSION, "vanilla")
    revert = series.parse(proving.tests_root / "tests/reverts/revert-40.patch")
    reverted = prove.site_with(paths, VERSION, vanilla, revert)
    first = evidence.site_digest(reverted)
    assert first != evidence.site_digest(vanilla)
    revert.path.write_text(revert.path.read_text().replace("'forty'", "'forty!'"))
    assert evidence.site_digest(prove.site_with(paths, VERSION, vanilla, revert)) not in (first, evidence.site_digest(vanilla))


def test_a_test_that_cannot_run_is_never_a_pass_nor_a_plain_skip():
    cannot = ("skipped", "cannot run on sglang 9.9.9: no such pool [tests/seam]")
    assert prove.summarize({"t::a": cannot}) == "cannot-run"
    assert prove.summarize({"t::a": cannot, "t::b": ("skipped", "needs a CUDA device")}) == "cannot-run"
    # one tree core judged: a pass only where the other is not the release's default
    both = {"t[python]::a": ("passed", ""), "t[rust]::a": cannot}
    assert prove.summarize(both, default="python") == "passed (python; rust cannot-run, not judged)"
    assert prove.summarize(both, default="rust").startswith("cannot-run (python; rust cannot-run, not judged")
    assert prove.summarize(both).startswith("cannot-run")  # which core is the default: unknown
    assert prove.summarize({"t[python]::a": ("passed", ""), "t[rust]::a": ("failed", "x")}) == "failed (rust)"
    assert prove.summarize({"t::a": ("failed", "x"), "t::b": cannot}) == "failed"
    assert prove.verdict([("failed", "cannot-run")], good=1).startswith("not proven here")
    assert prove.verdict([("cannot-run", "passed")], good=1).startswith("not proven here")
    assert prove.verdict([("failed", "passed")], good=1) == "proven"
    assert prove.verdict([("failed", "missing")], good=1).startswith("BROKEN")


def test_a_not_applicable_test_judges_nothing_beside_a_proving_one():
    """A patch's test that finds no such code path on this release (a runtime switch the
    release does not have) is no failure: its other tests still prove the patch."""
    assert prove.verdict([("failed", "passed"), ("not-applicable", "not-applicable")], good=1) == "proven"
    assert prove.verdict([("not-applicable", "not-applicable")], good=1).startswith("not proven here")
    assert prove.verdict([("failed", "passed"), ("not-applicable", "failed")], good=1).startswith("BROKEN")


def test_a_fix_the_release_cannot_have_is_held_but_a_skip_is_not():
    """A fix whose every test finds no such code path in the release (the seam's
    applies_only_if) needs nothing there; a plain skip (no CUDA) judged nothing."""
    na = ("skipped", "not applicable to sglang 9.9.9: MatchResult reports no SWA host hit apart from Full KV")
    assert prove.summarize({"t::a": na, "t::b": na}) == "not-applicable"
    assert prove.summarize({"t::a": na, "t::b": ("passed", "")}) == "passed"
    assert prove.summarize({"t::a": na, "t::b": ("skipped", "needs a CUDA device")}) == "not-applicable"

    def held(word: str) -> bool:
        return prove.proven({"patches": [], "guards": [], "base_fixes": [{"fix": "#1", "test": "t::a", "vanilla": word}]})
    assert held("not-applicable") and held("passed")
    assert not held("skipped") and not held("cannot-run") and not held("failed")


def test_a_site_edited_by_hand_runs_again_on_its_bytes_and_says_which_files(proving, capsys):
    """Stored outcomes name the wheel a site was installed from; a file edited there since
    (its RECORD holds every file's sha256) is new evidence: the side runs again on those
    bytes, never reusing the wheel's outcomes, and the edit shows (here: BROKEN)."""
    first = proving(None)  # 0001 alone
    assert prove.proven(first)
    capsys.readouterr()
    paths = config.Paths.from_env()
    patched = build.site(paths, VERSION, "patched")
    assert evidence.site_changes(patched) == []
    pool = patched / "sglang/pool.py"
    pool.write_text(pool.read_text().replace("LINE_10 = 'ten'", "LINE_10 = 10"))  # the fix edited out
    assert evidence.site_changes(patched) == ["sglang/pool.py"]
    again = proving(None)
    out = capsys.readouterr().out
    assert "1 file(s) differ from the wheel installed there (sglang/pool.py)" in out
    assert f"patched {VERSION}: reused" not in out
    row = next(r for r in again["patches"] if r["patch"] == "0001-ten.patch")
    assert (row["after"], row["verdict"][:6]) == ("failed", "BROKEN")
    assert not prove.proven(again)
    (patched / "sglang/stray.py").write_text("")  # a file added to the package is a change too
    assert evidence.site_changes(patched) == ["sglang/pool.py", "sglang/stray.py"]
