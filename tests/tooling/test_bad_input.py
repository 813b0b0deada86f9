"""Bad input beyond the patches' own content: each ends in one line that names the cause
and the next step, a non-zero exit, no traceback, and nothing of the user's lost."""

import ast
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import REPO, VERSION, Upstream  # noqa: E402
from test_apply_pipeline import one_line_error  # noqa: E402


@pytest.fixture
def up(tmp_path):
    return Upstream(tmp_path)


def test_series_entry_listed_twice(up):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    up.add_patch("0002-b.patch", {30: "LINE_30 = 'thirty'"})
    up.write_series(["0001-a.patch", "0002-b.patch", "0001-a.patch"])
    line = one_line_error(up.run("apply", "--no-env"))
    assert line == "error: patches/lines/1.0.0.series lists 0001-a.patch twice; remove the second entry (a patch is applied once)"
    assert not up.tree.exists() and not (up.build / VERSION / "dist").exists()


@pytest.mark.parametrize("target, named", [
    ("sglang/srt/new_module.py", "sglang/srt/new_module.py"),  # upstream's layout lost its python/
    ("/abs/x.py", "abs/x.py"),  # git reads `+++ /abs/x.py` as abs/x.py
])
def test_patch_outside_python_is_refused(up, target, named):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    text = up.add_file_patch("0002-new.patch", "python/sglang/new_module.py", "X = 1\n").read_text()
    up.add_raw_patch("0002-new.patch", text.replace("+++ b/python/sglang/new_module.py", f"+++ {'b/' if target[0] != '/' else ''}{target}")
                     .replace("diff --git a/python/sglang/new_module.py b/python/sglang/new_module.py",
                              f"diff --git a/{target.lstrip('/')} b/{target.lstrip('/')}"))
    up.write_series(["0001-a.patch", "0002-new.patch"])
    line = one_line_error(up.run("apply", "--no-env"))
    assert line.startswith(f"error: 0002-new.patch changes {named}, outside python/")
    assert not up.tree.exists()


def test_missing_baseline_tag_keeps_uncommitted_edits(up):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    up.write_series(["0001-a.patch"])
    assert up.run("apply", "--no-env").returncode == 0
    edited = up.tree / "python/sglang/pool.py"
    edited.write_text(edited.read_text() + "# local edit\n")
    up.git("tag", "-d", "baseline")
    # the baseline commit is still there: the tag comes back, and the edit stops apply as any edit does
    line = one_line_error(up.run("apply", "--no-env"))
    assert "1 uncommitted change(s)" in line and "make discard" in line
    assert edited.read_text().endswith("# local edit\n")
    assert up.git("rev-parse", "baseline") == up.git("rev-list", "--max-parents=0", "HEAD")


def test_tree_without_baseline_history_is_never_deleted(up):
    up.tree.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(up.tree)], check=True)
    mine = up.tree / "notes.txt"
    mine.write_text("my notes\n")
    line = one_line_error(up.run("apply", "--no-env"))
    assert "has no `baseline` tag" in line and "1 uncommitted change(s)" in line and "make discard" in line
    assert mine.read_text() == "my notes\n"
    assert up.run("discard").returncode == 0  # the user's choice: drop it
    assert up.run("apply", "--no-env").returncode == 0
    assert not mine.exists() and up.git("rev-parse", "HEAD") == up.git("rev-parse", "baseline")


@pytest.mark.parametrize("kind", ["file", "read-only", "under-a-file"])
def test_unusable_cache_path(up, tmp_path, kind):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = {"file": blocker, "read-only": Path("/sys/sglang-series-cache"), "under-a-file": blocker / "cache"}[kind]
    if kind == "read-only" and os.access("/sys", os.W_OK) and os.getuid() != 0:
        pytest.skip("/sys is writable here")
    for verb in ("apply", "test"):
        proc = up.run(verb, env={"SGLANG_SERIES_CACHE": str(cache)})
        line = one_line_error(proc)
        assert line.startswith(f"error: the cache {cache} is not a writable folder") and "SGLANG_SERIES_CACHE" in line


def test_apply_ignores_the_users_git_config(up, tmp_path):
    config = tmp_path / "gitconfig"
    config.write_text("[am]\n\tthreeWay = true\n[commit]\n\tgpgSign = true\n[user]\n\tuseConfigOnly = true\n"
                      "[core]\n\thooksPath = /nonexistent\n")
    user = {"GIT_CONFIG_GLOBAL": str(config)}
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    bad = up.add_patch("0002-b.patch", {30: "LINE_30 = 'x'"})
    good = bad.read_text()
    bad.write_text(good.replace(" LINE_28 = 28", " LINE_28 = 2800"))
    up.write_series(["0001-a.patch", "0002-b.patch"])
    line = one_line_error(up.run("apply", "--no-env", env=user))
    assert "0002-b.patch does not apply: hunk #1 of 1" in line
    assert not (up.tree / ".git/rebase-apply").exists()
    bad.write_text(good)
    proc = up.run("apply", "--no-env", env=user)
    assert proc.returncode == 0, proc.stderr
    assert up.git("log", "--format=%cn", "baseline..applied").splitlines() == ["sglang-series"] * 2


def test_offline_with_an_empty_cache_fails_fast(up, tmp_path):
    (up.cache / "tools").unlink()  # no pinned tools either: they would have to come from the package index
    # the bootstrap creates the tools' venv before it reaches the index; on a busy runner that
    # alone can take half a minute, so "fast" is measured beyond the cost of one such venv
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "probe")], check=True)
    venv_cost = time.monotonic() - start
    start = time.monotonic()
    proc = up.run("apply", "--no-env", env={"PIP_INDEX_URL": "http://127.0.0.1:9/simple"})
    line = one_line_error(proc)
    assert time.monotonic() - start < 20 + venv_cost
    assert line.startswith("error: cannot download the pinned tools of tools.lock") and "check the network" in line


def test_offline_with_a_bad_cached_wheel_says_it_is_there(up):
    sha = json.loads(up.releases.read_text())["releases"][VERSION]["sha256"]
    (up.cache / "wheels").mkdir()
    cached = up.cache / "wheels" / f"sglang-{VERSION}-py3-none-any.whl"
    cached.write_bytes(b"not the pinned wheel")
    line = one_line_error(up.run("apply", "--no-env", env={"UV_DEFAULT_INDEX": "http://127.0.0.1:9/simple"}))
    assert line.startswith(f"error: {cached} is there, but its sha256 ") and f"is not the pinned {sha}" in line
    assert "put the file in" not in line
    assert cached.read_bytes() == b"not the pinned wheel"


def test_cached_wheel_is_world_readable(up):
    mask = os.umask(0o077)  # a private umask must not make the shared cache private
    try:
        proc = up.run("apply", "--no-env")
    finally:
        os.umask(mask)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (up.cache / "wheels").glob("*.whl")
    assert stat.S_IMODE(wheel.stat().st_mode) == 0o644
    assert f"downloading {wheel.name}" in proc.stdout


def test_old_python_gets_one_line_before_any_311_code():
    fake = ("import sys, runpy; sys.version_info = (3, 9, 18, 'final', 0); sys.version = '3.9.18'; "
            "runpy.run_module('scripts.apply', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", fake], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == ("error: Python 3.11 is required (sglang 0.5.12 ships only a cp311 wheel); this is 3.9.18: "
                           "run with PYTHON=python3.11\n")
    # the check itself must parse on old interpreters
    ast.parse((REPO / "scripts/__init__.py").read_text(), feature_version=(3, 4))
