"""PD decode with MTP: the SWA tail preallocation must not inherit a page's old mapping.

A PD decode server preallocates a transferred request with
``alloc_extend_swa_tail``: full KV for the whole prompt, SWA KV only for the tail in
the sliding window. The prompt's other full slots have no SWA slot. With speculative
decoding (MTP) a request's slots run ahead of what verify commits; when it finishes,
the page of its last committed token goes back whole, and the slots past that token
keep their full->SWA entries. When such a full page is preallocated again outside the
SWA tail, those entries say the new request owns SWA slots it never got: its release
frees another request's SWA page, or a free one a second time, until the allocator's
``available_size() <= size`` assert stops the server (upstream #25805).
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

from swa_allocator_fixtures import PagedSWAServer  # noqa: E402

from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=5, suite="stage-a-test-cpu")


def _ceil(n, ps):
    return -(-n // ps) * ps


class TestPDTailPreallocAfterSpecDecode(CustomTestCase):
    def test_recycled_page_outside_the_tail_owns_no_swa(self):
        ps, window = 4, 4
        with PagedSWAServer(page_size=ps, full_pages=4, swa_pages=4, need_sort=True) as srv:
            # A: 5 prompt tokens (all in the window), then one MTP step over-allocates
            # 4 slots and verify commits one token: committed 6 of 9.
            a = srv.admit_pd_tail(5, window)
            self.assertIsNotNone(a)
            self.assertTrue(srv.extend(a, 9))
            a.committed = 6
            srv.finish(a)
            # B: 12 prompt tokens; its first two pages are outside the window and get
            # A's pages back (the pool holds four).
            b = srv.admit_pd_tail(12, window)
            self.assertIsNotNone(b, srv.violations)
            self.assertEqual(b.swa_evicted, 8)
            srv.finish(b)
            self.assertEqual(dict(srv.violations), {}, "B's release returned SWA pages it was never given")
            self.assertEqual(srv.duplicate_free_pages(), 0)
            for pool, (free, size) in srv.accounting().items():
                self.assertEqual(free, size, f"{pool} pool after every request finished")


class TestPDTailPreallocRandomized(CustomTestCase):
    """Seeded PD decode traffic with MTP (spec v2 over-allocation) on small pools."""

    SEED = int(os.environ.get("SGLANG_SWA_ALLOC_FUZZ_SEED", "20261207"))
    SEEDS = 8
    NUM_OPS = 300

    def _run(self, seed, page_size):
        ps = page_size
        rng = random.Random(seed)
        window = rng.choice((1, 2, 3)) * ps
        alloc_per_step = rng.choice((2, 3, 4))  # MTP steps + 1 (topk 1)
        ops = {"admit": 0, "rejected": 0, "step": 0, "finish": 0}
        with PagedSWAServer(page_size=ps, full_pages=40, swa_pages=24, need_sort=True) as srv:
            for _ in range(self.NUM_OPS):
                if srv.broken:
                    break
                r = rng.random()
                if r < 0.25 or not srv.live:
                    ops["admit"] += 1
                    if srv.admit_pd_tail(rng.randint(1, 10 * ps), window) is None:
                        ops["rejected"] += 1
                elif r < 0.8:
                    ops["step"] += 1
                    req = rng.choice(list(srv.live.values()))
                    # spec v2 keeps two steps of slots ahead of the committed tokens
                    if srv.extend(req, max(req.allocated, req.committed + 2 * alloc_per_step)):
                        req.committed += rng.randint(1, alloc_per_step)
                    if req.committed > 14 * ps:
                        srv.finish(req)
                else:
                    ops["finish"] += 1
                    srv.finish(rng.choice(list(srv.live.values())))
            srv.finish_all()
            accounting = srv.accounting()
            return srv.violations, ops, accounting, srv.broken

    def _check(self, page_size, seeds):
        totals, ops_total, reports, leaks = {}, {}, [], 0
        for seed in seeds:
            violations, ops, accounting, broken = self._run(seed, page_size)
            for kind, n in violations.items():
                totals[kind] = totals.get(kind, 0) + n
            for op, n in ops.items():
                ops_total[op] = ops_total.get(op, 0) + n
            if not broken:
                leaks += sum(abs(size - free) for free, size in accounting.values())
            reports.append(f"seed={seed} {ops} {dict(violations)}")
        report = f"page_size={page_size} seeds={len(seeds)} ops={ops_total} violations={totals} slots_off={leaks}"
        print(report)
        self.assertEqual(totals, {}, report + "\n" + "\n".join(reports))
        self.assertEqual(leaks, 0, report)
        # the traffic reached the scenario: requests admitted, over-allocated, finished
        self.assertGreater(ops_total["admit"] - ops_total["rejected"], len(seeds) * 10, report)
        self.assertGreater(ops_total["finish"], len(seeds) * 5, report)

    def test_page4(self):
        self._check(4, [self.SEED + i for i in range(self.SEEDS)])

    def test_page8(self):
        self._check(8, [self.SEED + 100 + i for i in range(self.SEEDS)])


if __name__ == "__main__":
    unittest.main()
