"""HiCache write-back on UnifiedRadixCache when a leaf's host backup fails (upstream #27108).

Under write-back a device leaf is written to host only when it is evicted. The write
fails when the host pool is full of pages that host eviction may not take: the host
copy of a prefix whose load-back is in flight (its copy queued, its ack not taken
yet) is read by that load, and a running request holds the prefix on device. sglang
0.5.12 demoted such a leaf as if it were backed up: `_evict_to_host` asserts
`node.backuped` and the scheduler dies; without assertions the device KV is freed
while the node stays in the tree with no host copy, and its next hit loads back
nothing. A leaf whose backup failed must not be evicted as backed up: it stays on
device, un-backed-up (the fix as first released, 0.5.13), or it leaves the tree
together with its device KV (the fix's end state upstream, from 0.5.17: "drop the
node that wasn't successfully backed up"); eviction goes on with the next leaf, and
no node is left in the tree with neither device nor host KV.

The release's own UnifiedRadixCache and HybridCacheController run on CPU (copies
recorded, not made; tests/seam/hicache_writeback.py). Write-back copies are waited for
after each eviction, as the release's evict does itself from 0.5.13.
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import radix_fixtures as rf  # noqa: E402
import torch  # noqa: E402
from radix_fixtures import EvictParams  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402

from seam import hicache_writeback as wb  # noqa: E402
from seam.hicache_standins import RecordingHostPool  # noqa: E402

register_cpu_ci(est_time=20, suite="stage-a-test-cpu")

WINDOW_PAGES = 4


def _write_back_tree(test, ps, *, full_pages, host_full_pages, host_swa_pages, window_pages=WINDOW_PAGES):
    for patcher in wb.cpu_device_module_patches():
        patcher.start()
        test.addCleanup(patcher.stop)
    h = rf.build_tree(page_size=ps, window=window_pages * ps, full_size=full_pages * ps,
                      swa_size=2 * full_pages * ps, hicache_write_policy="write_back")
    rf.attach_hicache(h, wb.cpu_controller(h.allocator), write_policy="write_back",
                      host_full_size=host_full_pages * ps, host_swa_size=host_swa_pages * ps,
                      host_pool_cls=RecordingHostPool)
    h.cache.load_back_threshold = ps
    return h


def _dead_nodes(h) -> list:
    """Nodes the tree keeps as evicted from device with no host copy: KV that is gone."""
    return [n.id for n in h.nodes() if n.evicted and not n.backuped]


def _evict(h, num_tokens):
    """Device eviction as the scheduler asks for it; the exception if the release raised."""
    try:
        h.cache.evict(EvictParams(num_tokens=num_tokens))
    except Exception as exc:  # the scheduler process would die here
        return exc
    wb.wait_write_backs(h.cache)
    return None


def _tokens(start, n):
    return list(range(start, start + n))


class TestWriteBackFailedBackupKeepsLeaf(rf.RadixTestCase):
    """A running request holds a loaded-back prefix whose host copy fills the host pool;
    a new leaf must be evicted: its backup fails and it must stay on device."""

    def _load_back_in_flight(self, h, tokens):
        """A request hits `tokens` on host: its load-back is queued and started, its ack
        not taken yet, and the request holds the prefix on device. Returns the node
        and its lock."""
        ps = h.page_size
        self.assertTrue(rf.serve_request(h, tokens, 0, rf.ServeStats()))
        self.assertIsNone(_evict(h, len(tokens)))
        self.assertTrue(all(n.evicted and n.backuped for n in h.nodes()))
        m = h.match(tokens)
        self.assertEqual(m.host_hit_length, len(tokens))
        self.assertTrue(h.load_back(h.node(m.best_match_node)))
        wb.start_loads(h.cache)
        m = h.match(tokens)
        self.assertEqual(len(rf.seam.matched_device_indices(h.cache, m)), len(tokens))
        last = h.node(m.last_device_node)
        self.assertEqual(h.allocator.full_available_size() % ps, 0)
        return last, h.lock(last)

    def _check(self, ps, *, host_full_pages, host_swa_pages, window_pages=WINDOW_PAGES):
        h = _write_back_tree(self, ps, full_pages=64, host_full_pages=host_full_pages,
                             host_swa_pages=host_swa_pages, window_pages=window_pages)
        held = _tokens(1000, 16 * ps)
        fresh_tokens = _tokens(5000, 8 * ps)
        last, lock = self._load_back_in_flight(h, held)
        self.assertTrue(rf.serve_request(h, fresh_tokens, 0, rf.ServeStats()))
        fresh = [n for n in h.nodes() if not n.backuped]
        self.assertTrue(fresh)
        free_before = h.allocator.full_available_size()

        crash = _evict(h, 8 * ps)
        self.assertIsNone(crash, f"eviction crashed when the leaf's host backup failed: "
                                 f"{type(crash).__name__}: {crash}")
        self.assertEqual(_dead_nodes(h), [], "a leaf was evicted as backed up without host data")
        alive = {n.id for n in h.nodes()}
        # A node that left the tree is read no further (the Rust core frees its id).
        dropped = [n for n in fresh if n.id not in alive]
        fresh = [n for n in fresh if n.id in alive]
        kept = [n for n in fresh if not n.evicted]
        self.assertTrue(kept or dropped, "every un-backed-up leaf reached the host: no backup failed")
        for n in fresh:
            self.assertEqual(n.evicted, n.backuped, f"node {n.id}: evicted={n.evicted} backuped={n.backuped}")
        demoted = sum(len(n.key) for n in fresh if n.evicted)
        # Sizes of dropped nodes: what the tree no longer holds of the fresh request.
        gone = len(fresh_tokens) - sum(len(n.key) for n in fresh)
        self.assertEqual(h.allocator.full_available_size(), free_before + demoted + gone,
                         "device KV was freed for a node still in the tree without a host copy")
        self.assertEqual(h.host_slot_leaks(), {})

        # The load's ack, then the request finishes: the held prefix can leave the device
        # and then the host, and a leaf kept on device is written there by the next
        # eviction instead.
        wb.acknowledge_loads(h.cache)
        self.assertEqual(len(rf.seam.matched_device_indices(h.cache, h.match(held))), len(held))
        h.unlock(last, lock)
        self.assertIsNone(_evict(h, 24 * ps))
        self.assertIsNone(_evict(h, 8 * ps))
        self.assertEqual(_dead_nodes(h), [])
        alive = {n.id for n in h.nodes()}
        self.assertTrue(all(n.evicted and n.backuped for n in kept if n.id in alive))
        on_host = sum(len(n.key) for n in fresh if n.id in alive)
        self.assertEqual(h.match(fresh_tokens).host_hit_length, on_host)
        self.assertEqual(h.host_slot_leaks(), {})
        self.assertEqual(h.locked_nodes(), [])

    def test_host_kv_pool_full_page1(self):
        self._check(1, host_full_pages=16, host_swa_pages=128)

    def test_host_kv_pool_full_page4(self):
        self._check(4, host_full_pages=16, host_swa_pages=128)

    # The held prefix fits one window, so all of its SWA is loaded back and held.
    def test_host_swa_pool_full_page1(self):
        self._check(1, host_full_pages=128, host_swa_pages=16, window_pages=16)

    def test_host_swa_pool_full_page4(self):
        self._check(4, host_full_pages=128, host_swa_pages=16, window_pages=16)


class TestWriteBackFailedBackupRandomized(rf.RadixTestCase):
    """Seeded write-back traffic under host pressure: conversations that grow turn by
    turn, hits loaded back while the device has room (their acks taken some steps
    later), running requests holding prefixes, device and host eviction. Counted over
    every seed: evictions that crashed, nodes left evicted without host data, and (to
    show the scenario happened) un-backed-up leaves whose backup failed in an
    eviction: kept on device, or dropped from the tree without a host copy."""

    SEEDS = 8
    OPS = 140
    BASE_SEED = int(os.environ.get("SGLANG_RADIX_FUZZ_SEED", "20261207"))

    def _run_seed(self, ps, seed) -> dict:
        rng = random.Random(seed)
        # The host holds half of what the device does (see _write_back_tree).
        h = _write_back_tree(self, ps, full_pages=48, host_full_pages=24, host_swa_pages=96)
        counts = {"crashed": 0, "dead_nodes": 0, "evictions": 0, "failed_backups": 0, "loads": 0}
        systems = [_tokens(rng.randrange(1, 40000) * 8, rng.choice((1, 2)) * 4 * ps) for _ in range(3)]
        convs = [list(rng.choice(systems)) for _ in range(5)]
        held = []

        def evict(num_tokens):
            counts["evictions"] += 1
            locked = set(h.locked_nodes())
            candidates = {
                n.id: torch.as_tensor(n.component_data[rf.FULL].value).flatten()
                for n in h.nodes()
                if not n.evicted and not n.backuped and n.id not in locked
                and all(c.evicted for c in n.children.values())
            }
            free = h.allocator.full_available_size()
            written_from = len(h.host.kv.backups)
            crash = _evict(h, num_tokens)
            if crash is None:
                alive = {n.id: n for n in h.nodes()}
                written = [d.flatten().to("cpu", torch.int64) for _, d in h.host.kv.backups[written_from:]]
                written = torch.cat(written) if written else torch.empty(0, dtype=torch.int64)
                for node_id, device_kv in candidates.items():
                    n = alive.get(node_id)
                    if n is None:  # left the tree: dropped unless its KV was written first
                        counts["failed_backups"] += int(not torch.isin(device_kv, written).all())
                    elif not n.evicted and h.allocator.full_available_size() - free < num_tokens:
                        counts["failed_backups"] += 1
            return crash

        def turn(i):
            if len(convs[i]) > 28 * ps:
                convs[i] = list(rng.choice(systems))
            convs[i] = convs[i] + _tokens(rng.randrange(40000, 90000) * 8, rng.randint(1, 6) * ps)
            m = h.match(convs[i])
            # Load back only while the device has room: a load-back's own eviction
            # is the other fix's scenario (#27444). A load-back whose path shares a
            # node with one in flight waits for that one's ack: two load-backs in
            # flight over the same nodes are #36317's (0.5.18 asserts against it).
            pending = wb.pending_load_back_nodes(h.cache)
            if m.host_hit_length and pending:
                path = h.path_ids(h.node(m.best_match_node))
                if any(path & h.path_ids(p) for p in pending):
                    wb.acknowledge_loads(h.cache)
                    m = h.match(convs[i])
            if m.host_hit_length and h.allocator.full_available_size() >= m.host_hit_length + 8 * ps:
                if h.load_back(h.node(m.best_match_node)):
                    counts["loads"] += 1
                    wb.start_loads(h.cache)
            need = len(convs[i]) - len(rf.seam.matched_device_indices(h.cache, h.match(convs[i])))
            short = need - h.allocator.full_available_size()
            if short > 0:
                crash = evict(short)
                if crash is not None or h.allocator.full_available_size() < need:
                    return crash  # no room yet: the request waits
            rf.serve_request(h, convs[i], 0, rf.ServeStats())
            return None

        for _ in range(self.OPS):
            r = rng.random()
            crash = None
            if r < 0.45:
                crash = turn(rng.randrange(len(convs)))
            elif r < 0.6 and len(held) < 3:
                node = h.node(h.match(rng.choice(convs)).last_device_node)
                if node is not h.root:
                    held.append((node, h.lock(node)))
            elif r < 0.72 and held:
                node, params = held.pop(rng.randrange(len(held)))
                h.unlock(node, params)
            elif r < 0.88:
                crash = evict(rng.randint(1, 12) * ps)
            elif r < 0.94:
                h.cache.evict_host(rng.randint(1, 8) * ps)
            else:
                wb.acknowledge_loads(h.cache)
            counts["dead_nodes"] += len(_dead_nodes(h))
            if crash is not None:
                counts["crashed"] += 1
                counts["crash"] = f"{type(crash).__name__}: {crash}"
                return counts  # the scheduler is gone, and this seed's tree with it
            if rng.random() < 0.3:
                wb.acknowledge_loads(h.cache)
        for node, params in held:
            h.unlock(node, params)
        wb.acknowledge_loads(h.cache)
        self.assertEqual(h.host_slot_leaks(), {}, f"seed={seed}")
        return counts

    def _run(self, ps):
        seeds = [self.BASE_SEED + 100 * ps + k for k in range(self.SEEDS)]
        totals, crashes = rf.over_seeds(lambda seed: self._run_seed(ps, seed), seeds)
        report = f"page_size={ps} seeds={self.SEEDS} ops={self.OPS} {totals}"
        print(report)
        self.assertEqual(totals["crashed"], 0, report + "; " + "; ".join(crashes[:3]))
        self.assertEqual(totals["dead_nodes"], 0, report)
        self.assertGreater(totals["failed_backups"], 0, "no backup failed, nothing was judged: " + report)

    def test_randomized_page1(self):
        self._run(1)

    def test_randomized_page4(self):
        self._run(4)


if __name__ == "__main__":
    unittest.main()
