"""The verdicts of `make rebase UPSTREAM_VERSION=X`, as the other verbs that move the
series to X act on them: `make rebase WRITE=1`, `make queue` / `make export` on X.
One reading of report.json, so every verb drops the same patches for the same reason,
and one way to adopt what a move proposes (adopt())."""

import datetime
import json
import re
from pathlib import Path

from . import config, fixes, hints, lines, patch_queue, pins, readme, series
from .errors import SeriesError

ABSORBED = "absorbed-upstream"
LEFT_OUT = "left-out"


def report_path(paths: config.Paths, version: str) -> Path:
    return paths.release_dir(version) / "rebase" / "report.json"


def load(paths: config.Paths, version: str, patches: list[series.Patch]) -> dict:
    """X's report, refused when it judged another series than patches/ holds now."""
    path = report_path(paths, version)
    again = f"run {hints.command('rebase', version)} first"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SeriesError(f"no rebase report for sglang {version} yet; {again}")
    except json.JSONDecodeError:
        raise SeriesError(f"{path} is damaged; {again}")
    if data.get("series") != series.fingerprint(patches):
        raise SeriesError(f"the rebase report for sglang {version} judged another series than patches/ holds now; {again}")
    return data


def drop_reasons(data: dict) -> dict:
    """{patch: why} for every patch the report says to drop: absorbed upstream, or left out
    of X's line by the maintainer."""
    return {r["patch"]: r["drop_reason"] for r in data["patches"] if r["category"] in (ABSORBED, LEFT_OUT)}


def left_out(paths: config.Paths, version: str, patches: list[series.Patch]) -> dict:
    """{patch: why} for the patches of the line a move starts from that X's line (if X has
    one) drops by the maintainer's word: its `# dropped NAME: why` lines. A move to X
    honours them."""
    file = lines.series_file(paths, version)
    if not file.exists():
        return {}
    # A record a move wrote for an absorbed patch is evidence, judged again; only the maintainer's word stands.
    recorded = {n: why for n, why in series.dropped(file).items() if not why.startswith("absorbed upstream")}
    return {p.name: f"left out of the line of sglang {version}: {recorded[p.name]}" for p in patches if p.name in recorded}


def conflicts(data: dict | None, name: str) -> str:
    """Where the report saw a patch fail to apply: 'hunk #1 of 2 in python/... (@@ ... @@)'."""
    row = next((r for r in (data or {}).get("patches", []) if r["patch"] == name), None)
    if not row or not row["conflicts"]:
        return ""
    return ", ".join(f"hunk #{h['index']} of {h['of']} in {h['file']} ({h['header']})" if h["index"]
                     else f"{h['file']} ({h['reason']})" for h in row["conflicts"])


def drop_reason(version: str, fix, patch: series.Patch) -> str:
    """Names the release and the upstream PR that made the patch unnecessary."""
    pr = fix.pr if fix else (patch.headers.get("Applied-Upstream", "").split(",")[-1].strip() or "upstream")
    # the first release comes from the matrix's evidence (fixes.first_released); none without it
    first = f", first released in {fix.upstream}" if fix and fix.upstream not in ("", fixes.DOWNSTREAM) else ""
    return f"absorbed upstream: sglang {version} has {pr}{first}; its tests pass on vanilla {version}"


def commit_message(version: str, base: str, changes, line: bool = False) -> str:
    title = (f"The line of sglang {version}: the fixes of the sglang {base} line it lacks" if line
             else f"The line of sglang {version}, from the sglang {base} line; sglang {version} is the base")
    out = [title, ""]
    out += [f"Dropped {n}: {changes.reasons.get(n, 'no reason recorded')}" for n in changes.dropped]
    out += [f"Refreshed {n}" for n in changes.refreshed] + [f"Added {n}" for n in changes.added]
    return "\n".join(out) + "\n"


_LAST_UPDATE = re.compile(r"(?m)^Last-Update:[ \t]*\S+[ \t]*$")


def last_updated(text: str, day: datetime.date) -> str:
    """The patch with its Last-Update trailer (and so its Date:) set to `day`."""
    text = _LAST_UPDATE.sub(f"Last-Update: {day.isoformat()}", text, count=1)
    return patch_queue.dated(text)


def name_release_in_env(paths: config.Paths, version: str) -> None:
    """env/X.in's header comments name X (pin copies them from the base's .in)."""
    path = paths.env / f"{version}.in"
    if not path.exists():
        return
    text = path.read_text()
    fixed = re.sub(r"(?m)^(#.*\bsglang(?: |==))\d+\.\d+\.\d+(?:\.post\d+)?", lambda m: m.group(1) + version, text)
    if fixed != text:
        path.write_text(fixed)


def _header_end(text: str) -> int:
    """Where a series file's leading comment block ends."""
    end = 0
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        end += len(line)
    return end


def adopt(paths: config.Paths, version: str, exported: list, reasons: dict, line: bool,
          day: datetime.date | None = None) -> patch_queue.Changes:
    """Write what a move to `version` proposes as its line (patches/lines/X.series); unless
    line=True, X also becomes the base (the pointer in upstream/releases.json: every line
    stays as it is). Every kept patch's Last-Update is the day of the move; an unchanged
    patch names the file the line it came from uses, a changed one is written to X's
    folder (patches/lines/X/)."""
    lines.require_committed(paths)
    lines.keep_copy(paths, f"before-{version}")
    day = day or datetime.datetime.now(datetime.timezone.utc).date()
    exported = [patch_queue.Exported(e.name, e.subject, last_updated(e.text, day)) for e in exported]
    target = lines.series_file(paths, version)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"# sglang {version}: the fixes of the series that sglang {version} lacks, in this order\n"
                          f"# ({hints.command('rebase', version)}); entries are paths under patches/.\n")
    # The line says why each patch of the line it came from that it does not hold is not there.
    recorded = series.dropped(target)
    missing = [f"# dropped {n}: {why}\n" for n, why in reasons.items() if n not in recorded]
    text = series.read_text(target)
    head = _header_end(text)
    target.write_text(text[:head] + "".join(missing) + text[head:])
    changes = patch_queue.write(paths.patches, exported, target, reasons=reasons, ported=lines.ported_dir(paths, version),
                                shared=lines.referenced(paths, skip=target))
    kept = {e.name for e in exported}  # a new line never listed the patches it leaves out: they are its drops
    changes.dropped += [n for n in reasons if n not in kept and n not in changes.dropped]
    changes.reasons = {**reasons, **changes.reasons}
    if not exported and series.declared_empty(target) is None:
        target.write_text(series.read_text(target) + f"{series.NO_PATCHES} sglang {version} has every fix of the series\n")
    if not line:
        pins.set_base(paths, version)
        name_release_in_env(paths, version)
    if readme.refresh(paths):
        print("README.md: title and the table of lines regenerated")
    return changes
