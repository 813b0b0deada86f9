"""Thin wrappers over git for the scratch trees. Nothing here knows about the series."""

import os
import subprocess
from pathlib import Path

from .errors import SeriesError

# A fixed identity and clock make baseline and applied commits reproducible:
# the same inputs give the same commit ids on every machine.
FIXED_ENV = {
    "GIT_AUTHOR_NAME": "sglang-series",
    "GIT_AUTHOR_EMAIL": "series@localhost",
    "GIT_COMMITTER_NAME": "sglang-series",
    "GIT_COMMITTER_EMAIL": "series@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+00:00",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+00:00",
}


def git(repo: Path, *args: str, check: bool = True, fixed_identity: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # A user's global hooks or templates must not change scratch commits.
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"})
    if fixed_identity:
        env.update(FIXED_ENV)
    proc = subprocess.run(
        ["git", "-C", str(repo), "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise SeriesError(f"git {args[0]} failed in {repo}: {detail[-1] if detail else proc.returncode}")
    return proc


def out(repo: Path, *args: str) -> str:
    return git(repo, *args).stdout.strip()


def init(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message, fixed_identity=True)
    return out(repo, "rev-parse", "HEAD")


def is_repo(repo: Path) -> bool:
    return (repo / ".git").is_dir()


def dirty(repo: Path) -> list[str]:
    """Uncommitted changes, as `git status --porcelain` lines."""
    return git(repo, "status", "--porcelain").stdout.splitlines()


def ref_exists(repo: Path, ref: str) -> bool:
    return git(repo, "rev-parse", "--verify", "-q", ref, check=False).returncode == 0


def rev(repo: Path, ref: str) -> str:
    return out(repo, "rev-parse", ref)


def current_branch(repo: Path) -> str:
    return out(repo, "rev-parse", "--abbrev-ref", "HEAD")


def checkout_fresh(repo: Path, branch: str, start: str) -> None:
    """Point `branch` at `start` and check it out, dropping nothing uncommitted (callers check)."""
    git(repo, "checkout", "-q", "-B", branch, start)


def am(repo: Path, patch: Path) -> subprocess.CompletedProcess:
    """Apply one mail-format patch as a commit; no fuzz (git apply never fuzzes), no 3-way."""
    return git(repo, "am", "-q", "--committer-date-is-author-date", "--keep-cr", str(patch), check=False, fixed_identity=True)


def am_abort(repo: Path) -> None:
    git(repo, "am", "--abort", check=False)



def reverse_applies(repo: Path, patch: Path) -> bool:
    """True when the patch's change is already in the tree (quilt's 'can be reverse-applied')."""
    return git(repo, "apply", "--check", "--reverse", str(patch), check=False).returncode == 0


def git_bytes(repo: Path, *args: str) -> bytes:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True)
    if proc.returncode != 0:
        raise SeriesError(f"git {args[0]} failed in {repo}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
