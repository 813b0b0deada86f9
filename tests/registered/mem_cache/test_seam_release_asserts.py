"""A check counts an assert as the bug only where the release raised it.

Several checks drive the release's allocator or cache and count its own accounting
asserts (a pool over-freed, a sanity check) as a violation. An assert of the check's
fixtures or of the seam is a broken test, not the bug: it must surface as it is, or a
fixture that breaks on a new release would read as "present".
"""

import os
import unittest


import sglang  # noqa: E402

from seam import raised_by_release  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=1, suite="stage-a-test-cpu")


def _raise_from(filename: str) -> AssertionError:
    """An AssertionError whose innermost frame is code compiled as if it lived in `filename`."""
    try:
        exec(compile("assert False, 'accounting'", filename, "exec"), {})
    except AssertionError as exc:
        return exc
    raise RuntimeError("the assert did not fire")


class TestOnlyTheReleasesAssertIsCounted(CustomTestCase):
    def test_an_assert_inside_the_installed_sglang_is_the_release(self):
        inside = os.path.join(os.path.dirname(sglang.__file__), "srt", "mem_cache", "allocator.py")
        self.assertTrue(raised_by_release(_raise_from(inside)))

    def test_an_assert_of_a_check_or_its_fixtures_is_not(self):
        self.assertFalse(raised_by_release(_raise_from(__file__)))
        beside = os.path.dirname(sglang.__file__) + "_fixtures.py"  # a sibling path, not inside the package
        self.assertFalse(raised_by_release(_raise_from(beside)))

    def test_an_exception_never_raised_has_no_origin(self):
        self.assertFalse(raised_by_release(AssertionError("constructed, not raised")))


if __name__ == "__main__":
    unittest.main()
