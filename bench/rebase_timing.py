"""Time of one rebase report (`make rebase UPSTREAM_VERSION=X`) with a warm cache.

    python bench/rebase_timing.py [--upstream 0.5.15] [--runs 2]

The first run warms what a report needs (X's wheel, its locked venv, the scratch tree, the
installed vanilla and trial sites); the runs after it are timed. Prints each phase (apply
trial, the test runs on the base / vanilla X / X with the series) and the total.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts import rebase  # noqa: E402
from scripts.lib import config  # noqa: E402


def one_report(paths: config.Paths, version: str) -> tuple[float, list[str]]:
    phases, last = [], [time.monotonic()]

    def log(message: str) -> None:
        now = time.monotonic()
        phases.append(f"  {now - last[0]:6.1f}s  {message}")
        last[0] = now

    start = time.monotonic()
    rebase.rebase(paths, version, log=log)
    return time.monotonic() - start, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", default="0.5.15")
    parser.add_argument("--runs", type=int, default=2, help="timed runs after the warm-up")
    args = parser.parse_args()
    paths = config.Paths.from_env()
    cold, _ = one_report(paths, args.upstream)
    print(f"warm-up report on sglang {args.upstream}: {cold:.1f}s (includes anything not cached yet)")
    times = []
    for i in range(args.runs):
        total, phases = one_report(paths, args.upstream)
        times.append(total)
        print(f"warm run {i + 1}: {total:.1f}s")
        print("\n".join(phases))
    print(f"rebase report, warm cache, sglang {args.upstream}: median {statistics.median(times):.1f}s "
          f"over {len(times)} run(s) (min {min(times):.1f}s, max {max(times):.1f}s)")


if __name__ == "__main__":
    main()
