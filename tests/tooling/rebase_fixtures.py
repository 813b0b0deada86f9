"""Two releases of a tiny synthetic upstream and a series whose patches each land in one
rebase category, for the queue/export and rebase tests (no sglang, no torch: seconds).

Release 1.0.0 (the base) and 2.0.0 differ so that, on 2.0.0:
  0001 (LINE_5)   applies, its test fails on vanilla and passes with it  -> applies-cleanly
  0002 (LINE_10)  upstream made the same change                          -> absorbed-upstream
  0003 (LINE_20)  upstream edited the context (LINE_19)                  -> conflicts
  0004 (LINE_30)  applies, but upstream re-assigns LINE_30 further down  -> applies-tests-fail
  0005 (LINE_35)  applies, but make_pool(size=) became make_pool(capacity=) -> tests-cannot-run
"""

import difflib
import hashlib
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import Upstream  # noqa: E402

BASE, NEW = "1.0.0", "2.0.0"
POOL = "sglang/pool.py"


def pool_lines(overrides: dict | None = None,
               tail: str = "def make_pool(size):\n    return [LINE_35] * size\n\n\nBASE_ONLY = True\n") -> list[str]:
    lines = [f"LINE_{i} = {i}\n" for i in range(1, 41)]
    for number, text in (overrides or {}).items():
        lines[number - 1] = text + "\n"
    return lines + ["\n", "\n", *tail.splitlines(keepends=True)]


BASE_FILES = {"sglang/__init__.py": "VERSION = '1.0.0'\n", POOL: "".join(pool_lines())}
NEW_FILES = {
    "sglang/__init__.py": "VERSION = '2.0.0'\n",
    POOL: "".join(pool_lines({10: "LINE_10 = 'ten'", 19: "LINE_19 = 'nineteen'"},
                             "def make_pool(capacity):\n    return [LINE_35] * capacity\n\n\nLINE_30 = 30  # reset\n")),
}
CHANGES = {  # patch name: (line, new text, test class)
    "0001-five.patch": (5, "LINE_5 = 'five'", "TestFive"),
    "0002-ten.patch": (10, "LINE_10 = 'ten'", "TestTen"),
    "0003-twenty.patch": (20, "LINE_20 = 'twenty'", "TestTwenty"),
    "0004-thirty.patch": (30, "LINE_30 = 'thirty'", "TestThirty"),
    "0005-thirty-five.patch": (35, "LINE_35 = 'thirty-five'", "TestThirtyFive"),
}
# 0005 also names a test file that cannot even be imported on 2.0.0 (BASE_ONLY is gone):
# a collection error there must not keep the other files' tests from running.
BROKEN_FILE = "tests/test_synthetic_base_only.py"
BROKEN_TESTS = '''import unittest

from sglang.pool import BASE_ONLY, LINE_35


class TestBaseOnly(unittest.TestCase):
    def test_value(self):
        self.assertTrue(BASE_ONLY)
        self.assertEqual(LINE_35, "thirty-five")
'''
TEST_FILE = "tests/test_synthetic_pool.py"
TESTS = '''import unittest

from sglang import pool


class RetryingTestCase(unittest.TestCase):
    """Like sglang's CustomTestCase: the test's own exception ends up chained under a retry() one."""

    def _callTestMethod(self, method):
        try:
            super()._callTestMethod(method)
        except Exception:
            raise Exception("retry() exceed maximum number of retries.")


class TestFive(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_5, "five")


class TestTen(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_10, "ten")


class TestTwenty(unittest.TestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_20, "twenty")


class TestThirty(RetryingTestCase):
    def test_value(self):
        self.assertEqual(pool.LINE_30, "thirty")


class TestThirtyFive(RetryingTestCase):
    def test_make_pool(self):
        self.assertEqual(pool.make_pool(size=2), ["thirty-five"] * 2)
'''


class Releases(Upstream):
    """Upstream with 1.0.0 and 2.0.0 pinned, the five patches, and their tests in tests_root."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        self.pin_files(BASE, BASE_FILES)
        self.pin_files(NEW, NEW_FILES)
        self.tests_root = tmp / "tests-root"
        (self.tests_root / "tests").mkdir(parents=True)
        (self.tests_root / TEST_FILE).write_text(TESTS)
        (self.tests_root / BROKEN_FILE).write_text(BROKEN_TESTS)
        for name, (line, text, test) in CHANGES.items():
            tests = f"{TEST_FILE}::{test}" + (f" {BROKEN_FILE}::TestBaseOnly" if name.startswith("0005") else "")
            self.add_raw_patch(name, patch_text(line, text, f"pool: set line {line}", tests))
        self.write_series(list(CHANGES))

    def tree_of(self, version: str) -> Path:
        return self.build / version / "tree"

    def git_in(self, version: str, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.tree_of(version)), *args], capture_output=True, text=True,
                              check=True).stdout.strip()


def patch_text(line: int, text: str, subject: str, tests: str) -> str:
    old = pool_lines()
    new = list(old)
    new[line - 1] = text + "\n"
    path = "python/sglang/pool.py"
    diff = "".join(difflib.unified_diff(old, new, f"a/{path}", f"b/{path}", n=3))
    old_blob = _blob_id("".join(old))
    new_blob = _blob_id("".join(new))
    return (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: sglang-series <series@localhost>\nDate: Sat, 21 Nov 2026 00:00:00 +0000\n"
        f"Subject: {subject}\n\nWhy: the test says so.\n\n"
        "Origin: vendor\nBug: https://example.invalid/1\nForwarded: not-needed\n"
        f"Applied-Upstream: no\nLast-Update: 2026-11-21\nTests: {tests}\n\n"
        f"diff --git a/{path} b/{path}\nindex {old_blob}..{new_blob} 100644\n{diff}"
    )


def _blob_id(text: str) -> str:
    data = text.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
