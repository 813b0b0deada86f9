"""Run one side (vanilla or patched) of a benchmark in a process of its own, with that
side's sglang on PYTHONPATH, and read back the JSON line the side prints last."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(script: str, tree: str, side: str, options: dict) -> subprocess.Popen:
    tree = os.path.abspath(tree)
    if not os.path.isdir(os.path.join(tree, "sglang")):
        sys.exit(f"{side}: no sglang package under {tree}")
    cmd = [sys.executable, os.path.abspath(script), "--side", side]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    return subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=tree), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(side: str, proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{side} failed:\n{err[-3000:]}")
    return json.loads(lines[-1])


def run(script: str, tree: str, side: str, options: dict) -> dict:
    return result(side, start(script, tree, side, options))
