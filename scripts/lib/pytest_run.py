"""Run pytest in a test venv against one installed sglang and read per-test outcomes."""

import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path


def command(venv: Path, targets: list[str], extra: list[str] = ()) -> list[str]:
    return [str(venv / "bin/python"), "-m", "pytest", "-p", "no:cacheprovider", "-ra", *extra, *targets]


def environ(site: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def run(venv: Path, site: Path, targets: list[str], cwd: Path, extra: list[str] = ()) -> int:
    """Run in the foreground, output to the terminal; returns pytest's exit code."""
    return subprocess.run(command(venv, targets, extra), cwd=cwd, env=environ(site)).returncode


def outcomes(venv: Path, site: Path, node_ids: list[str], cwd: Path, timeout: int = 1800) -> dict:
    """{node id or file: outcome} with outcome one of passed/failed/error/skipped,
    plus the message of the first problem, read from pytest's JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        proc = subprocess.run(
            command(venv, node_ids, ["-q", f"--junitxml={report}", "-o", "junit_family=xunit2"]),
            cwd=cwd, env=environ(site), capture_output=True, text=True, timeout=timeout,
        )
        if not report.exists():
            return {"__run__": ("error", (proc.stderr or proc.stdout)[-2000:])}
        return _parse(report)


def _parse(report: Path) -> dict:
    results = {}
    for case in ET.parse(report).iter("testcase"):
        file = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        name = f"{file}::{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (node.get("message") or node.text or "").strip().splitlines()[0:1]
                message = message[0] if message else ""
                break
        results[name] = (outcome, message)
    return results
