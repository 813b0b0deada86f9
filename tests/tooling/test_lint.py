"""The lint catches what makes a green run lie: missing/unlisted patches, missing headers,
tests named by a patch that do not exist, unregistered test files, empty test bodies."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from scripts import lint  # noqa: E402
from scripts.lib import config  # noqa: E402
from synthetic import _format_patch  # noqa: E402

GOOD_TEST = """
from sglang.test.ci.ci_register import register_cpu_ci
register_cpu_ci(est_time=1, suite="stage-a-test-cpu")

class TestThing:
    def test_real(self):
        assert 1 + 1 == 2
"""


FIXES = """
[[fix]]
pr = "#1"
title = "a is b"
tests = ["tests/registered/test_thing.py::TestThing::test_real"]
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "patches/lines/1.0").mkdir(parents=True)
    (tmp_path / "tests/registered").mkdir(parents=True)
    (tmp_path / "tests/registered/test_thing.py").write_text(GOOD_TEST)
    patch = _format_patch("python/sglang/a.py", ["a\n"], ["b\n"], "change a")
    (tmp_path / "patches/lines/1.0/0001-a.patch").write_text(patch.replace("tests/tooling/synthetic.py", "tests/registered/test_thing.py::TestThing::test_real"))
    (tmp_path / "patches/lines/1.0.series").write_text("lines/1.0/0001-a.patch\n")
    (tmp_path / "r.json").write_text(json.dumps({"base": "1.0", "releases": {"1.0": {
        "wheel": "sglang-1.0-py3-none-any.whl", "sha256": "0" * 64, "exclude_newer": None}}}))
    (tmp_path / "tests/fixes.toml").write_text(FIXES)
    return config.Paths(root=tmp_path, cache=tmp_path / "c", build=tmp_path / "b", patches=tmp_path / "patches",
                        releases=tmp_path / "r.json", env=tmp_path / "env")


def test_consistent_project_is_clean(project):
    assert lint.problems(project) == []


def test_missing_and_unlisted_and_duplicate_patches(project):
    (project.patches / "lines/1.0/0002-stray.patch").write_text("x")
    (project.patches / "0004-loose.patch").write_text("x")
    (project.patches / "lines/1.0.series").write_text("lines/1.0/0001-a.patch\nlines/1.0/0001-a.patch\nlines/1.0/0003-gone.patch\n")
    found = "\n".join(lint.problems(project))
    assert "patches/lines/1.0/0002-stray.patch is on no line" in found
    assert "patches/0004-loose.patch lies outside a release's folder" in found
    assert "patches/lines/1.0.series lists lines/1.0/0003-gone.patch, which does not exist" in found
    assert "patches/lines/1.0.series lists lines/1.0/0001-a.patch more than once" in found


def test_missing_header_and_missing_test(project):
    path = project.patches / "lines/1.0/0001-a.patch"
    text = path.read_text().replace("Forwarded: not-needed\n", "").replace("::test_real", "::test_gone")
    path.write_text(text)
    found = "\n".join(lint.problems(project))
    assert "missing header(s) Forwarded" in found
    assert "Tests names tests/registered/test_thing.py::TestThing::test_gone, which does not exist" in found


def test_a_patch_whose_tests_are_no_fix_of_the_registry(project):
    gone = FIXES.replace("::test_real", "::test_gone")
    (project.root / "tests/fixes.toml").write_text(gone + gone)
    found = "\n".join(lint.problems(project))
    assert "0001-a.patch: its Tests are not exactly the tests of one fix in tests/fixes.toml" in found
    assert "#1 names tests/registered/test_thing.py::TestThing::test_gone, which does not exist" in found
    assert "#1 appears more than once" in found


def test_missing_registry_is_one_problem(project):
    (project.root / "tests/fixes.toml").unlink()
    assert lint.problems(project) == ["tests/fixes.toml is missing; restore it with `git checkout -- tests/fixes.toml`"]


@pytest.mark.parametrize("body", ["pass", "...", '"""Only a docstring."""', '"""Doc."""\npass'])
def test_empty_test_bodies_are_flagged(project, body):
    body = body.replace("\n", "\n        ")
    source = GOOD_TEST + f"\nclass TestOverride(TestThing):\n    def test_inherited(self):\n        {body}\n"
    (project.root / "tests/registered/test_thing.py").write_text(source)
    found = "\n".join(lint.problems(project))
    assert "test_inherited has an empty body" in found
    assert "test_real" not in found


def test_unregistered_test_file(project):
    (project.root / "tests/registered/test_loose.py").write_text("def test_x():\n    assert True\n")
    assert any("test_loose.py: registered test file without a register_*_ci" in p for p in lint.problems(project))


def test_inherited_test_from_sibling_module_counts_as_existing(project):
    tests = project.root / "tests/registered"
    (tests / "checks.py").write_text("class Checks:\n    def test_shared(self):\n        assert 2 > 1\n")
    (tests / "test_thing.py").write_text(GOOD_TEST + "\nfrom checks import Checks\n\nclass TestMixed(Checks):\n    device = 'cpu'\n")
    path = project.patches / "lines/1.0/0001-a.patch"
    path.write_text(path.read_text().replace("TestThing::test_real", "TestMixed::test_shared"))
    (project.root / "tests/fixes.toml").write_text(FIXES.replace("TestThing::test_real", "TestMixed::test_shared"))
    assert lint.problems(project) == []
    path.write_text(path.read_text().replace("TestMixed::test_shared", "TestMixed::test_missing"))
    assert any("TestMixed::test_missing, which does not exist" in p for p in lint.problems(project))


def test_a_patch_that_names_a_package_index_host(project):
    host = "https://" + "pypi" + ".org/simple"  # spelt apart: this file names no host
    path = project.patches / "lines/1.0/0001-a.patch"
    path.write_text(path.read_text().replace("Forwarded: not-needed\n", f"Forwarded: not-needed\nSee: {host}\n"))
    assert lint.problems(project) == ["patches/lines/1.0/0001-a.patch names a package-index host; take it out: the index "
                                      "comes from uv's and pip's configuration"]
