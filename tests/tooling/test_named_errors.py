"""Inputs and faults that used to pass silently, end in a traceback or blame the wrong
thing: each ends in one line that names the cause and the next step, a non-zero exit,
and the command that line suggests is run here and does what it promised."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import REPO, VERSION, Upstream  # noqa: E402
from test_apply_pipeline import one_line_error  # noqa: E402

DRY = {"SGLANG_SERIES_DRY_RUN": "1"}


@pytest.fixture
def up(tmp_path):
    return Upstream(tmp_path)


def make_error(proc) -> str:
    """The verb's one line, under make (which adds its own `make: *** [...] Error 2` line)."""
    stderr = "".join(l for l in proc.stderr.splitlines(keepends=True) if not l.startswith("make: *** ["))
    return one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, stderr))


def suggested(line: str) -> str:
    """The command a one-line error suggests (its last `...` in backquotes)."""
    return re.findall(r"`([^`]+)`", line)[-1]


# ---- make variables: never a shell, never silently ignored -----------------------------

def test_a_make_variable_never_reaches_a_shell(up, tmp_path):
    marker = tmp_path / "ran"
    for line in (f"UPSTREAM_VERSION={VERSION};touch {marker}", f"UPSTREAM_VERSION=$$(touch {marker})",
                 f"PYTEST_ARGS=-x `touch {marker}`", f"COPY_TO=x; touch {marker}"):
        if line.startswith("UPSTREAM_VERSION"):  # for real: the version is checked before any work
            line_out = make_error(up.make("apply", line))
            assert line_out.startswith("error: '") and "is not a release version; give one like " in line_out
        else:
            up.make("test-vanilla" if "PYTEST" in line else "rebase", line, env=DRY)
        assert not marker.exists(), line
    proc = up.make("test-vanilla", f"PYTEST_ARGS=-k 'a and not b' x;touch {marker}", env=DRY)
    assert proc.returncode == 0 and not marker.exists()
    assert f"'pytest_args': ['-k', 'a and not b', 'x;touch', '{marker}']" in proc.stdout


@pytest.mark.parametrize("typo, right", [("UPSTREAM_VERISON", "UPSTREAM_VERSION"), ("upstream_version", "UPSTREAM_VERSION"),
                                         ("PYTEST_ARG", "PYTEST_ARGS"), ("REQUIRE_CUDE", "REQUIRE_CUDA")])
def test_a_near_miss_variable_names_the_right_one(up, typo, right):
    proc = up.make("test-vanilla", f"{typo}=1.0.0", env=DRY)
    line = make_error(proc)
    assert line == (f"error: unknown variable {typo}, which make would ignore; did you mean {right}? "
                    f"Run the command again with {right}=1.0.0")
    assert "dry run" not in proc.stdout
    fixed = up.make("test-vanilla", f"{right}=1.0.0", env=DRY)  # what the line says to do
    assert fixed.returncode == 0 and "dry run: test" in fixed.stdout


def test_an_unclosed_quote_in_pytest_args(up):
    line = make_error(up.make("prove", "PYTEST_ARGS=-k 'a and b", env=DRY))
    assert line.startswith("error: PYTEST_ARGS cannot be split (No closing quotation); close the quote")


# ---- the series -----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "# only a comment\n# 0001-a.patch\n"])
def test_an_empty_series_is_an_error_unless_on_purpose(up, text):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    up.series.write_text(text)
    line = one_line_error(up.run("apply", "--no-env"))
    assert line == (f"error: patches/lines/{VERSION}.series lists no patch; patches/lines/{VERSION}/ holds 1 patch "
                    "file(s) (0001-a.patch); list them in it, one path under patches/ a line (lines/X/NNNN-name.patch), "
                    "or, if the release needs none, say so with a line `# no patches: <why>`")
    assert not (up.build / VERSION / "dist").exists()
    up.series.write_text(text + "# no patches: upstream has every fix\n")
    proc = up.run("apply", "--no-env")
    assert proc.returncode == 0, proc.stderr
    assert [w.name for w in (up.build / VERSION / "dist").glob("*.whl")] == [f"sglang-{VERSION}+dsv4fix.0-py3-none-any.whl"]


def test_a_crlf_patch_is_named_as_such(up):
    patch = up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    patch.write_bytes(patch.read_bytes().replace(b"\n", b"\r\n"))
    up.write_series(["0001-a.patch"])
    line = one_line_error(up.run("apply", "--no-env"))
    assert line == (f"error: 0001-a.patch has CRLF (Windows) line endings (first on line 1), which git cannot apply; "
                    f"convert it with `sed -i 's/\\r$//' {patch}`")
    assert not up.tree.exists()
    subprocess.run(suggested(line), shell=True, check=True)
    assert up.run("apply", "--no-env").returncode == 0
    assert "LINE_5 = 'five'" in (up.tree / "python/sglang/pool.py").read_text()


@pytest.mark.parametrize("verb", ["apply", "queue"])
def test_a_patch_that_is_not_utf8_is_named(up, verb):
    patch = up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    patch.write_bytes(patch.read_bytes().replace(b"From: Test", b"From: T\xe9st"))  # latin-1, as an old mailer writes
    up.write_series(["0001-a.patch"])
    line = one_line_error(up.run(verb))
    assert line.startswith("error: 0001-a.patch is not UTF-8 (byte 0xe9 on line 2); save it as UTF-8, e.g. `iconv ")
    subprocess.run(suggested(line), shell=True, check=True)
    assert "From: Tést" in patch.read_text(encoding="utf-8")
    assert up.run("apply", "--no-env").returncode == 0


# ---- pins and state files -------------------------------------------------------------

def test_a_pin_without_sha256_names_the_field_and_the_fix(up):
    env = {"SGLANG_SERIES_ENV": str(up.make_env_dir())}
    data = json.loads(up.releases.read_text())
    del data["releases"][VERSION]["sha256"]
    up.releases.write_text(json.dumps(data))
    line = one_line_error(up.run("apply", "--no-env"))
    assert line == (f"error: releases.json: the pin of sglang {VERSION} has no valid `sha256`; "
                    f"record it again with `make pin UPSTREAM_VERSION={VERSION}`")
    proc = up.make(*shlex.split(suggested(line))[1:], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(up.releases.read_text())["releases"][VERSION]["sha256"]
    assert up.run("apply", "--no-env").returncode == 0


def test_an_emptied_state_file_is_rebuilt(up):
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"})
    up.write_series(["0001-a.patch"])
    assert up.run("apply", "--no-env").returncode == 0
    state = up.build / VERSION / "applied.json"
    state.write_text("")
    # a reader names the command that rebuilds it ...
    from scripts.lib import build  # noqa: E402
    from scripts.lib import config
    from scripts.lib.errors import SeriesError

    os.environ.update({k: v for k, v in up.env.items() if k.startswith(("SGLANG_SERIES_", "UV_DEFAULT_INDEX"))})
    try:
        with pytest.raises(SeriesError, match=re.escape(f"{state} is damaged (not the JSON `make apply` writes); "
                                                        "run `make apply`, which rebuilds it")):
            build.patched_wheel(config.Paths.from_env(), VERSION)
    finally:
        for k in up.env:
            if k.startswith(("SGLANG_SERIES_", "UV_DEFAULT_INDEX")):
                os.environ.pop(k)
    # ... and that command recovers by itself, twice in a row
    for _ in range(2):
        proc = up.run("apply", "--no-env")
        assert proc.returncode == 0, proc.stderr
    assert json.loads(state.read_text())["patches"][0]["patch"] == "0001-a.patch"
    assert up.git("log", "--format=%s", "baseline..applied") == "change pool"


# ---- the disk, the cache -------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 KiB filesystem, full after a page: the cache on a disk that fills up."""
    where = tmp_path / "small-disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a tmpfs (root in a container that allows it)")
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_is_a_full_disk(up, tiny_disk):
    cache = tiny_disk / "cache"
    cache.mkdir()
    (cache / "tools").symlink_to(up.cache / "tools", target_is_directory=True)
    (cache / "filler").write_bytes(b"x" * 4096)
    line = one_line_error(up.run("apply", "--no-env", env={"SGLANG_SERIES_CACHE": str(cache)}))
    assert "no space left on the disk that holds" in line and "free space there" in line
    assert "network" not in line


def test_a_damaged_test_venv_is_rebuilt(up):
    env = {"SGLANG_SERIES_ENV": str(up.make_env_dir())}
    (Path(env["SGLANG_SERIES_ENV"]) / f"{VERSION}.lock").write_text("# nothing: the synthetic sglang needs nothing\n")
    assert up.run("apply", env=env).returncode == 0
    (venv,) = (up.cache / "venvs").glob("*[!k]")  # the venv, not its .lock
    (venv / "bin/python").unlink()
    proc = up.run("apply", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"{venv} is damaged (bin/python missing); rebuilding it" in proc.stdout
    assert (venv / "bin/python").exists()


def test_a_damaged_cached_tool_is_rebuilt(tmp_path):
    from scripts.lib import envs

    home = tmp_path / "tools" / "abc"
    built = []

    def build(h):
        (h / "bin").mkdir(parents=True)
        for name in ("uv", "wheel"):
            (h / "bin" / name).write_text("#!/bin/sh\n")
            (h / "bin" / name).chmod(0o755)
        built.append(h)

    envs._build_once(home, build, ("bin/uv", "bin/wheel"))
    envs._build_once(home, build, ("bin/uv", "bin/wheel"))
    assert len(built) == 1  # an intact one is reused
    (home / "bin/uv").unlink()
    envs._build_once(home, build, ("bin/uv", "bin/wheel"))
    assert len(built) == 2 and (home / "bin/uv").exists()


# ---- interruptions --------------------------------------------------------------------

SLOW_TEST = '''import os, subprocess, sys, time
from pathlib import Path

def test_runs_long():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    Path(os.environ["PIDS"]).write_text(f"{os.getpid()} {child.pid}\\n")
    time.sleep(300)
'''


def test_sigterm_to_make_test_stops_every_child(up, tmp_path):
    """`kill` of `make test-vanilla`: make passes SIGTERM on, and the verb stops pytest and
    everything pytest started (here a test's own child in a session of its own)."""
    env_dir = up.make_env_dir()
    # the test venv of the base (pytest in it), found in the shared cache through a lock with the same pins
    (env_dir / f"{VERSION}.lock").write_text((REPO / "env/0.5.12.lock").read_text())
    from synthetic import real_cache

    (up.cache / "venvs").symlink_to(real_cache() / "venvs", target_is_directory=True)
    (tmp_path / "test_slow.py").write_text(SLOW_TEST)
    pids = tmp_path / "pids"
    clean = {k: v for k, v in up.env.items() if not k.startswith("MAKE")}
    make = subprocess.Popen(["make", "--no-print-directory", "test-vanilla", f"PYTEST_ARGS={tmp_path / 'test_slow.py'}"],
                            cwd=REPO, env={**clean, "SGLANG_SERIES_ENV": str(env_dir), "PIDS": str(pids)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not pids.exists() and make.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pids.exists(), make.communicate()
    pytest_pid, child_pid = map(int, pids.read_text().split())
    make.send_signal(signal.SIGTERM)
    out, err = make.communicate(timeout=60)
    assert make.returncode != 0
    assert "error: terminated; run the same command again" in err
    for pid in (pytest_pid, child_pid):
        deadline = time.monotonic() + 15
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(pid), f"process {pid} still runs after SIGTERM to make"


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
