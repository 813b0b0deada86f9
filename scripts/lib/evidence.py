"""Test outcomes kept between runs, by the content of everything they rest on.

The same installed files, in the same locked venv, under the same tests, give the same
outcomes: `make prove` (each of its sides), `make rebase` (its base side and X's vanilla
side) and `make matrix` run a side's tests again only when one of those changed. The
record is kept in the shared cache (outcomes/), so a fresh clone of a checkout that ran
them reuses it too; FRESH=1 runs every side again and replaces the record.

A site's content is named by its stamp: envs.install_site writes the sha256 of the wheel
it installed, and a site derived from another by applying a patch (prove's guard sites)
writes a digest of its origin's stamp and that patch (derive()). The stamp is trusted only
for the bytes it names: the installer's RECORD lists every file it wrote with its sha256,
and a site whose files no longer match it (a file edited by hand while debugging, one
added or removed) is named by its changed files too, so it runs its tests again (and
says which files differ) instead of reusing the outcomes of the wheel as installed.
"""

import base64
import csv
import hashlib
import json
import os
from pathlib import Path

from scripts.lib import config, envs, pytest_run

DERIVED = ".site-digest"  # derive(): a site made from another one by a patch


def tests_digest(tests_root: Path) -> str:
    """Changes whenever a file under tests/ does (but tests/tooling, which judges the scripts
    and which no registered check reads): the evidence a result rests on."""
    digest = hashlib.sha256()
    tooling = tests_root / "tests" / "tooling"
    for path in sorted((tests_root / "tests").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and not path.is_relative_to(tooling):
            digest.update(str(path.relative_to(tests_root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def site_digest(site: Path, changed: list[str] | None = None) -> str:
    """What a site holds: its wheel's sha256, and the content of any file that differs from
    what was installed (`changed`: site_changes(site), when the caller has it already)."""
    derived = site / DERIVED
    if derived.exists():
        return derived.read_text()
    digest = "wheel " + (site / envs.SITE_STAMP).read_text()
    changed = site_changes(site) if changed is None else changed
    if not changed:
        return digest
    content = hashlib.sha256()
    for rel in changed:
        path = site / rel
        content.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<missing>") + b"\0")
    return f"{digest} changed {content.hexdigest()}"


def _records(site: Path) -> list[Path]:
    return sorted(site.glob("*.dist-info/RECORD"))


def site_changes(site: Path) -> list[str]:
    """Files of an installed site that differ from what its installer wrote there (its
    RECORD: every file with its sha256), are missing, or were added to a folder it wrote;
    [] for a site as installed. Paths relative to the site."""
    listed, changed, folders = set(), [], set()
    for record in _records(site):
        for row in csv.reader(record.read_text().splitlines()):
            rel, algo_hash = (row + ["", ""])[:2]
            if not rel or rel.startswith(("../", "/")):
                continue
            listed.add(rel)
            folders.add(rel.split("/", 1)[0])
            if not algo_hash:  # RECORD itself
                continue
            algo, _, expected = algo_hash.partition("=")
            path = site / rel
            if not path.is_file():
                changed.append(rel)
                continue
            got = base64.urlsafe_b64encode(hashlib.new(algo, path.read_bytes()).digest()).rstrip(b"=").decode()
            if got != expected:
                changed.append(rel)
    for folder in sorted(f for f in folders if (site / f).is_dir()):
        for path in (site / folder).rglob("*"):
            rel = path.relative_to(site).as_posix()
            if path.is_file() and rel not in listed and "__pycache__" not in path.parts and path.suffix != ".pyc":
                changed.append(rel)
    return sorted(changed)


def derive(site: Path, origin: Path, patch: Path, reverse: bool) -> None:
    """Stamp `site`, a copy of `origin` with `patch` applied (or taken back out): no longer
    the wheel the copy's stamp names."""
    (site / envs.SITE_STAMP).unlink(missing_ok=True)
    digest = hashlib.sha256(f"{site_digest(origin)}\n{'-R' if reverse else ''}\n".encode() + patch.read_bytes())
    (site / DERIVED).write_text(digest.hexdigest())


def _gpus() -> list[str]:
    # a test that skipped for lack of a GPU runs where there is one: not the same evidence
    return sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*"))


def _key(venv: Path, site: Path, node_ids: list[str], tests_root: Path, extra: list[str],
         changed: list[str] | None = None) -> str:
    parts = {"venv": venv.resolve().name, "site": site_digest(site, changed), "tests": tests_digest(tests_root),
             "ids": sorted(node_ids), "extra": list(extra), "gpus": _gpus()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def outcomes(paths: config.Paths, venv: Path, site: Path, node_ids: list[str], tests_root: Path,
             extra: list[str] = (), fresh: bool = False) -> tuple[dict, bool]:
    """(pytest_run.outcomes_per_file() of `node_ids` on `site`, cannot-run allowed: the
    caller reads it; whether they are a stored run's). fresh: run them even when stored,
    and store the new run. prove, rebase and matrix ask the same of a vanilla release, so
    one run serves all three."""
    if not node_ids:
        return {}, False
    changed = None
    if not (site / DERIVED).exists():
        changed = site_changes(site)
        if changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            print(f"{site}: {len(changed)} file(s) differ from the wheel installed there ({shown}); its tests run "
                  f"on these bytes, never on outcomes stored for the wheel (remove the folder and run make apply "
                  f"to reinstall it)", flush=True)
    stored = paths.cache / "outcomes" / f"{_key(venv, site, node_ids, tests_root, extra, changed)}.json"
    if not fresh:
        try:
            return {k: tuple(v) for k, v in json.loads(stored.read_text()).items()}, True
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or a damaged one: run the tests
    results = pytest_run.outcomes_per_file(venv, site, node_ids, tests_root, extra=extra,
                                           extra_env=pytest_run.ALLOW_CANNOT_RUN)
    if "__run__" not in results:  # pytest did not run at all: nothing worth keeping
        stored.parent.mkdir(parents=True, exist_ok=True)
        partial = stored.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(results, indent=1))
        os.replace(partial, stored)  # all or nothing, also when interrupted
    return results, False


def reused_line(label: str, count: int) -> str:
    """What a caller prints for a reused side."""
    ids = f"{count} test id{'' if count == 1 else 's'}"
    return f"{label}: reused the outcomes of {ids} (same installed files, venv and tests; FRESH=1 runs them again)"
