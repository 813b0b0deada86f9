"""Download, verify, unpack and re-pack wheels. Packing uses the `wheel` package's CLI."""

import errno
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import hints
from .errors import SeriesError

INDEX_SETTINGS = "UV_DEFAULT_INDEX / UV_INDEX_URL or uv.toml"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(locate, dest: Path, sha256: str, release: str) -> Path:
    """Return `dest`, downloading it first unless a copy with the pinned sha256 is there.
    `locate()` gives the download url (asked of the package index only when needed).

    The download lands in a temporary file and is renamed only once its hash
    matches, so a failed or tampered download never replaces a good copy.
    """
    cached = sha256_of(dest) if dest.exists() else None
    if cached == sha256:
        return dest
    try:
        url = locate()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".part-", delete=False) as tmp:
            part = Path(tmp.name)
    except SeriesError as exc:
        if cached:
            raise SeriesError(f"{dest} is there, but its sha256 {cached} is not the pinned {sha256}, and a good copy "
                              f"cannot be fetched: {exc}")
        raise
    except OSError as exc:
        raise disk_error(exc, dest.parent)
    try:
        _download(url, part, dest.name, release)
        got = sha256_of(part)
        if got != sha256:
            raise SeriesError(
                f"{dest.name}: sha256 {got} does not match the pin {sha256}; the file was not kept. "
                "If upstream really re-published it, update the pin with "
                f"{hints.command('pin', release)}"
            )
        part.chmod(0o644)  # the cache is shared: other users read it (a temporary file starts 0600)
        part.replace(dest)
        return dest
    finally:
        part.unlink(missing_ok=True)


def disk_error(exc: OSError, where: Path) -> SeriesError:
    """A local write failure, named as what it is (a full disk is not a network problem)."""
    if exc.errno == errno.ENOSPC:
        return SeriesError(f"no space left on the disk that holds {where}; free space there (or point "
                           "SGLANG_SERIES_CACHE at another disk), then run again")
    return SeriesError(f"cannot write in {where} ({exc.strerror or exc}); fix that folder, then run again")


def _download(url: str, part: Path, name: str, release: str) -> None:
    # imported here: urllib.request costs every verb ~80 ms at start, and only a download needs it
    import urllib.error
    import urllib.parse
    import urllib.request

    start = time.monotonic()
    where = urllib.parse.urlsplit(url).netloc or url
    try:
        resp = urllib.request.urlopen(url, timeout=60)
    except urllib.error.HTTPError as exc:
        raise SeriesError(f"the package index answered HTTP {exc.code} ({exc.reason}) for {name}, the wheel of "
                          f"sglang {release}, at {url}; check the index settings ({INDEX_SETTINGS}), "
                          f"or put the file in {part.parent}/ and run again")
    except urllib.error.URLError as exc:
        if not isinstance(exc.reason, FileNotFoundError):
            raise SeriesError(f"cannot download {name}, the wheel of sglang {release} ({exc.reason}); check the "
                              f"network, or put the file in {part.parent}/ and run again")
        raise SeriesError(f"the package index lists {name}, the wheel of sglang {release}, but has no file at {url}; "
                          f"check the index settings ({INDEX_SETTINGS}), or put the file in {part.parent}/ and run again")
    except OSError as exc:
        raise SeriesError(f"cannot download {name}, the wheel of sglang {release} "
                          f"({getattr(exc, 'reason', exc)}); check the network, or put the file in {part.parent}/ "
                          "and run again")
    with resp:
        size = int(resp.headers.get("Content-Length") or 0)
        print(f"downloading {name} ({size / 1e6:.1f} MB) from {where}", flush=True)
        try:
            fh = open(part, "wb")
        except OSError as exc:
            raise disk_error(exc, part.parent)
        with fh:
            while True:
                try:
                    block = resp.read(1 << 20)
                except OSError as exc:  # the connection broke off
                    raise SeriesError(f"the download of {name} (sglang {release}) broke off ({exc}); "
                                      "check the network and run again")
                if not block:
                    break
                try:
                    fh.write(block)
                except OSError as exc:
                    raise disk_error(exc, part.parent)
    print(f"downloaded {name} in {time.monotonic() - start:.1f} s", flush=True)


def unpack(wheel_cli: Path, wheel: Path, dest: Path) -> Path:
    """Unpack `wheel` under `dest`; returns the unpacked root (name-version/)."""
    dest.mkdir(parents=True, exist_ok=True)
    _run([str(wheel_cli), "unpack", "--dest", str(dest), str(wheel)])
    (root,) = [p for p in dest.iterdir() if p.is_dir()]
    return root


def pack(wheel_cli: Path, root: Path, dest: Path, local_version: str) -> Path:
    """Re-pack an unpacked wheel into the empty folder `dest`; `wheel pack` rewrites RECORD
    and the version's local label."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    # A fixed SOURCE_DATE_EPOCH makes the zip timestamps, and so the wheel's bytes, reproducible.
    _run([str(wheel_cli), "pack", "--dest-dir", str(dest), "--local-version", local_version, str(root)],
         env={**os.environ, "SOURCE_DATE_EPOCH": "946684800"})
    (built,) = dest.glob("*.whl")
    return built



def _run(cmd: list[str], env: dict | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SeriesError(f"{' '.join(cmd[:2])} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
