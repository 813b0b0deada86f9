"""Python environments: the pinned tools (uv, wheel) and test venvs made from hashed locks.

Both live in the shared cache, keyed by the hash of their lock file, so every
clone on the machine reuses them and a second run downloads nothing.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import Paths
from .errors import SeriesError
from .wheels import sha256_of


@dataclass(frozen=True)
class Tools:
    uv: Path
    wheel: Path


@contextmanager
def _locked(path: Path):
    """Serialise builders of one environment (two clones running `make` at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _run(cmd: list, what: str, env: dict | None = None) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise SeriesError(f"{what} failed ({lines[-1] if lines else proc.returncode}); check the network and run again")


def _build_once(home: Path, build) -> Path:
    """Run `build(home)` unless a finished copy is there; a half-built one is redone."""
    with _locked(home.with_name(home.name + ".lock")):
        if not (home / ".complete").exists():
            shutil.rmtree(home, ignore_errors=True)
            build(home)
            (home / ".complete").touch()
    return home


def tools(paths: Paths) -> Tools:
    lock = paths.env / "tools.lock"
    home = paths.cache / "tools" / sha256_of(lock)[:12]

    def build(home: Path) -> None:
        _run([sys.executable, "-m", "venv", home], "creating the tools venv")
        _run([home / "bin/pip", "install", "-q", "--require-hashes", "--no-deps", "-r", lock], "installing uv and wheel")

    _build_once(home, build)
    return Tools(uv=home / "bin/uv", wheel=home / "bin/wheel")


def uv_env(paths: Paths) -> dict:
    env = dict(os.environ)
    env["UV_CACHE_DIR"] = str(paths.cache / "uv")
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def lock_file(paths: Paths, version: str) -> Path:
    lock = paths.env / f"{version}.lock"
    if not lock.exists():
        raise SeriesError(f"no lock for sglang {version} ({lock}); create it with `make lock UPSTREAM_VERSION={version}`")
    return lock


def lock_key(lock: Path) -> str:
    """Hash of a lock's requirement lines: editing its comments does not rebuild the venv."""
    lines = [l for l in lock.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def venv(paths: Paths, version: str) -> Path:
    """The test venv for release `version`: its pinned dependencies, without sglang itself."""
    lock = lock_file(paths, version)
    home = paths.cache / "venvs" / lock_key(lock)
    tl = tools(paths)

    def build(home: Path) -> None:
        env = uv_env(paths)
        _run([tl.uv, "venv", "-q", "--python", sys.executable, home], "creating the test venv", env)
        env["VIRTUAL_ENV"] = str(home)
        _run([tl.uv, "pip", "install", "-q", "--require-hashes", "-r", lock], f"installing {lock.name}", env)

    return _build_once(home, build)


def install_site(paths: Paths, venv_home: Path, wheel: Path, site: Path) -> Path:
    """Install `wheel` (no dependencies: the venv has them) into the folder `site`,
    which tests put on PYTHONPATH. Skipped when that exact wheel is already there."""
    stamp = site / ".wheel-sha256"
    digest = sha256_of(wheel)
    if stamp.exists() and stamp.read_text() == digest:
        return site
    shutil.rmtree(site, ignore_errors=True)
    tl = tools(paths)
    _run(
        [tl.uv, "pip", "install", "-q", "--no-deps", "--no-cache", "--python", venv_home / "bin/python", "--target", site, wheel],
        f"installing {wheel.name}",
        uv_env(paths),
    )
    stamp.write_text(digest)
    return site
