"""Re-pack the applied scratch tree as an installable wheel with a local version label
and a record of the patches it carries (`python -m sglang.downstream_series`)."""

import io
import json
import shutil
import tarfile
from pathlib import Path

from . import config, envs, git, hints, lines, scratch, wheels
from .errors import SeriesError

LABEL = "dsv4fix"  # local version: <upstream>+dsv4fix.<number of patches>
RECORD_MODULE = "sglang/downstream_series.py"

_RECORD_TEMPLATE = '''"""Patches this sglang build carries on top of upstream sglang (generated at build time).

    python -m sglang.downstream_series      # prints them
"""

import json

SERIES = json.loads({payload!r})


def main() -> None:
    print(f"sglang {{SERIES['upstream']}} + {{len(SERIES['patches'])}} patches ({{SERIES['version']}})")
    for p in SERIES["patches"]:
        print(f"  {{p['patch']}}  [{{p.get('Origin', '')}}]")


if __name__ == "__main__":
    main()
'''


def dist_dir(paths: config.Paths, version: str) -> Path:
    return paths.release_dir(version) / "dist"


def patched_wheel(paths: config.Paths, version: str) -> Path:
    """The wheel built from the current applied state; errors if missing or stale."""
    state = scratch.read_state(paths, version)
    stamp = dist_dir(paths, version) / ".series-fingerprint"
    wheels_ = sorted(dist_dir(paths, version).glob("*.whl"))
    if not state or not wheels_ or not stamp.exists() or stamp.read_text() != state["fingerprint"]:
        raise SeriesError("the patched wheel is missing or older than the series; run `make apply`")
    if lines.exists(paths, version) and state["fingerprint"] != lines.fingerprint(paths, version):
        raise SeriesError(f"the patched build of sglang {version} is older than {lines.label(paths, version)}; "
                          f"run {hints.make(paths, 'apply', version)}")
    return wheels_[0]


def build(paths: config.Paths, rel: config.Release, tools: envs.Tools) -> Path:
    state = scratch.read_state(paths, rel.version)
    if state is None:
        raise SeriesError("nothing applied yet; run `make apply`")
    try:
        return patched_wheel(paths, rel.version)
    except SeriesError:
        pass
    work = paths.release_dir(rel.version) / ".build"
    shutil.rmtree(work, ignore_errors=True)
    root = wheels.unpack(tools.wheel, scratch.upstream_wheel(paths, rel), work)
    replace_contents(scratch.tree(paths, rel.version), state["head"], root)
    version = f"{LABEL}.{len(state['patches'])}"
    record = dict(state, version=f"{rel.version}+{version}")
    (root / RECORD_MODULE).write_text(_RECORD_TEMPLATE.format(payload=json.dumps(record, sort_keys=True)))
    wheel = wheels.pack(tools.wheel, root, dist_dir(paths, rel.version), version)
    (dist_dir(paths, rel.version) / ".series-fingerprint").write_text(state["fingerprint"])
    shutil.rmtree(work)
    return wheel


def replace_contents(repo: Path, commit: str, root: Path) -> None:
    """Swap the wheel's package files for the committed tree (never the working copy)."""
    for entry in root.iterdir():
        if not entry.name.endswith(".dist-info"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    archive = git.git_bytes(repo, "archive", "--format=tar", f"{commit}:python")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="tar")


def site(paths: config.Paths, version: str, flavor: str) -> Path:
    return paths.release_dir(version) / "site" / flavor


def install_sites(paths: config.Paths, rel: config.Release) -> dict:
    """Install the patched and the vanilla wheel next to each other for the tests."""
    venv = envs.venv(paths, rel.version)
    sites = {"vanilla": envs.install_site(paths, venv, scratch.upstream_wheel(paths, rel), site(paths, rel.version, "vanilla"))}
    if scratch.read_state(paths, rel.version):
        sites["patched"] = envs.install_site(paths, venv, patched_wheel(paths, rel.version), site(paths, rel.version, "patched"))
    return sites


def both_sites(paths: config.Paths, rel: config.Release) -> dict:
    """install_sites for a command that compares vanilla with patched (prove, bench)."""
    sites = install_sites(paths, rel)
    if "patched" not in sites:
        raise SeriesError("nothing applied yet; run `make apply`")
    return sites
