"""make bench: run the vanilla-vs-patched benchmarks in bench/ with the locked venv and
the two installed builds (each benchmark runs each side in its own process)."""

import argparse
import subprocess

from scripts.lib import build, config, envs
from scripts.lib.errors import SeriesError, run_main

COMPARISONS = ["bench/write_through_replay.py", "bench/swa_translation.py"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream")
    parser.add_argument("scripts", nargs="*", default=COMPARISONS)
    args = parser.parse_args(argv)
    paths = config.Paths.from_env()
    rel = config.release(paths, args.upstream)
    sites = build.both_sites(paths, rel)
    python = envs.venv(paths, rel.version) / "bin/python"
    failed = []
    for script in args.scripts:
        print(f"== {script}", flush=True)
        cmd = [str(python), script, "--vanilla", str(sites["vanilla"]), "--patched", str(sites["patched"])]
        if subprocess.run(cmd, cwd=paths.root).returncode != 0:
            failed.append(script)
    if failed:
        raise SeriesError(f"benchmark(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    run_main(main)
