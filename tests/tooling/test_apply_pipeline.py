"""fetch / apply / build on a synthetic upstream: the happy path, idempotence, and every
kind of bad input ending in one line that says what to do, a non-zero exit, nothing lost."""

import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import VERSION, Upstream  # noqa: E402


@pytest.fixture
def up(tmp_path):
    return Upstream(tmp_path)


def one_line_error(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def at_baseline(up) -> bool:
    return up.git("rev-parse", "HEAD") == up.git("rev-parse", "baseline") and up.git("status", "--porcelain") == ""


def test_apply_builds_labelled_wheel_with_record(up):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"}, "first change")
    up.add_patch("0002-b.patch", {30: "LINE_30 = 'thirty'"}, "second change")
    up.write_series(["0001-a.patch", "0002-b.patch"])
    proc = up.run("apply", "--no-env")
    assert proc.returncode == 0, proc.stderr
    assert up.git("log", "--format=%s", "baseline..applied").splitlines() == ["second change", "first change"]
    (wheel,) = (up.build / VERSION / "dist").glob("*.whl")
    assert wheel.name.startswith(f"sglang-{VERSION}+dsv4fix.2-")
    with zipfile.ZipFile(wheel) as zf:
        pool = zf.read("sglang/pool.py").decode()
        record = zf.read(f"sglang-{VERSION}+dsv4fix.2.dist-info/RECORD").decode()
        series_record = zf.read("sglang/downstream_series.py").decode()
    assert "LINE_5 = 'five'" in pool and "LINE_30 = 'thirty'" in pool
    assert "sglang/pool.py,sha256=" in record and "sglang/downstream_series.py,sha256=" in record
    assert "0001-a.patch" in series_record and "0002-b.patch" in series_record


def test_apply_twice_is_a_no_op(up):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    up.write_series(["0001-a.patch"])
    assert up.run("apply", "--no-env").returncode == 0
    head = up.git("rev-parse", "HEAD")
    wheel_bytes = next((up.build / VERSION / "dist").glob("*.whl")).read_bytes()
    again = up.run("apply", "--no-env")
    assert again.returncode == 0 and "already applied" in again.stdout
    assert up.git("rev-parse", "HEAD") == head
    assert next((up.build / VERSION / "dist").glob("*.whl")).read_bytes() == wheel_bytes


def test_rebuild_is_reproducible(up):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    up.write_series(["0001-a.patch"])
    assert up.run("apply", "--no-env").returncode == 0
    first = next((up.build / VERSION / "dist").glob("*.whl")).read_bytes()
    assert up.run("discard").returncode == 0
    assert up.run("apply", "--no-env").returncode == 0
    assert next((up.build / VERSION / "dist").glob("*.whl")).read_bytes() == first


def test_failing_hunk_is_named_and_tree_is_left_at_baseline(up):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    bad = up.add_patch("0002-b.patch", {12: "LINE_12 = 'x'", 30: "LINE_30 = 'x'"})
    # the second hunk's context no longer matches the tree
    bad.write_text(bad.read_text().replace(" LINE_28 = 28", " LINE_28 = 2800"))
    up.write_series(["0001-a.patch", "0002-b.patch"])
    line = one_line_error(up.run("apply", "--no-env"))
    assert "0001-a.patch" not in line
    assert "0002-b.patch" in line and "hunk #2 of 2" in line and "python/sglang/pool.py" in line
    assert at_baseline(up)
    assert not (up.build / VERSION / "applied.json").exists()


def test_corrupt_patch(up):
    text = up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"}).read_text()
    corrupt = text.replace("@@ -2,7 +2,7 @@", "@@ -2,7 +2,9 @@")
    up.add_raw_patch("0001-a.patch", corrupt)
    up.write_series(["0001-a.patch"])
    line = one_line_error(up.run("apply", "--no-env"))
    assert "0001-a.patch" in line and "corrupt" in line
    assert at_baseline(up)
    assert (up.patch_path("0001-a.patch")).read_text() == corrupt  # nothing lost


def test_not_a_patch(up):
    up.add_raw_patch("0001-a.patch", "this is not a patch\n")
    up.write_series(["0001-a.patch"])
    line = one_line_error(up.run("apply", "--no-env"))
    assert "0001-a.patch" in line and "not a git-format patch" in line


def test_series_entry_without_file(up):
    up.write_series(["0001-missing.patch"])
    line = one_line_error(up.run("apply", "--no-env"))
    assert "0001-missing.patch" in line and "does not exist" in line
    assert not up.tree.exists()  # checked before anything is fetched or touched


def test_path_outside_tree_is_refused(up):
    text = up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"}).read_text()
    up.add_raw_patch("0001-a.patch", text.replace("python/sglang/pool.py", "../escape.py"))
    up.write_series(["0001-a.patch"])
    line = one_line_error(up.run("apply", "--no-env"))
    assert "0001-a.patch changes ../escape.py, outside python/" in line
    assert not (up.build / VERSION / "escape.py").exists() and not up.tree.exists()


def test_unknown_upstream_version(up):
    line = one_line_error(up.run("apply", "--no-env", "--upstream", "9.9.9"))
    assert "9.9.9" in line and "make pin" in line


# port 9 (discard) on loopback: the connection is refused at once, as offline
OFFLINE = {"UV_DEFAULT_INDEX": "http://127.0.0.1:9/simple"}


def test_sha256_mismatch_keeps_nothing(up):
    up.pin(VERSION, "0" * 64)
    line = one_line_error(up.run("apply", "--no-env"))
    assert "sha256" in line
    assert not list((up.cache / "wheels").glob("*")), "a wheel that failed its hash must not be kept"
    assert not up.tree.exists()


def test_no_network_and_empty_cache(up):
    line = one_line_error(up.run("apply", "--no-env", env=OFFLINE))
    assert line.startswith("error: uv cannot resolve `sglang==1.0.0` on the configured package index (")
    assert "Connection refused" in line and "check the network and the index (UV_DEFAULT_INDEX" in line


def test_cached_wheel_is_used_without_network(up):
    assert up.run("apply", "--no-env").returncode == 0  # fills the cache
    assert up.run("discard").returncode == 0
    import shutil

    shutil.rmtree(up.build)
    proc = up.run("apply", "--no-env", env=OFFLINE)
    assert proc.returncode == 0, proc.stderr


def test_local_edits_are_never_overwritten(up):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    up.write_series(["0001-a.patch"])
    assert up.run("apply", "--no-env").returncode == 0
    edited = up.tree / "python/sglang/pool.py"
    edited.write_text(edited.read_text() + "# local edit\n")
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'FIVE'"})  # the series changed: apply wants to redo
    line = one_line_error(up.run("apply", "--no-env"))
    assert "make discard" in line
    assert edited.read_text().endswith("# local edit\n")
    assert up.run("discard").returncode == 0
    assert up.run("apply", "--no-env").returncode == 0
    assert "LINE_5 = 'FIVE'" in edited.read_text()


def test_foreign_commits_are_never_dropped(up):
    assert up.run("apply", "--no-env").returncode == 0
    (up.tree / "python/sglang/new.py").write_text("X = 1\n")
    up.git("add", "-A")
    subprocess_env = {"GIT_AUTHOR_NAME": "m", "GIT_AUTHOR_EMAIL": "m@x", "GIT_COMMITTER_NAME": "m", "GIT_COMMITTER_EMAIL": "m@x"}
    import os
    import subprocess

    subprocess.run(["git", "-C", str(up.tree), "commit", "-qm", "maintainer work"], check=True, env={**os.environ, **subprocess_env})
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    up.write_series(["0001-a.patch"])
    line = one_line_error(up.run("apply", "--no-env"))
    assert "make export" in line and "make discard" in line
    assert up.git("log", "-1", "--format=%s") == "maintainer work"
