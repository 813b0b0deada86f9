"""Which series each pinned release gets: a line per release, every line the same kind.

  patches/lines/<X>.series   the line of release X: the fixes X lacks, in catalog order
  patches/lines/<X>/         the patch files written on release X (its ports of the fixes)

The base (upstream/releases.json "base") is only the line plain `make apply` builds.
A line's entries are paths relative to patches/ (`lines/0.5.12/0004-....patch`); a file
serves every line that names it. A release that lacks none of the fixes has a line that
says so (`# no patches: ...`), and one not judged yet has no line: `make apply` then names
the command that makes one. derive() says what a line should hold, from the evidence."""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import config, fixes, git, hints, series, verdict
from .pins import newest_at_or_below, version_key
from .errors import SeriesError

LINES = "lines"


def series_file(paths: config.Paths, version: str) -> Path:
    return paths.patches / LINES / f"{version}.series"


def ported_dir(paths: config.Paths, version: str) -> Path:
    return paths.patches / LINES / version


def exists(paths: config.Paths, version: str) -> bool:
    return series_file(paths, version).is_file()


def label(paths: config.Paths, version: str) -> str:
    return series.display(paths.patches, series_file(paths, version))


def load(paths: config.Paths, version: str) -> list[series.Patch]:
    """Release `version`'s series; a release without a line names the commands that make one."""
    if not exists(paths, version):
        raise SeriesError(f"sglang {version} has no line ({label(paths, version)}) yet; {hints.command('rebase', version)} "
                          f"shows which fixes it lacks and {hints.command('rebase', version, WRITE='1', LINE='1')} "
                          "writes its line")
    file = series_file(paths, version)
    patches = series.load(paths.patches, file)
    if not patches and series.declared_empty(file) is None:
        raise SeriesError(f"{label(paths, version)} lists no patch and does not say that sglang {version} needs none; "
                          f"fill it with {hints.command('rebase', version, WRITE='1', LINE='1')}")
    return patches


def fingerprint(paths: config.Paths, version: str) -> str:
    """What `make apply` records of the line it applied: a build made from another is stale."""
    return series.fingerprint(load(paths, version), series_file(paths, version))


def versions(paths: config.Paths) -> list[str]:
    """Every release with a line, the base first, the others in release order."""
    base = config.base_version(paths)
    others = [f.name[: -len(".series")] for f in (paths.patches / LINES).glob("*.series")]
    return [base] + sorted((v for v in others if v != base), key=version_key)


def all_files(paths: config.Paths) -> list[Path]:
    """Every series file in patches/ (one per line)."""
    return sorted((paths.patches / LINES).glob("*.series"))


def start_for(paths: config.Paths, version: str, named: str | None = None) -> str:
    """The line a move to `version` starts from: `named` (FROM=Y), else the newest release
    below `version` that has a line, so a new release is judged against the patches
    closest to it (line-only patches and ports included)."""
    if named:
        if not exists(paths, named):
            raise SeriesError(f"sglang {named} has no line ({label(paths, named)}) to start from; name one of "
                              f"{', '.join(versions(paths))} with FROM=")
        return named
    start = newest_at_or_below([v for v in versions(paths) if v != version], version)
    if start is None:
        raise SeriesError(f"no line of a release below sglang {version} to start from; name one of "
                          f"{', '.join(versions(paths))} with FROM=")
    return start


def referenced(paths: config.Paths, skip: Path | None = None) -> set[Path]:
    """Every patch file some series names (but `skip`): a file another line uses is never
    rewritten or removed for this one."""
    found = set()
    for file in all_files(paths):
        if file != skip and file.exists():
            found |= {(paths.patches / e).resolve() for e in series.entries(paths.patches, file)}
    return found


def require_committed(paths: config.Paths) -> None:
    """Refuse to write patches/ over changes a maintainer has not committed (they would be lost)."""
    top = paths.patches
    while not (top / ".git").exists() and top != top.parent:
        top = top.parent
    if not (top / ".git").exists():
        return  # not in a git work tree: the callers keep a copy (keep_copy)
    changes = git.git(top, "status", "--porcelain", "--", str(paths.patches)).stdout.splitlines()
    if changes:
        files = ", ".join(line[3:] for line in changes[:4]) + (" ..." if len(changes) > 4 else "")
        raise SeriesError(f"patches/ has uncommitted changes ({files}); keep them with `git add -A patches && git commit` "
                          "(or set them aside with `git stash push -- patches`), then run again")


def keep_copy(paths: config.Paths, why: str) -> Path | None:
    """A copy of patches/ under build/ before it is written, when git does not keep one."""
    top = paths.patches
    while not (top / ".git").exists() and top != top.parent:
        top = top.parent
    if (top / ".git").exists() or not paths.patches.exists():
        return None
    copy = paths.build / "patches-copies" / f"{time.strftime('%Y%m%dT%H%M%S')}-{why}"
    shutil.copytree(paths.patches, copy, dirs_exist_ok=True)
    print(f"patches/ as it was is kept in {copy}")
    return copy


def left_out_fixes(paths: config.Paths, version: str, tests_root: Path) -> dict:
    """{fix: why} for the downstream-only fixes (tests/fixes.toml upstream = "none") that
    the release's line drops with a recorded reason (`# dropped NAME: why`). No release has
    them, so their tests fail on vanilla by design: they are no claim of this line (`make
    test` deselects them, `make prove` lists them as not judged, both saying why). A fix
    that some upstream release has is always judged."""
    registry = fixes.load(tests_root, required=False)
    found = {}
    for name, why in series.dropped(series_file(paths, version)).items():
        path = paths.patches / name
        if path.is_file():
            tests = set(series.parse(path).tests)
            found.update({f.pr: why for f in registry if set(f.tests) == tests and f.upstream == "none"})
    return found


def left_out_tests(paths: config.Paths, version: str, tests_root: Path) -> dict:
    """{test id: why} of left_out_fixes()."""
    registry = {f.pr: f for f in fixes.load(tests_root, required=False)}
    return {t: f"{pr} is left out of {label(paths, version)}: {why}"
            for pr, why in left_out_fixes(paths, version, tests_root).items() for t in registry[pr].tests}


# ---- a line from the evidence --------------------------------------------------------------

# `# lacks FIX: why`: a fix the release lacks (the matrix says so) that no port serves yet.
LACKS = "# lacks"


@dataclass
class Derived:
    entries: list[str]  # what the line names, in catalog order (paths under patches/)
    lacking: dict  # {fix: why} the release lacks and no port at or below it serves
    unjudged: list[str]  # fixes without a verdict on the release: the line keeps what it has of them


def port_release(entry: str) -> str:
    """lines/X/NNNN-name.patch was written on release X."""
    return entry.split("/")[1]


def ports(paths: config.Paths, registry: list) -> dict:
    """{fix: [entry, ...] oldest release first}: every patch file under patches/lines/<X>/
    and the fix whose tests its `Tests:` names exactly."""
    found = {}
    for path in sorted((paths.patches / LINES).glob("*/*.patch")):
        fix = fixes.carried_by(registry, series.parse(path).tests)
        if fix:
            found.setdefault(fix.pr, []).append(path.relative_to(paths.patches).as_posix())
    return {pr: sorted(e, key=lambda e: version_key(port_release(e))) for pr, e in found.items()}


def derive(paths: config.Paths, version: str, tests_root: Path) -> Derived:
    """Release `version`'s line as the evidence says: in the order of tests/fixes.toml,
    every fix the matrix (docs/matrix.json) calls present on it, each from its newest port
    at or below it. A maintainer's `# dropped NAME: why` keeps a fix off the line (a drop a
    move recorded for an absorbed patch is evidence, judged again); a fix no port serves
    is lacking; a fix the matrix has not judged there keeps what the line has of it."""
    registry = fixes.load(tests_root, required=False)
    states = {(r["fix"], r["release"]): r["state"] for r in fixes.evidence(tests_root)}
    file = series_file(paths, version)
    has = series.entries(paths.patches, file) if file.exists() else []
    word = {n for n, why in series.dropped(file).items() if not why.startswith("absorbed upstream")}
    by_fix = ports(paths, registry)
    if not any(r == version and s in ("present", "fixed") for (_, r), s in states.items()):
        return Derived(has, lacking(file), [f.pr for f in registry])  # no evidence here: the line stands as it is
    out = Derived([], {}, [])
    for fix in registry:
        own = by_fix.get(fix.pr, [])
        state = states.get((fix.pr, version))
        if any(Path(e).name in word for e in own):
            continue
        if state != verdict.PRESENT and state not in verdict.HELD:
            out.unjudged.append(fix.pr)
            out.entries += [e for e in has if e in own]
            continue
        if state in verdict.HELD:  # nothing to carry: has it, or cannot have the bug
            continue
        release = newest_at_or_below({port_release(e) for e in own}, version)
        if release:
            out.entries.append(next(e for e in own if port_release(e) == release))
        else:
            out.lacking[fix.pr] = f"no port at or below sglang {version} yet"
    carried = {e for own in by_fix.values() for e in own}
    out.entries += [e for e in has if e not in carried]  # a patch of no fix in the registry: lint names it
    return out


def lacking(file: Path) -> dict:
    """{fix: why} of a line's `# lacks FIX: why` lines."""
    found = {}
    for line in series.read_text(file).splitlines() if file.exists() else []:
        if line.startswith(LACKS + " ") and ":" in line:
            fix, why = line[len(LACKS) + 1:].split(":", 1)
            found[fix.strip()] = why.strip()
    return found


def differs(paths: config.Paths, version: str, tests_root: Path) -> str | None:
    """How the line of `version` differs from derive(), or None."""
    want = derive(paths, version, tests_root)
    file = series_file(paths, version)
    has = series.entries(paths.patches, file)
    said = lacking(file)
    problems = []
    if has != want.entries:
        def short(entries):  # lines/0.5.12/0004-name.patch -> 0.5.12/0004
            return ", ".join(e.removeprefix(f"{LINES}/").split("-", 1)[0] for e in entries) or "no patch"
        problems.append(f"names {short(has)} where the evidence asks for {short(want.entries)}")
    if set(said) != set(want.lacking):
        problems.append(f"says it lacks {', '.join(said) or 'nothing'} where the evidence says "
                        f"{', '.join(want.lacking) or 'nothing'}")
    empty = series.declared_empty(file)
    if not want.entries and not want.lacking and not want.unjudged and empty is not None and "has every fix" not in empty:
        problems.append("does not say that the release has every fix")
    if want.unjudged and empty is not None and "has every fix" in empty:
        problems.append(f"says the release has every fix, but the matrix has not judged {', '.join(want.unjudged)} there")
    if (want.entries or want.lacking) and empty is not None and "has every fix" in empty:
        problems.append("says the release has every fix, which the evidence does not")
    return "; ".join(problems) or None


def write_derived(paths: config.Paths, version: str, tests_root: Path) -> bool:
    """Rewrite the line of `version` as derive() says, keeping every comment (a maintainer's
    notes and drops) and each entry's `# note`; False when nothing changed."""
    want = derive(paths, version, tests_root)
    file = series_file(paths, version)
    text = series.read_text(file) if file.exists() else (
        f"# sglang {version}: the fixes of the series that sglang {version} lacks, in catalog order\n"
        "# (`make lines WRITE=1` writes it from docs/matrix.json); entries are paths under patches/.\n")
    comments, notes = [], {}
    for line in text.splitlines():
        entry, _, note = line.partition("#")
        if entry.strip():
            notes[entry.strip()] = note.strip()
        elif not line.startswith((LACKS + " ", series.NO_PATCHES)) and line.strip():
            comments.append(line)
    body = [e + (f"  # {notes[e]}" if notes.get(e) else "") for e in want.entries]
    body += [f"{LACKS} {fix}: {why}" for fix, why in want.lacking.items()]
    if not want.entries:
        body.append(f"{series.NO_PATCHES} no port yet of the fixes sglang {version} lacks (the `# lacks` lines)"
                    if want.lacking else f"{series.NO_PATCHES} sglang {version} has every fix of the series"
                    if not want.unjudged else f"{series.NO_PATCHES} no fix is present on sglang {version} in the "
                    f"matrix; not judged there yet: {', '.join(want.unjudged)}")
    new = "\n".join(comments + body) + "\n"
    if new == text:
        return False
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(new)
    return True
