"""The scratch tree of one upstream release: a git repo whose `baseline` tag is the
pristine wheel in upstream's layout and whose `applied` branch carries the series.

Layout under build/<version>/:
  tree/          git repo; wheel's top-level entries under python/ (python/sglang/...)
  applied.json   what `apply` last produced (series fingerprint, commits)
  dist/          the patched wheel
  site/<flavor>  an installed sglang to put on PYTHONPATH (patched, vanilla)
"""

import json
import shutil
from pathlib import Path

from . import git, wheels
from .config import Paths, Release
from .envs import Tools
from .errors import SeriesError

BASELINE = "baseline"
APPLIED = "applied"


def tree(paths: Paths, version: str) -> Path:
    return paths.release_dir(version) / "tree"


def upstream_wheel(paths: Paths, rel: Release) -> Path:
    return wheels.fetch(rel.url, paths.cache / "wheels" / rel.wheel, rel.sha256)


def ensure_baseline(paths: Paths, rel: Release, tools: Tools) -> Path:
    """The scratch repo for `rel`, created from the verified wheel if it is not there yet."""
    repo = tree(paths, rel.version)
    if git.is_repo(repo) and git.ref_exists(repo, BASELINE):
        return repo
    wheel = upstream_wheel(paths, rel)
    work = paths.release_dir(rel.version)
    staging = work / ".tree-staging"
    unpacked = work / ".unpacked"
    for d in (staging, unpacked, repo):
        shutil.rmtree(d, ignore_errors=True)
    root = wheels.unpack(tools.wheel, wheel, unpacked)
    (staging / "python").mkdir(parents=True)
    for entry in root.iterdir():
        if not entry.name.endswith(".dist-info"):
            entry.rename(staging / "python" / entry.name)
    shutil.rmtree(unpacked)
    git.init(staging)
    git.commit_all(staging, f"sglang {rel.version} from {rel.wheel}\n\nsha256: {rel.sha256}")
    git.git(staging, "tag", BASELINE)
    staging.rename(repo)  # the tree appears only once it is complete
    return repo


def require_clean(repo: Path) -> None:
    changes = git.dirty(repo)
    if changes:
        raise SeriesError(
            f"{repo} has {len(changes)} uncommitted change(s) (first: {changes[0].strip()}); "
            "keep them with `make export` after committing on the queue branch, or drop them with `make discard`"
        )


def state_file(paths: Paths, version: str) -> Path:
    return paths.release_dir(version) / "applied.json"


def read_state(paths: Paths, version: str) -> dict | None:
    path = state_file(paths, version)
    return json.loads(path.read_text()) if path.exists() else None


def write_state(paths: Paths, version: str, state: dict | None) -> None:
    path = state_file(paths, version)
    if state is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps(state, indent=2) + "\n")


def discard(paths: Paths, version: str) -> None:
    """Drop every local edit and commit in the scratch tree: back to the baseline."""
    repo = tree(paths, version)
    if not git.is_repo(repo):
        return
    git.am_abort(repo)
    git.git(repo, "reset", "-q", "--hard")
    git.git(repo, "clean", "-q", "-fdx")
    git.checkout_fresh(repo, APPLIED, BASELINE)
    write_state(paths, version, None)
