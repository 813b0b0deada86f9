"""Test-run policy shared by every tier.

- ``tests/`` is importable, so checks reach the adapter seam as ``import seam``.
- A test that cannot reach its checks on the installed release (``seam.CannotRun``)
  is reported as ``cannot-run``, apart from passes, failures and ordinary skips
  (no GPU, no model). On the release a suite is meant for, that is a broken test:
  the run fails unless ``--allow-cannot-run`` (or SGLANG_SERIES_ALLOW_CANNOT_RUN=1)
  says the caller judges a release (make matrix, make rebase) and reads the outcome itself.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
# No test reaches the network: a default ServerArgs (0.5.16+ builds one for the global
# server args) must not look its dummy model up on the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from seam import CANNOT_RUN  # noqa: E402

_cannot_run = []


def pytest_addoption(parser):
    parser.addoption(
        "--allow-cannot-run", action="store_true",
        help="report tests that cannot run on this release without failing the run",
    )


def _is_cannot_run(report) -> bool:
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return False
    return report.longrepr[2].removeprefix("Skipped: ").startswith(CANNOT_RUN)


def pytest_report_teststatus(report, config):
    if _is_cannot_run(report):
        return "cannot-run", "C", "CANNOT RUN"


def pytest_runtest_logreport(report):
    if _is_cannot_run(report):
        _cannot_run.append(f"{report.nodeid}: {report.longrepr[2].removeprefix('Skipped: ')}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _cannot_run:
        terminalreporter.section("tests that cannot reach their checks on this release")
        for line in _cannot_run:
            terminalreporter.line(line)


def pytest_sessionfinish(session, exitstatus):
    allowed = session.config.getoption("allow_cannot_run") or os.environ.get("SGLANG_SERIES_ALLOW_CANNOT_RUN")
    if _cannot_run and not allowed and exitstatus == 0:
        session.exitstatus = 1


def pytest_pycollect_makeitem(collector, name, obj):
    """A radix-tree check class (``runs_on_every_tree_core``) is collected once per tree
    core the release has, the core in its id (``TestX[rust]::test_y``); on a release
    with one tree only, as written."""
    if not (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
            and getattr(obj, "runs_on_every_tree_core", False) and not obj.__name__.startswith("_")):
        return None
    from seam import radix

    cores = radix.tree_cores()
    if cores == [None]:
        return None
    _record_default_core(collector.config, radix.default_core())
    from _pytest.unittest import UnitTestCase

    items = []
    for core in cores:
        variant = f"{name}[{core}]"
        # pytest resolves a class collector's object by its name in the module
        setattr(collector.obj, variant, _on_core(obj, core))
        items.append(UnitTestCase.from_parent(collector, name=variant))
    return items


def _record_default_core(config, core) -> None:
    """Which core the release runs a cache on unless told otherwise, as a property of the
    run's JUnit report: the tooling counts a radix check as judging the release only
    when that core's variant ran (scripts/lib/verdict.py)."""
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is not None and not getattr(config, "_tree_core_default_recorded", False):
        xml.add_global_property("tree_core_default", core)
        config._tree_core_default_recorded = True


def _on_core(cls, core):
    def setUp(self):
        from seam import radix

        radix.use_core(core)
        self.addCleanup(radix.use_core, None)
        cls.setUp(self)

    return type(cls.__name__, (cls,), {"setUp": setUp, "__module__": cls.__module__, "tree_core": core})
