"""The verdicts of `make rebase UPSTREAM_VERSION=X`, as the other verbs that move the
series to X act on them: `make rebase WRITE=1`, `make queue` / `make export` on X.
One reading of report.json, so every verb drops the same patches for the same reason."""

import hashlib
import json
from pathlib import Path

from . import config, fixes, series
from .errors import SeriesError

ABSORBED = "absorbed-upstream"


def report_path(paths: config.Paths, version: str) -> Path:
    return paths.release_dir(version) / "rebase" / "report.json"


def fingerprint(patches: list[series.Patch]) -> list[list[str]]:
    """[name, sha256] per patch: a report judges exactly these files."""
    return [[p.name, hashlib.sha256(p.path.read_bytes()).hexdigest()] for p in patches]


def load(paths: config.Paths, version: str, patches: list[series.Patch]) -> dict:
    """X's report, refused when it judged another series than patches/ holds now."""
    path = report_path(paths, version)
    again = f"run `make rebase UPSTREAM_VERSION={version}` first"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SeriesError(f"no rebase report for sglang {version} yet; {again}")
    except json.JSONDecodeError:
        raise SeriesError(f"{path} is damaged; {again}")
    if data.get("series") != fingerprint(patches):
        raise SeriesError(f"the rebase report for sglang {version} judged another series than patches/ holds now; {again}")
    return data


def drop_reasons(data: dict) -> dict:
    """{patch: why} for every patch the report says to drop."""
    return {r["patch"]: r["drop_reason"] for r in data["patches"] if r["category"] == ABSORBED}


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


def commit_message(version: str, base: str, changes) -> str:
    lines = [f"Move the series from sglang {base} to sglang {version}", ""]
    lines += [f"Dropped {n}: {changes.reasons.get(n, 'no reason recorded')}" for n in changes.dropped]
    lines += [f"Refreshed {n}" for n in changes.refreshed] + [f"Added {n}" for n in changes.added]
    return "\n".join(lines) + "\n"
