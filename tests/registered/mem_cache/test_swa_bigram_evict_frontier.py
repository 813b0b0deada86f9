"""EAGLE: the out-of-window release of a running request's SWA KV measures the bigram
key (upstream #34870), checked with the opt-in switches on.

With ``SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS`` (0.5.14 - 0.5.17 off by
default, on from 0.5.18) the unified radix cache frees a running request's SWA KV below
an eviction frontier when it caches the request (after its prefill, or a prefill
chunk), then inserts it and matches it again to take the new prefix as the request's
own. The frontier keeps a sliding window of live SWA below the end of the insert, so the
leaf stays matchable. It was measured from the token count, but under EAGLE the tree is
keyed by bigrams: a key one entry shorter than its tokens, whose page-aligned end is a
page lower whenever the token count is a multiple of the page. The leaf then keeps less
than a window of live SWA, the match refuses it, and the request neither locks nor owns
what it just inserted: the tree counts its slots as evictable while the request still
reads them, the decode-time release frees SWA slots the tree holds, and the finish
frees again KV the tree already owns. Every rank stops on "pool memory leak detected".
0.5.14 keeps a page of margin below the frontier unless
``SGLANG_OPT_SWA_EVICT_DROP_PAGE_MARGIN`` is set too (gone from 0.5.15, #29860): both
switches are on here.

Windows are a whole number of pages less one token (gpt-oss: 127 over pages of 64), so
that the raw-key frontier keeps its window and only the bigram measure is judged.
"""

import os
import random
import sys
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(__file__))

import swa_component_fixtures as sf  # noqa: E402
from seam import raised_by_release  # noqa: E402
from radix_fixtures import RadixTestCase  # noqa: E402

from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402

register_cpu_ci(est_time=6, suite="stage-a-test-cpu")

SWITCHES = {
    "SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS": "1",
    "SGLANG_OPT_SWA_EVICT_DROP_PAGE_MARGIN": "1",
}


class _OptIn(RadixTestCase):
    def setUp(self):
        super().setUp()
        patcher = mock.patch.dict(os.environ, SWITCHES)
        patcher.start()
        self.addCleanup(patcher.stop)


def _bigram_aligned(tokens: int, page: int) -> int:
    """Where a page-aligned bigram key over `tokens` tokens ends (in KV slots)."""
    return max(0, tokens - 1) // page * page


def _check_pools(s: sf.Scheduler, v: sf.Violations) -> None:
    """The scheduler's memory check: each pool's free + cached + held by running
    requests must be the pool (a slot freed twice or counted twice shows here)."""
    v.swa_unaccounted += s.swa_unaccounted()
    v.full_unaccounted += s.full_unaccounted()


def _cache_running(s: sf.Scheduler, req, v: sf.Violations) -> None:
    """Cache a running request; it must own (and lock) what it inserted."""
    s.cache_running(req)
    v.prefix_tokens_lost += _bigram_aligned(len(req.tokens), s.page) - req.cache_protected_len
    _check_pools(s, v)


def _idle(s: sf.Scheduler, v: sf.Violations) -> None:
    """No request runs: the pools balance, then everything the tree holds can go and
    every slot comes back free."""
    _check_pools(s, v)
    v.dead_swa_in_tree += s.dead_swa_in_tree()
    s.cache.sanity_check()
    s.cache.evict(sf.EvictParams(num_tokens=10**6, swa_num_tokens=10**6))
    v.slots_leaked += abs(s.leaked_after_evicting_all())


def _turn(page, window, prompt_len, output_len, pressure_at=None):
    """One request of an EAGLE server: prefill, cached while running (the release's
    out-of-window release with the switches on), decode with the scheduler's release each
    step (tree eviction under pressure at step `pressure_at`), finish; then the next
    turn's prefix match and the idle checks. An assert the release's code raises on the
    way (a slot freed twice) counts as one violation."""
    v = sf.Violations()
    try:
        s = sf.Scheduler(page_size=page, window=window, eagle=True)
        prompt = list(range(100, 100 + prompt_len))
        req, _ = s.admit(prompt)
        _cache_running(s, req, v)
        for step, token in enumerate(range(5000, 5000 + output_len)):
            s.grow(req, [token])
            s.scheduler_release(req)
            if step == pressure_at:
                s.cache.evict(sf.EvictParams(num_tokens=10**6, swa_num_tokens=10**6))
                v.locked_full_freed += s.locked_full_freed()
            _check_pools(s, v)
        conversation = req.tokens
        s.finish(req)
        _check_pools(s, v)
        following, match = s.admit(conversation + list(range(9000, 9000 + page)))
        v.dead_swa_served += s.dead_swa_served(match)
        s.finish(following)
        _idle(s, v)
    except AssertionError as exc:
        if not raised_by_release(exc):
            raise
        v.release_asserted += 1
    return v


def _windows(page):
    """Windows above the page, a whole number of pages less one token."""
    return [k * page - 1 for k in (2, 3)]


class TestBigramFrontierKeepsWindowOptIn(_OptIn):
    def _sweep(self, pressure):
        total, cases = sf.Violations(), 0
        for page in (2, 4):
            for window in _windows(page):
                for prompt_len in range(window + 2 * page, window + 3 * page + 1):
                    total = total + _turn(page, window, prompt_len, output_len=window + 2 * page,
                                          pressure_at=1 if pressure else None)
                    cases += 1
        return total, cases

    def test_decode_and_finish_keep_pools_balanced(self):
        total, cases = self._sweep(pressure=False)
        self.assertEqual(total, sf.Violations(), f"{total} over {cases} requests")

    def test_tree_eviction_leaves_running_request_kv(self):
        total, cases = self._sweep(pressure=True)
        self.assertEqual(total, sf.Violations(), f"{total} over {cases} requests")


SEEDS = 12
STEPS = 40


def _serve(seed):
    """An EAGLE server over three multi-turn conversations, one turn of each running at a
    time: a turn is admitted on its conversation so far, prefilled in chunks of whole
    pages (each chunk cached while running), decodes with the scheduler's release, and
    finishes; the tree is evicted under pressure now and then. The pools are checked
    after every step and at idle."""
    rng = random.Random(seed)
    page = rng.choice((2, 4, 8))
    window = rng.choice(_windows(page))
    s = sf.Scheduler(page_size=page, window=window, full_size=4096, swa_size=4096, eagle=True)
    fresh = iter(range(1_000_000, 2_000_000))
    conversations = [[] for _ in range(3)]
    running = [None] * len(conversations)
    v = sf.Violations()
    for _ in range(STEPS):
        roll = rng.random()
        idle = [i for i, req in enumerate(running) if req is None]
        if idle and (roll < 0.25 or not s.running):
            i = rng.choice(idle)
            prompt = conversations[i] + [next(fresh) for _ in range(rng.randint(1, 2 * window))]
            chunk = rng.randint(1, 3) * page
            req, _ = s.admit(prompt[: len(conversations[i]) + chunk])
            if req is None:
                s.cache.evict(sf.EvictParams(num_tokens=10**6, swa_num_tokens=10**6))
                continue
            running[i] = req
            _cache_running(s, req, v)
            while len(req.tokens) < len(prompt):
                s.grow(req, prompt[len(req.tokens): len(req.tokens) + chunk])
                _cache_running(s, req, v)
        elif roll < 0.7:
            req = rng.choice(s.running)
            for token in [next(fresh) for _ in range(rng.randint(1, 2 * page))]:
                s.grow(req, [token])
                s.scheduler_release(req)
        elif roll < 0.8:
            s.cache.evict(sf.EvictParams(num_tokens=rng.randint(1, 4) * page,
                                         swa_num_tokens=rng.randint(1, 4) * page))
            v.locked_full_freed += s.locked_full_freed()
        else:
            i = rng.choice([i for i, req in enumerate(running) if req is not None])
            conversations[i] = list(running[i].tokens)
            s.finish(running[i])
            running[i] = None
        _check_pools(s, v)
    for req in list(s.running):
        s.finish(req)
    _idle(s, v)
    return v


class TestBigramFrontierRandomizedOptIn(_OptIn):
    def test_pools_stay_accounted(self):
        total, bad_seeds = sf.Violations(), 0
        for seed in range(SEEDS):
            try:
                v = _serve(seed)
            except AssertionError as exc:
                if not raised_by_release(exc):
                    raise
                v = sf.Violations(release_asserted=1)
            bad_seeds += v.total() > 0
            total = total + v
        self.assertEqual(total, sf.Violations(), f"{total}: {bad_seeds} of {SEEDS} seeds x {STEPS} steps")


if __name__ == "__main__":
    unittest.main()
