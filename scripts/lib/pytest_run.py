"""Run pytest in a test venv against one installed sglang and read per-test outcomes."""

import os
import re
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path


def command(venv: Path, targets: list[str], extra: list[str] = (), cache_dir: Path | None = None) -> list[str]:
    # pytest's cache (for --lf/--ff) only where the caller gives it a place outside the sources
    cache = ["-o", f"cache_dir={cache_dir}"] if cache_dir else ["-p", "no:cacheprovider"]
    return [str(venv / "bin/python"), "-m", "pytest", *cache, "-ra", *extra, *targets]


# A torch extension build (0.5.18+ JIT-compiles its native hash) holds a `lock` file while it
# compiles; one left by a killed run makes every later load wait for ever. A build takes
# about a minute: a lock this old has no owner left.
STALE_LOCK_S = 15 * 60


def environ(site: Path, venv: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    # the venv's own extension builds (they are built against its torch), kept with it
    env.setdefault("TORCH_EXTENSIONS_DIR", str(venv / "torch_extensions"))
    clear_stale_locks(Path(env["TORCH_EXTENSIONS_DIR"]))
    return env


def clear_stale_locks(folder: Path, now: float | None = None) -> list[Path]:
    """Remove extension build locks older than STALE_LOCK_S under `folder`; says which."""
    now = time.time() if now is None else now
    cleared = []
    for lock in folder.glob("*/lock") if folder.is_dir() else []:
        try:
            if now - lock.stat().st_mtime > STALE_LOCK_S:
                lock.unlink()
                cleared.append(lock)
                print(f"removed a stale torch extension build lock ({lock}): no build holds it", flush=True)
        except FileNotFoundError:
            pass  # its build finished meanwhile
    return cleared


def run_tree(cmd: list[str], timeout: float | None = None, **popen) -> subprocess.CompletedProcess:
    """subprocess.run, except that when this process is interrupted (Ctrl-C, SIGTERM, a
    timeout) the command is stopped with every process it started (pytest's workers, the
    commands tests run), not only its first one."""
    with subprocess.Popen(cmd, **popen) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException as exc:
            stop_tree(proc, signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), whatever process group or session it moved to."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_tree(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the command and all its descendants (pytest ends its run on SIGINT), then
    SIGKILL to whatever is left after 5 s."""
    for signum in (sig, signal.SIGKILL):
        pids = [proc.pid, *_descendants(proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            proc.poll()  # reap the command itself
            if not any(_alive(pid) for pid in pids):
                return
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running (a zombie only waits for its parent to read its exit status)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run(venv: Path, site: Path, targets: list[str], cwd: Path, extra: list[str] = (),
        cache_dir: Path | None = None, junit: Path | None = None) -> int:
    """Run in the foreground, output to the terminal; returns pytest's exit code.
    With `junit`, pytest also writes its per-test report there (read it with `read_report`)."""
    report = [f"--junitxml={junit}", "-o", "junit_family=xunit2"] if junit else []
    return run_tree(command(venv, targets, [*report, *extra], cache_dir), cwd=cwd, env=environ(site, venv)).returncode


def read_report(junit: Path) -> dict:
    """{"module.Class::test": (outcome, message)} from a report written by `run`; {} if none."""
    return _parse(junit) if junit.exists() else {}


def skipped_for(results: dict, reason: re.Pattern) -> dict:
    """{test: skip message} of the tests skipped with a message matching `reason`."""
    return {test: message for test, (outcome, message) in results.items()
            if outcome == "skipped" and reason.search(message)}


# tests/conftest.py: a test that cannot reach its checks on the release does not fail the
# run; the caller (rebase, matrix) reads that outcome from the report itself.
ALLOW_CANNOT_RUN = {"SGLANG_SERIES_ALLOW_CANNOT_RUN": "1"}


def outcomes(venv: Path, site: Path, node_ids: list[str], cwd: Path, timeout: int = 1800, extra: list[str] = (),
             extra_env: dict | None = None) -> dict:
    """{node id or file: outcome} with outcome one of passed/failed/error/skipped,
    plus the message of the first problem, read from pytest's JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        proc = run_tree(
            command(venv, node_ids, ["-q", f"--junitxml={report}", "-o", "junit_family=xunit2", *extra]),
            cwd=cwd, env={**environ(site, venv), **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, timeout=timeout,
        )
        if not report.exists():
            return {"__run__": ("error", (proc.stderr or proc.stdout)[-2000:])}
        return _parse(report)


def outcomes_per_file(venv: Path, site: Path, node_ids: list[str], cwd: Path, extra: list[str] = (),
                      extra_env: dict | None = None) -> dict:
    """outcomes() of every id, one file's import or collection error never hiding another
    file's results. All ids run in one pytest process (one import of torch and sglang).
    pytest refuses the whole command line when a named file cannot be imported, after
    recording that file's collection error; the ids of the other files then run again
    together, and file by file only if that still leaves some without a result."""
    if not node_ids:
        return {}
    extra = ["--continue-on-collection-errors", *extra]

    def run(batch: list[str]) -> dict:
        return outcomes(venv, site, batch, cwd, extra=extra, extra_env=extra_env)

    results = run(node_ids)
    stuck = [t for t in node_ids if not select(results, t) and not collection_problem(results, t)]
    # Without a collection error nothing was refused: an id without a result is not found
    # (or deselected by -k), and running it again would tell nothing new.
    refused = "__run__" in results or any(outcome == "error" and key.startswith("::")
                                          for key, (outcome, _) in results.items())
    if not stuck or not refused or len({_file(t) for t in node_ids}) == 1:
        return results
    merged = {k: v for k, v in results.items() if k != "__run__"}
    again = run(stuck)
    merged.update({k: v for k, v in again.items() if k != "__run__"})
    for file in sorted({_file(t) for t in stuck if not select(again, t) and not collection_problem(again, t)}):
        merged.update(run([t for t in stuck if _file(t) == file]))
    return merged


def _file(node_id: str) -> str:
    return node_id.split("::")[0]


def collection_problem(results: dict, node_id: str) -> tuple[str, str] | None:
    """(outcome, message) of the test's file when pytest could not collect it: an import
    error ("error"), or a skip of the whole module (the seam's CannotRun at import).
    pytest reports it against the module (`::tests.x.test_y`), not against a test."""
    module = _file(node_id)[:-3].replace("/", ".")
    for key, (outcome, message) in results.items():
        classname, _, name = key.partition("::")
        if outcome in ("error", "skipped") and (name == module or (classname == module and not name)):
            return outcome, message
    return None


# tests/conftest.py records, as a property of the run, which tree core the release runs
# a cache on by default; kept under this key (no test id looks like it).
TREE_CORE_DEFAULT = "__release__::tree_core_default"


def tree_core_default(results: dict) -> str | None:
    found = results.get(TREE_CORE_DEFAULT)
    return found[1] if found else None


def variant(key: str) -> str | None:
    """The variant of a result (a class collected once per tree core: "TestX[rust]"), or None."""
    classname = key.split("::", 1)[0]
    return classname[classname.index("[") + 1:-1] if classname.endswith("]") and "[" in classname else None


def _parse(report: Path) -> dict:
    """{"module.Class::test": (outcome, first line of the message)}."""
    results = {}
    for prop in ET.parse(report).iter("property"):
        if prop.get("name") == "tree_core_default":
            results[TREE_CORE_DEFAULT] = ("property", prop.get("value") or "")
    for case in ET.parse(report).iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                text = (node.get("message") or node.text or "").strip()
                message = _unwrap(text.splitlines()[0] if text else "", node.text or "")
                break
        classname, name = case.get("classname"), case.get("name")
        # junit puts a class collected per variant into the name ("TestX[rust]::test_y")
        head, sep, tail = name.rpartition("::")
        if sep:
            classname, name = f"{classname}.{head}", tail
        results[f"{classname}::{name}"] = (outcome, message)
    return results


_WRAPPER = "retry() exceed maximum number of retries"
_CHAIN = re.compile(r"\n(?:During handling of the above exception, another exception occurred:"
                    r"|The above exception was the direct cause of the following exception:)\n")


def _unwrap(message: str, longrepr: str) -> str:
    """The test's own exception. sglang's CustomTestCase runs every test through retry(),
    whose last word is always 'Exception: retry() exceed maximum number of retries.'
    chained to what the test raised; pytest's report holds the whole chain. A collection
    failure says only that; the import error that caused it is the report's last E line."""
    if message == "collection skipped":
        # the longrepr of a skipped module is the repr of (path, line, "<exception type>: reason")
        reason = re.search(r"(?:Skipped|SkipTest|CannotRun): (.*)['\"]\)\s*$", longrepr.strip(), re.S)
        return reason.group(1) if reason else message
    if message == "collection failure":
        raised = [line[1:].strip() for line in longrepr.splitlines() if line.startswith("E ")]
        return f"collection failure: {raised[-1]}" if raised else message
    if _WRAPPER not in message:
        return message
    for segment in reversed(_CHAIN.split(longrepr)):
        if _WRAPPER in segment:
            continue
        raised = [line[1:].strip() for line in segment.splitlines() if line.startswith("E ")]
        if raised:
            return raised[0]
    return message


def select(results: dict, node_id: str) -> dict:
    """The results that belong to a pytest node id (file, file::Class, file::Class::test)."""
    file, *names = node_id.split("::")
    dotted = file[:-3].replace("/", ".") if file.endswith(".py") else file
    if len(names) >= 1:
        dotted += "." + names[0]
    method = names[1] if len(names) > 1 else None
    chosen = {}
    for key, value in results.items():
        classname, name = key.split("::", 1)
        # a class collected once per variant (TestX[rust]) belongs to TestX
        if classname != dotted and not classname.startswith((dotted + ".", dotted + "[")):
            continue
        if method is None or name == method or name.startswith(method + "["):
            chosen[key] = value
    return chosen
