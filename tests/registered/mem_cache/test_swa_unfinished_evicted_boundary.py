"""A running request is cached with its SWA eviction boundary (upstream #29350).

While a request runs, the scheduler frees the SWA KV of its row that left the sliding
window and moves the request's boundary (``swa_evicted_seqlen``); a disaggregated
decode takes over a request with SWA KV for its tail only and sets the boundary the
same way. When such a request is cached before it finishes (after a prefill chunk, or
as the decode side takes it over), the insert must get that boundary: the span below
it is a tombstone, not live SWA. The unfinished path did not forward it, so the tree
recorded SWA values for freed slots: the SWA pool's accounting counts them as cached
(the scheduler's memory check aborts with "SWA Pool Mem Leak"), and a later request
that hits that prefix is served SWA KV from slots that are free or padding.
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import swa_component_fixtures as sf  # noqa: E402
from radix_fixtures import RadixTestCase  # noqa: E402

from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402

register_cpu_ci(est_time=10, suite="stage-a-test-cpu")


class TestUnfinishedInsertKeepsSWABoundary(RadixTestCase):
    def _check(self, page, window_pages, length_pages):
        s = sf.Scheduler(page_size=page, window=window_pages * page)
        tokens = list(range(100, 100 + length_pages * page))
        req, _ = s.admit(tokens)
        boundary = s.out_of_window_frontier(req)
        self.assertGreater(boundary, 0)
        s.decode_release(req, boundary)
        self.assertEqual(s.swa_unaccounted(), 0)

        s.cache_running(req)

        self.assertEqual(s.swa_unaccounted(), 0, "SWA pool check: freed slots counted as cached")
        self.assertEqual(s.dead_swa_in_tree(), 0, "tree holds SWA values with no live slot behind them")
        self.assertEqual(s.full_unaccounted(), 0)
        self.assertEqual(s.locked_full_freed(), 0)
        # A request that shares the evicted part is not served its freed SWA KV.
        other, match = s.admit(tokens[:boundary] + list(range(5000, 5000 + window_pages * page)))
        self.assertEqual(s.dead_swa_served(match), 0, "prefix hit served with freed SWA KV")
        s.finish(other)
        s.finish(req)
        self.assertEqual(s.swa_unaccounted(), 0)
        self.assertEqual(s.dead_swa_in_tree(), 0)
        s.cache.sanity_check()

    def test_page1(self):
        self._check(page=1, window_pages=4, length_pages=16)

    def test_page4(self):
        self._check(page=4, window_pages=2, length_pages=12)

    def test_window_of_one_page(self):
        self._check(page=4, window_pages=1, length_pages=8)


SEEDS = 40
STEPS = 30


def _serve(seed):
    """Requests that decode (their out-of-window SWA freed as the scheduler does) and are
    cached while they run, over shared prefixes; count the SWA pool check's difference,
    dead SWA entries in the tree and prefix hits served with dead SWA KV."""
    rng = random.Random(seed)
    page = rng.choice((1, 2, 4))
    window = page * rng.choice((1, 2, 4))
    s = sf.Scheduler(page_size=page, window=window, full_size=2048, swa_size=2048)
    prefixes = [list(range(10_000 * (i + 1), 10_000 * (i + 1) + rng.randint(2, 6) * window)) for i in range(3)]
    fresh = iter(range(1_000_000, 2_000_000))
    v = sf.Violations()
    for _ in range(STEPS):
        roll = rng.random()
        if roll < 0.3 or not s.running:
            prefix = rng.choice(prefixes)
            cut = rng.randint(1, len(prefix) // page) * page
            req, match = s.admit(prefix[:cut] + [next(fresh) for _ in range(window)])
            if req is None:
                s.cache.evict(sf.EvictParams(num_tokens=512, swa_num_tokens=512))
                continue
            v.dead_swa_served += s.dead_swa_served(match)
            s.cache_running(req)
        elif roll < 0.6:
            req = rng.choice(s.running)
            if s.grow(req, [next(fresh) for _ in range(rng.randint(1, 3) * page)]):
                s.decode_release(req, s.out_of_window_frontier(req))
        elif roll < 0.8:
            s.cache_running(rng.choice(s.running))
        else:
            s.finish(rng.choice(s.running))
        v.swa_unaccounted += s.swa_unaccounted()
        v.dead_swa_in_tree += s.dead_swa_in_tree()
        v.locked_full_freed += s.locked_full_freed()
    return v


class TestUnfinishedInsertKeepsSWABoundaryRandomized(RadixTestCase):
    def test_swa_pool_stays_accounted(self):
        total, bad_seeds = sf.Violations(), 0
        for seed in range(SEEDS):
            v = _serve(seed)
            bad_seeds += v.total() > 0
            total = total + v
        self.assertEqual(total, sf.Violations(), f"{total}: {bad_seeds} of {SEEDS} seeds x {STEPS} steps")


if __name__ == "__main__":
    unittest.main()
