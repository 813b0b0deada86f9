"""A span outside the SWA window still caches its Full KV (upstream #29351).

When everything a request adds past the cached prefix lies below its SWA boundary, the
SWA component has nothing to store for that span: it is a tombstone for SWA. The SWA
component vetoed the leaf altogether (``should_skip_leaf_creation``) and the insert
freed the span's Full KV. For a finished request the tree loses a valid Full prefix;
for a running one (a disaggregated decode takes over a request with SWA KV for its
tail only, page size above the window, so the boundary reaches the page-aligned end)
the insert frees Full KV that the request's row still points at, and the next
allocation overwrites its context. Fixed, the Full leaf is created and SWA leaves its
value empty there.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import swa_component_fixtures as sf  # noqa: E402
from radix_fixtures import RadixTestCase  # noqa: E402

from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402

register_cpu_ci(est_time=5, suite="stage-a-test-cpu")


class TestSkippedSWALeafKeepsFullKV(RadixTestCase):
    """A finished request whose span past the cached prefix is all outside its window."""

    def _lost(self, page, window_pages, prefix_pages, span_pages):
        s = sf.Scheduler(page_size=page, window=window_pages * page)
        prefix = list(range(100, 100 + prefix_pages * page))
        if prefix:
            first, _ = s.admit(prefix)
            s.finish(first)
        before = s.tree_full_tokens()
        tokens = prefix + list(range(5000, 5000 + span_pages * page))
        req, _ = s.admit(tokens)
        s.decode_release(req, len(tokens))
        s.finish(req)
        s.cache.sanity_check()
        lost = before + span_pages * page - s.tree_full_tokens()
        unaccounted = s.swa_unaccounted() + s.full_unaccounted() + s.dead_swa_in_tree()
        # The kept leaf goes like any other: evicting everything empties both pools.
        s.cache.evict(sf.EvictParams(num_tokens=10**6, swa_num_tokens=10**6))
        s.cache.sanity_check()
        unaccounted += s.leaked_after_evicting_all()
        return lost, unaccounted

    def test_finished_span_outside_window_is_cached(self):
        lost, unaccounted, cases = 0, 0, 0
        for page in (1, 4):
            for window_pages in (1, 2):
                for prefix_pages in (0, 2, 5):
                    for span_pages in (1, 3):
                        got = self._lost(page, window_pages, prefix_pages, span_pages)
                        lost += got[0]
                        unaccounted += got[1]
                        cases += 1
        self.assertEqual(lost, 0, f"Full KV tokens dropped over {cases} requests")
        self.assertEqual(unaccounted, 0)


class TestTakenOverRequestKeepsFullKV(RadixTestCase):
    """A disaggregated decode takes over a request with SWA KV for its tail only; with a
    page above the window its SWA boundary reaches the page-aligned end of what it
    caches. Caching it must neither free its Full KV nor drop it from the tree."""

    def _freed_and_lost(self, page, window, fill_len):
        s = sf.Scheduler(page_size=page, window=window)
        tokens = list(range(100, 100 + fill_len))
        req, _ = s.admit(tokens)
        # The decode side's tail allocation: SWA only from the page holding the window.
        boundary = (fill_len - window) // page * page
        s.decode_release(req, boundary)
        s.cache_running(req)
        cached = fill_len // page * page
        return s.locked_full_freed(), max(0, cached - s.tree_full_tokens())

    def test_page_above_window(self):
        freed, lost, cases = 0, 0, 0
        for page in (2, 4, 8):
            for window in range(1, page):
                for fill_len in range(2 * page + window, 4 * page):
                    got = self._freed_and_lost(page, window, fill_len)
                    freed += got[0]
                    lost += got[1]
                    cases += 1
        self.assertEqual(freed, 0, f"running requests' Full KV freed over {cases} take-overs")
        self.assertEqual(lost, 0, f"Full KV tokens dropped over {cases} take-overs")


if __name__ == "__main__":
    unittest.main()
