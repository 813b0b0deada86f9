"""HiCache with DSV4's encoder-replay request window: host-backed prefixes match
(upstream #38269 and its follow-up, CacheInitParams.swa_gates_prefix_match, 0.5.23).

With ``--enable-encoder-swa-bounded-replay`` a DeepSeek-V4 target keeps its
sliding-window KV in a per-request window the radix tree never owns; under MTP the
tree still has an SWA component over the paged SWA allocator the draft reads, and
HiCache has no SWA host pool (request-window SWA stays out of the host cache). A
prefix evicted from device under HiCache is then a host-only Full-KV node with no SWA
value anywhere. #38269 narrowed the SWA match gate that let such a node end a match
to the per-request SWA ring only, so on 0.5.21 and 0.5.22 every host-backed prefix
misses: no L2 (or L3, which loads through L2) hit, and the whole prompt is computed
again. 0.5.23 decides in the KV cache builder whether the tree owns the SWA state
(``swa_gates_prefix_match`` false for a ring or beside the request window) and the
SWA component, on either tree core, gates the match only when it does.

The cache here is the release's own UnifiedRadixCache, parameterised by the release's
own KV cache builder for a request-window target (tests/seam/swa_request_window.py),
on real CPU pools, with a Full-KV-only host pool and the release's HybridCacheController
on CPU (tests/seam/hicache_writeback.py). A host-backed prefix must be matched as a
host hit of its whole length, and its load-back, once acknowledged, must make it a
device hit. Releases without the request window (<= 0.5.20): not applicable.
"""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))

import radix_fixtures as rf  # noqa: E402
from radix_fixtures import EvictParams, PoolName, seam  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402

from seam import hicache_writeback as wb  # noqa: E402
from seam import swa_request_window as rw  # noqa: E402
from seam.hicache_standins import RecordingHostPool  # noqa: E402

register_cpu_ci(est_time=30, suite="stage-a-test-cpu")


def _tokens(start, n):
    return list(range(start, start + n))


class RequestWindowTree:
    """A request-window target's FULL+SWA cache under write-through HiCache, Full KV
    alone on host."""

    def __init__(self, test, ps, window, *, full_pages=128, host_pages=1024):
        for patcher in wb.cpu_device_module_patches():
            patcher.start()
            test.addCleanup(patcher.stop)
        self.ps = ps
        allocator = seam.swa_allocator(page_size=ps, full_size=full_pages * ps, swa_size=full_pages * ps)
        req_pool = seam.req_to_token_pool(size=8, max_context_len=4096)
        cache = rw.target_cache(req_pool=req_pool, allocator=allocator, page_size=ps, window=window,
                                core=seam.current_core())
        self.h = h = rf.RadixHarness(cache=cache, allocator=allocator, req_to_token_pool=req_pool,
                                     page_size=ps, window=window, has_mamba=False)
        kv_host = seam.host_pool(RecordingHostPool, host_pages * ps, ps)
        group = seam.host_pool_group([
            seam.pool_entry(name=PoolName.KV, host_pool=kv_host,
                            device_pool=allocator.get_kvcache().full_kv_pool,
                            layer_mapper=lambda i: i, is_primary_index_anchor=True),
        ])
        controller = wb.cpu_controller(allocator)(group, "write_through")
        # No SWA host pool: the assembler keeps request-window SWA out of the host cache.
        seam.wire_host_pools(cache, controller, group, kv_host=kv_host, swa_host=None, mamba_host=None,
                             write_policy="write_through")
        cache.load_back_threshold = ps
        h.controller = controller
        h.host = rf.HostPools(kv=kv_host, swa=None, mamba=None)
        h.free_at_start = h.free_slots()

    def serve(self, tokens, swa_evicted_seqlen=0):
        """A finished request: its host hit loaded back first (as the scheduler's
        init_load_back does), then matched, extended and inserted; its backups written."""
        m = self.h.match(tokens)
        if m.host_hit_length:
            self.load_back(m)
        ok = rf.serve_request(self.h, tokens, swa_evicted_seqlen, rf.ServeStats())
        self.h.submit_backups()
        self.h.cache.writing_check()
        return ok

    def evict_device(self, num_tokens):
        self.h.cache.evict(EvictParams(num_tokens=num_tokens, swa_num_tokens=num_tokens))

    def hit(self, tokens):
        """(device hit, host hit) of a match for tokens."""
        m = self.h.match(tokens)
        return len(seam.matched_device_indices(self.h.cache, m)), m.host_hit_length, m

    def load_back(self, m):
        """Load a match's host hit back and take its ack; whether a load was scheduled."""
        loaded = self.h.load_back(self.h.node(m.best_match_node))
        wb.start_loads(self.h.cache)
        wb.acknowledge_loads(self.h.cache)
        return loaded is not None and loaded is not False


class TestRequestWindowHostPrefixMatches(rf.RadixTestCase):
    """One conversation served, written through to host and evicted from device: its
    whole prefix is a host hit, and loads back."""

    def _check(self, ps, window_pages, length_pages):
        t = RequestWindowTree(self, ps, window_pages * ps)
        tokens = _tokens(5000, length_pages * ps)
        self.assertTrue(t.serve(tokens))
        self.assertTrue(all(n.backuped for n in t.h.nodes()), "write-through left a node without a host copy")
        t.evict_device(len(tokens))
        self.assertTrue(all(n.evicted and n.backuped for n in t.h.nodes()))

        device, host, m = t.hit(tokens + _tokens(90000, ps))
        self.assertEqual(
            (device, host), (0, len(tokens)),
            f"page {ps}, window {window_pages * ps}: a prefix of {len(tokens)} tokens kept on host is "
            f"matched as {device} on device + {host} on host (HiCache with the SWA request window)")
        self.assertTrue(t.load_back(m), "no load-back scheduled for the host hit")
        device, host, _ = t.hit(tokens)
        self.assertEqual((device, host), (len(tokens), 0), "the loaded-back prefix is not a device hit")
        t.h.assert_drained()

    def test_page1(self):
        for window_pages in (1, 4, 8):
            with self.subTest(window_pages=window_pages):
                self._check(1, window_pages, 3 * window_pages + 2)

    def test_page4(self):
        for window_pages in (1, 2, 4):
            with self.subTest(window_pages=window_pages):
                self._check(4, window_pages, 3 * window_pages + 1)

    def test_page16(self):
        for window_pages in (1, 2):
            with self.subTest(window_pages=window_pages):
                self._check(16, window_pages, 2 * window_pages + 3)


class TestRequestWindowSharedPrefixOnHost(rf.RadixTestCase):
    """A shared system prompt evicted to host under a branch still on device: a new
    request on the prompt is matched to the end of the prompt (host hit), and a request
    on the device branch is matched through the host part to the branch's end."""

    def _check(self, ps, window_pages):
        t = RequestWindowTree(self, ps, window_pages * ps)
        system = _tokens(7000, 4 * window_pages * ps)
        a = system + _tokens(20000, 2 * ps)
        b = system + _tokens(30000, 3 * ps)
        self.assertTrue(t.serve(a))
        t.evict_device(10**6)
        self.assertTrue(t.serve(b))  # loads the system prompt back, adds b's tail
        t.evict_device(10**6)
        self.assertTrue(all(n.evicted and n.backuped for n in t.h.nodes()))

        device, host, _ = t.hit(system + _tokens(40000, ps))
        self.assertEqual((device, host), (0, len(system)),
                         f"page {ps}, window {window_pages * ps}: the host-backed system prompt is not matched")
        device, host, m = t.hit(a)
        self.assertEqual((device, host), (0, len(a)),
                         f"page {ps}, window {window_pages * ps}: a conversation kept on host is not matched")
        self.assertTrue(t.load_back(m))
        device, host, _ = t.hit(b)
        self.assertEqual(device + host, len(b), "the other branch's host-backed tail is not matched")
        t.h.assert_drained()

    def test_page1(self):
        self._check(1, 4)

    def test_page4(self):
        self._check(4, 2)

    def test_page8(self):
        self._check(8, 1)


class TestRequestWindowHostMatchRandomized(rf.RadixTestCase):
    """Seeded traffic: conversations that branch off shared prompts and grow turn by
    turn (their SWA released up to a random point, as a running request's is), device
    evictions of random size, and now and then everything evicted to host and a
    request on a served prefix matched: it must be a host hit of the longest cached
    prefix (every served prefix stays cached: the host holds it all), and its
    load-back, once acknowledged, a device hit of that length."""

    SEEDS = 6
    OPS = 40
    BASE_SEED = int(os.environ.get("SGLANG_RADIX_FUZZ_SEED", "20261207"))

    def _expected(self, served, tokens, ps):
        best = 0
        for seq in served:
            n = 0
            for x, y in zip(seq, tokens):
                if x != y:
                    break
                n += 1
            best = max(best, n)
        return best // ps * ps

    def _run_seed(self, seed):
        rng = random.Random(seed)
        ps = rng.choice((1, 2, 4, 8))
        window_pages = rng.choice((1, 2, 3, 4))
        t = RequestWindowTree(self, ps, window_pages * ps, full_pages=160, host_pages=4096)
        prompts = [_tokens(rng.randrange(1, 5000) * 64, rng.randint(1, 3) * window_pages * ps) for _ in range(3)]
        convs = [list(rng.choice(prompts)) for _ in range(4)]
        served, misses, host_hits = [], [], 0
        for _ in range(self.OPS):
            op = rng.random()
            if op < 0.5:
                i = rng.randrange(len(convs))
                convs[i] = convs[i] + _tokens(rng.randrange(100000, 900000), rng.randint(1, 3) * ps)
                if len(convs[i]) > 40 * ps:
                    convs[i] = list(rng.choice(prompts))
                evicted = rng.randrange(0, len(convs[i]) // ps) * ps
                if t.serve(convs[i], evicted):
                    served.append(list(convs[i]))
            elif op < 0.75:
                t.evict_device(rng.randint(1, 48) * ps)
            else:
                # Everything cached goes to host (device eviction under write-through),
                # then a request on some served prefix is matched.
                t.evict_device(10**6)
                probe = list(rng.choice(served or prompts))
                probe = probe[: rng.randint(1, len(probe) // ps) * ps] + _tokens(990000, ps)
                want = self._expected(served, probe, ps)
                device, host, m = t.hit(probe)
                host_hits += host > 0
                if (device, host) != (0, want):
                    misses.append((len(probe), want, device, host))
                elif want and rng.random() < 0.5:
                    self.assertTrue(t.load_back(m), "no load-back scheduled for a host hit")
                    device, host, _ = t.hit(probe)
                    self.assertEqual((device, host), (want, 0), "the loaded-back prefix is not a device hit")
        t.h.assert_drained()
        return ps, window_pages, misses, host_hits

    def test_randomized(self):
        report, host_hits = [], 0
        for k in range(self.SEEDS):
            seed = self.BASE_SEED + k
            ps, window_pages, misses, hits = self._run_seed(seed)
            host_hits += hits
            if misses:
                report.append(f"seed {seed} (page {ps}, window {window_pages * ps}): {len(misses)} host-backed "
                              f"matches missed, first (probe, cached, device hit, host hit) {misses[0]}")
        self.assertEqual(report, [], "host-backed prefixes not matched with the SWA request window:\n"
                         + "\n".join(report))
        self.assertGreater(host_hits, 0, "no match was a host hit: the scenario did not happen")


if __name__ == "__main__":
    import unittest

    unittest.main()
