"""make prove: run each patch's tests (its `Tests:` header) on vanilla upstream and on the
patched build, and show both sides. A patch is proven when its tests fail on vanilla and
pass with the series; tests skipped here (no GPU) are shown as such, never as passing."""

import argparse
import json
import sys

from scripts import build
from scripts.lib import config, envs, pytest_run, scratch, series
from scripts.lib.errors import SeriesError, run_main


def summarize(chosen: dict) -> str:
    """One word for a group of test results: failed > error > passed > skipped > missing."""
    kinds = {outcome for outcome, _ in chosen.values()}
    for kind in ("failed", "error"):
        if kind in kinds:
            return kind
    if not kinds:
        return "missing"
    return "passed" if kinds == {"passed"} or kinds == {"passed", "skipped"} else "skipped"


def verdict(sides: list[tuple[str, str]]) -> str:
    """sides: (vanilla, patched) per test id."""
    if any(p in ("failed", "error", "missing") for _, p in sides):
        return "BROKEN: fails with the series"
    if any(v in ("failed", "error") and p == "passed" for v, p in sides):
        return "proven"
    return "not proven here (tests pass on vanilla or are skipped)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    patches = series.load(paths.patches)
    sites = build.install_sites(paths, rel)
    if "patched" not in sites:
        raise SeriesError("nothing applied yet; run `make apply`")
    venv = envs.venv(paths, rel.version)
    ids = sorted({t for p in patches for t in p.tests})
    runs = {flavor: pytest_run.outcomes(venv, sites[flavor], ids, paths.root) for flavor in ("vanilla", "patched")}
    rows, ok = [], True
    print(f"| patch | test | vanilla {rel.version} | patched | verdict |\n|---|---|---|---|---|")
    for patch in patches:
        sides = [(summarize(pytest_run.select(runs["vanilla"], t)), summarize(pytest_run.select(runs["patched"], t))) for t in patch.tests]
        result = verdict(sides)
        ok &= result == "proven"
        for test, (van, pat) in zip(patch.tests, sides):
            print(f"| {patch.name} | {test} | {van} | {pat} | {result} |")
            rows.append({"patch": patch.name, "test": test, "vanilla": van, "patched": pat, "verdict": result})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    run_main(main)
