"""Download, verify, unpack and re-pack wheels. Packing uses the `wheel` package's CLI."""

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import SeriesError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, sha256: str) -> Path:
    """Return `dest`, downloading it first unless a copy with the pinned sha256 is there.

    The download lands in a temporary file and is renamed only once its hash
    matches, so a failed or tampered download never replaces a good copy.
    """
    cached = sha256_of(dest) if dest.exists() else None
    if cached == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".part-", delete=False) as tmp:
        part = Path(tmp.name)
    try:
        try:
            _download(url, part, dest.name)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if cached:
                raise SeriesError(
                    f"{dest} is there, but its sha256 {cached} is not the pinned {sha256}, and a good copy "
                    f"cannot be downloaded ({reason}); delete it and run again online, or replace it with the right file"
                )
            raise SeriesError(
                f"cannot download {dest.name} ({reason}); check the network, "
                f"or put the file in {dest.parent}/ and run again"
            )
        got = sha256_of(part)
        if got != sha256:
            raise SeriesError(
                f"{dest.name}: sha256 {got} does not match the pin {sha256}; the file was not kept. "
                "If upstream really re-published it, update the pin in upstream/releases.json"
            )
        part.chmod(0o644)  # the cache is shared: other users read it (a temporary file starts 0600)
        part.replace(dest)
        return dest
    finally:
        part.unlink(missing_ok=True)


def _download(url: str, part: Path, name: str) -> None:
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as fh:
        size = int(resp.headers.get("Content-Length") or 0)
        print(f"downloading {name} ({size / 1e6:.1f} MB) from {urllib.parse.urlsplit(url).netloc or url}", flush=True)
        shutil.copyfileobj(resp, fh, 1 << 20)
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
