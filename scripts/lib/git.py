"""Thin wrappers over git for the scratch trees. Nothing here knows about the series."""

import os
import subprocess
import tempfile
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


# Nothing from the user's or the system's git config reaches a scratch tree: a global
# am.threeWay, hooks, signing, a pager or a localised message would change what the
# verbs do or what they read back. Apply, queue and export all run git through here.
ISOLATED = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
    "TZ": "UTC",  # dates format-patch writes do not depend on the machine's zone
    # an identity for the commands that need one (reflogs, stash); commits fix theirs below
    "GIT_AUTHOR_NAME": FIXED_ENV["GIT_AUTHOR_NAME"],
    "GIT_AUTHOR_EMAIL": FIXED_ENV["GIT_AUTHOR_EMAIL"],
    "GIT_COMMITTER_NAME": FIXED_ENV["GIT_COMMITTER_NAME"],
    "GIT_COMMITTER_EMAIL": FIXED_ENV["GIT_COMMITTER_EMAIL"],
}
CONFIG = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]


def environ(fixed_identity: bool = False) -> dict:
    return {**os.environ, **ISOLATED, **(FIXED_ENV if fixed_identity else {})}


def run(repo: Path | None, *args: str, check: bool = True, fixed_identity: bool = False, env: dict | None = None,
        input: str | bytes | None = None, text: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The one way the tooling runs git: isolated from the user's and the system's config
    (ISOLATED, CONFIG). `repo` None runs outside any repository (in `cwd`)."""
    where = ["-C", str(repo)] if repo is not None else []
    proc = subprocess.run(["git", *where, *CONFIG, *args], capture_output=True, text=text, input=input, cwd=cwd,
                          env={**environ(fixed_identity), **(env or {})})
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        out_ = proc.stdout if text else proc.stdout.decode(errors="replace")
        detail = (err or out_).strip().splitlines()
        raise SeriesError(f"git {args[0]} failed in {repo or cwd}: {detail[-1] if detail else proc.returncode}")
    return proc


def git(repo: Path, *args: str, check: bool = True, fixed_identity: bool = False,
        env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    return run(repo, *args, check=check, fixed_identity=fixed_identity, env=env, input=input)


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
    return git(repo, "am", "-q", "--no-3way", "--committer-date-is-author-date", "--keep-cr", str(patch),
               check=False, fixed_identity=True)


def am_abort(repo: Path) -> None:
    git(repo, "am", "--abort", check=False)


def gitdir(repo: Path) -> Path:
    return Path(out(repo, "rev-parse", "--absolute-git-dir"))


def committers(repo: Path, revs: str) -> set[str]:
    """The committer names of the commits in `revs` (e.g. "baseline..applied")."""
    return set(out(repo, "log", "--format=%cn", revs).splitlines())


def patch_paths(patch: Path) -> list[str] | None:
    """Every path a patch would write, as git resolves it (-p1: `+++ /abs/x` is abs/x);
    None when git cannot read the patch (`git am` then says why)."""
    proc = run(None, "apply", "--numstat", "-z", str(patch.resolve()), check=False, cwd=Path(tempfile.gettempdir()),
               env={"GIT_CEILING_DIRECTORIES": tempfile.gettempdir()})
    if proc.returncode != 0:
        return None
    fields, paths = proc.stdout.split("\0"), []
    while fields and fields[0]:
        path = fields.pop(0).split("\t", 2)[2]
        # a rename or copy reads "added<TAB>deleted<TAB>", then its old and new path
        paths += [path] if path else [fields.pop(0), fields.pop(0)]
    return paths



def reverse_applies(repo: Path, patch: Path) -> bool:
    """True when the patch's change is already in the tree (quilt's 'can be reverse-applied')."""
    return git(repo, "apply", "--check", "--reverse", str(patch), check=False).returncode == 0


def git_bytes(repo: Path, *args: str) -> bytes:
    return run(repo, *args, text=False).stdout
