"""Python environments: the pinned tools (uv, wheel) and test venvs made from hashed locks.

Both live in the shared cache, keyed by the hash of their lock file, so every
clone on the machine reuses them and a second run downloads nothing.
"""

import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import hints
from .config import Paths, base_version, writable_cache
from .errors import SeriesError
from .wheels import sha256_of


@dataclass(frozen=True)
class Tools:
    uv: Path
    wheel: Path


@contextmanager
def _locked(path: Path):
    """Serialise builders of one environment (two clones running `make` at once).
    flock, not filelock: this also guards the install of filelock itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _run(cmd: list, what: str, env: dict | None = None, progress: str | None = None) -> None:
    """Run a tool quietly. With `progress` (multi-GB installs take minutes), print that first
    and then every 30 s that it still runs. A failure is one line: `what` and the tool's reason."""
    if progress:
        print(progress, flush=True)
    start = time.monotonic()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while True:
        try:
            proc.wait(timeout=30)
            break
        except subprocess.TimeoutExpired:
            if progress:
                print(f"  ... still running ({time.monotonic() - start:.0f} s)", flush=True)
    reader.join()
    if proc.returncode != 0:
        if disk_full("".join(output)):
            raise SeriesError(f"{what}: no space left on the disk it writes to (the cache, or the folder it "
                              "installs into); free space there, then run again")
        raise SeriesError(f"{what} ({_reason(output) or f'exit {proc.returncode}'}); check the network and the "
                          "package index settings, then run again")


def _reason(output: list[str]) -> str:
    """The network error when there is one (pip and uv bury it under their own summary), else the last line."""
    text = "".join(output)
    m = re.search(r"Failed to establish a new connection: ([^'\")]+)|(dns error[^\n]*)|(Connection refused)", text)
    if m:
        return next(g for g in m.groups() if g).strip()
    lines = [line.strip() for line in output if line.strip()]
    return lines[-1] if lines else ""


def disk_full(output: str) -> bool:
    """A tool's output says the disk is full (ENOSPC, as Python and as Rust print it)."""
    return "No space left on device" in output or "os error 28" in output


def uv_reason(stderr: str) -> str:
    """uv's own verdict: its `error:` line and the innermost `cause:` (the last line is often a caret underline)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    causes = [line[len("cause:"):].strip() for line in lines if line.startswith("cause:")]
    for line in lines:
        if line.startswith(("error:", "×")):
            head = line.removeprefix("error:").lstrip("× ").strip()
            return f"{head}: {causes[-1]}" if causes else head
    return next((line for line in reversed(lines) if line.strip("^~ ")), "no message")


def _build_once(home: Path, build, needs: tuple[str, ...]) -> Path:
    """Run `build(home)` unless a finished copy is there; a half-built or damaged one
    (one of the executables `needs` gone) is redone."""
    def intact() -> bool:
        return (home / ".complete").exists() and all(os.access(home / n, os.X_OK) for n in needs)

    if intact():
        return home
    with _locked(home.with_name(home.name + ".lock")):
        if not intact():
            if (home / ".complete").exists():
                print(f"{home} is damaged ({', '.join(n for n in needs if not os.access(home / n, os.X_OK))} "
                      "missing); rebuilding it", flush=True)
            shutil.rmtree(home, ignore_errors=True)
            build(home)
            (home / ".complete").touch()
    return home


def tools(paths: Paths) -> Tools:
    lock = paths.env / "tools.lock"
    home = writable_cache(paths) / "tools" / sha256_of(lock)[:12]

    def build(home: Path) -> None:
        _run([sys.executable, "-m", "venv", home], "creating the tools venv failed")
        # one retry, not pip's five with back-off: offline, say so in seconds
        _run([home / "bin/pip", "install", "-q", "--retries", "1", "--timeout", "30", "--disable-pip-version-check",
              "--require-hashes", "--no-deps", "-r", lock], f"cannot download the pinned tools of {lock.name} from the package index pip is configured with",
             progress=f"installing the pinned tools ({lock.name}: uv, wheel, filelock, pytest) into {home}")

    _build_once(home, build, ("bin/python", "bin/uv", "bin/wheel", "bin/pytest"))
    return Tools(uv=home / "bin/uv", wheel=home / "bin/wheel")


def filelock(paths: Paths):
    """The `filelock` package from the pinned tools (the scripts' own Python has no packages)."""
    home = tools(paths).uv.parent.parent
    site = home / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    if str(site) not in sys.path:
        sys.path.append(str(site))
    import filelock as module

    return module


# where uv reads an index from, besides its command line (uv's documented settings)
UV_INDEX_VARS = ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "UV_INDEX", "UV_CONFIG_FILE")


def _uv_config_files(root: Path) -> list[Path]:
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    system = [Path(d) / "uv/uv.toml" for d in os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":") if d]
    return [root / "uv.toml", xdg / "uv/uv.toml", *system, Path("/etc/uv/uv.toml")]


@functools.lru_cache(maxsize=None)
def pip_index(paths: Paths) -> str | None:
    """The index-url pip is configured with (PIP_INDEX_URL, pip.conf), as pip itself reads it."""
    proc = subprocess.run([str(tools(paths).uv.parent / "python"), "-m", "pip", "config", "list"],
                          capture_output=True, text=True)
    found = dict(re.findall(r"^(\S+?)\.index-url='([^']*)'$", proc.stdout, re.MULTILINE))
    # pip's own precedence: its environment variable over its files
    return found.get(":env:") or found.get("global") or found.get("install") or None


def uv_env(paths: Paths) -> dict:
    """The environment uv runs in: the shared cache, and the package index it is configured
    with. When uv has no index setting at all and pip has one (a team that set up only pip's
    mirror), uv is given pip's, so both tools use the same index."""
    env = dict(os.environ)
    if not any(env.get(v) for v in UV_INDEX_VARS) and not any(f.is_file() for f in _uv_config_files(paths.root)):
        index = pip_index(paths)
        if index:
            env["UV_DEFAULT_INDEX"] = index
    env["UV_CACHE_DIR"] = str(paths.cache / "uv")
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.setdefault("UV_HTTP_RETRIES", "1")  # offline, say so in seconds (uv's own default backs off for 10 s)
    return env


def lock_file(paths: Paths, version: str) -> Path:
    lock = paths.env / f"{version}.lock"
    if not lock.exists():
        raise SeriesError(f"no lock for sglang {version} ({lock}); create it with {hints.command('lock', version)}")
    return lock


def lock_key(lock: Path) -> str:
    """Hash of a lock's requirement lines: editing its comments does not rebuild the venv."""
    lines = [l for l in lock.read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def venv(paths: Paths, version: str) -> Path:
    """The test venv for release `version`: its pinned dependencies, without sglang itself."""
    cache = writable_cache(paths)
    lock = lock_file(paths, version)
    home = cache / "venvs" / lock_key(lock)
    tl = tools(paths)

    def build(home: Path) -> None:
        env = uv_env(paths)
        _run([tl.uv, "venv", "-q", "--python", sys.executable, home], "creating the test venv failed", env)
        env["VIRTUAL_ENV"] = str(home)
        _run([tl.uv, "pip", "install", "--require-hashes", "-r", lock], f"cannot download or install the packages of {lock.name}",
             env, progress=f"building the test venv from {lock.name} in {home} (several GB: minutes the first time)")

    return _build_once(home, build, ("bin/python",))


SITE_STAMP = ".wheel-sha256"  # in a site: the sha256 of the wheel installed there


def install_site(paths: Paths, venv_home: Path, wheel: Path, site: Path) -> Path:
    """Install `wheel` (no dependencies: the venv has them) into the folder `site`,
    which tests put on PYTHONPATH. Skipped when that exact wheel is already there."""
    stamp = site / SITE_STAMP
    digest = sha256_of(wheel)
    if stamp.exists() and stamp.read_text() == digest:
        return site
    shutil.rmtree(site, ignore_errors=True)
    tl = tools(paths)
    _run(
        [tl.uv, "pip", "install", "-q", "--no-deps", "--no-cache", "--python", venv_home / "bin/python", "--target", site, wheel],
        f"installing {wheel.name} failed",
        uv_env(paths),
    )
    stamp.write_text(digest)
    return site


def compile_lock(paths: Paths, source, target, extra: list[str], command: str) -> None:
    tools_ = tools(paths)
    cmd = [str(tools_.uv), "pip", "compile", str(source), "-o", str(target), "-q", "--generate-hashes",
           "--python-version", "3.11", "--custom-compile-command", command, *extra]
    proc = subprocess.run(cmd, cwd=paths.root, env=uv_env(paths), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SeriesError(f"uv pip compile {source.name} failed: {uv_reason(proc.stderr)}; fix {source}, then run `{command}`")
    print(f"wrote {target}")


def lock_release(paths: Paths, rel) -> None:
    """env/<X>.lock from env/<X>.in: hashed, cut off at the release's upload date."""
    source = paths.env / f"{rel.version}.in"
    if not source.exists():
        raise SeriesError(f"{source} is missing; copy env/{base_version(paths)}.in and set sglang=={rel.version}")
    # no cut-off when the package index did not say when the release was uploaded
    cutoff = ["--exclude-newer", rel.exclude_newer] if rel.exclude_newer else []
    # env/X.overrides replaces a pin of sglang's own that cannot be installed from the index
    overrides = paths.env / f"{rel.version}.overrides"
    override = ["--overrides", str(overrides)] if overrides.exists() else []
    compile_lock(
        paths, source, paths.env / f"{rel.version}.lock",
        ["--python-platform", "x86_64-manylinux_2_34", *cutoff, *override, "--no-emit-package", "sglang"],
        f"make lock UPSTREAM_VERSION={rel.version}",
    )
