"""Wall-clock time of the README's two commands and of `.ci/run`, in fresh clones of
this checkout's HEAD, written to docs/timings.md with the machine and the date.

cold: an empty cache (everything is downloaded: tools, the upstream wheel, the venv);
warm-clone: a fresh clone with the machine's cache already filled;
warm: the same clone again (nothing to do but the tests).

    python3 bench/pipeline_timing.py [--skip-cold] [--skip-ci]
"""

import argparse
import datetime
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
    parser.add_argument("--skip-ci", action="store_true", help="skip timing .ci/run in a fresh clone")
    args = parser.parse_args()
    host = machine()  # before the runs load it
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
        ci = None if args.skip_ci else timed(".ci/run", clone(tmp, "ci"), env)
    table = ["| run | make apply | make test |", "|---|---|---|"]
    table += [f"| {name} | {apply_s:.1f} s | {test_s:.1f} s |" for name, apply_s, test_s in rows]
    if ci is not None:
        table += ["", f"`.ci/run` in a fresh clone, warm cache: {ci:.1f} s."]
    print("\n".join(table))
    write_doc(table, host)


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    mem = next((int(l.split()[1]) // 2**20 for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, load average {load} when it started"


def write_doc(table: list[str], host: str) -> None:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = REPO / "docs" / "timings.md"
    doc.write_text("# Timings\n\nWritten by `python3 bench/pipeline_timing.py` on " + when + f", commit {head}, "
                   + f"on {host}.\n\n" + "\n".join(table) + "\n")
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
