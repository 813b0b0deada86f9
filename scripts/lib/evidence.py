"""Outcomes of test ids on a vanilla release, kept between runs.

The same wheel, in the same locked venv, under the same tests gives the same outcomes:
`make rebase` (its base side and X's vanilla side) and `make matrix` run them again only
when one of those changed. A patched site is never cached: its wheel is rebuilt per trial.
Each result is stored under build/<release>/outcomes/, keyed by all of those; deleting
that folder forces a rerun.
"""

import hashlib
import json
import os
from pathlib import Path

from scripts.lib import config, pytest_run


def tests_digest(tests_root: Path) -> str:
    """Changes whenever a file under tests/ does: the evidence a result rests on."""
    digest = hashlib.sha256()
    for path in sorted((tests_root / "tests").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(tests_root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _key(venv: Path, site: Path, node_ids: list[str], tests_root: Path, extra: list[str]) -> str:
    wheel = (site / ".wheel-sha256").read_text()  # envs.install_site's stamp: the wheel installed there
    parts = {"venv": venv.resolve().name, "wheel": wheel, "tests": tests_digest(tests_root),
             "ids": sorted(node_ids), "extra": list(extra)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def vanilla_outcomes(paths: config.Paths, version: str, venv: Path, site: Path, node_ids: list[str],
                     tests_root: Path, extra: list[str] = (), log=print) -> tuple[dict, bool]:
    """(pytest_run.outcomes_per_file() of `node_ids` on release `version`'s vanilla site,
    cannot-run allowed (the caller reads it); whether they are the stored ones)."""
    stored = paths.release_dir(version) / "outcomes" / f"{_key(venv, site, node_ids, tests_root, extra)}.json"
    try:
        results = {k: tuple(v) for k, v in json.loads(stored.read_text()).items()}
        log(f"sglang {version}: reused the outcomes of {len(node_ids)} test ids (same wheel, venv and tests; "
            f"{stored.relative_to(paths.build) if stored.is_relative_to(paths.build) else stored})")
        return results, True
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
