"""HiCache write-back: evicting the SWA or Mamba state of an internal node backs it up
to host first (upstream #40680 for Mamba, #40712 for SWA; first released in 0.5.21).

Under write-back a device node reaches host only when it is evicted. A device leaf is
written to host before its device pages are freed; an internal node, though, is never a
device leaf, and the SWA and Mamba eviction walks free its component state in place (an
SWA or Mamba tombstone), with no host copy of it. Its Full KV stays, but a prefix that
ends there needs that state to be resumed: its SWA window, or its Mamba state at the
node's end. Through sglang 0.5.20 the state is simply dropped, so the prefix is never
hit again (neither on device nor on host) and every request that shares it recomputes
KV that is still cached. The fixed release backs such a node up (Full KV and the state
the eviction takes) before it frees the device state, and a later match gets the host
hit and loads it back.

The release's own UnifiedRadixCache and HybridCacheController run on CPU (copies
recorded, not made; tests/seam/hicache_writeback.py), FULL+SWA and FULL+SWA+MAMBA with
the real pools, on every tree core the release has.
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import radix_fixtures as rf  # noqa: E402
from radix_fixtures import MAMBA, SWA, EvictParams  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402

from seam import hicache_writeback as wb  # noqa: E402

register_cpu_ci(est_time=20, suite="stage-a-test-cpu")


def _tokens(start, n):
    return list(range(start, start + n))


class WriteBackTree:
    """A UnifiedRadixCache under write-back (FULL+SWA, or FULL+SWA+MAMBA) on the release's
    controller, with host pools large enough that no backup fails for want of room."""

    def __init__(self, test, ps, *, window_pages, with_mamba, device_pages=64, host_pages=256,
                 launched_with="write_back"):
        for patcher in wb.cpu_device_module_patches():
            patcher.start()
            test.addCleanup(patcher.stop)
        self.ps = ps
        self.h = h = rf.build_tree(page_size=ps, window=window_pages * ps, full_size=device_pages * ps,
                                   swa_size=device_pages * ps, with_mamba=with_mamba, mamba_size=32,
                                   hicache_write_policy=launched_with)
        rf.attach_hicache(h, wb.cpu_controller(h.allocator), write_policy=launched_with,
                          host_full_size=host_pages * ps, host_swa_size=host_pages * ps,
                          host_mamba_size=64, host_pool_cls=wb.PageLedgerHostPool)
        h.cache.load_back_threshold = ps
        if launched_with != "write_back":  # then switched to write-back at runtime
            self.switch = rf.seam.switch_write_policy(h.cache, "write_back")

    def serve(self, tokens) -> bool:
        ok = rf.serve_request(self.h, tokens, 0, rf.ServeStats())
        wb.wait_write_backs(self.h.cache)
        return ok

    def evict(self, **params) -> None:
        self.h.cache.evict(EvictParams(**params))
        wb.wait_write_backs(self.h.cache)

    def device_hit(self, tokens) -> int:
        return len(rf.seam.matched_device_indices(self.h.cache, self.h.match(tokens)))

    def reusable(self, tokens) -> int:
        """What a request for `tokens` reuses: its device hit once its host hit (if any)
        is loaded back and acknowledged, as the scheduler does before it runs."""
        h = self.h
        m = h.match(tokens)
        best, last_device = h.node(m.best_match_node), h.node(m.last_device_node)
        if best is not last_device:
            h.load_back(best)
            wb.start_loads(h.cache)
            wb.acknowledge_loads(h.cache)
        return self.device_hit(tokens)

    def node_of(self, prefix):
        """The node that ends at `prefix` (matched on device now)."""
        m = self.h.match(prefix)
        node = self.h.node(m.last_device_node)
        assert self.device_hit(prefix) == len(prefix), "the prefix is not on device"
        return node

    def state_on_device(self, node, ct) -> bool:
        return node.component_data[ct].value is not None


class _InternalStateChecks:
    """X, then X+D, and a running request holds X+D (its lock keeps D's state and every
    node's Full KV on device). The component's device eviction then takes the state of
    the internal nodes it may take, X's among them. Every prefix of X+D that a request
    could reuse before (a probe that diverges after it) must still be reused after,
    through the host copy of the state: the lost tokens are counted."""

    CT = None
    WITH_MAMBA = False
    WINDOW_PAGES = 4
    D_PAGES = 8
    LAUNCHED_WITH = "write_back"

    def _evict_state(self, t):
        raise NotImplementedError

    def _free_state_slots(self, t) -> int:
        raise NotImplementedError

    def _check(self, ps):
        t = WriteBackTree(self, ps, window_pages=self.WINDOW_PAGES, with_mamba=self.WITH_MAMBA,
                          launched_with=self.LAUNCHED_WITH)
        h = t.h
        x, d = _tokens(1000, 8 * ps), _tokens(2000, self.D_PAGES * ps)
        self.assertTrue(t.serve(x) and t.serve(x + d))
        path = x + d
        probes = [path[:cut] + _tokens(10**6 + 64 * cut, ps) for cut in range(ps, len(path) + 1, ps)]
        before = [t.device_hit(probe) for probe in probes]
        self.assertEqual(before[len(x) // ps - 1], len(x), "X is not resumable before the eviction")
        held = t.node_of(path)
        lock = h.lock(held)
        x_node = t.node_of(x)
        self.assertTrue(t.state_on_device(x_node, self.CT))
        free_before = self._free_state_slots(t)

        self._evict_state(t)
        # The scenario: X stayed in the tree (an internal node), its Full KV on device,
        # and the eviction freed its state's device slots.
        self.assertIn(x_node.id, {n.id for n in h.nodes()}, "X left the tree")
        self.assertFalse(x_node.evicted, "the eviction took X's Full KV as well")
        self.assertFalse(t.state_on_device(x_node, self.CT), f"the eviction did not take X's {self.CT} state")
        self.assertGreater(self._free_state_slots(t), free_before, "no device state was freed")

        lost = {}
        for probe, hit in zip(probes, before):
            got = t.reusable(probe)
            if got < hit:
                lost[len(probe) - ps] = f"{got} of {hit}"
        self.assertEqual(lost, {}, f"requests that diverge after these prefixes of X+D (tokens: reused of "
                                   f"reused before) lost them when the {self.CT} state of internal nodes "
                                   f"was evicted: the state was dropped, not backed up to host")
        self.assertEqual(t.reusable(x + _tokens(3000, 4 * ps)), len(x))
        h.unlock(held, lock)
        self.assertTrue(t.serve(x + _tokens(3000, 4 * ps)))
        self.assertEqual(h.host_slot_leaks(), {})
        h.assert_drained()

    def test_page1(self):
        self._check(1)

    def test_page4(self):
        self._check(4)


class TestSWAInternalNodeBackedUp(_InternalStateChecks, rf.RadixTestCase):
    """FULL+SWA, window 4 pages, X and D 8 pages each: the SWA eviction tombstones every
    SWA slice the running request's window lock does not hold."""

    CT = SWA

    def _evict_state(self, t):
        t.evict(swa_num_tokens=10**6)

    def _free_state_slots(self, t) -> int:
        return t.h.allocator.swa_available_size()


class TestMambaInternalNodeBackedUp(_InternalStateChecks, rf.RadixTestCase):
    """FULL+SWA+MAMBA, window 8 pages, X 8 pages and D 4: the Mamba eviction takes X's
    state (the running request holds D's)."""

    CT = MAMBA
    WITH_MAMBA = True
    WINDOW_PAGES = 8
    D_PAGES = 4

    def _evict_state(self, t):
        t.evict(mamba_num=4)

    def _free_state_slots(self, t) -> int:
        return t.h.mamba_slots.available_size()


class TestSwitchedToWriteBackAtRuntime(TestSWAInternalNodeBackedUp):
    """As TestSWAInternalNodeBackedUp, on a server launched write-through whose write
    policy is switched to write-back at runtime (the admin API's attach with
    hicache_write_policy): the switch either holds (and the state is backed up on its
    eviction) or is refused (and write-through keeps backing everything up); either
    way no prefix is lost."""

    LAUNCHED_WITH = "write_through"


class TestInternalStateRandomized(rf.RadixTestCase):
    """Seeded write-back trees: conversations over shared prefixes, each turn a finished
    request, then device eviction of SWA or Mamba state only (the host has room for
    everything). Every request served so far must reuse afterwards at least what it
    reused before the eviction (its prefix through device or host): counted over every
    seed, the tokens a request lost."""

    SEEDS = 6
    BASE_SEED = int(os.environ.get("SGLANG_RADIX_FUZZ_SEED", "20261207"))

    def _run_seed(self, ps, seed, with_mamba) -> dict:
        rng = random.Random(seed)
        t = WriteBackTree(self, ps, window_pages=rng.choice((2, 4)), with_mamba=with_mamba,
                          device_pages=160, host_pages=640)
        h = t.h
        systems = [_tokens(rng.randrange(1, 4000) * 64, rng.choice((4, 8)) * ps) for _ in range(3)]
        convs = [list(rng.choice(systems)) for _ in range(5)]
        served = []
        for _ in range(rng.randint(8, 14)):
            i = rng.randrange(len(convs))
            convs[i] = convs[i] + _tokens(rng.randrange(4000, 9000) * 64, rng.randint(1, 4) * ps)
            self.assertTrue(t.serve(convs[i]), f"seed={seed}: the device cannot hold the conversation")
            served.append(list(convs[i]))
        probes = []
        for k, tokens in enumerate(served):
            probe = tokens + _tokens(10**6 + 64 * k, ps)
            probes.append((probe, t.device_hit(probe)))
        if with_mamba and rng.random() < 0.5:
            t.evict(mamba_num=rng.randint(1, 4))
        else:
            t.evict(swa_num_tokens=rng.randint(2, 12) * ps)
        counts = {"probes": len(probes), "lost_tokens": 0, "lost_probes": 0,
                  "reused_before": sum(hit for _, hit in probes)}
        for probe, before in probes:
            after = t.reusable(probe)
            if after < before:
                counts["lost_tokens"] += before - after
                counts["lost_probes"] += 1
        self.assertEqual(h.host_slot_leaks(), {}, f"seed={seed}")
        return counts

    def _run(self, ps, with_mamba):
        seeds = [self.BASE_SEED + 100 * ps + 10 * with_mamba + k for k in range(self.SEEDS)]
        totals, _ = rf.over_seeds(lambda seed: self._run_seed(ps, seed, with_mamba), seeds, notes=())
        report = f"page_size={ps} mamba={with_mamba} seeds={self.SEEDS} {totals}"
        print(report)
        self.assertGreater(totals["reused_before"], 0, "nothing was reused, nothing was judged: " + report)
        self.assertEqual(totals["lost_tokens"], 0, "requests lost cached prefixes to the eviction: " + report)

    def test_randomized_swa_page1(self):
        self._run(1, False)

    def test_randomized_swa_page4(self):
        self._run(4, False)

    def test_randomized_mamba_page1(self):
        self._run(1, True)


if __name__ == "__main__":
    unittest.main()
