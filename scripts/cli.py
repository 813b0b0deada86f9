"""make's entry into the verbs: `python -m scripts.cli TARGET` turns the make variables
(exported by the Makefile, so no value ever passes through a shell) into the verb's
arguments and runs the verb in this process's place.

PYTEST_ARGS is split as a shell would split it (shlex: quotes kept, nothing expanded or
run). A variable given on make's command line that is a near miss of one of ours
(UPSTREAM_VERISON=...) is an error naming the right one: make would ignore it silently.
"""

import difflib
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from scripts.lib import config
from scripts.lib.errors import SeriesError, run_main

# the variables the Makefile exports, and the flag each one turns into
FLAGS = {"WRITE": "--write", "STRICT": "--strict", "FORCE": "--force", "CONTINUE": "--continue",
         "REQUIRE_CUDA": "--require-cuda", "PUBLISH": "--publish", "LINE": "--line", "FRESH": "--fresh"}
VALUES = {"UPSTREAM_VERSION": "--upstream", "COPY_TO": "--copy-to", "RELEASES": "--releases", "FROM": "--from", "FIXES": "--fixes",
          "WHEELHOUSE": "--dest", "PART": "--part", "MERGE": "--merge"}
OURS = {*FLAGS, *VALUES, "PYTEST_ARGS", "PYTHON", "SGLANG_SERIES_DRY_RUN"}

# make target: (verb module, fixed arguments, the variables it takes; PYTEST_ARGS goes after `--`)
TARGETS = {
    "apply": ("apply", [], ["UPSTREAM_VERSION"]),
    "test": ("test", ["--flavor", "patched"], ["UPSTREAM_VERSION", "REQUIRE_CUDA", "PYTEST_ARGS"]),
    "test-vanilla": ("test", ["--flavor", "vanilla"], ["UPSTREAM_VERSION", "REQUIRE_CUDA", "PYTEST_ARGS"]),
    "test-manual": ("test", ["--flavor", "patched", "--tier", "manual"], ["UPSTREAM_VERSION", "REQUIRE_CUDA", "PYTEST_ARGS"]),
    "lint": ("lint", [], []),
    "lint-ci": ("lint_ci", [], []),
    "prove": ("prove", [], ["UPSTREAM_VERSION", "FRESH", "PYTEST_ARGS"]),
    "discard": ("discard", [], ["UPSTREAM_VERSION"]),
    "lock": ("lock", [], ["UPSTREAM_VERSION"]),
    "lock-tools": ("lock", ["--tools"], []),
    "bench": ("bench", [], ["UPSTREAM_VERSION"]),
    "pin": ("pin", [], ["UPSTREAM_VERSION"]),
    "rebase": ("rebase", [], ["UPSTREAM_VERSION", "FROM", "WRITE", "LINE", "STRICT", "COPY_TO", "FRESH"]),
    "queue": ("queue", [], ["UPSTREAM_VERSION", "FORCE", "CONTINUE"]),
    "export": ("export", [], ["UPSTREAM_VERSION", "LINE"]),
    "lines": ("lines", [], ["WRITE", "PUBLISH"]),
    "matrix": ("matrix", [], ["RELEASES", "FIXES", "PUBLISH", "FRESH", "PART", "MERGE", "PYTEST_ARGS"]),
    "wheelhouse": ("wheelhouse", [], ["UPSTREAM_VERSION", "WHEELHOUSE"]),
}


def command_line_variables(makeflags: str) -> dict:
    """{name: value} of the variables given on make's command line (make lists them in
    MAKEFLAGS after `--`, a space inside a value escaped as `\\ `)."""
    _, sep, assignments = f" {makeflags}".partition(" -- ")
    found = {}
    for word in re.split(r"(?<!\\) ", assignments if sep else ""):
        m = re.match(r"([^=:+?!\s]+)\s*[:+?!]*=(.*)", word)
        if m:
            found[m.group(1)] = m.group(2).replace("\\ ", " ")
    return found


def check_names(variables: dict) -> None:
    """make takes any variable and ignores those it does not use: a typo would go unnoticed."""
    for name, value in variables.items():
        if name in OURS:
            continue
        close = difflib.get_close_matches(name.upper(), sorted(OURS), n=1, cutoff=0.75)
        if close:
            raise SeriesError(f"unknown variable {name}, which make would ignore; did you mean {close[0]}? "
                              f"Run the command again with {shlex.quote(f'{close[0]}={value}')}")


def arguments(target: str, environ: dict) -> list[str]:
    module, argv, takes = TARGETS[target]
    argv = [*argv]
    for name in takes:
        value = environ.get(name, "")
        if name == "PYTEST_ARGS" or not value:
            continue
        argv += [FLAGS[name]] if name in FLAGS else [VALUES[name], value]
    if "PYTEST_ARGS" in takes:
        try:
            argv += ["--", *shlex.split(environ.get("PYTEST_ARGS", ""))]
        except ValueError as exc:  # an unclosed quote
            raise SeriesError(f"PYTEST_ARGS cannot be split ({exc}); close the quote, e.g. PYTEST_ARGS=\"-k 'a and b'\"")
    return [sys.executable, "-m", f"scripts.{module}", *argv]


def keep_bytecode(environ) -> None:
    """Importing sglang and torch from bytecode takes half the time: the verbs and every
    child keep theirs under the shared cache (PYTHONPYCACHEPREFIX), so nothing is written
    next to the sources or into the venvs, which is what PYTHONDONTWRITEBYTECODE guards."""
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    environ.setdefault("PYTHONPYCACHEPREFIX", str(config.Paths.from_env().cache / "pycache"))


def prune_bytecode(prefix: Path, depth: int = 6) -> None:
    """Drop the bytecode of source folders that are gone (a deleted clone, a release's build
    after `make clean`, pytest's old temporary folders): the prefix mirrors every source
    folder's absolute path, so each fresh clone would otherwise leave its builds' bytecode
    behind for good. Folders deeper than `depth` (inside a venv or a build) go with theirs."""
    for folder, children, _ in os.walk(prefix):
        source = Path("/") / Path(folder).relative_to(prefix)
        if len(source.parts) > depth:
            children.clear()
            continue
        for child in list(children):
            if not (source / child).is_dir():
                shutil.rmtree(Path(folder) / child, ignore_errors=True)
                children.remove(child)


def main(argv=None) -> None:
    # (argv: so that a dry run goes on to the verb, which stops after parsing its own)
    target = (argv or sys.argv[1:] or [""])[0]
    if target not in TARGETS:
        raise SeriesError(f"unknown target {target!r}; run one of: {', '.join(f'make {t}' for t in TARGETS)}")
    check_names(command_line_variables(os.environ.get("MAKEFLAGS", "")))
    verb = arguments(target, os.environ)
    keep_bytecode(os.environ)
    if target == "apply" and not os.environ.get("SGLANG_SERIES_DRY_RUN"):  # once per build, not per verb
        prune_bytecode(Path(os.environ["PYTHONPYCACHEPREFIX"]))
    print(shlex.join([os.environ.get("PYTHON") or "python3", *verb[1:]]), flush=True)  # what make used to echo
    os.execv(verb[0], verb)  # the verb in this process's place: make's signals reach it


if __name__ == "__main__":
    run_main(main)
