"""Tooling that fetches the pinned upstream sglang, applies the series, rebuilds and tests it."""

# Checked here, before any verb imports modules written for 3.11 (an older Python would
# stop on their syntax with a traceback). Keep this file valid Python 2 and 3.
import sys

if sys.version_info[:2] != (3, 11):
    sys.stderr.write(
        "error: Python 3.11 is required (sglang 0.5.12 ships only a cp311 wheel); this is %s: "
        "run with PYTHON=python3.11\n" % sys.version.split()[0]
    )
    sys.exit(2)
