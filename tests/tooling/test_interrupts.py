"""Interrupted and concurrent runs: Ctrl-C (or a kill) at any moment of `make apply` leaves a
tree that the next `make apply` brings to fully applied by itself, and two runs in one
clone take turns."""

import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

import filelock
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import VERSION, Upstream  # noqa: E402

PATCHES = [f"{i:04d}-module-{i}.patch" for i in range(1, 13)]


@pytest.fixture
def up(tmp_path):
    up = Upstream(tmp_path)
    for i, name in enumerate(PATCHES, 1):
        up.add_file_patch(name, f"python/sglang/module_{i}.py", f"VALUE = {i}\n", f"add module {i}")
    up.write_series(PATCHES)
    return up


def lines_of(proc) -> queue.Queue:
    """proc's stdout, line by line, readable with a timeout."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for(lines: queue.Queue, count: int, prefix: str, timeout: float = 60) -> None:
    """Block until `count` lines starting with `prefix` were printed."""
    deadline = time.monotonic() + timeout
    while count:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, f"the run ended before {count} more '{prefix}' lines"
        count -= line.startswith(prefix)


def assert_fully_applied(up) -> None:
    subjects = up.git("log", "--reverse", "--format=%s", "baseline..applied").splitlines()
    assert subjects == [f"add module {i}" for i in range(1, 13)]
    assert up.git("rev-parse", "--abbrev-ref", "HEAD") == "applied"
    assert up.git("status", "--porcelain") == ""
    assert not (up.tree / ".git/rebase-apply").exists()
    state = json.loads((up.build / VERSION / "applied.json").read_text())
    assert [p["patch"] for p in state["patches"]] == PATCHES and state["head"] == up.git("rev-parse", "applied")
    assert len(list((up.build / VERSION / "dist").glob("*+dsv4fix.12-*.whl"))) == 1


@pytest.mark.parametrize("applied_lines, sig", [
    (0, signal.SIGINT),    # while the baseline is made
    (1, signal.SIGINT),    # in the middle of the series
    (6, signal.SIGINT),
    (12, signal.SIGINT),   # while the wheel is built
    (6, signal.SIGKILL),   # no chance to clean up at all
])
def test_interrupted_apply_recovers_on_the_next_run(up, applied_lines, sig):
    if applied_lines:  # a first, complete run, so that the interrupted one has to redo the series
        assert up.run("apply", "--no-env").returncode == 0
        up.series.write_text(up.series.read_text() + "# changed\n")
    proc = up.start("apply", "--no-env")
    lines = lines_of(proc)
    if applied_lines:
        wait_for(lines, applied_lines, "applied ")
    else:
        time.sleep(0.3)
    os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C: the command and its git children
    proc.wait(timeout=60)
    assert proc.returncode != 0
    if sig == signal.SIGINT and proc.returncode == 130:
        assert proc.stderr.read().strip().splitlines()[-1].startswith("error: interrupted; run the same command again")
    again = up.run("apply", "--no-env")
    assert again.returncode == 0, again.stderr
    assert_fully_applied(up)
    assert not (up.build / VERSION / "applying").exists()


def test_a_second_apply_waits_for_the_first(up):
    (up.build / VERSION).mkdir(parents=True)
    with filelock.FileLock(str(up.build / VERSION / "tree.lock")):  # a first run holding the tree
        proc = up.start("apply", "--no-env")
        lines = lines_of(proc)
        line = lines.get(timeout=60)
        assert line.startswith(f"waiting for another make command working on {up.tree}")
        time.sleep(0.5)
        assert proc.poll() is None and not up.tree.exists()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert_fully_applied(up)


def test_two_applies_at_once_both_succeed(up):
    first, second = up.start("apply", "--no-env"), up.start("apply", "--no-env")
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert sum("series already applied" in out for out, _ in outputs) == 1
    assert_fully_applied(up)


def test_a_torch_extension_lock_a_killed_run_left_is_cleared_and_a_live_one_kept(tmp_path, monkeypatch, capsys):
    from scripts.lib import pytest_run

    venv = tmp_path / "venv"
    stale, live = venv / "torch_extensions" / "hicache_hash_cpp" / "lock", venv / "torch_extensions" / "other" / "lock"
    for lock in (stale, live):
        lock.parent.mkdir(parents=True)
        lock.write_text("")
    old = time.time() - pytest_run.STALE_LOCK_S - 60
    os.utime(stale, (old, old))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    env = pytest_run.environ(tmp_path / "site", venv)
    assert env["TORCH_EXTENSIONS_DIR"] == str(venv / "torch_extensions")
    assert not stale.exists() and live.exists()  # a build running now keeps its lock
    assert "removed a stale torch extension build lock" in capsys.readouterr().out
    # a folder the user chose is theirs to keep: used as it is
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert pytest_run.environ(tmp_path / "site", venv)["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "mine")
