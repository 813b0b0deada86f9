"""A tiny synthetic upstream (a two-file `sglang` wheel, its pin and a patch series) so
the tooling can be tested in seconds, without the real 8 GB environment. Its wheels are
served by a local package index (a folder laid out as a PEP 503 simple index) that the
verbs reach only through uv's configuration (UV_DEFAULT_INDEX), as a mirror would be."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# what an outer `make test UPSTREAM_VERSION=...` exports must not reach the commands a test runs
MAKE_VARIABLES = {"UPSTREAM_VERSION", "PYTEST_ARGS", "REQUIRE_CUDA", "WRITE", "STRICT", "FORCE", "CONTINUE",
                  "COPY_TO", "RELEASES", "PUBLISH", "LINE", "FRESH", "FROM", "FIXES", "WHEELHOUSE", "PART", "MERGE", "MAKEFLAGS",
                  "MFLAGS", "MAKELEVEL"}
VERSION = "1.0.0"
ORIGINAL = {
    "sglang/__init__.py": "VERSION = '1.0.0'\n",
    "sglang/pool.py": "".join(f"LINE_{i} = {i}\n" for i in range(1, 41)),
}


def real_cache() -> Path:
    sys.path.insert(0, str(REPO))
    from scripts.lib import config

    return config.Paths.from_env().cache


class Upstream:
    """Folders for one test: cache, build, patches and pins, wired through SGLANG_SERIES_*."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.cache = tmp / "cache"
        self.build = tmp / "build"
        self.patches = tmp / "patches"
        self.releases = tmp / "releases.json"
        self.index = tmp / "index" / "simple"
        self.cache.mkdir()
        self.patches.mkdir()
        # The pinned tools (uv, wheel) are shared with the real cache: no download.
        (self.cache / "tools").symlink_to(real_cache() / "tools")
        self.wheel = self.pin_files(VERSION, ORIGINAL)
        self.write_series([])

    @property
    def env(self) -> dict:
        # the package index comes from uv's configuration alone: no other index setting leaks in
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_INDEX", "PIP_EXTRA"))
               and k not in MAKE_VARIABLES}
        env.update(
            UV_DEFAULT_INDEX=self.index.as_uri(),
            SGLANG_SERIES_CACHE=str(self.cache),
            SGLANG_SERIES_BUILD=str(self.build),
            SGLANG_SERIES_PATCHES=str(self.patches),
            SGLANG_SERIES_RELEASES=str(self.releases),
        )
        return env

    @property
    def tree(self) -> Path:
        return self.build / VERSION / "tree"

    def make_env_dir(self) -> Path:
        """An env/ folder for the verbs that read locks (pin, lock, the test venv): the same
        pinned tools (so the shared cache has them) and the base's requirements."""
        env_dir = self.tmp / "env"
        env_dir.mkdir(exist_ok=True)
        for name in ("tools.in", "tools.lock"):
            shutil.copyfile(REPO / "env" / name, env_dir / name)
        (env_dir / f"{VERSION}.in").write_text(f"# the test environment of sglang {VERSION}\nsglang=={VERSION}\n")
        return env_dir

    def pin(self, version: str, sha256: str) -> None:
        data = json.loads(self.releases.read_text()) if self.releases.exists() else {"base": version, "releases": {}}
        data["releases"][version] = {"wheel": f"sglang-{version}-py3-none-any.whl",
                                     "sha256": sha256, "exclude_newer": "2026-01-01"}
        self.releases.write_text(json.dumps(data))

    def publish(self, wheel: Path) -> None:
        """Serve `wheel` from the local index (replacing a file of that name), with its sha256."""
        folder = self.index / "sglang"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel, folder / wheel.name)
        links = "".join(f'<a href="{w.name}#sha256={_sha256(w)}">{w.name}</a>\n' for w in sorted(folder.glob("*.whl")))
        (folder / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
        (self.index / "index.html").write_text('<!DOCTYPE html>\n<html><body><a href="sglang/">sglang</a></body></html>\n')

    @property
    def base(self) -> str:
        return json.loads(self.releases.read_text())["base"]

    @property
    def series(self) -> Path:
        """The base's line."""
        return self.patches / "lines" / f"{self.base}.series"

    def patch_path(self, name: str) -> Path:
        """A patch file written on the base (its folder), or `lines/X/name` as given."""
        return self.patches / (name if "/" in name else f"lines/{self.base}/{name}")

    def write_series(self, names: list[str]) -> None:
        # an empty line says it is empty on purpose, as a real one would have to
        entries = [n if "/" in n else f"lines/{self.base}/{n}" for n in names]
        self.series.parent.mkdir(parents=True, exist_ok=True)
        self.series.write_text("# test series\n" + ("" if names else "# no patches: none to carry yet\n")
                               + "".join(e + "\n" for e in entries))

    def add_patch(self, name: str, replacements: dict[int, str], subject: str = "change pool") -> Path:
        """A git-format patch of sglang/pool.py with {line number: new text} changes."""
        lines = ORIGINAL["sglang/pool.py"].splitlines(keepends=True)
        new = list(lines)
        for number, text in replacements.items():
            new[number - 1] = text + "\n"
        return self.add_raw_patch(name, _format_patch("python/sglang/pool.py", lines, new, subject))

    def add_file_patch(self, name: str, path: str, text: str, subject: str = "add a module") -> Path:
        """A git-format patch that creates the file `path` (a path in the tree, e.g. python/sglang/x.py)."""
        return self.add_raw_patch(name, _format_patch(path, [], text.splitlines(keepends=True), subject))

    def add_raw_patch(self, name: str, text: str) -> Path:
        path = self.patch_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def make(self, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """`make ARGS` in the repository, on this upstream (no make variables of the caller's)."""
        clean = {k: v for k, v in self.env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                              env={**clean, **(env or {})}, timeout=timeout)

    def run(self, verb: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", f"scripts.{verb}", *args], cwd=REPO, env={**self.env, **(env or {})},
                              capture_output=True, text=True)

    def start(self, verb: str, *args: str) -> subprocess.Popen:
        """The verb in the background, in a process group of its own (as a terminal's Ctrl-C
        reaches the command and its git children), its output unbuffered."""
        return subprocess.Popen([sys.executable, "-m", f"scripts.{verb}", *args], cwd=REPO,
                                env={**self.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=_ctrl_c_as_at_a_terminal)

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.tree), *args], capture_output=True, text=True, check=True).stdout.strip()

    def pin_files(self, version: str, files: dict) -> Path:
        """Build a wheel of `files` for `version`, serve it from the index and pin it (again); returns the wheel."""
        wheel = self.build_wheel(version, files)
        self.publish(wheel)
        self.pin(version, _sha256(wheel))
        return wheel

    def build_wheel(self, version: str, files: dict) -> Path:
        for old in (self.tmp / f"src-{version}", self.tmp / f"dist-{version}"):
            shutil.rmtree(old, ignore_errors=True)
        root = self.tmp / f"src-{version}" / f"sglang-{version}"
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        info = root / f"sglang-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sglang\nVersion: {version}\n")
        (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        out = self.tmp / f"dist-{version}"
        out.mkdir()
        proc = subprocess.run([str(_wheel_cli()), "pack", "-d", str(out), str(root)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return next(out.glob("*.whl"))


def _ctrl_c_as_at_a_terminal() -> None:
    # A shell starts a background job (`cmd &`, nohup) with SIGINT ignored, and Python keeps
    # an ignored SIGINT ignored: the verb would never see the Ctrl-C these tests send.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wheel_cli() -> Path:
    sys.path.insert(0, str(REPO))
    from scripts.lib import config, envs

    return envs.tools(config.Paths.from_env()).wheel


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _format_patch(path: str, old: list[str], new: list[str], subject: str) -> str:
    import difflib

    diff = "".join(difflib.unified_diff(old, new, f"a/{path}" if old else "/dev/null", f"b/{path}", n=3))
    if not old:
        diff = "new file mode 100644\n" + diff
    return (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: Test <test@localhost>\nDate: Sat, 1 Jan 2000 00:00:00 +0000\n"
        f"Subject: [PATCH] {subject}\n\n{subject}.\n\n"
        "Origin: vendor\nBug: https://example.invalid/1\nForwarded: not-needed\n"
        "Applied-Upstream: no\nLast-Update: 2026-11-21\nTests: tests/tooling/synthetic.py\n"
        f"---\ndiff --git a/{path} b/{path}\n{diff}--\n2.39.5\n\n"
    )
