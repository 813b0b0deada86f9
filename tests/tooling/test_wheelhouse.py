"""make wheelhouse on a synthetic upstream: every pinned line's patched wheel in one folder,
a simple index with its sums, and a wheel from it installs into a fresh venv (no
dependencies, no network) both by --find-links and as an index, and says what it carries."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import ORIGINAL, VERSION, Upstream  # noqa: E402

from scripts.lib import config, envs  # noqa: E402

NEW, UNLINED = "1.1.0", "1.2.0"


@pytest.fixture
def up(tmp_path):
    """Base 1.0.0 with 0001, 1.1.0 with its own line (0001 too), 1.2.0 pinned without a line."""
    up = Upstream(tmp_path)
    up.add_patch("0001-a.patch", {5: "LINE_5 = 'five'"}, "first change")
    up.write_series(["0001-a.patch"])
    for version in (NEW, UNLINED):
        up.pin_files(version, {**ORIGINAL, "sglang/__init__.py": f"VERSION = '{version}'\n"})
    (up.patches / "lines" / f"{NEW}.series").write_text(f"# sglang {NEW}'s line\nlines/{up.base}/0001-a.patch\n")
    return up


def uv() -> Path:
    return envs.tools(config.Paths.from_env()).uv


def installed(tmp_path: Path, name: str, source: list[str], requirement: str) -> str:
    """`python -m sglang.downstream_series` in a fresh venv that has only `requirement` from `source`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "VIRTUAL_ENV"))}
    env.update(UV_OFFLINE="1", UV_NO_CONFIG="1", UV_CACHE_DIR=str(tmp_path / "uv-cache"))
    venv = tmp_path / name
    for cmd in ([str(uv()), "venv", "-q", "--python", sys.executable, str(venv)],
                [str(uv()), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "--no-deps", *source, requirement]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "sglang.downstream_series"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_line_in_one_folder_installs_by_find_links_and_as_an_index(up, tmp_path):
    house = tmp_path / "house"
    proc = up.make("wheelhouse", f"WHEELHOUSE={house}")
    assert proc.returncode == 0, proc.stderr
    # the release without a line is named with the command that makes its line, and skipped
    assert f"sglang {UNLINED}: skipped, it has no line yet (`make rebase UPSTREAM_VERSION={UNLINED} WRITE=1 LINE=1`" \
        in proc.stdout
    wheels = sorted(p.name for p in house.glob("*.whl"))
    assert wheels == [f"sglang-{VERSION}+dsv4fix.1-py3-none-any.whl", f"sglang-{NEW}+dsv4fix.1-py3-none-any.whl"]
    sums = (house / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{hashlib.sha256((house / w).read_bytes()).hexdigest()}  {w}" for w in wheels]
    page = (house / "sglang" / "index.html").read_text()
    assert all(f'{w.replace("+", "%2B")}#sha256=' in page for w in wheels) and 'href="sglang/"' in (house / "index.html").read_text()

    by_links = installed(tmp_path, "venv-links", ["--no-index", "--find-links", str(house)], f"sglang=={VERSION}+dsv4fix.1")
    assert by_links.splitlines() == [f"sglang {VERSION} + 1 patches ({VERSION}+dsv4fix.1)", "  0001-a.patch  [vendor]"]
    as_index = installed(tmp_path, "venv-index", ["--index-url", house.as_uri()], f"sglang=={NEW}+dsv4fix.1")
    assert as_index.splitlines()[0] == f"sglang {NEW} + 1 patches ({NEW}+dsv4fix.1)"


def test_one_release_replaces_its_older_wheel_and_a_release_without_a_line_is_one_line(up, tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    (house / "Team_Tool-2.0-py3-none-any.whl").write_bytes(b"a team's own wheel")  # stays, indexed by its normalized name
    assert up.make("wheelhouse", f"UPSTREAM_VERSION={VERSION}", f"WHEELHOUSE={house}").returncode == 0
    up.add_patch("0002-b.patch", {30: "LINE_30 = 'thirty'"}, "second change")
    up.write_series(["0001-a.patch", "0002-b.patch"])
    proc = up.make("wheelhouse", f"UPSTREAM_VERSION={VERSION}", f"WHEELHOUSE={house}")
    assert proc.returncode == 0, proc.stderr
    wheels = sorted(p.name for p in house.glob("*.whl"))
    assert wheels == ["Team_Tool-2.0-py3-none-any.whl", f"sglang-{VERSION}+dsv4fix.2-py3-none-any.whl"]
    assert [line.split()[1] for line in (house / "SHA256SUMS").read_text().splitlines()] == wheels
    assert "Team_Tool-2.0-py3-none-any.whl" in (house / "team-tool" / "index.html").read_text()
    proc = up.make("wheelhouse", f"UPSTREAM_VERSION={UNLINED}", f"WHEELHOUSE={house}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert f"`make rebase UPSTREAM_VERSION={UNLINED} WRITE=1 LINE=1` writes its line" in errors[0]
