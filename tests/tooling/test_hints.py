"""Every command a hint or an error of a move suggests, run in order through make on the
synthetic upstream, ends where the hint said it would.

The move 1.0.0 -> 2.0.0 (rebase_fixtures): 0002 is absorbed, 0003 conflicts, the others
apply. The road: the report; WRITE=1 refuses at once on it and names the queue road;
the queue stops at 0003 with markers; discard (the conflict's other way out) and the
queue again; resolve, CONTINUE=1; export moves the base and drops 0002 with its reason,
the 1.0.0 series staying as its line. Every hint names UPSTREAM_VERSION."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rebase_fixtures import BASE, CHANGES, NEW, Releases  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
UP = f"UPSTREAM_VERSION={NEW}"


@pytest.fixture
def up(tmp_path):
    return Releases(tmp_path)


def make(up, command: str) -> subprocess.CompletedProcess:
    """`command` as a hint spells it (`make queue UPSTREAM_VERSION=2.0.0 CONTINUE=1`), run by make."""
    words = shlex.split(command)
    assert words[0] == "make", command
    env = {**up.env, "SGLANG_SERIES_TESTS_ROOT": str(up.tests_root), "SGLANG_SERIES_VENV": sys.prefix}
    return subprocess.run(["make", "-s", "-C", str(REPO), f"PYTHON={sys.executable}", *words[1:]],
                          env=env, capture_output=True, text=True)


def hints(text: str) -> list[str]:
    """Every `make ...` command a message suggests, in order."""
    return re.findall(r"`(make [^`]+)`", text)


def error_line(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_hint_of_a_move_leads_where_it_says(up):
    assert make(up, f"make rebase {UP}").returncode == 0
    before = snapshot(up.patches)

    # WRITE=1 acts on the report it finds: it refuses without running a test.
    refused = make(up, f"make rebase {UP} WRITE=1")
    error = error_line(refused)
    assert "acting on" in refused.stdout and "ran " not in refused.stdout
    assert "0003-twenty.patch" in error and "git add -A" in error
    road = hints(error)
    assert road == [f"make queue {UP}", f"make queue {UP} CONTINUE=1", f"make export {UP}"]
    assert snapshot(up.patches) == before

    # The queue stops at 0003 with conflict markers; its hint lists the rest of the road.
    stopped = make(up, road[0])
    error = error_line(stopped)
    assert "not replayed 0002-ten.patch" in stopped.stdout
    assert hints(error) == [f"make queue {UP} CONTINUE=1", f"make export {UP}", f"make export {UP} LINE=1",
                            f"make discard {UP}"]
    pool = up.tree_of(NEW) / "python/sglang/pool.py"
    assert "<<<<<<<" in pool.read_text()

    # The other way out: discard drops the queue; its hint starts the road again.
    discarded = make(up, f"make discard {UP}")
    assert discarded.returncode == 0, discarded.stderr
    assert hints(discarded.stdout) == [f"make queue {UP}"]
    assert "<<<<<<<" not in pool.read_text()
    # What the issue saw delete every patch: an export now has no queue to write, and says so.
    assert f"make queue {UP}" in error_line(make(up, f"make export {UP}"))
    assert snapshot(up.patches) == before

    error_line(make(up, hints(discarded.stdout)[0]))  # the queue again: the same stop
    text = pool.read_text()
    pool.write_text(text.split("<<<<<<< ")[0] + "LINE_19 = 'nineteen'\nLINE_20 = 'twenty'\n"
                    + text.split(">>>>>>> ")[1].split("\n", 1)[1])
    up.git_in(NEW, "add", "-A")  # as the hint says
    went_on = make(up, road[1])
    assert went_on.returncode == 0, went_on.stderr
    assert hints(went_on.stdout) == [f"make export {UP}", f"make export {UP} LINE=1"]

    exported = make(up, road[2])
    assert exported.returncode == 0, exported.stderr
    # The promised end state: 2.0.0 is the base, 0002 dropped with the report's reason,
    # 0003 ported for 2.0.0, and the 1.0.0 series kept whole as that release's line.
    assert json.loads(up.releases.read_text())["base"] == NEW
    series = up.series.read_text()
    assert "# dropped 0002-ten.patch: absorbed upstream: sglang 2.0.0" in series
    entries = [l for l in series.splitlines() if l and not l.startswith("#")]
    kept = ["0001-five.patch", "0003-twenty.patch", "0004-thirty.patch", "0005-thirty-five.patch"]
    # the ported 0003 is 2.0.0's own copy; the others only moved, and 1.0.0's files apply as they are
    assert entries == [f"lines/{NEW}/{n}" if n == "0003-twenty.patch" else f"lines/{BASE}/{n}" for n in kept]
    assert "LINE_19 = 'nineteen'" in (up.patches / "lines" / NEW / "0003-twenty.patch").read_text()
    old = (up.patches / "lines" / f"{BASE}.series").read_text()
    assert [l for l in old.splitlines() if l and not l.startswith("#")] == [f"lines/{BASE}/{n}" for n in CHANGES]
    assert all((up.patches / "lines" / BASE / name).read_bytes() == before[f"lines/{BASE}/{name}"] for name in CHANGES)
    applied = up.run("apply", "--no-env")
    assert applied.returncode == 0 and "applied 0003-twenty.patch" in applied.stdout


def test_a_move_to_a_release_that_lacks_nothing_writes_a_line_that_says_so(up):
    """Every patch absorbed: the line holds none and says so; apply says so too."""
    from rebase_fixtures import NEW_FILES, pool_lines

    everything = {**NEW_FILES, "sglang/pool.py": "".join(pool_lines({
        5: "LINE_5 = 'five'", 10: "LINE_10 = 'ten'", 20: "LINE_20 = 'twenty'", 30: "LINE_30 = 'thirty'",
        35: "LINE_35 = 'thirty-five'"}, "def make_pool(size):\n    return ['thirty-five'] * size\n\n\nBASE_ONLY = True\n"))}
    up.pin_files("3.0.0", everything)
    proc = make(up, "make rebase UPSTREAM_VERSION=3.0.0 WRITE=1 LINE=1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("before applying anything") == len(CHANGES)
    line = (up.patches / "lines" / "3.0.0.series").read_text()
    assert "# no patches: sglang 3.0.0 has every fix of the series" in line
    summary = next(x for x in proc.stdout.splitlines() if x.startswith("Added "))
    dropped = summary.split(" / ")[1]  # the line's drops are said, with their reasons
    assert all(f"{name} (absorbed upstream" in dropped for name in CHANGES), summary
    assert json.loads(up.releases.read_text())["base"] == BASE
    applied = up.run("apply", "--no-env", "--upstream", "3.0.0")
    assert applied.returncode == 0, applied.stderr
    assert "sglang 3.0.0 needs no patch of the series" in applied.stdout


def test_write_refuses_uncommitted_patches_before_any_test(up):
    """An uncommitted edit in patches/ (a series comment): WRITE=1 names it and how to keep
    it, runs no test and writes nothing."""
    def git(*args):
        subprocess.run(["git", "-C", str(up.patches), "-c", "user.name=m", "-c", "user.email=m@x", *args],
                       capture_output=True, text=True, check=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "series")
    series = up.series
    series.write_text(series.read_text() + "# 0006 comes after review\n")
    before = snapshot(up.patches)
    proc = make(up, f"make rebase {UP} WRITE=1")
    error = error_line(proc)
    assert f"patches/ has uncommitted changes (lines/{BASE}.series)" in error and "git add -A patches && git commit" in error
    assert "ran " not in proc.stdout and not (up.build / NEW / "rebase" / "report.json").exists()
    assert snapshot(up.patches) == before
