"""With the opt-in SWA switches on, the out-of-window release never tombstones the last
leaf (upstream #29860).

A decoding request's SWA KV below its frontier is freed; the frontier stays a window
and a page below its last token so that the leaf the request inserts keeps live SWA.
``SGLANG_OPT_SWA_EVICT_DROP_PAGE_MARGIN`` (0.5.13 - 0.5.14, off by default) dropped
that page; with ``SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS`` (0.5.14, off by
default) the unified cache also applies the frontier when it caches a running request.
With a page above the window the page-aligned frontier then lands on the page-aligned
end of what the request caches: its last leaf is all tombstone. The insert dropped it
(freeing Full KV that the running request still reads) or kept a leaf no match can
use, so the next turn of the conversation misses what the request just computed.
Fixed, the radix path keeps max(window, page) below the last token and the switch is
gone. These checks run with both switches on.
"""

import os
import sys
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(__file__))

import swa_component_fixtures as sf  # noqa: E402
from seam import raised_by_release  # noqa: E402
from radix_fixtures import RadixTestCase  # noqa: E402

from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402

register_cpu_ci(est_time=5, suite="stage-a-test-cpu")

SWITCHES = {
    "SGLANG_OPT_SWA_EVICT_DROP_PAGE_MARGIN": "1",
    "SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS": "1",
}


def _conversation(page, window, prompt_len, output_len):
    """One turn: prefill (cached while running), decode with the scheduler's release
    each step, finish; then the next turn's prefix match. Returns the violations; an
    assert the release's code raises on the way (a Full slot freed twice) is one."""
    v = sf.Violations()
    try:
        _turns(sf.Scheduler(page_size=page, window=window), v, prompt_len, output_len)
    except AssertionError as exc:
        if not raised_by_release(exc):
            raise
        v.release_asserted += 1
    return v


def _turns(s, v, prompt_len, output_len):
    page = s.page
    prompt = list(range(100, 100 + prompt_len))
    req, _ = s.admit(prompt)
    s.cache_running(req)
    v.locked_full_freed += s.locked_full_freed()
    v.prefix_tokens_lost += prompt_len // page * page - req.cache_protected_len
    for token in range(5000, 5000 + output_len):
        s.grow(req, [token])
        s.scheduler_release(req)
    v.locked_full_freed += s.locked_full_freed()
    conversation = req.tokens
    s.finish(req)
    v.swa_unaccounted += s.swa_unaccounted()
    v.dead_swa_in_tree += s.dead_swa_in_tree()
    following, match = s.admit(conversation + list(range(9000, 9000 + page)))
    matched = len(following.prefix_indices)
    v.prefix_tokens_lost += len(conversation) // page * page - matched
    v.dead_swa_served += s.dead_swa_served(match)
    s.finish(following)
    s.cache.sanity_check()


class TestSWAFrontierKeepsLastLeafOptIn(RadixTestCase):
    def setUp(self):
        super().setUp()
        patcher = mock.patch.dict(os.environ, SWITCHES)
        patcher.start()
        self.addCleanup(patcher.stop)

    def _sweep(self, pages, windows_of):
        total, cases = sf.Violations(), 0
        for page in pages:
            for window in windows_of(page):
                for prompt_len in range(2 * page + 1, 3 * page + 1):
                    total = total + _conversation(page, window, prompt_len, output_len=page + window)
                    cases += 1
        return total, cases

    def test_page_above_window(self):
        total, cases = self._sweep((2, 4, 8), lambda page: range(1, page))
        self.assertEqual(total, sf.Violations(), f"{total} over {cases} conversations")

    def test_page_up_to_window(self):
        total, cases = self._sweep((1, 2, 4), lambda page: (page, 2 * page))
        self.assertEqual(total, sf.Violations(), f"{total} over {cases} conversations")


if __name__ == "__main__":
    unittest.main()
