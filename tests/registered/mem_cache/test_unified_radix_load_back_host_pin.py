"""HiCache load-back on UnifiedRadixCache holds the host pages it reads (upstream #27444).

load_back reads the host indices of the matched path off the tree, then makes room on
device, hands the indices to the controller's load (which only queues the copy) and
takes the load's ack at a later scheduler step. Until that ack the pages must stay
held: nothing may free them or hand them to another write. Host eviction is gated by
host locks only, and sglang 0.5.12 - 0.5.13.post1 take none for a load-back. Under
write-back the load-back's own device eviction writes the evicted leaf to host; when
the host is short, host eviction takes the least recently used host leaf, which can
be the very prefix being loaded. Its pages then hold the other leaf's KV when the load
copies them (wrong KV on the GPU), and committing the load crashes on the node host
eviction removed. The fixed release pins the matched path's host pages (Full anchor,
SWA window, Mamba state) from the start of load_back until its ack.

The release's own UnifiedRadixCache and HybridCacheController run on CPU; a ledger
of host pages counts every page a load-back reads that was freed after the
load-back began and before its ack (tests/seam/hicache_writeback.py), and with pools
that hold KV data and copies made as row copies in torch, the loaded KV is compared
with the matched tokens. The same on a GPU, with the release's copy kernels and
streams: test_unified_radix_load_back_host_pin_cuda.py.
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import radix_fixtures as rf  # noqa: E402
import torch  # noqa: E402
from radix_fixtures import EvictParams, PoolName  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402

from seam import hicache_writeback as wb  # noqa: E402

register_cpu_ci(est_time=20, suite="stage-a-test-cpu")

WINDOW_PAGES = 4


def _tokens(start, n):
    return list(range(start, start + n))


class LoadBackTree:
    """A FULL+SWA UnifiedRadixCache under write-back with host pools that keep a ledger,
    and a watch over every load-back's host pages."""

    def __init__(self, test, ps, *, full_pages, swa_pages, host_full_pages, host_swa_pages):
        for patcher in wb.cpu_device_module_patches():
            patcher.start()
            test.addCleanup(patcher.stop)
        self.ps = ps
        self.h = h = rf.build_tree(page_size=ps, window=WINDOW_PAGES * ps, full_size=full_pages * ps,
                                   swa_size=swa_pages * ps, hicache_write_policy="write_back")
        rf.attach_hicache(h, wb.cpu_controller(h.allocator), write_policy="write_back",
                          host_full_size=host_full_pages * ps, host_swa_size=host_swa_pages * ps,
                          host_pool_cls=wb.PageLedgerHostPool)
        h.cache.load_back_threshold = ps
        self.watch = wb.LoadBackWatch(h.cache, h.controller, {PoolName.KV: h.host.kv, PoolName.SWA: h.host.swa})

    def serve(self, tokens) -> bool:
        ok = rf.serve_request(self.h, tokens, 0, rf.ServeStats())
        wb.wait_write_backs(self.h.cache)
        return ok

    def evict(self, num_tokens) -> None:
        self.h.cache.evict(EvictParams(num_tokens=num_tokens))
        wb.wait_write_backs(self.h.cache)

    def load_back(self, tokens):
        """Match tokens and load back their host hit, as init_load_back does."""
        m = self.h.match(tokens)
        if not m.host_hit_length:
            return None
        loaded = self.watch.load_back(self.h.node(m.best_match_node))
        wb.wait_write_backs(self.h.cache)
        return loaded

    def acknowledge(self) -> None:
        wb.start_loads(self.h.cache)
        wb.acknowledge_loads(self.h.cache)
        self.watch.settle()

    def device_hit(self, tokens) -> int:
        return len(rf.seam.matched_device_indices(self.h.cache, self.h.match(tokens)))


class TestLoadBackHoldsHostPages(rf.RadixTestCase):
    """Prefixes a and c went to host in that order, so a's SWA is the least recently
    used on the host. A request hits a; to make room on device its load-back evicts b,
    whose write-back needs SWA host pages that only host eviction can give."""

    def _check(self, ps):
        t = LoadBackTree(self, ps, full_pages=32, swa_pages=32, host_full_pages=128, host_swa_pages=40)
        h = t.h
        a, c, b = _tokens(1000, 16 * ps), _tokens(3000, 16 * ps), _tokens(5000, 24 * ps)
        self.assertTrue(t.serve(a))
        t.evict(16 * ps)
        self.assertTrue(t.serve(c))
        t.evict(16 * ps)
        self.assertTrue(all(n.evicted and n.backuped for n in h.nodes()))
        self.assertTrue(t.serve(b))  # device: 24 of 32 pages in use; host SWA: 32 of 40

        try:
            loaded = t.load_back(a)
        except Exception as exc:  # the scheduler process would die here
            self.fail(f"load_back crashed ({type(exc).__name__}: {exc}); {t.watch.events}")
        self.assertEqual(t.watch.violations, 0, "; ".join(t.watch.events))
        self.assertTrue(loaded, "the load-back was refused though c's host pages could make room")
        t.acknowledge()
        self.assertEqual(t.device_hit(a), len(a))
        self.assertEqual(h.match(c).host_hit_length, 0, "c should have made room on the host")
        self.assertEqual(h.host_slot_leaks(), {})

        # After the ack nothing holds a's pages any more: they leave device and host.
        t.evict(64 * ps)
        h.cache.evict_host(128 * ps)
        self.assertEqual(h.nodes(), [])
        self.assertEqual(h.host.kv.available_size(), h.host.kv.size, "host pages stayed held after the ack")
        self.assertEqual(h.host.swa.available_size(), h.host.swa.size, "host pages stayed held after the ack")
        self.assertEqual(t.watch.violations, 0, "; ".join(t.watch.events))

    def test_lru_host_swa_is_the_load_back_page1(self):
        self._check(1)

    def test_lru_host_swa_is_the_load_back_page4(self):
        self._check(4)


class TestLoadBackHostPagesHeldUntilAck(rf.RadixTestCase):
    """Between a load-back and its ack, the scheduler goes on: other requests evict
    from device and host. No page the load reads may be freed before the ack."""

    def test_host_eviction_before_ack(self):
        ps = 1
        t = LoadBackTree(self, ps, full_pages=64, swa_pages=64, host_full_pages=80, host_swa_pages=160)
        h = t.h
        a, c = _tokens(1000, 16), _tokens(3000, 16)
        self.assertTrue(t.serve(a) and t.serve(c))
        t.evict(32)
        self.assertTrue(t.load_back(a))
        wb.start_loads(h.cache)  # the copy is queued; its ack is not taken yet
        t.evict(64)
        for ct in (rf.FULL, rf.SWA):
            h.cache.evict_host(160, ct)
        self.assertEqual(t.watch.violations, 0, "; ".join(t.watch.events))
        t.acknowledge()
        self.assertEqual(t.device_hit(a), len(a))
        t.evict(64)
        h.cache.evict_host(160)
        self.assertEqual(h.nodes(), [])
        self.assertEqual(h.host.kv.available_size(), h.host.kv.size, "host pages stayed held after the ack")


class LoadBackDataChecks:
    """The scenario of TestLoadBackHoldsHostPages with pools that hold each token's
    id as its K and V and copies that move them: a's device slots must get a's
    tokens. ``device``: where the pools live and the copies run."""

    device = "cpu"

    def _sync(self):
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()

    def _check(self, ps):
        if torch.device(self.device).type == "cpu":
            for patcher in wb.cpu_device_module_patches():
                patcher.start()
                self.addCleanup(patcher.stop)
        copies = wb.row_copies_on_cpu(self.device)
        copies.__enter__()
        self.addCleanup(copies.__exit__, None, None, None)
        window = 4 * ps
        s = wb.kv_data_stack(device=self.device, page_size=ps, full_size=32 * ps, swa_size=32 * ps,
                             window=window, host_full_size=128 * ps, host_swa_size=40 * ps,
                             core=rf.seam.current_core())
        h = rf.RadixHarness(cache=s.cache, allocator=s.allocator, req_to_token_pool=s.req_to_token_pool,
                            page_size=ps, window=window, has_mamba=False, controller=s.controller,
                            host=rf.HostPools(kv=s.kv_host, swa=s.swa_host, mamba=None))

        def serve(tokens):
            kv = h.alloc_kv(len(tokens))
            self.assertIsNotNone(kv)
            s.write_tokens(kv, tokens)
            h.insert_finished(tokens, kv, 0, 0)

        def evict(num_tokens):
            h.cache.evict(EvictParams(num_tokens=num_tokens))
            wb.wait_write_backs(h.cache)

        a, c, b = _tokens(1000, 16 * ps), _tokens(3000, 16 * ps), _tokens(5000, 24 * ps)
        serve(a)
        evict(16 * ps)
        serve(c)
        evict(16 * ps)
        serve(b)
        self._sync()

        m = h.match(a)
        self.assertEqual(m.host_hit_length, len(a))
        try:
            loaded = h.load_back(h.node(m.best_match_node))
            wb.wait_write_backs(h.cache)
            wb.start_loads(h.cache)
            self._sync()
            wb.acknowledge_loads(h.cache)
        except Exception as exc:  # the scheduler process would die here
            self.fail(f"load_back crashed ({type(exc).__name__}: {exc})")
        self.assertTrue(loaded, "the load-back was refused though c's host pages could make room")
        device_indices = rf.seam.matched_device_indices(h.cache, h.match(a))
        self.assertEqual(len(device_indices), len(a))
        self.assertEqual(s.read_tokens(device_indices), a, "a's device slots hold other tokens (wrong KV)")
        self.assertEqual(s.read_tokens(device_indices[-window:], swa=True), a[-window:],
                         "a's SWA window holds other tokens (wrong KV)")
        self.assertEqual(h.match(c).host_hit_length, 0, "c should have made room on the host")

    def test_load_back_reads_its_own_kv_page1(self):
        self._check(1)

    def test_load_back_reads_its_own_kv_page4(self):
        self._check(4)


class TestLoadBackLoadsItsOwnKV(LoadBackDataChecks, rf.RadixTestCase):
    device = "cpu"


class TestLoadBackHostPinRandomized(rf.RadixTestCase):
    """Seeded write-back traffic with load-backs under device and host pressure, acks
    taken some steps later. Counted over every seed: host pages a load-back reads that
    were freed after it began and before its ack, and crashes.

    A load-back whose path shares a node with a load-back still in flight waits for
    that one's ack: two load-backs in flight over the same nodes are another fix's
    scenario (upstream #36317: 0.5.18's load-back asserts that no node is pinned by
    two of them and kills the scheduler), never this one's, which one load-back per
    path shows whole (its own eviction, and the steps until its ack)."""

    SEEDS = 8
    OPS = 100
    BASE_SEED = int(os.environ.get("SGLANG_RADIX_FUZZ_SEED", "20261207"))

    def _run_seed(self, ps, seed) -> dict:
        rng = random.Random(seed)
        # As in a deployment, each host pool is larger than its device pool.
        t = LoadBackTree(self, ps, full_pages=40, swa_pages=40, host_full_pages=56, host_swa_pages=48)
        h = t.h
        counts = {"loads": 0, "refused": 0, "crashed": 0}
        systems = [_tokens(rng.randrange(1, 40000) * 8, rng.choice((1, 2)) * 4 * ps) for _ in range(3)]
        convs = [list(rng.choice(systems)) for _ in range(6)]
        held = []

        def turn(i):
            if len(convs[i]) > 24 * ps:
                convs[i] = list(rng.choice(systems))
            convs[i] = convs[i] + _tokens(rng.randrange(40000, 90000) * 8, rng.randint(1, 6) * ps)
            m = h.match(convs[i])
            pending = wb.pending_load_back_nodes(h.cache)
            if m.host_hit_length and pending:
                path = h.path_ids(h.node(m.best_match_node))
                if any(path & h.path_ids(p) for p in pending):
                    t.acknowledge()
            loaded = t.load_back(convs[i])
            if loaded is not None:
                counts["loads" if loaded else "refused"] += 1
            need = len(convs[i]) - t.device_hit(convs[i])
            short = need - h.allocator.full_available_size()
            if short > 0:
                t.evict(short)
            if h.allocator.full_available_size() >= need:
                t.serve(convs[i])

        for _ in range(self.OPS):
            r = rng.random()
            try:
                if r < 0.45:
                    turn(rng.randrange(len(convs)))
                elif r < 0.55:
                    t.acknowledge()
                elif r < 0.65:
                    wb.start_loads(h.cache)
                elif r < 0.75 and len(held) < 2:
                    node = h.node(h.match(rng.choice(convs)).last_device_node)
                    if node is not h.root:
                        held.append((node, h.lock(node)))
                elif r < 0.82 and held:
                    node, params = held.pop(rng.randrange(len(held)))
                    h.unlock(node, params)
                elif r < 0.92:
                    t.evict(rng.randint(1, 12) * ps)
                else:
                    h.cache.evict_host(rng.randint(1, 12) * ps, rng.choice((rf.FULL, rf.SWA)))
            except Exception as exc:  # the scheduler process would die here
                counts["crashed"] += 1
                counts["crash"] = f"{type(exc).__name__}: {exc}"
                break
        else:
            for node, params in held:
                h.unlock(node, params)
            t.acknowledge()
            self.assertEqual(h.host_slot_leaks(), {}, f"seed={seed}")
            self.assertEqual(h.locked_nodes(), [], f"seed={seed}")
        counts["freed_before_load"] = t.watch.freed_before_load
        counts["freed_in_flight"] = t.watch.freed_in_flight
        return counts

    def _run(self, ps):
        seeds = [self.BASE_SEED + 100 * ps + k for k in range(self.SEEDS)]
        totals, crashes = rf.over_seeds(lambda seed: self._run_seed(ps, seed), seeds)
        report = f"page_size={ps} seeds={self.SEEDS} ops={self.OPS} {totals}"
        print(report)
        self.assertGreater(totals["loads"], 0, report)
        self.assertEqual(totals["freed_before_load"] + totals["freed_in_flight"], 0,
                         "host pages of unacknowledged load-backs freed: " + report)
        self.assertEqual(totals["crashed"], 0, report + "; " + "; ".join(crashes[:3]))

    def test_randomized_page1(self):
        self._run(1)

    def test_randomized_page4(self):
        self._run(4)


if __name__ == "__main__":
    unittest.main()
