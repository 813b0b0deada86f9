"""make queue / make export on a synthetic upstream: export is byte-for-byte deterministic,
an edit on the queue comes back as a minimal diff, and nothing a maintainer did is lost."""

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rebase_fixtures import BASE, CHANGES, Releases  # noqa: E402


@pytest.fixture
def up(tmp_path):
    return Releases(tmp_path)


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def one_line_error(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def snapshot(up) -> dict:
    # every file of patches/ by name: these tests keep to the base's line and its folder
    return {p.name: p.read_bytes() for p in sorted(up.patches.rglob("*")) if p.is_file()}


def edit_commit(up, subject: str, old: str, new: str) -> None:
    """Change one line inside the queue commit `subject`, with plain git (fixup + autosquash)."""
    tree = up.tree_of(BASE)
    pool = tree / "python/sglang/pool.py"
    commit = up.git_in(BASE, "log", "--format=%H", f"--grep=^{subject}$", "queue")
    pool.write_text(pool.read_text().replace(old, new))
    up.git_in(BASE, "-c", "user.name=m", "-c", "user.email=m@x", "commit", "-qa", f"--fixup={commit}")
    up.git_in(BASE, "-c", "user.name=m", "-c", "user.email=m@x", "-c", "sequence.editor=true",
              "rebase", "-q", "-i", "--autosquash", "baseline")


def test_queue_then_export_reproduces_the_series_byte_for_byte(up):
    up.add_raw_patch("0001-five.patch", exported_form(up))  # patches as format-patch writes them
    before = snapshot(up)
    ok(up.run("queue"))
    assert up.git_in(BASE, "rev-parse", "--abbrev-ref", "HEAD") == "queue"
    assert len(up.git_in(BASE, "log", "--format=%H", "baseline..queue").split()) == 5
    out = ok(up.run("export"))
    assert "nothing to write" in out
    assert snapshot(up) == before


def exported_form(up) -> str:
    # The fixture's patches come from difflib; one round trip turns them into git's own output.
    ok(up.run("queue"))
    ok(up.run("export"))
    ok(up.run("queue"))
    return (up.patch_path("0001-five.patch")).read_text()


def test_export_twice_is_byte_identical_and_keeps_headers(up):
    ok(up.run("queue"))
    ok(up.run("export"))
    first = snapshot(up)
    ok(up.run("queue"))  # rebuild from what was just written
    ok(up.run("export"))
    assert snapshot(up) == first
    text = first["0003-twenty.patch"].decode()
    for header in ("Origin: vendor", "Forwarded: not-needed", "Last-Update: 2026-11-21",
                   "Tests: tests/test_synthetic_pool.py::TestTwenty"):
        assert header in text
    assert text.startswith("From 0000000000000000000000000000000000000000 ")
    assert "Date: Sat, 21 Nov 2026 00:00:00 +0000" in text  # from Last-Update, not the clock
    assert "Series-Name" not in text and "\n-- \n" not in text and "[PATCH" not in text


def test_edit_on_queue_comes_back_as_minimal_diff(up):
    ok(up.run("queue"))
    ok(up.run("export"))
    before = snapshot(up)
    ok(up.run("queue"))
    edit_commit(up, "pool: set line 20", "LINE_20 = 'twenty'", "LINE_20 = 'twenty!'")
    out = ok(up.run("export"))
    assert "Added none / Dropped none / Refreshed 0003-twenty.patch" in out
    after = snapshot(up)
    assert {n for n in after if after[n] != before[n]} == {"0003-twenty.patch", "0004-thirty.patch", "0005-thirty-five.patch"}
    edited = changed_lines(before, after, "0003-twenty.patch")
    assert [l for l in edited if "index" not in l] == ["-+LINE_20 = 'twenty'", "++LINE_20 = 'twenty!'"]
    # Later patches to the same file only see their pre-image blob id move (--full-index).
    for later in ("0004-thirty.patch", "0005-thirty-five.patch"):
        assert [l[:7] for l in changed_lines(before, after, later)] == ["-index ", "+index "]
    assert len([l for l in edited if l[1:].startswith("index ")]) == 2


def changed_lines(before: dict, after: dict, name: str) -> list[str]:
    diff = difflib.unified_diff(before[name].decode().splitlines(), after[name].decode().splitlines(), lineterm="", n=0)
    return [l for l in diff if l[:1] in "+-" and not l.startswith(("+++ ", "--- "))]


def test_reorder_drop_and_add_are_reported(up):
    ok(up.run("queue"))
    ok(up.run("export"))
    # drop 0002 and add a new commit, with plain git
    up.git_in(BASE, "-c", "sequence.editor=sed -i '/set line 10/d'", "rebase", "-q", "-i", "baseline")
    pool = up.tree_of(BASE) / "python/sglang/pool.py"
    pool.write_text(pool.read_text().replace("LINE_40 = 40", "LINE_40 = 'forty'"))
    up.git_in(BASE, "-c", "user.name=m", "-c", "user.email=m@x", "commit", "-qa", "-m", "pool: set line 40",
              "-m", "Origin: vendor\nLast-Update: 2026-11-22\nTests: tests/test_synthetic_pool.py")
    # A drop needs a reason in the series; without one nothing is written.
    before = snapshot(up)
    error = one_line_error(up.run("export"))
    assert "would drop 0002-ten.patch without a reason" in error and "# dropped 0002-ten.patch: <why>" in error
    assert snapshot(up) == before
    series = up.series
    series.write_text(series.read_text() + "# dropped 0002-ten.patch: line ten is right as upstream has it\n")
    out = ok(up.run("export"))
    # the later patches of the same file get a new pre-image blob id once 0002 is gone
    assert ("Added 0005-pool-set-line-40.patch / Dropped 0002-ten.patch (line ten is right as upstream has it) / "
            "Refreshed 0003-twenty.patch, 0004-thirty.patch, 0005-thirty-five.patch") in out
    assert not (up.patch_path("0002-ten.patch")).exists()
    assert "# dropped 0002-ten.patch: line ten is right as upstream has it" in series.read_text()
    names = [Path(l).name for l in up.series.read_text().splitlines() if not l.startswith("#")]
    assert names == ["0001-five.patch", "0003-twenty.patch", "0004-thirty.patch",
                     "0005-thirty-five.patch", "0005-pool-set-line-40.patch"]
    assert "Date: Sun, 22 Nov 2026 00:00:00 +0000" in (up.patch_path("0005-pool-set-line-40.patch")).read_text()


def test_queue_refuses_to_drop_unexported_work(up):
    ok(up.run("queue"))
    ok(up.run("export"))
    ok(up.run("queue"))
    edit_commit(up, "pool: set line 5", "LINE_5 = 'five'", "LINE_5 = 'FIVE'")
    head = up.git_in(BASE, "rev-parse", "queue")
    assert "make export" in one_line_error(up.run("queue"))
    assert up.git_in(BASE, "rev-parse", "queue") == head
    (up.tree_of(BASE) / "python/sglang/pool.py").write_text("dirty\n")
    assert "make export" in one_line_error(up.run("export"))  # commit first: nothing half-exported
    assert (up.tree_of(BASE) / "python/sglang/pool.py").read_text() == "dirty\n"


def test_commits_on_applied_are_exported_and_apply_then_works(up):
    exported_form(up)  # the series in git's own format first, so only the new commit shows
    ok(up.run("apply", "--no-env"))
    pool = up.tree_of(BASE) / "python/sglang/pool.py"
    pool.write_text(pool.read_text().replace("LINE_40 = 40", "LINE_40 = 'forty'"))
    up.git_in(BASE, "-c", "user.name=m", "-c", "user.email=m@x", "commit", "-qa", "-m", "pool: set line 40",
              "-m", "Origin: vendor\nLast-Update: 2026-11-21\nTests: tests/test_synthetic_pool.py")
    assert "make export" in one_line_error(up.run("apply", "--no-env"))  # apply.py's message...
    out = ok(up.run("export"))  # ...is true: export keeps the commit
    assert "Added 0006-pool-set-line-40.patch / Dropped none / Refreshed none" in out
    out = ok(up.run("apply", "--no-env"))
    assert "applied 0006-pool-set-line-40.patch" in out


def report_on(up, version):
    """make rebase UPSTREAM_VERSION=version, in process: the synthetic tests need only pytest."""
    import os

    from scripts import rebase
    from scripts.lib import config

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in up.env.items() if k.startswith(("SGLANG_SERIES_", "UV_DEFAULT_INDEX"))})
    try:
        return rebase.rebase(config.Paths.from_env(), version, tests_root=up.tests_root,
                             venv_of=lambda v: Path(sys.prefix), log=lambda *_: None)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_queue_on_a_new_release_needs_its_report(up):
    from rebase_fixtures import NEW

    error = one_line_error(up.run("queue", "--upstream", NEW))
    assert f"make rebase UPSTREAM_VERSION={NEW}" in error
    assert not (up.tree_of(NEW) / ".git/refs/heads/queue").exists()


def test_moving_to_a_new_release_on_the_queue(up):
    """make queue UPSTREAM_VERSION=X replays what the report keeps, stops at a conflict with
    3-way markers, goes on with CONTINUE=1 once it is resolved, and make export writes the
    series for X, dropping the absorbed patch with the report's reason."""
    from rebase_fixtures import NEW

    # No `make queue`/`make apply` on the base first: the 3-way merge takes the base's blobs from its wheel.
    report_on(up, NEW)
    assert not up.tree_of(BASE).exists()
    proc = up.run("queue", "--upstream", NEW)
    assert "not replayed 0002-ten.patch: absorbed upstream" in proc.stdout
    error = one_line_error(proc)
    assert "0003-twenty.patch" in error and "hunk #1 of 1" in error and "CONTINUE=1" in error
    pool = up.tree_of(NEW) / "python/sglang/pool.py"
    text = pool.read_text()
    assert "<<<<<<<" in text
    # Going on before the conflict is resolved changes nothing.
    assert "unmerged" in one_line_error(up.run("queue", "--upstream", NEW, "--continue"))
    resolved = text.split("<<<<<<< ")[0] + "LINE_19 = 'nineteen'\nLINE_20 = 'twenty'\n" + text.split(">>>>>>> ")[1].split("\n", 1)[1]
    pool.write_text(resolved)
    up.git_in(NEW, "add", "-A")
    ok(up.run("queue", "--upstream", NEW, "--continue"))
    subjects = up.git_in(NEW, "log", "--reverse", "--format=%s", "baseline..queue").splitlines()
    assert subjects == ["pool: set line 5", "pool: set line 20", "pool: set line 30", "pool: set line 35"]  # 0002 is upstream
    out = ok(up.run("export", "--upstream", NEW))
    assert "Dropped 0002-ten.patch (absorbed upstream: sglang 2.0.0 has" in out and "base = 2.0.0" in out
    assert "# dropped 0002-ten.patch: absorbed upstream: sglang 2.0.0" in up.series.read_text()
    message = (up.build / NEW / "rebase" / "COMMIT_MSG").read_text()
    assert message.startswith("The line of sglang 2.0.0, from the sglang 1.0.0 line; sglang 2.0.0 is the base")
    assert "Dropped 0002-ten.patch: absorbed upstream: sglang 2.0.0 has" in message and "git commit -F" in out
    # The ported patch is a copy for 2.0.0; the 1.0.0 series stays as that release's line.
    assert "LINE_19 = 'nineteen'" in (up.patches / "lines" / NEW / "0003-twenty.patch").read_text()
    assert "lines/2.0.0/0003-twenty.patch" in up.series.read_text()
    old_line = (up.patches / "lines" / f"{BASE}.series").read_text()
    assert [Path(l).name for l in old_line.splitlines() if not l.startswith("#")] == list(CHANGES)
    old = up.patches / "lines" / BASE
    assert "LINE_19 = 19" in (old / "0003-twenty.patch").read_text() and (old / "0002-ten.patch").exists()
    assert "applied 0005-thirty-five.patch" in ok(up.run("apply", "--no-env"))  # the new base takes the series


def test_series_comments_and_commented_out_entries_survive_queue_and_export(up):
    """A note between entries, a commented-out entry and an entry's own note stay where the
    maintainer put them through `make queue FORCE=1` and `make export`, also when a patch
    is dropped (with its reason) and one is added."""
    series = up.series
    text = series.read_text().replace(f"lines/{BASE}/0003-twenty.patch\n",
                                      f"# 0003 waits for a review:\n# lines/{BASE}/0003-twenty.patch\n\n")
    text = text.replace(f"lines/{BASE}/0004-thirty.patch\n", f"lines/{BASE}/0004-thirty.patch  # keep until upstream settles\n")
    series.write_text(text)
    ok(up.run("queue", "--force"))
    out = ok(up.run("export"))
    assert series.read_text() == text, out
    # drop 0005 (a reason in the series) and add a commit: the comments keep their places
    up.git_in(BASE, "-c", "sequence.editor=sed -i '/set line 35/d'", "rebase", "-q", "-i", "baseline")
    series.write_text(text + "# dropped 0005-thirty-five.patch: not needed here\n")
    ok(up.run("export"))
    after = series.read_text()
    assert (f"# 0003 waits for a review:\n# lines/{BASE}/0003-twenty.patch\n\nlines/{BASE}/0004-thirty.patch  "
            "# keep until upstream settles\n") in after
    assert f"lines/{BASE}/0005-thirty-five.patch\n" not in after and "# dropped 0005-thirty-five.patch: not needed here" in after


def test_export_refuses_uncommitted_edits_in_patches(up):
    """patches/ in git with an uncommitted edit (a Reviewed-by line): export names the file
    and how to keep it, and writes nothing."""
    def git(*args):
        return subprocess.run(["git", "-C", str(up.patches), "-c", "user.name=m", "-c", "user.email=m@x", *args],
                              capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "series")
    ok(up.run("queue"))
    edit_commit(up, "pool: set line 5", "LINE_5 = 'five'", "LINE_5 = 'FIVE'")
    patch = up.patch_path("0002-ten.patch")
    patch.write_text(patch.read_text().replace("Forwarded: not-needed", "Forwarded: not-needed\nReviewed-by: R <r@x>"))
    before = {f: f.read_bytes() for f in up.patches.rglob("*.patch")}
    error = one_line_error(up.run("export"))
    assert "0002-ten.patch" in error and "git add -A patches && git commit" in error
    assert {f: f.read_bytes() for f in up.patches.rglob("*.patch")} == before


def test_a_line_names_another_lines_copy_of_the_same_patch(tmp_path):
    """Two releases that need the same port share one copy: the second line names the first's."""
    from scripts.lib import patch_queue
    from synthetic import _format_patch

    patches = tmp_path / "patches"
    text = _format_patch("python/sglang/pool.py", ["a\n"], ["b\n"], "change pool")
    (patches / "lines" / "1.1").mkdir(parents=True)
    first = patches / "lines" / "1.1" / "0001-pool.patch"
    first.write_text(text)
    (patches / "0001-pool.patch").write_text(_format_patch("python/sglang/pool.py", ["z\n"], ["b\n"], "change pool"))
    (patches / "series").write_text("0001-pool.patch\n")
    (patches / "lines" / "1.1.series").write_text("lines/1.1/0001-pool.patch\n")
    target = patches / "lines" / "1.2.series"
    target.write_text("# sglang 1.2\n")
    exported = [patch_queue.Exported("0001-pool.patch", "change pool", text.replace("2026-11-21", "2026-12-02"))]
    patch_queue.write(patches, exported, target, ported=patches / "lines" / "1.2",
                      shared={first.resolve(), (patches / "0001-pool.patch").resolve()})
    assert target.read_text().splitlines()[-1] == "lines/1.1/0001-pool.patch"
    assert not (patches / "lines" / "1.2").exists() and first.read_text() == text


def test_a_patch_that_only_moved_keeps_its_shared_file(tmp_path):
    """Export on a release where a shared patch lands at other line numbers (other blob
    ids, other hunk offsets): the line keeps naming the shared file, which applies there
    as it is, and reports nothing refreshed; a changed line of the diff is a refresh."""
    import re

    from scripts.lib import patch_queue
    from synthetic import _format_patch

    patches = tmp_path / "patches"
    text = _format_patch("python/sglang/pool.py", ["a\n"], ["b\n"], "change pool")
    (patches / "lines" / "1.1").mkdir(parents=True)
    shared = patches / "lines" / "1.1" / "0001-pool.patch"
    shared.write_text(text)
    series = patches / "lines" / "1.2.series"
    series.write_text("lines/1.1/0001-pool.patch\n")
    moved = re.sub(r"(?m)^@@ -1(,\d+)? \+1(,\d+)? @@", r"@@ -40\1 +40\2 @@ def pool():", text)
    moved = moved.replace("b/python/sglang/pool.py\n---", "b/python/sglang/pool.py\nindex 1234567..89abcde 100644\n---", 1)
    assert "index 1234567" in moved
    assert moved != text
    older = patches / "lines" / "1.0" / "0001-pool.patch"  # an older line's copy, moved too: not taken
    older.parent.mkdir()
    older.write_text(text.replace("@@ -1 +1 @@", "@@ -7 +7 @@"))
    exported = [patch_queue.Exported("0001-pool.patch", "change pool", moved)]
    changes = patch_queue.write(patches, exported, series, ported=patches / "lines" / "1.2",
                                shared={shared.resolve(), older.resolve()})
    assert not changes.any and series.read_text() == "lines/1.1/0001-pool.patch\n"
    assert shared.read_text() == text and not (patches / "lines" / "1.2").exists()
    changed = [patch_queue.Exported("0001-pool.patch", "change pool", moved.replace("+b\n", "+c\n"))]
    assert patch_queue.write(patches, changed, series, ported=patches / "lines" / "1.2",
                             shared={shared.resolve()}).refreshed == ["0001-pool.patch"]
    assert series.read_text() == "lines/1.2/0001-pool.patch\n" and shared.read_text() == text
