"""Every `make` command line that the workflows in ci/, the CI lane script and the README
give runs through make and the verbs' argument parsing (SGLANG_SERIES_DRY_RUN stops each
verb right after it), so a renamed target, variable or option fails here, not on a runner."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from scripts import test as test_verb  # noqa: E402
from scripts.lib import config, pins, pytest_run  # noqa: E402
from scripts.lib.errors import SeriesError  # noqa: E402

LANE = "ci/lanes/run.sh"
_SHELL_MAKE = re.compile(r"(?:^|[\s;&|(])(make\s[^;&|)\n]*)")
# a version in a make line: a release, a shell variable or the README's X
_RELEASE = re.compile(r"\b\d+\.\d+\.\d+(\.post\d+)?\b|\"\$\w+\"|(?<==)X\b")
_SPACE = re.compile(r"\s+")


def dry_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTEST_ARGS", "REQUIRE_CUDA", "UPSTREAM_VERSION",
                         "WRITE", "STRICT", "FORCE", "CONTINUE", "COPY_TO", "RELEASES", "PUBLISH", "LINE", "FRESH",
                         "WHEELHOUSE", "PART", "MERGE")}
    return {**env, "SGLANG_SERIES_DRY_RUN": "1"}


def shell_make_lines(script: str) -> list[str]:
    """The `make ...` commands in a shell script (comments skipped)."""
    found = []
    for line in script.splitlines():
        if not line.lstrip().startswith("#"):
            found += [m.strip() for m in _SHELL_MAKE.findall(line)]
    return found


def workflow_runs() -> dict:
    """{"cpu.yml/test": [run scripts in order]} for every job of every workflow."""
    runs = {}
    for workflow in sorted((REPO / "ci").glob("*.yml")):
        for job_id, job in yaml.safe_load(workflow.read_text())["jobs"].items():
            runs[f"{workflow.name}/{job_id}"] = [step["run"] for step in job["steps"] if "run" in step]
    return runs


def readme_make_lines() -> list[str]:
    """The README's examples: `make ...` in backticks and the make lines of its sh blocks."""
    text = (REPO / "README.md").read_text()
    lines = re.findall(r"`(make [^`]+)`", text)
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        lines += [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("make ")]
    # `X` and `<newest>` stand for a version; `...` for the rest of a command line
    return [re.sub(r"<\w+>", "X", line).strip() for line in lines if "..." not in line]


def all_make_lines() -> list[str]:
    lines = [line for runs in workflow_runs().values() for run in runs for line in shell_make_lines(run)]
    lines += shell_make_lines((REPO / LANE).read_text())
    return sorted(set(lines + readme_make_lines()))


def distinct_make_lines() -> list[str]:
    """all_make_lines() up to the release they name and their line breaks: a dry run stops
    before a version is looked up, so lines that differ only there parse alike."""
    return sorted({_SPACE.sub(" ", _RELEASE.sub("0.5.12", line)) for line in all_make_lines()})


def test_the_sources_hold_the_make_lines_they_are_expected_to():
    lines = all_make_lines()
    for expected in ("make apply", "make test", "make test REQUIRE_CUDA=1", "make prove",
                     "make test-manual REQUIRE_CUDA=1", "make test PYTEST_ARGS=-rs"):
        assert expected in lines
    assert any(line.startswith("make rebase ") and "STRICT=1" in line for line in lines)


@pytest.mark.parametrize("line", distinct_make_lines())
def test_make_line_parses(line):
    proc = subprocess.run(["bash", "-c", line], cwd=REPO, env=dry_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verbs = re.findall(r"-m scripts\.(\w+)", proc.stdout)
    stopped = re.findall(r"^dry run: (\w+)", proc.stdout, re.M)
    assert verbs == stopped and stopped or "dry run: rm -rf build" in proc.stdout, proc.stdout


def test_pytest_args_reach_pytest_verbatim():
    args = "-rs -x --lf -k 'write_through and not Randomized' tests/tooling/test_lint.py::TestX::test_y"
    for target in ("test", "test-vanilla", "test-manual", "prove", "matrix"):
        proc = subprocess.run(["make", target, f"PYTEST_ARGS={args}"], cwd=REPO, env=dry_env(),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert ("'pytest_args': ['-rs', '-x', '--lf', '-k', 'write_through and not Randomized', "
                "'tests/tooling/test_lint.py::TestX::test_y']") in proc.stdout


@pytest.mark.parametrize("target, variable, option", [
    ("test", "REQUIRE_CUDA", "require_cuda"),  # what the gpu lane's `make test REQUIRE_CUDA=1` relies on
    ("prove", "FRESH", "fresh"),  # FRESH=1, which the reuse lines name (test_prove.py shows what it does)
    ("rebase UPSTREAM_VERSION=0.5.14", "FRESH", "fresh"),
    ("matrix", "FRESH", "fresh"),
])
def test_a_flag_variable_reaches_its_verb(target, variable, option):
    for value, expected in (("1", True), ("", False)):
        proc = subprocess.run(["make", *target.split(), f"{variable}={value}"], cwd=REPO, env=dry_env(),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"'{option}': {expected}" in proc.stdout, proc.stdout


@pytest.mark.parametrize("target, variable, option", [
    ("wheelhouse", "WHEELHOUSE", "dest"),
    ("matrix RELEASES=0.5.14", "PART", "part"),
    ("matrix", "MERGE", "merge"),
])
def test_a_value_variable_reaches_its_verb(target, variable, option):
    proc = subprocess.run(["make", *target.split(), f"{variable}=some dir/x"], cwd=REPO, env=dry_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"'{option}': 'some dir/x'" in proc.stdout, proc.stdout


def test_the_cpu_workflow_keeps_the_wheelhouse_and_the_matrix_fans_out_over_the_pinned_releases():
    def steps(workflow: str, job: str) -> list[dict]:
        return yaml.safe_load((REPO / "ci" / workflow).read_text())["jobs"][job]["steps"]

    kept = [s for s in steps("cpu.yml", "test") if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert [s["with"]["path"] for s in kept] == ["build/wheelhouse/"]
    jobs = yaml.safe_load((REPO / "ci/matrix.yml").read_text())["jobs"]
    assert "scripts.matrix --list" in steps("matrix.yml", "releases")[-1]["run"]  # the list is made, not written down
    assert jobs["release"]["strategy"]["matrix"]["release"] == "${{ fromJSON(needs.releases.outputs.releases) }}"
    assert jobs["release"]["runs-on"] == ["self-hosted", "linux", "x64", "cpu"]
    assert any("PART=" in s.get("run", "") for s in steps("matrix.yml", "release"))
    assert jobs["merge"]["needs"] == "release"
    assert [s["run"] for s in steps("matrix.yml", "merge") if "make" in s.get("run", "")] == [
        "make matrix MERGE=build/matrix/parts"]
    listed = subprocess.run([sys.executable, "-m", "scripts.matrix", "--list"], cwd=REPO, capture_output=True, text=True)
    assert json.loads(listed.stdout) == sorted(config.load_releases(config.Paths.from_env())["releases"], key=pins.version_key)


def test_ci_run_and_the_cpu_workflow_run_one_lane_script():
    runs = workflow_runs()
    assert runs["cpu.yml/test"] == [f"{LANE} cpu"]
    assert runs["gpu.yml/test"] == [f"{LANE} gpu"]
    assert runs["gpu.yml/manual-e2e"] == [f"{LANE} manual"]
    ci_run = (REPO / ".ci/run").read_text()
    assert re.search(rf"^exec .*{re.escape(LANE)}\" cpu$", ci_run, re.M), ci_run


def other_lines(flag: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "scripts.lines", flag], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


def base() -> str:
    return config.base_version(config.Paths.from_env())


# the base's line, then the other releases' lines: one a day on the cpu lane, every one on the gpu lane
LANE_COMMANDS = {
    "cpu": lambda: ["apply", "test", "prove", f"wheelhouse UPSTREAM_VERSION={base()}"] + [
        f"{step} UPSTREAM_VERSION={v}" for v in other_lines("--today") for step in ("apply", "prove", "wheelhouse")],
    "gpu": lambda: ["apply", "test REQUIRE_CUDA=1", "prove"] + [
        f"{step} UPSTREAM_VERSION={v}" for v in other_lines("--others")
        for step in ("apply", "test REQUIRE_CUDA=1", "prove")],
    "manual": lambda: ["apply", "test-manual REQUIRE_CUDA=1"],
}
def cpu_steps() -> list[str]:
    """The verbs the cpu lane's make commands run, in order (`make test` lints first)."""
    return ["apply", "lint", "lint_ci", "test", "prove", "wheelhouse"] + ["apply", "prove", "wheelhouse"] * len(other_lines("--today"))


@pytest.mark.parametrize("lane", list(LANE_COMMANDS))
def test_lane_runs_its_steps(lane, tmp_path):
    """The lane's make commands, in order, recorded by a stand-in `make` on PATH (every distinct
    line is parsed by the real make and verbs in test_make_line_parses, and .ci/run's lane below)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/make").write_text('#!/bin/sh\nprintf \'%s\\n\' "$*" >> "$MAKE_LOG"\n')
    (tmp_path / "bin/make").chmod(0o755)
    env = {**dry_env(), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "MAKE_LOG": str(tmp_path / "log")}
    proc = subprocess.run([str(REPO / LANE), lane], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "log").read_text().splitlines() == LANE_COMMANDS[lane]()


def test_ci_run_is_the_cpu_lane_and_fails_when_a_step_fails():
    ok = subprocess.run([str(REPO / ".ci/run")], env=dry_env(), capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert re.findall(r"^dry run: (\w+)", ok.stdout, re.M) == cpu_steps()
    # a step that fails (here: a misspelt variable every make step refuses) stops the lane there,
    # with make's non-zero exit
    broken = subprocess.run([str(REPO / ".ci/run")], env={**dry_env(), "MAKEFLAGS": "-- UPSTREAM_VERISON=0.5.12"},
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0 and "did you mean UPSTREAM_VERSION?" in broken.stderr
    assert "dry run" not in broken.stdout


def test_lane_needs_a_known_lane():
    proc = subprocess.run([str(REPO / LANE), "tpu"], env=dry_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr


# pytest itself: the tier's folders are its testpaths, so options keep them and test ids replace them

@pytest.fixture
def suite(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a/test_alpha.py").write_text("def test_one():\n    assert True\n")
    (tmp_path / "b/test_beta.py").write_text(
        "import pytest\n\n"
        "def test_two():\n    assert True\n\n"
        "def test_gpu():\n    pytest.skip('needs a CUDA device: the pools run on the GPU')\n\n"
        "def test_model():\n    pytest.skip('set SGLANG_SERIES_DSV4_MODEL to a model')\n")
    return tmp_path


def run_suite(root: Path, pytest_args: list[str]) -> tuple[int, dict]:
    junit = root / "junit.xml"
    options = test_verb.pytest_options(root, ["a", "b"], pytest_args)
    code = pytest_run.run(Path(sys.prefix), root, [], root, ["-q", *options], junit=junit)
    return code, {key.split("::")[-1]: outcome for key, (outcome, _) in pytest_run.read_report(junit).items()}


def test_options_keep_the_default_folders(suite):
    code, results = run_suite(suite, ["-rs", "-k", "one or two"])
    assert code == 0 and results == {"test_one": "passed", "test_two": "passed"}


def test_a_test_id_replaces_the_default_folders(suite):
    code, results = run_suite(suite, ["b/test_beta.py::test_two"])
    assert code == 0 and results == {"test_two": "passed"}


def test_a_cuda_skip_fails_only_where_cuda_is_required(suite):
    code, _ = run_suite(suite, [])
    results = pytest_run.read_report(suite / "junit.xml")
    assert code == 0  # the CPU lane keeps skips as skips
    with pytest.raises(SeriesError, match=r"^1 test\(s\) skipped for lack of CUDA .*needs a CUDA device"):
        test_verb.require_cuda_ran(results)
    test_verb.require_cuda_ran({k: v for k, v in results.items() if not k.endswith("test_gpu")})


@pytest.mark.parametrize("args, registered, tooling", [
    ([], [], []),  # both suites, each its own default folder
    (["-x", "-k", "tests"], ["-x", "-k", "tests"], ["-x", "-k", "tests"]),  # options (and their values) go to both
    (["-rs", "tests/tooling/test_lint.py"], None, ["-rs", "tests/tooling/test_lint.py"]),
    (["tests/registered/mem_cache", "--lf"], ["tests/registered/mem_cache", "--lf"], None),
    (["tests/registered/mem_cache", "tests/tooling/test_lint.py::test_x"],
     ["tests/registered/mem_cache"], ["tests/tooling/test_lint.py::test_x"]),
])
def test_make_test_sends_each_test_id_to_its_own_run(args, registered, tooling):
    assert test_verb.split_ids(REPO, args) == (registered, tooling)


@pytest.mark.parametrize("registered, tooling, combined", [(0, 0, 0), (1, 0, 1), (0, 1, 1), (5, 0, 0), (0, 5, 0),
                                                           (5, 5, 5), (5, 1, 1), (2, 1, 2)])
def test_one_exit_code_for_both_runs(registered, tooling, combined):
    assert test_verb.combine(registered, tooling) == combined


def test_tooling_tests_run_again_only_when_what_they_judge_changed(tmp_path):
    """A pass is kept (in the cache, by content) for the checkout's files but patches/, docs/ and the
    registered checks (their names aside); the hint's command (`make test PYTEST_ARGS=tests/tooling`)
    names them, which always runs them."""
    root = tmp_path / "repo"
    for name in ("scripts/a.py", "patches/series", "docs/matrix.md", "README.md", "tests/registered/test_a.py",
                 "tests/fixes.toml", "tests/seam/__init__.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("one\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    paths = config.Paths(root=root, cache=tmp_path / "c", build=root / "build", patches=root / "patches",
                         releases=root / "r.json", env=root / "env")
    inputs = test_verb.tooling_inputs(root)
    assert test_verb.passed_before(paths, inputs) is None
    test_verb.record_pass(paths, inputs)
    said = test_verb.passed_before(paths, inputs)
    assert said and said.endswith("run them anyway with `make test PYTEST_ARGS=tests/tooling`")
    for name in ("patches/series", "docs/matrix.md", "patches/0001-new.patch", "tests/registered/test_a.py",
                 "tests/fixes.toml"):
        (root / name).write_text("two\n")
        assert test_verb.tooling_inputs(root) == inputs, name
    # an edit, a file git does not track yet, a check added (a test may name its folder)
    for name in ("scripts/a.py", "scripts/new.py", "tests/seam/__init__.py", "tests/registered/test_b.py"):
        test_verb.record_pass(paths, test_verb.tooling_inputs(root))  # each change on its own
        (root / name).write_text("two\n")
        assert test_verb.passed_before(paths, test_verb.tooling_inputs(root)) is None, name
    hint = re.search(r"`make test PYTEST_ARGS=(\S+)`", said).group(1)
    assert test_verb.split_ids(REPO, [hint]) == (None, ["tests/tooling"])  # the tooling run, with its id: never reused


def test_the_bytecode_of_sources_that_are_gone_is_dropped(tmp_path):
    """The shared bytecode mirrors source folders by absolute path: a deleted clone's (or a
    release's removed build) goes at the next `make apply`; a living folder's stays."""
    from scripts import cli

    prefix = tmp_path / "pycache"
    kept = tmp_path / "clone-kept" / "build" / "0.5.12" / "site"
    gone = tmp_path / "clone-gone" / "build" / "0.5.12" / "site"
    kept.mkdir(parents=True)
    for source in (kept, gone, kept.parent.parent / "0.5.14"):
        mirror = prefix / source.relative_to("/")  # PYTHONPYCACHEPREFIX's layout: no __pycache__ level
        mirror.mkdir(parents=True)
        (mirror / "x.cpython-311.pyc").write_bytes(b"\0")
    cli.prune_bytecode(prefix, depth=len(kept.parts))
    assert (prefix / kept.relative_to("/") / "x.cpython-311.pyc").exists()
    assert not (prefix / (tmp_path / "clone-gone").relative_to("/")).exists()
    assert not (prefix / (kept.parent.parent / "0.5.14").relative_to("/")).exists()
