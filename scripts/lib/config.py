"""Where things live: the repo, the shared cache, the scratch build tree, the pins.

Every location can be overridden through an environment variable, which the
tooling tests use to run the verbs on a tiny synthetic upstream.
"""

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import hints
from .errors import SeriesError

ROOT = Path(__file__).resolve().parents[2]


def _path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).resolve() if value else default


@dataclass(frozen=True)
class Paths:
    root: Path
    cache: Path  # shared by every clone on the machine
    build: Path  # scratch space inside the repo (git-ignored)
    patches: Path
    releases: Path
    env: Path  # lock files

    @classmethod
    def from_env(cls) -> "Paths":
        xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return cls(
            root=ROOT,
            cache=_path("SGLANG_SERIES_CACHE", xdg / "sglang-series"),
            build=_path("SGLANG_SERIES_BUILD", ROOT / "build"),
            patches=_path("SGLANG_SERIES_PATCHES", ROOT / "patches"),
            releases=_path("SGLANG_SERIES_RELEASES", ROOT / "upstream" / "releases.json"),
            env=_path("SGLANG_SERIES_ENV", ROOT / "env"),
        )

    def release_dir(self, version: str) -> Path:
        return self.build / version

    @property
    def tests_root(self) -> Path:
        """Where tests/fixes.toml, the checks and docs/matrix.json live: this repository,
        or SGLANG_SERIES_TESTS_ROOT (a synthetic upstream's, in the tooling tests)."""
        return _path("SGLANG_SERIES_TESTS_ROOT", self.root)


@dataclass(frozen=True)
class Release:
    """A pinned release: its wheel by file name and sha256 (fetched through the configured
    package index), and the upload-date cut-off of its dependencies (None: the index gave none)."""
    version: str
    wheel: str
    sha256: str
    exclude_newer: str | None


# a release string as the index spells it (0.5.14, 0.5.12.post1): it names folders under build/
_VERSION = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")


def check_version(version: str) -> str:
    if not _VERSION.match(version):
        raise SeriesError(f"{version!r} is not a release version; give one like UPSTREAM_VERSION=0.5.14")
    return version


def load_releases(paths: Paths) -> dict:
    try:
        data = json.loads(paths.releases.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SeriesError(f"{paths.releases} is missing; restore it with `git checkout -- {paths.releases.name}`")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SeriesError(f"{paths.releases} is not valid JSON ({exc}); fix it or `git checkout` it")
    if not (isinstance(data, dict) and isinstance(data.get("releases"), dict) and isinstance(data.get("base"), str)):
        raise SeriesError(f"{paths.releases} lacks `base` or `releases`; fix it or `git checkout` it")
    return data


def release(paths: Paths, version: str | None = None) -> Release:
    """The pinned release `version` (default: the series' base)."""
    data = load_releases(paths)
    version = check_version(version or data["base"])
    pins = data["releases"].get(version)
    if pins is None:
        known = ", ".join(sorted(data["releases"]))
        raise SeriesError(
            f"unknown upstream version {version!r} (pinned: {known}); "
            f"pin it first with {hints.command('pin', version)}"
        )
    missing = [f for f in ("wheel", "sha256") if not isinstance(pins.get(f), str) or not pins[f]]
    if missing or not isinstance(pins.get("exclude_newer", ""), (str, type(None))):
        field = missing[0] if missing else "exclude_newer"
        raise SeriesError(f"{paths.releases.name}: the pin of sglang {version} has no valid `{field}`; "
                          f"record it again with {hints.command('pin', version)}")
    # other keys (a download url kept by an older pin) are hints the index makes unnecessary
    return Release(version=version, wheel=pins["wheel"], sha256=pins["sha256"], exclude_newer=pins.get("exclude_newer"))


def base_version(paths: Paths) -> str:
    return load_releases(paths)["base"]


def writable_cache(paths: Paths) -> Path:
    """The shared cache folder, created if needed; one line when it cannot be written."""
    try:
        paths.cache.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=paths.cache).close()
    except OSError as exc:
        reason = "a file, not a folder" if paths.cache.is_file() else exc.strerror
        raise SeriesError(
            f"the cache {paths.cache} is not a writable folder ({reason}); point SGLANG_SERIES_CACHE "
            "at a writable folder, or unset it to use ~/.cache/sglang-series"
        )
    return paths.cache


def require_python() -> None:
    import sys

    if sys.version_info[:2] != (3, 11):
        raise SeriesError(
            f"Python 3.11 is required (sglang 0.5.12 ships only a cp311 wheel); this is {sys.version.split()[0]}: "
            "run with PYTHON=python3.11"
        )
