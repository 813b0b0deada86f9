"""Pins of upstream releases: what PyPI says about a release's wheel, and
writing it into upstream/releases.json (the one file every verb reads pins from)."""

import datetime as dt
import json
import re
import urllib.error
import urllib.parse
import urllib.request

from .config import Paths, load_releases
from .errors import SeriesError

PYPI = "https://pypi.org/pypi/sglang"
SIMPLE = "https://pypi.org/simple/sglang/"
# Only the CPython 3.11 x86_64 wheel: the base's venvs and tools are 3.11 (no sdist after 0.5.10.post1).
WHEEL = re.compile(r"^sglang-(?P<v>[^-]+)-cp311-cp311-manylinux_\d+_\d+_x86_64\.whl$")
# Dependencies uploaded a little after the release still belong to it (a fix-up of
# a pinned package); months later they are drift. A week covers the first.
GRACE_DAYS = 7


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        raise SeriesError(f"PyPI answered {exc.code} for {url}; try again later")
    except (urllib.error.URLError, OSError) as exc:
        raise SeriesError(f"cannot reach PyPI ({getattr(exc, 'reason', exc)}); check the network and run again")


def project() -> dict:
    # The project-wide document: the per-release one (/pypi/sglang/<v>/json) is not
    # served by every index mirror, this one is, and it has every file's upload time.
    return json.loads(_get(f"{PYPI}/json"))


def simple_links() -> dict:
    """{file name: absolute url#sha256=...} from the PEP 503 simple index. The JSON's
    urls can be relative to a mirror; the index's are the canonical download links."""
    html = _get(SIMPLE).decode()
    links = {}
    for href, name in re.findall(r'<a[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', html):
        links[name.strip()] = urllib.parse.urljoin(SIMPLE, href.replace("&amp;", "&"))
    return links


def newest_version(meta: dict | None = None) -> str:
    return (meta or project())["info"]["version"]


def wheel_pin(version: str, meta: dict | None = None) -> dict:
    """{wheel, url, sha256, exclude_newer} for release `version`'s cp311 manylinux x86_64 wheel."""
    releases = (meta or project())["releases"]
    if version not in releases:
        raise SeriesError(f"PyPI has no sglang {version}; the newest is {newest_version()}")
    files = releases[version]
    wheels = [f for f in files if WHEEL.match(f["filename"]) and not f.get("yanked")]
    if not wheels:
        names = ", ".join(f["filename"] for f in files) or "no files"
        raise SeriesError(f"sglang {version} has no cp311 manylinux x86_64 wheel on PyPI ({names}); pick another release")
    f = max(wheels, key=lambda f: f["filename"])  # newest manylinux tag if there are several
    url, _, digest = simple_links().get(f["filename"], "").partition("#sha256=")
    if not url or digest != f["digests"]["sha256"]:
        raise SeriesError(f"PyPI's simple index and JSON disagree about {f['filename']}; try again later")
    uploaded = dt.datetime.fromisoformat(f["upload_time_iso_8601"].replace("Z", "+00:00")).date()
    return {
        "wheel": f["filename"],
        "url": url,
        "sha256": f["digests"]["sha256"],
        "exclude_newer": (uploaded + dt.timedelta(days=GRACE_DAYS)).isoformat(),
    }


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
        raise SeriesError(f"sglang {version} is not pinned; run `make pin UPSTREAM_VERSION={version}` first")
    data["base"] = version
    _write(paths, data)


def version_key(version: str) -> tuple:
    """Sort key for release strings: 0.5.13 < 0.5.13.post1 < 0.5.14."""
    public, _, post = version.partition(".post")
    return tuple(int(p) for p in public.split(".")) + (int(post or 0),)


def pinned_versions(paths: Paths) -> list[str]:
    """Every pinned release, oldest first."""
    return sorted(load_releases(paths)["releases"], key=version_key)
