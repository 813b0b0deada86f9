"""Try a series on another release's pristine tree, patch by patch, and say where it breaks.

Cumulative: each patch goes on top of the ones before it that applied, with `git am`
(git never fuzzes). A patch that does not apply as it is is tried again with
`git am --3way` against the base's blobs (scratch.import_base): when that merges
without a conflict only its context moved, and the report says so apart from a patch
that applies as it is. A patch that does not apply either way is checked hunk by hunk,
and in reverse (quilt's hint that upstream already has the change).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import git, patch_queue, scratch, series

BRANCH = "rebase-trial"


@dataclass
class Hunk:
    file: str
    index: int  # 1-based within the file
    of: int
    header: str
    reason: str  # 'context does not match', 'file missing', ...


@dataclass
class Trial:
    patch: series.Patch
    applies: bool
    commit: str | None = None
    three_way: bool = False  # applies only with a 3-way merge: its context moved
    reverse_applies: bool = False
    conflicts: list = field(default_factory=list)  # [Hunk]


def try_series(repo: Path, patches: list[series.Patch], three_way: bool = False) -> list[Trial]:
    """Leaves branch rebase-trial = baseline + the patches that applied, one commit each.
    three_way: retry a patch that does not apply as it is with `git am --3way` (the repo
    must hold the blobs the patches were made against)."""
    git.checkout_fresh(repo, BRANCH, scratch.BASELINE)
    results = []
    for patch in patches:
        proc = patch_queue.am_named(repo, patch.path, patch.name)
        if proc.returncode == 0:
            results.append(Trial(patch, applies=True, commit=git.rev(repo, "HEAD")))
            continue
        git.am_abort(repo)
        if three_way and patch_queue.am_named(repo, patch.path, patch.name, three_way=True).returncode == 0:
            results.append(Trial(patch, applies=True, commit=git.rev(repo, "HEAD"), three_way=True))
            continue
        git.am_abort(repo)
        git.git(repo, "reset", "-q", "--hard")  # a failed 3-way merge leaves its markers behind
        results.append(Trial(patch, applies=False, reverse_applies=git.reverse_applies(repo, patch.path),
                             conflicts=failing_hunks(repo, patch.path.read_text())))
    return results


def failing_hunks(repo: Path, patch_text: str) -> list[Hunk]:
    """Every hunk that does not apply on its own to the tree as it is now."""
    failing = []
    for header, file, hunks in _files(patch_text):
        for index, hunk in enumerate(hunks, 1):
            proc = git.git(repo, "apply", "--check", "-", input=header + hunk, check=False)
            if proc.returncode != 0:
                failing.append(Hunk(file, index, len(hunks), hunk.splitlines()[0], _reason(proc.stderr)))
        if not hunks:  # a file-level change (new, deleted, mode): check it whole
            proc = git.git(repo, "apply", "--check", "-", input=header, check=False)
            if proc.returncode != 0:
                failing.append(Hunk(file, 0, 0, "(file header)", _reason(proc.stderr)))
    return failing


_DIFF = re.compile(r"(?m)^diff --git ")


def _files(patch_text: str):
    """(file header text, path, [hunk texts]) for each file in a patch."""
    _, diff = series.split_message(patch_text)
    starts = [m.start() for m in _DIFF.finditer(diff)] + [len(diff)]
    for a, b in zip(starts, starts[1:]):
        chunk = diff[a:b]
        parts = re.split(r"(?m)^(?=@@ )", chunk)
        header, hunks = parts[0], parts[1:]
        path = re.search(r"^diff --git a/(\S+) b/(\S+)", header).group(2)
        yield header, path, [_trim_mail_tail(h) for h in hunks]


def _trim_mail_tail(hunk: str) -> str:
    # The last hunk of a mail may carry a '-- \n<git version>' signature after it.
    return re.split(r"(?m)^-- $", hunk, maxsplit=1)[0]


def _reason(stderr: str) -> str:
    text = stderr.lower()
    if "no such file" in text or "does not exist in index" in text:
        return "file missing"
    if "already exists" in text:
        return "file already exists"
    if "patch does not apply" in text or "patch failed" in text:
        return "context does not match"
    lines = [l for l in stderr.strip().splitlines() if l.startswith("error:")]
    return lines[-1][len("error: "):] if lines else "does not apply"
