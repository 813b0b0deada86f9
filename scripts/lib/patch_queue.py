"""The series as git commits and back: one commit per patch on a branch of a scratch
tree (gbp pq's patch queue), and a deterministic export of such a branch to patch files.

A queue commit carries its patch file name in a last message paragraph
`Series-Name: <file>`, so a reordered, reworded or rebased commit still
exports to its own file; the export strips that line again.
"""

import datetime
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
# The committer is fixed, the author (name, date) comes from the patch: re-importing a
# series gives the same commit ids, so an untouched queue re-exports untouched.
_COMMITTER = {k: v for k, v in git.FIXED_ENV.items() if k.startswith("GIT_COMMITTER_")}
_LAST_UPDATE = re.compile(r"(?m)^Last-Update:\s*(\d{4})-(\d{2})-(\d{2})\s*$")
_DATE_LINE = re.compile(r"(?m)^Date: .*$")
_DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()  # not strftime: locale-proof
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_FALLBACK_DATE = "Sat, 1 Jan 2000 00:00:00 +0000"  # git.FIXED_ENV's clock, for patches without Last-Update


def _git(repo: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return git.git(repo, *args, env={**_COMMITTER, **(env or {})}, check=check)


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


def dated(text: str) -> str:
    """The patch with its Date: header taken from its Last-Update trailer (see _normalise)."""
    message, rest = series.split_message(text)
    return _DATE_LINE.sub(f"Date: {_date_of(message)}", message, count=1) + rest


def _date_of(message: str) -> str:
    m = _LAST_UPDATE.search(message)
    if not m:
        return _FALLBACK_DATE
    day = datetime.date(*map(int, m.groups()))
    return f"{_DAYS[day.weekday()]}, {day.day} {_MONTHS[day.month - 1]} {day.year} 00:00:00 +0000"


def _normalise(text: str, name: str) -> str:
    """Strip the queue's name line; date the patch by its Last-Update trailer, not the clock."""
    message, rest = series.split_message(text)
    gap = message[len(message.rstrip("\n")):]
    message = re.sub(rf"\n*\n{MARKER}: {re.escape(name)}[ \t]*$", "", message.rstrip("\n"))
    message = re.sub(rf"(?m)^{MARKER}: .*\n?", "", message)  # a stale line after a rename
    return _DATE_LINE.sub(f"Date: {_date_of(message)}", message + gap + rest, count=1)


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


def diff_against(patches_dir: Path, exported: list[Exported], old_entries: list[str], shared: set | None = None) -> Changes:
    """What writing `exported` over a series of `old_entries` (paths under patches_dir) changes.
    A file another series names (`shared`: resolved paths) is unchanged when the patch only
    moved (see _positionless): it is that line's, and applies here as it is."""
    old = {Path(e).name: e for e in old_entries}
    new_names = [e.name for e in exported]
    changes = Changes(
        added=[n for n in new_names if n not in old],
        dropped=[n for n in old if n not in new_names],
    )
    for e in exported:
        path = patches_dir / old.get(e.name, e.name)
        if e.name in old and not _holds(path, e.text, shared or set()):
            changes.refreshed.append(e.name)
    kept_old = [n for n in old if n in new_names]
    changes.reordered = kept_old != [n for n in new_names if n in old]
    return changes


def _holds(path: Path, text: str, shared: set) -> bool:
    """The file is this patch: byte for byte, or, when another line owns it, moved only."""
    if not path.exists():
        return False
    held = path.read_text()
    return held == text or (path.resolve() in shared and same_patch(_undated(held), _undated(text)))


def _twin(patches_dir: Path, shared: set, e: Exported) -> str | None:
    """The entry of a file another series names that holds `e` as it is (its Last-Update aside)."""
    root = patches_dir.resolve()
    for path in sorted(shared):
        if path.name == e.name and path.is_relative_to(root) and path.is_file() \
                and same_patch(_undated(path.read_text()), _undated(e.text)):
            return path.relative_to(root).as_posix()
    return None


def write(patches_dir: Path, exported: list[Exported], series_path: Path | None = None, comments: dict | None = None,
          reasons: dict | None = None, ported: Path | None = None, shared: set | None = None) -> Changes:
    """Make the series file `series_path` (default patches_dir/series) list exactly `exported`,
    in order, and write their patch files.

    - An unchanged patch keeps its entry. A changed or new one names the file of another
      series that already holds it (`shared`: resolved paths), else is written to its
      entry's file, unless another series uses that file: then to `ported`/name, and the
      entry names that copy.
    - Every dropped patch needs a reason, from `reasons` or from a `# dropped NAME: why`
      line the maintainer put in the series; without one nothing is written. Its file is
      removed only when no other series names it.
    - Comments, commented-out entries and blank lines stay where they were; `comments`:
      {name: text} for `name  # text` (default: the ones the series has)."""
    series_path = series_path or (patches_dir / "series")
    shared = shared or set()
    old_entries = _entries(series_path)
    changes = diff_against(patches_dir, exported, old_entries, shared)
    recorded = series.dropped(series_path)
    missing = [n for n in changes.dropped if not (reasons or {}).get(n) and n not in recorded]
    if missing:
        where = series_path.relative_to(patches_dir.parent) if series_path.is_relative_to(patches_dir.parent) else series_path
        raise SeriesError(f"this would drop {', '.join(missing)} without a reason; if that is meant, say why in {where} "
                          f"with a line `# dropped {missing[0]}: <why>` and run the same command again")
    changes.reasons = {n: (reasons or {}).get(n) or recorded[n] for n in changes.dropped}
    old = {Path(e).name: e for e in old_entries}
    entry_of = {}
    patches_dir.mkdir(parents=True, exist_ok=True)
    for e in exported:
        entry = old.get(e.name, e.name)
        path = patches_dir / entry
        if _holds(path, e.text, shared):
            entry_of[e.name] = entry
            continue
        twin = _twin(patches_dir, shared, e)
        if twin is not None:  # another line's copy of this very patch serves this series too
            entry_of[e.name] = twin
            continue
        if path.resolve() in shared or (entry == e.name and ported is not None):
            path = (ported or patches_dir) / e.name
            entry = path.relative_to(patches_dir).as_posix()
        if path.resolve() in shared and path.exists() and not same_patch(_undated(path.read_text()), _undated(e.text)):
            raise SeriesError(f"patches/{entry} is on another line and differs from the {e.name} written here; give "
                              f"this one another name (a `{MARKER}:` line on its queue commit) and run again")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != e.text:
            _atomic_write(path, e.text)  # at most its Last-Update: the same patch, verified again
        entry_of[e.name] = entry
    for name in changes.dropped:
        path = patches_dir / old[name]
        if path.resolve() not in shared:
            path.unlink(missing_ok=True)
    lines = series_path.read_text().splitlines() if series_path.exists() else _NEW_HEADER.splitlines()
    kept = _line_comments(series_path) if comments is None else comments
    records = [f"# dropped {n}: {why}" for n, why in changes.reasons.items() if n not in recorded]
    text = _render(lines, [e.name for e in exported], entry_of, kept, records)
    series_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(series_path, text)
    return changes


def _undated(text: str) -> str:
    return _DATE_LINE.sub("", re.sub(r"(?m)^Last-Update:.*$", "", text))


_INDEX_LINE = re.compile(r"(?m)^index [0-9a-f]+\.\.[0-9a-f]+( \d+)?\n")
_HUNK_AT = re.compile(r"(?m)^@@ -\d+((?:,\d+)?) \+\d+((?:,\d+)?) @@.*$")


def _positionless(text: str) -> str:
    """The patch without where it lands: blob ids and hunk line numbers (and a hunk's
    function heading) left out. Two patches equal so change the same lines in the same
    context: another line's file applies here as it is, without fuzz."""
    return _HUNK_AT.sub(r"@@ -\1 +\2 @@", _INDEX_LINE.sub("", text))


def same_patch(old: str, new: str) -> bool:
    return _positionless(old) == _positionless(new)


_NEW_HEADER = "# The series, applied in this order on top of the pinned upstream.\n# One patch file per line; '#' starts a comment.\n"


def _entries(series_path: Path) -> list[str]:
    return [l.split("#", 1)[0].strip() for l in (series_path.read_text().splitlines() if series_path.exists() else [])
            if l.split("#", 1)[0].strip()]


def _render(lines: list[str], names: list[str], entry_of: dict, comments: dict, records: list[str]) -> str:
    """The series file with `names` as its entries, every other line of the old file where it was.
    Kept entries fill the places of the old ones in the new order; an added one goes right
    after the one before it; new `# dropped` records go at the end of the leading comments."""
    out, slots = [], []
    wanted = set(names)
    for line in lines:
        name = Path(line.split("#", 1)[0].strip()).name if line.split("#", 1)[0].strip() else None
        if name is None:
            out.append(line)
        elif name in wanted:
            slots.append(len(out))
            out.append(None)
    kept = [n for n in names if n in {Path(l.split("#", 1)[0].strip()).name for l in lines if l.split("#", 1)[0].strip()}]
    for slot, name in zip(slots, kept):
        out[slot] = name
    for i, name in enumerate(names):
        if name in kept:
            continue
        before = names[i - 1] if i else None
        at = out.index(before) + 1 if before in out else (min(slots) if slots else len(out))
        out.insert(at, name)
        slots = [s + (s >= at) for s in slots]
    header_end = next((i for i, l in enumerate(out) if not (isinstance(l, str) and l.startswith("#") and l not in names)), len(out))
    out[header_end:header_end] = records
    text = []
    for line in out:
        if line in wanted:
            text.append(entry_of[line] + (f"  # {comments[line]}" if line in comments else ""))
        else:
            text.append(line)
    return "".join(l + "\n" for l in text)


def _line_comments(series: Path) -> dict:
    """{name: comment} of `name  # comment` lines: a maintainer's notes survive an export."""
    found = {}
    for line in series.read_text().splitlines() if series.exists() else []:
        name, sep, comment = line.partition("#")
        if name.strip() and sep:
            found[Path(name.strip()).name] = comment.strip()
    return found


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
