"""The series as git commits and back: one commit per patch on a branch of a scratch
tree (gbp pq's patch queue), and a deterministic export of such a branch to patch files.

A queue commit carries its patch file name in a last message paragraph
`Series-Name: <file>`, so a reordered, reworded or rebased commit still
exports to its own file; the export strips that line again.
"""

import datetime
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import git, series
from .errors import SeriesError

MARKER = "Series-Name"
QUEUE = "queue"

# git format-patch with everything that varies from run to run or machine to machine turned off.
FORMAT_PATCH = [
    "format-patch",
    "--zero-commit",     # 'From 000…' instead of the commit id, which changes on every rebase
    "--full-index",      # full blob ids: stable across git's abbreviation heuristics, and `git am -3` can use them
    "--no-signature",    # no '-- 2.x.y' trailer naming the git version that wrote the file
    "--no-stat",         # no diffstat: it repeats the diff and makes reviews of a refreshed patch noisy
    "--keep-subject",    # no '[PATCH n/m]' counter that changes when the series grows
    "--no-numbered",     # (implied by --keep-subject; stated so a user's format.numbered cannot matter)
    "--no-thread",       # no Message-Id/In-Reply-To headers made from the clock
    "--no-notes",        # notes are local to a scratch tree
    "--no-color",
    "--encoding=UTF-8",
]
# A user's or the system's git config (format.*, diff.*, core.abbrev) must not change the bytes.
_ISOLATED = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C", "TZ": "UTC"}
# The committer is fixed, the author (name, date) comes from the patch: re-importing a
# series gives the same commit ids, so an untouched queue re-exports untouched.
_COMMITTER = {k: v for k, v in git.FIXED_ENV.items() if k.startswith("GIT_COMMITTER_")}
_LAST_UPDATE = re.compile(r"(?m)^Last-Update:\s*(\d{4})-(\d{2})-(\d{2})\s*$")
_DATE_LINE = re.compile(r"(?m)^Date: .*$")
_DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()  # not strftime: locale-proof
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_FALLBACK_DATE = "Sat, 1 Jan 2000 00:00:00 +0000"  # git.FIXED_ENV's clock, for patches without Last-Update


def _git(repo: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", "-C", str(repo), "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", *args],
                          capture_output=True, text=True, env={**os.environ, **_ISOLATED, **_COMMITTER, **(env or {})})
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise SeriesError(f"git {args[0]} failed in {repo}: {detail[-1] if detail else proc.returncode}")
    return proc


# ---- import: patch files -> commits ---------------------------------------------------------

def with_marker(patch_text: str, name: str) -> str:
    """The mail-format patch with `Series-Name: name` as the last paragraph of its message."""
    message, rest = series.split_message(patch_text)
    if not rest:
        raise SeriesError(f"{name} has no diff; regenerate it with `make export`")
    gap = message[len(message.rstrip("\n")):]  # the blank line(s) git wrote before the diff
    return f"{message.rstrip()}\n\n{MARKER}: {name}{gap or chr(10)}{rest}"


def am_named(repo: Path, patch: Path, name: str, three_way: bool = False) -> subprocess.CompletedProcess:
    """`git am` one patch as one commit that remembers its file name."""
    return am_series(repo, [(patch, name)], three_way)


def am_series(repo: Path, patches: list, three_way: bool = False) -> subprocess.CompletedProcess:
    """`git am` [(path, name)] in one session, each as a commit that remembers its file name.
    No fuzz: git never fuzzes. With three_way (only where a person resolves what is left),
    a patch that does not apply is merged with conflict markers and the session stops
    there; `git am --continue` then goes on with the rest of the series."""
    with tempfile.TemporaryDirectory() as tmp:  # git am copies the mails in before it starts
        files = []
        for index, (path, name) in enumerate(patches):
            files.append(Path(tmp) / f"{index:04d}.patch")
            files[-1].write_text(with_marker(path.read_text(), name))
        # --keep: take the subject as is, the mirror of format-patch --keep-subject
        args = ["am", "-q", "--keep", "--keep-cr", "--committer-date-is-author-date", *(["--3way"] if three_way else [])]
        return _git(repo, *args, *map(str, files), check=False)


def am_continue(repo: Path) -> subprocess.CompletedProcess:
    """Commit the resolved patch of a stopped `git am` and apply the rest of its series."""
    return _git(repo, "am", "--continue", check=False)


def stopped_at(repo: Path) -> str | None:
    """The file name of the patch a stopped `git am` session is on."""
    proc = _git(repo, "am", "--show-current-patch=raw", check=False)
    m = re.search(rf"(?m)^{MARKER}: (\S+)\s*$", proc.stdout)
    return m.group(1) if m else None


def am_in_progress(repo: Path) -> bool:
    gitdir = Path(_git(repo, "rev-parse", "--absolute-git-dir").stdout.strip())
    return any((gitdir / d).exists() for d in ("rebase-apply", "rebase-merge", "MERGE_HEAD", "CHERRY_PICK_HEAD"))


# ---- export: commits -> patch files ---------------------------------------------------------

@dataclass
class Exported:
    name: str
    subject: str
    text: str


def export(repo: Path, base: str, head: str, known: dict | None = None, old_names: dict | None = None) -> list[Exported]:
    """The commits base..head as deterministic patch texts, in order.

    A commit's file name is its Series-Name line, else `known[commit id]` (what
    `make apply` recorded), else the name of the old patch with the same subject,
    else a new NNNN-<subject>.patch."""
    commits = _git(repo, "rev-list", "--reverse", "--no-merges", f"{base}..{head}").stdout.split()
    if _git(repo, "rev-list", "--merges", f"{base}..{head}").stdout.strip():
        raise SeriesError(f"{head} has merge commits; make the branch linear with `git rebase {base}` and export again")
    if not commits:
        return []
    with tempfile.TemporaryDirectory() as out:
        _git(repo, *FORMAT_PATCH, "-o", out, f"{base}..{head}")
        files = sorted(Path(out).glob("*.patch"))
        if len(files) != len(commits):
            raise SeriesError(f"git format-patch wrote {len(files)} files for {len(commits)} commits; export again")
        result, used = [], set()
        for position, (commit, file) in enumerate(zip(commits, files), 1):
            message = _git(repo, "log", "-1", "--format=%B", commit).stdout
            marker = re.search(rf"(?m)^{MARKER}: (\S+)\s*$", message)
            subject = message.splitlines()[0] if message.strip() else ""
            name = (marker and marker.group(1)) or (known or {}).get(commit) or (old_names or {}).get(subject) \
                or f"{position:04d}-{file.name.split('-', 1)[1]}"
            if name in used:
                raise SeriesError(f"two commits on {head} export to {name}; give one a new `{MARKER}:` line and export again")
            used.add(name)
            result.append(Exported(name=name, subject=subject, text=_normalise(file.read_text(), name)))
    return result


def _normalise(text: str, name: str) -> str:
    """Strip the queue's name line; date the patch by its Last-Update trailer, not the clock."""
    message, rest = series.split_message(text)
    gap = message[len(message.rstrip("\n")):]
    message = re.sub(rf"\n*\n{MARKER}: {re.escape(name)}[ \t]*$", "", message.rstrip("\n"))
    message = re.sub(rf"(?m)^{MARKER}: .*\n?", "", message)  # a stale line after a rename
    m = _LAST_UPDATE.search(message)
    if m:
        day = datetime.date(*map(int, m.groups()))
        date = f"{_DAYS[day.weekday()]}, {day.day} {_MONTHS[day.month - 1]} {day.year} 00:00:00 +0000"
    else:
        date = _FALLBACK_DATE
    return _DATE_LINE.sub(f"Date: {date}", message + gap + rest, count=1)


# ---- write: patch texts -> patches/ ---------------------------------------------------------

@dataclass
class Changes:
    added: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    refreshed: list = field(default_factory=list)
    reordered: bool = False
    reasons: dict = field(default_factory=dict)  # dropped name -> why

    def summary(self) -> str:
        def names(xs):
            return ", ".join(xs) if xs else "none"
        dropped = [n + (f" ({self.reasons[n]})" if n in self.reasons else "") for n in self.dropped]
        line = f"Added {names(self.added)} / Dropped {names(dropped)} / Refreshed {names(self.refreshed)}"
        return line + (" / series reordered" if self.reordered else "")

    @property
    def any(self) -> bool:
        return bool(self.added or self.dropped or self.refreshed or self.reordered)


def diff_against(patches_dir: Path, exported: list[Exported], old_names: list[str]) -> Changes:
    new_names = [e.name for e in exported]
    changes = Changes(
        added=[n for n in new_names if n not in old_names],
        dropped=[n for n in old_names if n not in new_names],
    )
    for e in exported:
        path = patches_dir / e.name
        if e.name in old_names and (not path.exists() or path.read_text() != e.text):
            changes.refreshed.append(e.name)
    kept_old = [n for n in old_names if n in new_names]
    changes.reordered = kept_old != [n for n in new_names if n in old_names]
    return changes


def write(patches_dir: Path, exported: list[Exported], old_names: list[str], comments: dict | None = None,
          reasons: dict | None = None) -> Changes:
    """Make patches_dir hold exactly `exported` (and a series listing them in order).
    Only changed files are rewritten; dropped patch files are removed. `comments`:
    {name: text} appended to that series line. `reasons`: {dropped name: why}, kept as
    `# dropped NAME: why` lines in the series header, so a drop is never silent."""
    changes = diff_against(patches_dir, exported, old_names)
    changes.reasons = {n: reasons[n] for n in changes.dropped if reasons and n in reasons}
    patches_dir.mkdir(parents=True, exist_ok=True)
    for e in exported:
        path = patches_dir / e.name
        if not path.exists() or path.read_text() != e.text:
            _atomic_write(path, e.text)
    for name in changes.dropped:
        (patches_dir / name).unlink(missing_ok=True)
    series = patches_dir / "series"
    header, kept = _header(series), _line_comments(series)
    header += "".join(f"# dropped {n}: {why}\n" for n, why in changes.reasons.items())
    if comments is not None:
        kept = comments
    lines = [e.name + (f"  # {kept[e.name]}" if e.name in kept else "") for e in exported]
    _atomic_write(series, header + "".join(line + "\n" for line in lines))
    return changes


def _header(series: Path) -> str:
    """The series file's leading comment block, kept as the maintainer wrote it."""
    if not series.exists():
        return "# The series, applied in this order on top of the pinned upstream.\n# One patch file per line; '#' starts a comment.\n"
    head = []
    for line in series.read_text().splitlines(keepends=True):
        if not line.startswith("#"):
            break
        head.append(line)
    return "".join(head)


def _line_comments(series: Path) -> dict:
    """{name: comment} of `name  # comment` lines: a maintainer's notes survive an export."""
    found = {}
    for line in series.read_text().splitlines() if series.exists() else []:
        name, sep, comment = line.partition("#")
        if name.strip() and sep:
            found[name.strip()] = comment.strip()
    return found


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)

