"""SWA tombstone recovery must leave a running request's Full KV alone (upstream #29352).

A request R1 runs on a cached prefix A: its lock pins A's Full KV, but A lies more than
a sliding window before R1's position, so its SWA KV is not pinned and SWA pressure
tombstones it. A request R2 that shares A cannot match it (no SWA there), computes A
again and is cached; its insert meets the tombstone and recovers A's SWA from R2's
fresh KV. The recovery freed A's Full KV and took R2's in its place, while R1 still
attends over the old slots: the next allocation hands them to another request and
R1's context is overwritten. Fixed, the locked Full KV stays; A's SWA is rebuilt from
R2's slice over it and only R2's surplus Full slots go back to the pool.
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


def _tokens(start, pages, page):
    return list(range(start, start + pages * page))


def _locked_prefix_scene(page, r2_evicted_pages):
    """R1 runs on A + B with A SWA-tombstoned, R2 computes A + D and is cached."""
    s = sf.Scheduler(page_size=page, window=4 * page)
    a, b, c, d = (_tokens(base, n, page) for base, n in ((100, 8), (500, 4), (900, 4), (1300, 4)))
    # R0 finishes in its prefill step (one output token), so it is never cached while
    # running: A + C enters the tree with live SWA all along. (A running request's
    # caching frees its out-of-window SWA where the release does so by default, 0.5.18+,
    # and then no later request could match A.)
    r0, _ = s.admit(a + c)
    s.finish(r0)
    r1, match = s.admit(a + b)
    assert len(r1.prefix_indices) == len(a), "R1 must run on the cached prefix A"
    s.cache_running(r1)
    r1_row = sf.swa_seam.row(s.req_pool, r1).clone()
    s.evict_swa(10**6)
    r2, match = s.admit(a + d)
    assert len(r2.prefix_indices) == 0, "R2 must not match A (its SWA is gone)"
    s.decode_release(r2, r2_evicted_pages * page)
    return s, r1, r1_row, r2


class TestSWARecoveryKeepsLockedFull(RadixTestCase):
    def _check(self, page, r2_evicted_pages, cache_r2):
        s, r1, r1_row, r2 = _locked_prefix_scene(page, r2_evicted_pages)
        cache_r2(s, r2)
        self.assertEqual(s.locked_full_freed(), 0,
                         "Full KV of a running request is free for the next allocation")
        # R1's prefix is still A's Full KV, and A is found again (SWA rebuilt).
        self.assertTrue(bool((sf.swa_seam.row(s.req_pool, r1) == r1_row).all()))
        self.assertEqual(s.swa_unaccounted(), 0)
        self.assertEqual(s.full_unaccounted(), 0)
        self.assertEqual(s.dead_swa_in_tree(), 0)
        s.cache.sanity_check()

    def test_finished_request_recovers_whole_node_page1(self):
        self._check(1, 0, lambda s, r: s.finish(r))

    def test_finished_request_recovers_whole_node_page4(self):
        self._check(4, 0, lambda s, r: s.finish(r))

    def test_finished_request_recovers_node_tail_page1(self):
        self._check(1, 4, lambda s, r: s.finish(r))

    def test_finished_request_recovers_node_tail_page4(self):
        self._check(4, 4, lambda s, r: s.finish(r))

    def test_running_request_recovers_whole_node_page1(self):
        self._check(1, 0, lambda s, r: s.cache_running(r))

    def test_running_request_recovers_whole_node_page4(self):
        self._check(4, 0, lambda s, r: s.cache_running(r))


SEEDS = 40
STEPS = 30


def _serve(seed):
    """Requests over a few shared prefixes, some running while SWA pressure tombstones
    what their locks do not pin; count running requests' Full slots handed out again."""
    rng = random.Random(seed)
    page = rng.choice((1, 2, 4))
    window = page * rng.choice((1, 2, 4))
    s = sf.Scheduler(page_size=page, window=window, full_size=2048, swa_size=1024)
    prefixes = [_tokens(10_000 * (i + 1), rng.randint(2, 6) * window // page, page) for i in range(3)]
    fresh = iter(range(1_000_000, 2_000_000))
    v = sf.Violations()
    for _ in range(STEPS):
        roll = rng.random()
        if roll < 0.45 or not s.running:
            prefix = rng.choice(prefixes)
            cut = rng.randint(1, len(prefix) // page) * page
            tail = [next(fresh) for _ in range(rng.randint(1, 2) * window)]
            req, _ = s.admit(prefix[:cut] + tail)
            if req is None:
                s.cache.evict(sf.EvictParams(num_tokens=256, swa_num_tokens=256))
                continue
            s.cache_running(req)
        elif roll < 0.65:
            s.evict_swa(rng.randint(1, 4) * window)
        else:
            req = rng.choice(s.running)
            s.decode_release(req, rng.randint(0, s.out_of_window_frontier(req) // page) * page)
            s.finish(req)
        v.locked_full_freed += s.locked_full_freed()
        v.swa_unaccounted += s.swa_unaccounted()
        v.dead_swa_in_tree += s.dead_swa_in_tree()
    return v


class TestSWARecoveryKeepsLockedFullRandomized(RadixTestCase):
    def test_no_running_request_loses_its_full_kv(self):
        total, bad_seeds = sf.Violations(), 0
        for seed in range(SEEDS):
            v = _serve(seed)
            bad_seeds += v.total() > 0
            total = total + v
        self.assertEqual(total, sf.Violations(), f"{total}: {bad_seeds} of {SEEDS} seeds x {STEPS} steps")


if __name__ == "__main__":
    unittest.main()
