"""What the radix checks read of a tree core can fail them, and reading changes nothing.

The write-through checks judge a UnifiedRadixCache by what its tree core says: locks,
backups, host copies, the shape of the tree. On the Rust tree core (0.5.19+, the default
from 0.5.21) the seam reads these through the core's binding (tests/seam/radix.py). These
checks keep that reading honest: a lock left on a component or on a host copy fails the
lock checks, a dump line the seam cannot read or a node it misses is a refusal (never a
tree that looks smaller), and reading host copies leaves everything the checks judge as
it was.
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import radix_fixtures as rf  # noqa: E402
from radix_fixtures import EvictParams, seam  # noqa: E402

from seam import CannotRun  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=10, suite="stage-a-test-cpu")


def _written_split_tree():
    """A write-through tree holding one request split at its SWA boundary, every write
    acknowledged: (harness, split parent, leaf)."""
    h = rf.build_tree(page_size=1, window=4)
    rf.attach_fake_hicache(h, write_policy="write_through")
    h.insert_finished(list(range(1000, 1006)), h.alloc_kv(6), 0, 2)
    h.controller.complete_writes()
    h.cache.writing_check()
    (parent,) = h.root.children.values()
    (leaf,) = parent.children.values()
    return h, parent, leaf


class TestLockChecksSeeEveryLock(rf.RadixTestCase):
    """A lock left behind fails the lock checks on every tree core that can take it."""

    def test_component_lock_left_on_a_node_is_held(self):
        h, _, leaf = _written_split_tree()
        self.assertEqual(h.locked_nodes(), [])
        seam.leak_component_lock(h.cache, leaf, rf.SWA)
        self.assertNotEqual(h.locked_nodes(), [], "an SWA lock left on a node is not seen")
        with self.assertRaises(AssertionError):
            h.assert_drained()

    def test_host_lock_left_on_a_node_keeps_the_tree(self):
        h, _, leaf = _written_split_tree()
        h.assert_healthy()
        seam.leak_host_lock(h.cache, leaf)
        with self.assertRaises(AssertionError) as raised:
            h.assert_drained()
        self.assertIn("did not drain", str(raised.exception))

    def test_nothing_left_drains(self):
        h, _, _ = _written_split_tree()
        h.assert_drained()


class TestRustDumpIsReadWhole(CustomTestCase):
    """The Rust core's node dump is read line by line: every line is a node."""

    DUMP = " [1] 0 full_lock=1 Full=no Swa=no\n   [3] 2 full_lock=0 Full=yes Swa=no\n     [2] 4 full_lock=2 Full=yes Swa=yes\n"

    def test_nodes_parents_and_locks(self):
        parents, children, key_lens, locks = seam.parse_dump(self.DUMP)
        self.assertEqual(parents, {1: None, 3: 1, 2: 3})
        self.assertEqual(children, {1: [3], 3: [2], 2: []})
        self.assertEqual(key_lens, {1: 0, 3: 2, 2: 4})
        self.assertEqual(locks, {1: 1, 3: 0, 2: 2})

    def test_a_line_it_cannot_read_is_a_refusal(self):
        for extra in ("   [4] 2 full_lock=0 Full=yes swa_lock=1 Swa=no\n", "   [4] 2 lock=0\n", "total: 3 nodes\n"):
            with self.subTest(extra=extra), self.assertRaises(CannotRun):
                seam.parse_dump(self.DUMP + extra)

    def test_a_node_listed_twice_is_a_refusal(self):
        with self.assertRaises(CannotRun):
            seam.parse_dump(self.DUMP + "   [3] 2 full_lock=0 Full=yes Swa=no\n")


class TestRustDumpMatchesTheCore(rf.RadixTestCase):
    """A dump that shows fewer nodes than the core holds is refused."""

    def test_a_dropped_node_line_is_a_refusal(self):
        seam.applies_only_if(seam.current_core() == "rust", "only the Rust tree core is read through its dump")
        h, parent, leaf = _written_split_tree()
        self.assertEqual(len(h.nodes()), 2)
        real = seam._fd1_output
        self.addCleanup(setattr, seam, "_fd1_output", real)
        seam._fd1_output = lambda fn: "\n".join(l for l in real(fn).splitlines() if f"[{leaf.id}]" not in l)
        with self.assertRaises(CannotRun):
            h.nodes()


class TestSeamReadsChangeNothing(rf.RadixTestCase):
    """The same traffic gives the same tree, writes and frees with every read the checks
    make done after each step (host copies, locks, shape) and without them."""

    def _traffic(self, read: bool) -> list:
        rng = random.Random(20261210)
        h = rf.build_tree(page_size=1, window=4, full_size=96, swa_size=48)
        rf.attach_fake_hicache(h, write_policy="write_through", host_full_size=128, host_swa_size=128)
        convs = [[rng.randrange(1, 9000) for _ in range(3)] for _ in range(3)]
        trace, stats = [], rf.ServeStats()
        for step in range(60):
            i = rng.randrange(len(convs))
            convs[i] = (convs[i] if len(convs[i]) < 24 else convs[i][:3]) + [rng.randrange(1, 9000) for _ in range(3)]
            rf.serve_request(h, convs[i], max(0, len(convs[i]) - rng.randint(2, 6)), stats)
            if step % 5 == 4:
                h.controller.complete_writes(rng.randint(0, 4))
                h.cache.writing_check()
                h.cache.evict(EvictParams(num_tokens=rng.randint(0, 12), swa_num_tokens=rng.randint(0, 12)))
            if read:
                for n in h.nodes():
                    for cd in n.component_data:
                        cd.host_value  # noqa: B018 (the read itself is what is tried)
                h.locked_nodes()
                h.host_slot_leaks()
            trace.append((step, len(h.controller.write_log), h.free_slots(), stats.lost_tokens))
        h.controller.complete_writes()
        h.cache.writing_check()
        trace.append(sorted((len(n.key), n.backuped, n.evicted) for n in h.nodes()))
        # node ids as the order the nodes were first written in (a core may number
        # nodes across caches)
        order = {}
        trace.append([(order.setdefault(node_id, len(order)), *rest) for node_id, *rest in h.controller.write_log])
        trace.append(h.locked_nodes())
        h.assert_drained()
        return trace

    def test_reads_change_nothing_the_checks_judge(self):
        self.assertEqual(self._traffic(read=True), self._traffic(read=False))


if __name__ == "__main__":
    unittest.main()
