"""A series file (a release's line, patches/lines/X.series: the order) and its git-format
patch files with DEP-3 trailers. Every series file is read through read_text()."""

import email.header
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SeriesError

REQUIRED_HEADERS = ("Origin", "Bug", "Forwarded", "Applied-Upstream", "Last-Update", "Tests")
_TRAILER = re.compile(r"^([A-Z][A-Za-z-]+):\s*(.*)$")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


# A series that holds no patch on purpose says so in a comment line that starts with this
# (a release that has every fix: `# no patches: sglang X has every fix of the series`).
NO_PATCHES = "# no patches:"
# `# dropped NAME: why`: a patch left out of this series, and the reason (written by a
# move for an absorbed patch, or by the maintainer for a patch dropped on purpose).
_DROPPED = re.compile(r"^#\s*dropped\s+(\S+):\s*(.*\S)\s*$")


@dataclass
class Patch:
    name: str
    path: Path
    subject: str = ""
    headers: dict = field(default_factory=dict)
    entry: str = ""  # the series line naming it: its path relative to patches/ (a file name for most)

    @property
    def tests(self) -> list[str]:
        return self.headers.get("Tests", "").split()


def read_text(path: Path) -> str:
    """A series or patch file as text: UTF-8 with LF line endings, or a one-line error that says so."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SeriesError(f"{path.name} is not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); "
                          f"save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} -o {path}.utf8 && mv {path}.utf8 {path}`")
    if "\r\n" in text:
        line = text[:text.index("\r\n")].count("\n") + 1
        raise SeriesError(f"{path.name} has CRLF (Windows) line endings (first on line {line}), which git cannot apply; "
                          f"convert it with `sed -i 's/\\r$//' {path}`")
    return text


def entries(patches_dir: Path, path: Path) -> list[str]:
    """Series entries in order (paths relative to patches/: lines/X/NNNN-name.patch);
    '#' comments and blank lines are skipped."""
    if not path.exists():
        raise SeriesError(f"{path} is missing; restore it with `git checkout -- {path}`")
    names = []
    for line in read_text(path).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def require_listed(patches_dir: Path, path: Path) -> None:
    """An empty series must say so on purpose: otherwise the build would silently carry no patch."""
    if entries(patches_dir, path) or declared_empty(path) is not None:
        return
    unlisted = sorted(p.name for p in (path.parent / path.name[:-len(".series")]).glob("*.patch"))
    held = f"; {display(patches_dir, path)[:-len('.series')]}/ holds {len(unlisted)} patch file(s) ({', '.join(unlisted[:3])}{', ...' if len(unlisted) > 3 else ''})" \
        if unlisted else ""
    raise SeriesError(f"{display(patches_dir, path)} lists no patch{held}; list them in it, one path under patches/ a line (lines/X/NNNN-name.patch), or, "
                      f"if the release needs none, say so with a line `{NO_PATCHES} <why>`")


def load(patches_dir: Path, file: Path, allow_empty: bool = False) -> list[Patch]:
    """The series' patches, each checked to exist and to look like a git patch. An empty
    series is refused unless it says so on purpose (or the caller allows it)."""
    label = display(patches_dir, file)
    if not allow_empty:
        require_listed(patches_dir, file)
    patches, seen = [], set()
    for entry in entries(patches_dir, file):
        name = Path(entry).name
        if name in seen:
            raise SeriesError(f"{label} lists {name} twice; remove the second entry (a patch is applied once)")
        seen.add(name)
        parts = Path(entry).parts
        if entry.startswith("/") or any(part in ("..", "") or part.startswith(".") for part in parts):
            raise SeriesError(f"{label}: entry {entry!r} must be a file inside patches/ (a name, or lines/X/name)")
        path = patches_dir / entry
        if not path.is_file():
            raise SeriesError(
                f"{label} names {entry}, but patches/{entry} does not exist; add the file or remove the entry"
            )
        patch = parse(path)
        patch.entry = entry
        patches.append(patch)
    return patches


def display(patches_dir: Path, file: Path) -> str:
    """'patches/lines/X.series': how messages name a series file."""
    return f"patches/{file.relative_to(patches_dir)}" if file.is_relative_to(patches_dir) else str(file)


def declared_empty(file: Path) -> str | None:
    """The reason a series holds no patch on purpose (its `# no patches:` line), else None."""
    for line in read_text(file).splitlines() if file.exists() else []:
        if line.startswith(NO_PATCHES):
            return line[len(NO_PATCHES):].strip() or "declared"
    return None


def dropped(file: Path) -> dict:
    """{name: why} of the series' `# dropped NAME: why` lines."""
    found = {}
    for line in read_text(file).splitlines() if file.exists() else []:
        m = _DROPPED.match(line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def parse(path: Path) -> Patch:
    text = read_text(path)
    subject = _subject(text)
    if subject is None or "\ndiff --git " not in text:
        raise SeriesError(f"{path.name} is not a git-format patch (no Subject or no diff); regenerate it with `make export`")
    return Patch(name=path.name, path=path, subject=subject, headers=_trailers(text))


def _subject(text: str) -> str | None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Subject: "):
            value = line[len("Subject: "):]
            for cont in lines[i + 1:]:  # RFC 2822 folded header lines
                if not cont.startswith((" ", "\t")):
                    break
                value += cont
            value = str(email.header.make_header(email.header.decode_header(value)))
            return re.sub(r"^\[PATCH[^\]]*\]\s*", "", value)
        if line == "":
            break
    return None


_MESSAGE_END = re.compile(r"(?m)^(?:---$|diff --git )")


def split_message(text: str) -> tuple[str, str]:
    """(mail headers + commit message, the rest). The message ends where `git am` ends it:
    at the first '---' line or 'diff --git' line (format-patch --no-stat writes no '---')."""
    m = _MESSAGE_END.search(text)
    return (text[:m.start()], text[m.start():]) if m else (text, "")


def _trailers(text: str) -> dict:
    """The last paragraph of the commit message, parsed as `Key: value` lines."""
    message = split_message(text)[0].split("\n\n", 1)[-1]
    paragraphs = [p for p in message.strip().split("\n\n") if p.strip()]
    headers = {}
    for line in paragraphs[-1].splitlines() if paragraphs else []:
        m = _TRAILER.match(line.strip())
        if m:
            headers[m.group(1)] = m.group(2).strip()
    return headers


def hunks(patch_text: str) -> list[tuple[str, int, str]]:
    """(file, old start line, hunk header) for every hunk, in order."""
    found, current = [], None
    for line in patch_text.splitlines():
        if line.startswith("--- "):
            current = None if line[4:] == "/dev/null" else line[4:].split("/", 1)[-1]
        elif line.startswith("+++ ") and current is None:
            current = line[4:].split("/", 1)[-1]
        else:
            m = _HUNK.match(line)
            if m and current:
                found.append((current, int(m.group(1)), line.split(" @@")[0] + " @@"))
    return found

def describe_failure(patch: Patch, git_output: str) -> str:
    """Name the patch and, where git says where, the hunk that did not apply."""
    m = re.search(r"patch failed: (.+):(\d+)", git_output)
    if m:
        path, line = m.group(1), int(m.group(2))
        file_hunks = [h for h in hunks(patch.path.read_text()) if h[0] == path]
        for index, (_, start, header) in enumerate(file_hunks, 1):
            if start == line:
                return (f"{patch.name} does not apply: hunk #{index} of {len(file_hunks)} in {path} ({header}); "
                        "refresh the patch (`make queue`, fix, `make export`) or drop it from its line")
        return f"{patch.name} does not apply at {path}:{line}; refresh it or drop it from its line"
    lines = [l.strip() for l in git_output.splitlines() if l.strip()] or ["git am failed"]
    corrupt = next((l for l in lines if "corrupt patch" in l or "detection failed" in l), None)
    if corrupt:
        return f"{patch.name} is corrupt ({corrupt}); restore it from git or regenerate it with `make export`"
    detail = next((l for l in lines if l.startswith("error:")), lines[0])
    return f"{patch.name} does not apply ({detail}); refresh it or drop it from its line"


def fingerprint(patches: list[Patch], file: Path | None = None) -> str:
    """Changes whenever any of the patches changes (their names, order, bytes) and, when
    `file` is given, the series file itself (its comments included)."""
    digest = hashlib.sha256(file.read_bytes() if file else b"")
    for patch in patches:
        digest.update(patch.name.encode() + b"\0" + patch.path.read_bytes())
    return digest.hexdigest()
