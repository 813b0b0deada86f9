"""Test outcomes kept between runs, by the content of everything they rest on.

The same installed files, in the same locked venv, under the same tests, give the same
outcomes: `make prove` (each of its sides), `make rebase` (its base side and X's vanilla
side) and `make matrix` run a side's tests again only when one of those changed. The
record is kept in the shared cache (outcomes/), so a fresh clone of a checkout that ran
them reuses it too; FRESH=1 runs every side again and replaces the record.

A site's content is named by its stamp: envs.install_site writes the sha256 of the wheel
it installed, and a site derived from another by applying a patch (prove's guard sites)
writes a digest of its origin's stamp and that patch (derive()).
"""

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


def site_digest(site: Path) -> str:
    derived = site / DERIVED
    return derived.read_text() if derived.exists() else "wheel " + (site / envs.SITE_STAMP).read_text()


def derive(site: Path, origin: Path, patch: Path, reverse: bool) -> None:
    """Stamp `site`, a copy of `origin` with `patch` applied (or taken back out): no longer
    the wheel the copy's stamp names."""
    (site / envs.SITE_STAMP).unlink(missing_ok=True)
    digest = hashlib.sha256(f"{site_digest(origin)}\n{'-R' if reverse else ''}\n".encode() + patch.read_bytes())
    (site / DERIVED).write_text(digest.hexdigest())


def _gpus() -> list[str]:
    # a test that skipped for lack of a GPU runs where there is one: not the same evidence
    return sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*"))


def _key(venv: Path, site: Path, node_ids: list[str], tests_root: Path, extra: list[str]) -> str:
    parts = {"venv": venv.resolve().name, "site": site_digest(site), "tests": tests_digest(tests_root),
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
    stored = paths.cache / "outcomes" / f"{_key(venv, site, node_ids, tests_root, extra)}.json"
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
