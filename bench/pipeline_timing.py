"""Wall-clock time of the README's two commands, cold and warm, in fresh clones.

cold: an empty cache (everything is downloaded: tools, the upstream wheel, the venv);
warm-clone: a fresh clone with the machine's cache already filled;
warm: the same clone again (nothing to do but the tests).

    python3 bench/pipeline_timing.py [--skip-cold]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: str, cwd: Path, env: dict) -> float:
    start = time.monotonic()
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"`{cmd}` failed in {cwd}:\n{proc.stderr[-2000:]}")
    return elapsed


def clone(tmp: Path, name: str) -> Path:
    dest = tmp / name
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-cold", action="store_true", help="skip the empty-cache run (it downloads ~3 GB)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ)
        if not args.skip_cold:
            cold_env = dict(env, SGLANG_SERIES_CACHE=str(tmp / "cold-cache"))
            repo = clone(tmp, "cold")
            rows.append(("cold (empty cache)", timed("make apply", repo, cold_env), timed("make test", repo, cold_env)))
        repo = clone(tmp, "warm")
        rows.append(("fresh clone, warm cache", timed("make apply", repo, env), timed("make test", repo, env)))
        rows.append(("same clone again", timed("make apply", repo, env), timed("make test", repo, env)))
    print("| run | make apply | make test |\n|---|---|---|")
    for name, apply_s, test_s in rows:
        print(f"| {name} | {apply_s:.1f} s | {test_s:.1f} s |")


if __name__ == "__main__":
    main()
