"""Pins of upstream releases: which wheel the package index offers for a release, and
writing it into upstream/releases.json (the one file every verb reads pins from).

The index is the one uv is configured with (UV_DEFAULT_INDEX / UV_INDEX_URL, uv.toml;
uv's own default when nothing is set): uv resolves `sglang==X` for CPython 3.11 on
manylinux x86_64 and writes what it picked as a PEP 751 lock (wheel name, url, sha256,
upload time). A pin records the wheel's file name and sha256, never where it came from.
"""

import datetime as dt
import json
import re
import subprocess
import tempfile
import tomllib
from pathlib import Path

from . import envs, hints
from .config import Paths, check_version, load_releases
from .errors import SeriesError
from .wheels import INDEX_SETTINGS

# Only the CPython 3.11 x86_64 wheel: the base's venvs and tools are 3.11 (no sdist after 0.5.10.post1).
WHEEL = re.compile(r"^sglang-(?P<v>[^-]+)-cp311-cp311-manylinux_\d+_\d+_x86_64\.whl$")
TARGET = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_34", "--only-binary", "sglang"]
# Dependencies uploaded a little after the release still belong to it (a fix-up of
# a pinned package); months later they are drift. A week covers the first.
GRACE_DAYS = 7


class NoSuchRelease(SeriesError):
    """The index has no release that satisfies the requirement."""


def resolve(paths: Paths, requirement: str) -> dict:
    """{version, wheels: {file name: {url, sha256, uploaded}}} of the sglang release uv picks
    for `requirement` (e.g. `sglang==0.5.14`, `sglang>0.5.12`) on the configured index."""
    uv = envs.tools(paths).uv
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "requirements.in", Path(tmp) / "pylock.toml"
        source.write_text(requirement + "\n")
        cmd = [str(uv), "pip", "compile", str(source), "--no-deps", "--format", "pylock.toml", "-o", str(out),
               "-q", "--no-header", *TARGET]
        # the repository as working folder: a uv.toml there configures the index too
        proc = subprocess.run(cmd, cwd=paths.root, env=envs.uv_env(paths), capture_output=True, text=True)
        if proc.returncode != 0:
            reason = envs.uv_reason(proc.stderr)
            if envs.disk_full(proc.stderr):
                raise SeriesError(f"no space left on the disk that holds {paths.cache} (uv: {reason}); "
                                  "free space there (or point SGLANG_SERIES_CACHE at another disk), then run again")
            if "No solution found" in proc.stderr:
                raise NoSuchRelease(f"the package index has no sglang release with a cp311 manylinux x86_64 wheel for "
                                    f"`{requirement}` ({reason}); check the version, or the index ({INDEX_SETTINGS})")
            raise SeriesError(f"uv cannot resolve `{requirement}` on the configured package index ({reason}); "
                              f"check the network and the index ({INDEX_SETTINGS}), then run again")
        (package,) = tomllib.loads(out.read_text())["packages"]
    wheels = {}
    for wheel in package.get("wheels", []):
        location = wheel.get("url") or wheel.get("path", "")
        name = wheel.get("name") or location.rsplit("/", 1)[-1]
        uploaded = wheel.get("upload-time")
        wheels[name] = {"url": location, "sha256": wheel.get("hashes", {}).get("sha256"),
                        "uploaded": uploaded.date() if isinstance(uploaded, dt.datetime) else None}
    return {"version": package["version"], "wheels": wheels}


def newest_version(paths: Paths, newer_than: str | None = None) -> str:
    return resolve(paths, f"sglang>{newer_than}" if newer_than else "sglang")["version"]


def versions_newer_than(paths: Paths, base: str) -> list[str]:
    """Every release newer than `base` with a cp311 manylinux x86_64 wheel, newest first:
    uv is asked again for the newest one not found yet, until there is none."""
    found: list[str] = []
    while True:
        try:
            found.append(resolve(paths, f"sglang>{base}" + "".join(f",!={v}" for v in found))["version"])
        except NoSuchRelease:
            return found


def _wheel(version: str, offered: dict) -> tuple[str, dict]:
    # uv offers only wheels that install on CPython 3.11 manylinux x86_64; the cp311 one first
    names = sorted(n for n in offered if WHEEL.match(n)) or sorted(n for n in offered if n.endswith(".whl"))
    if not names:
        raise SeriesError(f"sglang {version} has no cp311 manylinux x86_64 wheel on the package index "
                          f"({', '.join(offered) or 'no files'}); pick another release")
    return names[-1], offered[names[-1]]  # the newest manylinux tag if there are several


def wheel_pin(paths: Paths, version: str) -> dict:
    """{wheel, sha256, exclude_newer} for release `version`'s cp311 manylinux x86_64 wheel.
    exclude_newer is None when the index does not say when the wheel was uploaded."""
    check_version(version)
    found = resolve(paths, f"sglang=={version}")
    name, wheel = _wheel(version, found["wheels"])
    if not wheel["sha256"]:
        raise SeriesError(f"the package index gives no sha256 for {name}; use an index that publishes hashes "
                          f"({INDEX_SETTINGS})")
    uploaded = wheel["uploaded"]
    return {
        "wheel": name,
        "sha256": wheel["sha256"],
        "exclude_newer": (uploaded + dt.timedelta(days=GRACE_DAYS)).isoformat() if uploaded else None,
    }


def wheel_url(paths: Paths, version: str, name: str) -> str:
    """Where the configured index serves the pinned wheel `name` of sglang `version`."""
    offered = resolve(paths, f"sglang=={version}")["wheels"]
    if name not in offered:
        raise SeriesError(f"the package index offers {', '.join(offered) or 'no wheel'} for sglang {version}, "
                          f"not the pinned {name}; check the index ({INDEX_SETTINGS}), "
                          f"or re-pin with {hints.command('pin', version)}")
    return offered[name]["url"]


def _write(paths: Paths, data: dict) -> None:
    tmp = paths.releases.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(paths.releases)  # never a half-written pin file


def record(paths: Paths, version: str, pin: dict) -> bool:
    """Add or update the pin of `version`; False when it was already exactly that."""
    data = load_releases(paths)
    if data["releases"].get(version) == pin:
        return False
    data["releases"][version] = pin
    data["releases"] = dict(sorted(data["releases"].items(), key=lambda kv: version_key(kv[0])))
    _write(paths, data)
    return True


def set_base(paths: Paths, version: str) -> None:
    data = load_releases(paths)
    if version not in data["releases"]:
        raise SeriesError(f"sglang {version} is not pinned; run {hints.command('pin', version)} first")
    data["base"] = version
    _write(paths, data)


def version_key(version: str) -> tuple:
    """Sort key for release strings: 0.5.13 < 0.5.13.post1 < 0.5.14."""
    public, _, post = version.partition(".post")
    return tuple(int(p) for p in public.split(".")) + (int(post or 0),)


def newest_at_or_below(candidates, version: str) -> str | None:
    """The one rule for picking a per-release file (a patch's port, a revert's copy, the
    line a move starts from): the newest candidate release at or below `version`."""
    below = [c for c in candidates if version_key(c) <= version_key(version)]
    return max(below, key=version_key) if below else None


def pinned_versions(paths: Paths) -> list[str]:
    """Every pinned release, oldest first."""
    return sorted(load_releases(paths)["releases"], key=version_key)
