"""make lint-ci: lint the GitHub Actions workflows in ci/ with zizmor, offline.

zizmor (a static analyser for workflows, in the base's locked venv) fails on YAML or
schema errors (--strict-collection) and on its findings at the pedantic persona:
template injection, unpinned or credential-persisting actions, excessive permissions...
Self-hosted runners are by design here; the auditor persona's note about them is not run.
"""

import subprocess
import sys

from scripts.lib import config, envs
from scripts.lib.errors import SeriesError, run_main


def main() -> None:
    paths = config.Paths.from_env()
    workflows = sorted((paths.root / "ci").glob("*.yml"))
    if not workflows:
        raise SeriesError("ci/ holds no workflow (*.yml); restore them with `git checkout -- ci`")
    zizmor = envs.venv(paths, config.base_version(paths)) / "bin" / "zizmor"
    if not zizmor.exists():
        raise SeriesError(f"{zizmor} is missing; add zizmor to env/{config.base_version(paths)}.in and run `make lock`")
    cmd = [str(zizmor), "--offline", "--strict-collection", "--persona=pedantic", "--no-progress", *map(str, workflows)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SeriesError("zizmor found problems in ci/ (listed above); fix the workflows and run `make lint-ci` again")
    print(f"lint-ci: {len(workflows)} workflows in ci/ pass zizmor (offline, pedantic)")


if __name__ == "__main__":
    run_main(main)
