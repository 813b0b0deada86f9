"""The scratch tree of one upstream release: a git repo whose `baseline` tag is the
pristine wheel in upstream's layout and whose `applied` branch carries the series.

Layout under build/<version>/:
  tree/          git repo; wheel's top-level entries under python/ (python/sglang/...)
  tree.lock      held by the make command working on the tree (one at a time)
  applying       present while `apply` moves `applied`: a run that finds it was interrupted
  applied.json   what `apply` last produced (series fingerprint, commits)
  dist/          the patched wheel
  site/<flavor>  an installed sglang to put on PYTHONPATH (patched, vanilla)
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from . import envs, git, hints, pins, wheels
from .config import Paths, Release, release
from .envs import Tools
from .errors import SeriesError

BASELINE = "baseline"
APPLIED = "applied"


def tree(paths: Paths, version: str) -> Path:
    return paths.release_dir(version) / "tree"


def upstream_wheel(paths: Paths, rel: Release) -> Path:
    return wheels.fetch(lambda: pins.wheel_url(paths, rel.version, rel.wheel), paths.cache / "wheels" / rel.wheel,
                        rel.sha256, rel.version)


@contextmanager
def exclusive(paths: Paths, version: str):
    """Hold the scratch tree of `version` for one make command; a second one waits its turn."""
    path = paths.release_dir(version) / "tree.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    filelock = envs.filelock(paths)
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(f"waiting for another make command working on {tree(paths, version)} to finish ...", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def ensure_baseline(paths: Paths, rel: Release, tools: Tools) -> Path:
    """The scratch repo for `rel`, created from the verified wheel if it is not there yet."""
    repo = tree(paths, rel.version)
    if git.is_repo(repo) and git.ref_exists(repo, BASELINE):
        return repo
    if repo.exists() and _retag_baseline(repo, rel):
        return repo
    if repo.exists():
        _refuse_unknown_tree(repo)
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


def import_base(paths: Paths, repo: Path, base: Release, tools: Tools, patches: list) -> str:
    """The base release's pristine files, and every blob its series makes patch after patch,
    as objects of `repo` (another release's scratch tree), so that `git am --3way` there can
    merge a patch whose context moved. Made from the base's wheel: the base's own scratch
    tree (its `make apply`) is not needed. Returns the ref of the base's commit."""
    ref = f"refs/base/{base.version}"
    if not git.ref_exists(repo, ref):
        work = Path(tempfile.mkdtemp(prefix=".base-", dir=repo.parent))
        try:
            root = wheels.unpack(tools.wheel, upstream_wheel(paths, base), work / "wheel")
            files = work / "tree"
            (files / "python").mkdir(parents=True)
            for entry in root.iterdir():
                if not entry.name.endswith(".dist-info"):
                    entry.rename(files / "python" / entry.name)
            index = {"GIT_INDEX_FILE": str(work / "index")}  # a temporary index: the tree's checkout stays as it is
            git.git(repo, "--work-tree", str(files), "add", "-A", env=index)
            tree_id = git.git(repo, "write-tree", env=index).stdout.strip()
            message = f"sglang {base.version} from {base.wheel}\n\nsha256: {base.sha256}"
            commit = git.git(repo, "commit-tree", tree_id, "-m", message, fixed_identity=True).stdout.strip()
            git.git(repo, "update-ref", ref, commit)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git.git(repo, "read-tree", ref, env=index)
        for patch in patches:  # `apply --cached` writes each post-image blob; a later patch's pre-image is one
            git.git(repo, "apply", "--cached", str(patch.path), env=index, check=False)
    return ref


def import_bases(paths: Paths, repo: Path, tools: Tools, patches: list) -> None:
    """import_base for every release the patches were written on (lines/X/NNNN-....patch
    was made on X, and names X's blobs)."""
    written_on = {}
    for patch in patches:
        written_on.setdefault(patch.entry.split("/")[1], []).append(patch)
    for version, own in written_on.items():
        import_base(paths, repo, release(paths, version), tools, own)


def _retag_baseline(repo: Path, rel: Release) -> bool:
    """A lost `baseline` tag comes back when the tree still has the baseline commit
    (its message names the wheel's sha256)."""
    if not git.is_repo(repo):
        return False
    found = git.git(repo, "rev-list", "--all", "--max-parents=0", "--fixed-strings", f"--grep=sha256: {rel.sha256}",
                    check=False).stdout.split()
    if len(found) != 1:
        return False
    git.git(repo, "tag", BASELINE, found[0])
    return True


def _refuse_unknown_tree(repo: Path) -> None:
    """A tree that is not (or no longer) ours is rebuilt only when nothing in it can be lost."""
    if git.is_repo(repo):
        changes = git.dirty(repo)
        has_commits = git.git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False).returncode == 0
        if not changes and not has_commits:
            return
        what = f"{len(changes)} uncommitted change(s)" if changes else "commits"
    elif not any(repo.iterdir()):
        return
    else:
        what = "files but no git repository"
    raise SeriesError(
        f"{repo} has no `{BASELINE}` tag of this release and holds {what}; keep them by moving {repo} "
        "elsewhere, or drop them with `make discard`; then run again"
    )


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
    if not path.exists():
        return None
    state = _parse_state(path)
    if state is None:
        raise SeriesError(f"{path} is damaged (not the JSON `make apply` writes); run "
                          f"`make apply{hints.up(paths, version)}`, "
                          "which rebuilds it")
    return state


def _parse_state(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    return state if isinstance(state, dict) and {"fingerprint", "head", "patches"} <= state.keys() else None


def state_damaged(paths: Paths, version: str) -> bool:
    path = state_file(paths, version)
    return path.exists() and _parse_state(path) is None


def write_state(paths: Paths, version: str, state: dict | None) -> None:
    path = state_file(paths, version)
    if state is None:
        path.unlink(missing_ok=True)
        return
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(part, path)  # an interrupted write leaves the old state, never half a file


def applying(paths: Paths, version: str) -> Path:
    return paths.release_dir(version) / "applying"


def recover_interrupted(paths: Paths, version: str, repo: Path) -> bool:
    """Undo what an interrupted `apply` left (Ctrl-C, a killed process): its unfinished
    `git am`, a stale index lock, and its own commits on `applied`. Changes in the working
    tree are kept as a stash, never dropped. Commits of anyone else stay for the usual
    refusal. True when there was something to recover."""
    if not applying(paths, version).exists() and not state_damaged(paths, version):
        return False
    (git.gitdir(repo) / "index.lock").unlink(missing_ok=True)  # we hold the tree's lock: nobody else writes it
    git.am_abort(repo)
    if git.dirty(repo):
        git.git(repo, "stash", "push", "-q", "--include-untracked", "-m", "found after an interrupted make apply")
        print(f"kept changes found after an interrupted run as `git stash` in {repo}")
    if git.ref_exists(repo, APPLIED) and git.committers(repo, f"{BASELINE}..{APPLIED}") <= {git.FIXED_ENV["GIT_COMMITTER_NAME"]}:
        git.checkout_fresh(repo, APPLIED, BASELINE)
    write_state(paths, version, None)
    applying(paths, version).unlink(missing_ok=True)
    return True


def discard(paths: Paths, version: str) -> None:
    """Drop every local edit and commit in the scratch tree, the queue branch too (a queue
    left behind would later read as edits to export): back to the baseline."""
    repo = tree(paths, version)
    write_state(paths, version, None)
    applying(paths, version).unlink(missing_ok=True)
    if not repo.exists():
        return
    if not (git.is_repo(repo) and git.ref_exists(repo, BASELINE)):
        shutil.rmtree(repo)  # not a tree `make apply` can use: the next one rebuilds it
        return
    (git.gitdir(repo) / "index.lock").unlink(missing_ok=True)
    git.am_abort(repo)
    git.git(repo, "reset", "-q", "--hard")
    git.git(repo, "clean", "-q", "-fdx")
    git.checkout_fresh(repo, APPLIED, BASELINE)
    git.git(repo, "branch", "-q", "-D", "queue", check=False)
