"""HiCache write-back: an SWA or Mamba load-back never takes the Full KV load-back's
owner of a node (upstream #36317 + #35931).

Under write-back a load-back owns the nodes whose Full KV host copy it reads, from its
commit until its ack, so that the duplicate reclaim cannot free that copy while the
H->D copy still reads it; one load-back at a time may own a node, and the tree asserts
it. sglang 0.5.18 gives that owner to every node a load-back reads, SWA window slices
and Mamba states included, though those live in host pools of their own, held by their
own host locks. A load-back commits the Full KV it loads to the device at once, so a
second request that matches the same prefix before the first one's ack finds only its
SWA window or its Mamba state still on host, loads that, and trips the assert
(`node ... pinned by load-back ..., new anchor ...`): the scheduler dies. The same
happens to a Mamba load-back of a node whose SWA slice another request is loading,
though no Full KV is read by either. The fixed release owns only the nodes whose Full KV
it loads (#36317), and a load-back that would read a node another load-back owns backs
off before it starts (#35931): the request recomputes that span, and a later one loads it.

The release's own UnifiedRadixCache and HybridCacheController run on CPU (FULL+SWA, and
FULL+SWA+MAMBA with the real mamba pools), under write-back; each request goes as the
scheduler takes it: match, load back the host hit at the match's best node, queue the
copy, take the ack at a later step. Where the tree core tells its owners (the Python
core), a node owned by a load-back that loaded none of its Full KV is counted as an
owner mix-up; on every core, crashes and owners left after every ack (the tree's own
sanity check) are counted.
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import radix_fixtures as rf  # noqa: E402
from radix_fixtures import EvictParams  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402

from seam import hicache_writeback as wb  # noqa: E402

register_cpu_ci(est_time=20, suite="stage-a-test-cpu")


def _tokens(start, n):
    return list(range(start, start + n))


class LoadBackError(AssertionError):
    """A load-back step raised: the scheduler process would die there."""


class OwnerTree:
    """A UnifiedRadixCache under write-back (FULL+SWA, or FULL+SWA+MAMBA) on the
    release's controller, with a record of what each load-back in flight reads."""

    def __init__(self, test, ps, *, window_pages, with_mamba, device_pages=48, host_pages=160):
        wb.require_aux_load_backs()
        for patcher in wb.cpu_device_module_patches():
            patcher.start()
            test.addCleanup(patcher.stop)
        self.ps = ps
        self.h = h = rf.build_tree(page_size=ps, window=window_pages * ps, full_size=device_pages * ps,
                                   swa_size=device_pages * ps, with_mamba=with_mamba, mamba_size=24,
                                   hicache_write_policy="write_back")
        rf.attach_hicache(h, wb.cpu_controller(h.allocator), write_policy="write_back",
                          host_full_size=host_pages * ps, host_swa_size=host_pages * ps,
                          host_mamba_size=48, host_pool_cls=wb.PageLedgerHostPool)
        h.cache.load_back_threshold = ps
        self.full_reads: dict = {}  # anchor id -> ids of the nodes whose Full KV its load reads
        self.mixups: list = []
        self.overlaps = 0  # load-backs that read a node whose Full KV another one in flight reads
        self.owners_told = wb.load_back_owners(h.cache) is not None

    # -- the scheduler's steps ---------------------------------------------------

    def serve(self, tokens) -> bool:
        ok = rf.serve_request(self.h, tokens, 0, rf.ServeStats())
        wb.wait_write_backs(self.h.cache)
        return ok

    def evict(self, **params) -> None:
        self.h.cache.evict(EvictParams(**params))
        wb.wait_write_backs(self.h.cache)

    def evict_all(self) -> None:
        """Device eviction of everything: under write-back, the whole tree goes to host."""
        big = 10**6
        self.evict(num_tokens=big, swa_num_tokens=big, mamba_num=big if self.h.has_mamba else 0)

    def load_back(self, tokens):
        """Match `tokens` and load back their host hit at the best match, as
        init_load_back does. None: nothing on host; True: loaded (its ack pending);
        False: the cache backed off (the request recomputes the span)."""
        h = self.h
        m = h.match(tokens)
        if not (m.host_hit_length or m.swa_host_hit_length or m.mamba_host_hit_length):
            return None
        anchor = h.node(m.best_match_node)
        on_path, full_on_host, n = set(), set(), anchor
        while n is not h.root:
            on_path.add(n.id)
            if n.evicted:
                full_on_host.add(n.id)
            n = n.parent
        if any(on_path & reads for a, reads in self.full_reads.items() if a != anchor.id):
            self.overlaps += 1
        before = wb.load_back_owners(h.cache)
        try:
            loaded = h.load_back(anchor)
            wb.wait_write_backs(h.cache)
        except Exception as exc:
            raise LoadBackError(f"load_back of node {anchor.id} raised {type(exc).__name__}: {exc}") from exc
        if loaded:
            self.full_reads[anchor.id] = full_on_host
            after = wb.load_back_owners(h.cache)
            if after is not None:
                for nid, owner in after.items():
                    if owner == anchor.id and before.get(nid) != owner and nid not in full_on_host:
                        self.mixups.append(f"node {nid} owned by load-back {owner}, which read none of its Full KV")
        return loaded

    def acknowledge(self) -> None:
        """A later scheduler step: launch the queued copies and take their acks."""
        try:
            wb.start_loads(self.h.cache)
            wb.acknowledge_loads(self.h.cache)
        except Exception as exc:
            raise LoadBackError(f"the load-back ack raised {type(exc).__name__}: {exc}") from exc
        pending = wb.pending_load_back_ids(self.h.cache)
        self.full_reads = {a: r for a, r in self.full_reads.items() if a in pending}

    # -- what the checks read ----------------------------------------------------

    def device_hit(self, tokens) -> int:
        return len(rf.seam.matched_device_indices(self.h.cache, self.h.match(tokens)))

    def owners_left(self) -> dict:
        """With every ack taken: the nodes a load-back still owns (the Python core), and
        the tree's own sanity check, which names an owner no live load-back has."""
        self.h.cache.sanity_check()
        return wb.load_back_owners(self.h.cache) or {}


class _OverlapChecks:
    """Request A's load-back reads a prefix's Full KV; before A's ack, request B matches
    the same prefix: its Full KV is on device already (A committed it), its SWA window
    or its Mamba state is still on host, and B loads that."""

    WINDOW_PAGES = 4
    WITH_MAMBA = False
    D_PAGES = 8

    def _build(self, ps):
        """X served, then X+D, all evicted to host; A asks for X+D, B for X+F."""
        t = OwnerTree(self, ps, window_pages=self.WINDOW_PAGES, with_mamba=self.WITH_MAMBA)
        x, d, f = _tokens(1000, 8 * ps), _tokens(2000, self.D_PAGES * ps), _tokens(3000, 4 * ps)
        self.assertTrue(t.serve(x) and t.serve(x + d))
        t.evict_all()
        return t, "X", x + d, x + f

    def _check(self, ps):
        t, prefix, a_tokens, b_tokens = self._build(ps)
        h = t.h
        self.assertTrue(t.load_back(a_tokens), "request A found no host hit to load")
        try:
            b_loaded = t.load_back(b_tokens)
        except LoadBackError as exc:
            self.fail(f"request B's load-back of {prefix}, beside A's, crashed the scheduler: {exc}")
        self.assertIsNotNone(b_loaded, "request B should have found its prefix's SWA / Mamba on host")
        self.assertEqual(t.mixups, [], "an SWA / Mamba load-back took a node's Full KV owner")
        t.acknowledge()
        self.assertEqual(t.owners_left(), {}, "nodes still owned by a load-back after every ack")
        self.assertEqual(t.device_hit(a_tokens), len(a_tokens), "A's load-back did not land")
        # B backed off (or loaded): now that A is acknowledged, its request gets the prefix.
        if t.load_back(b_tokens):
            t.acknowledge()
        self.assertGreaterEqual(t.device_hit(b_tokens), len(prefix), "B cannot get the shared prefix after A's ack")
        self.assertTrue(t.serve(b_tokens))
        self.assertEqual(t.mixups, [], "an SWA / Mamba load-back took a node's Full KV owner")
        self.assertEqual(t.owners_left(), {})
        h.assert_drained()

    def test_page1(self):
        self._check(1)

    def test_page4(self):
        self._check(4)


class TestSWALoadBackBesideFullLoadBack(_OverlapChecks, rf.RadixTestCase):
    """FULL+SWA, window 4 pages: A loads X+D (the Full KV of both, D's SWA window); B
    shares X only, and the window of its match ends in X, whose SWA is on host."""


class TestMambaLoadBackBesideFullLoadBack(_OverlapChecks, rf.RadixTestCase):
    """FULL+SWA+MAMBA, window 8 pages: A loads X+D (the Full KV and SWA of both, D's
    Mamba state); B shares X only and restores X's Mamba state, still on host."""

    WINDOW_PAGES = 8
    WITH_MAMBA = True
    D_PAGES = 4


class TestAuxLoadBacksShareANode(rf.RadixTestCase):
    """FULL+SWA+MAMBA, window 8 pages, X (8 pages) - D (4) - E (8), each with its Mamba
    state, all on host, then A loads X+D+E (the Full KV of all three) and is acked: X
    and D keep their SWA and Mamba on host only. B (X+D+...) loads the SWA window over
    D and X and D's Mamba state; C (X+...) then loads X's Mamba state. Neither reads any
    Full KV, so neither may own a node, and both must go through."""

    def _check(self, ps):
        t = OwnerTree(self, ps, window_pages=8, with_mamba=True)
        h = t.h
        x, d, e = _tokens(1000, 8 * ps), _tokens(2000, 4 * ps), _tokens(3000, 8 * ps)
        b_tokens, c_tokens = x + d + _tokens(4000, 4 * ps), x + _tokens(5000, 4 * ps)
        self.assertTrue(t.serve(x) and t.serve(x + d) and t.serve(x + d + e))
        t.evict_all()
        self.assertTrue(t.load_back(x + d + e))
        t.acknowledge()
        self.assertEqual(t.device_hit(x + d + e), len(x + d + e))
        try:
            b_loaded = t.load_back(b_tokens)
            self.assertEqual(t.mixups, [], "an SWA / Mamba load-back took a node's Full KV owner")
            c_loaded = t.load_back(c_tokens)
        except LoadBackError as exc:
            self.fail(f"two load-backs that read no Full KV crashed the scheduler: {exc}")
        self.assertTrue(b_loaded, "B's SWA / Mamba load-back was refused")
        self.assertTrue(c_loaded, "C's Mamba load-back was refused though no load-back reads X's Full KV "
                                  "(B's SWA load-back owns X)")
        self.assertEqual(t.mixups, [], "an SWA / Mamba load-back took a node's Full KV owner")
        t.acknowledge()
        self.assertEqual(t.owners_left(), {}, "nodes still owned by a load-back after every ack")
        for tokens in (b_tokens, c_tokens):
            self.assertTrue(t.serve(tokens))
        h.assert_drained()

    def test_page1(self):
        self._check(1)

    def test_page4(self):
        self._check(4)


class TestLoadBackOwnerRandomized(rf.RadixTestCase):
    """Seeded write-back traffic: conversations over shared prefixes, each turn a
    load-back of its host hit, acks taken some steps later, device eviction of Full,
    SWA and Mamba between them, and load-backs of earlier prefixes (requests that share
    a conversation's start). Counted over every seed: crashes (the tree's assert or any
    other raise in a load-back or its ack), owner mix-ups (where the core tells its
    owners) and nodes owned after every ack."""

    SEEDS = 6
    OPS = 70
    BASE_SEED = int(os.environ.get("SGLANG_RADIX_FUZZ_SEED", "20261207"))

    def _run_seed(self, ps, seed, with_mamba) -> dict:
        rng = random.Random(seed)
        t = OwnerTree(self, ps, window_pages=rng.choice((4, 8)), with_mamba=with_mamba)
        h = t.h
        counts = {"loads": 0, "backed_off": 0, "crashed": 0, "leaked_owners": 0}
        systems = [_tokens(rng.randrange(1, 4000) * 32, rng.choice((4, 8)) * ps) for _ in range(3)]
        convs = [list(rng.choice(systems)) for _ in range(5)]

        def count(loaded):
            if loaded is not None:
                counts["loads" if loaded else "backed_off"] += 1

        def turn(i):
            if len(convs[i]) > 28 * ps:
                convs[i] = list(rng.choice(systems))
            convs[i] = convs[i] + _tokens(rng.randrange(4000, 9000) * 32, rng.randint(1, 2) * 4 * ps)
            count(t.load_back(convs[i]))
            t.serve(convs[i])

        try:
            for _ in range(self.OPS):
                r = rng.random()
                if r < 0.35:
                    turn(rng.randrange(len(convs)))
                elif r < 0.55:
                    conv = rng.choice(convs)
                    cut = rng.randint(1, max(1, len(conv) // (4 * ps))) * 4 * ps
                    count(t.load_back(conv[:cut] + _tokens(rng.randrange(9000, 9900) * 32, ps)))
                elif r < 0.67:
                    t.acknowledge()
                elif r < 0.9:
                    which = rng.choice(("full", "swa", "mamba") if with_mamba else ("full", "swa"))
                    n = rng.randint(1, 10) * ps
                    t.evict(**{"full": dict(num_tokens=n), "swa": dict(swa_num_tokens=n),
                               "mamba": dict(mamba_num=rng.randint(1, 3))}[which])
                else:
                    h.cache.evict_host(rng.randint(1, 8) * ps, rng.choice(list(h.cache.components)))
        except Exception as exc:  # the scheduler process would die here
            counts["crashed"] += 1
            counts["crash"] = f"{type(exc).__name__}: {exc}"
        else:
            t.acknowledge()
            try:
                counts["leaked_owners"] = len(t.owners_left())
            except AssertionError as exc:  # the tree's sanity check names an owner left behind
                counts["leaked_owners"] += 1
                counts["crash"] = f"sanity check: {exc}"
        counts["mixups"] = len(t.mixups)
        counts["overlaps"] = t.overlaps
        counts["owners_told"] = int(t.owners_told)
        if t.mixups:
            counts["mixup"] = t.mixups[0]
        return counts

    def _run(self, ps, with_mamba):
        seeds = [self.BASE_SEED + 100 * ps + 10 * with_mamba + k for k in range(self.SEEDS)]
        totals, notes = rf.over_seeds(lambda seed: self._run_seed(ps, seed, with_mamba), seeds,
                                      notes=("crash", "mixup"))
        told = totals.pop("owners_told") == self.SEEDS
        report = (f"page_size={ps} mamba={with_mamba} seeds={self.SEEDS} ops={self.OPS} {totals}"
                  + ("" if told else " (owner mix-ups not counted: this tree core does not tell its owners)"))
        print(report)
        self.assertGreater(totals["loads"], 0, report)
        self.assertGreater(totals["overlaps"], 0, "no load-back met another in flight: " + report)
        self.assertEqual(totals["crashed"], 0, report + "; " + "; ".join(notes[:3]))
        self.assertEqual(totals["mixups"], 0, report + "; " + "; ".join(notes[:3]))
        self.assertEqual(totals["leaked_owners"], 0, report + "; " + "; ".join(notes[:3]))

    def test_randomized_swa_page1(self):
        self._run(1, False)

    def test_randomized_mamba_page1(self):
        self._run(1, True)

    def test_randomized_mamba_page4(self):
        self._run(4, True)


if __name__ == "__main__":
    unittest.main()
