"""Paged SWA free: a page that goes back goes back unmapped, once.

With page_size > 1 the allocators free whole pages: ``free_swa`` given some tokens
of a page returns the SWA page they are on. The full->SWA entries of the page's
other tokens must go with it; left behind, they still name the returned SWA page,
and when those tokens are released later (the next step of an out-of-window
release, or the request's end) the page is returned again: a page another request
holds by then is freed under it, a free one is freed twice, until the allocator's
``available_size() <= size`` assert fires (upstream #27779).
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


class TestPagedSWAFreeSplitPage(CustomTestCase):
    def test_page_released_in_two_steps_goes_back_once(self):
        ps = 4
        with PagedSWAServer(page_size=ps, full_pages=8, swa_pages=6, need_sort=False) as srv:
            a = srv.admit_extend(16)
            self.assertIsNotNone(a)
            # A's first two pages left the window; its release stops inside the second.
            srv.release_swa(a, 6)
            # C takes the SWA pages A returned.
            c = srv.admit_extend(8)
            self.assertIsNotNone(c)
            # The rest of A's second page is released, then both requests finish.
            srv.release_swa(a, 8)
            srv.finish(a)
            srv.finish(c)
            self.assertEqual(dict(srv.violations), {}, "an SWA page went back for tokens of a page already returned")
            self.assertEqual(srv.duplicate_free_pages(), 0)
            for pool, (free, size) in srv.accounting().items():
                self.assertEqual(free, size, f"{pool} pool after every request finished")

    def test_request_end_after_a_release_inside_a_page(self):
        ps = 4
        with PagedSWAServer(page_size=ps, full_pages=8, swa_pages=6, need_sort=True) as srv:
            a = srv.admit_extend(13)
            srv.release_swa(a, 3)
            srv.finish(a)
            self.assertEqual(dict(srv.violations), {}, "the request's end returned its first SWA page again")
            for pool, (free, size) in srv.accounting().items():
                self.assertEqual(free, size, f"{pool} pool after the request finished")


class TestPagedSWAFreeRandomized(CustomTestCase):
    """Seeded prefill / decode / out-of-window SWA release / finish traffic; each release
    moves the frontier by tokens, never past a page that still has a token in the window."""

    SEED = int(os.environ.get("SGLANG_SWA_ALLOC_FUZZ_SEED", "20261207"))
    SEEDS = 6
    NUM_OPS = 300

    def _run(self, seed, page_size, need_sort):
        ps = page_size
        rng = random.Random(seed)
        window = rng.choice((1, 2, 3)) * ps + rng.randrange(ps)
        ops = {"admit": 0, "rejected": 0, "decode": 0, "release_swa": 0, "inside_a_page": 0, "finish": 0}
        with PagedSWAServer(page_size=ps, full_pages=40, swa_pages=24, need_sort=need_sort) as srv:
            for _ in range(self.NUM_OPS):
                if srv.broken:
                    break
                r = rng.random()
                if r < 0.2 or not srv.live:
                    ops["admit"] += 1
                    if srv.admit_extend(rng.randint(1, 8 * ps)) is None:
                        ops["rejected"] += 1
                    continue
                req = rng.choice(list(srv.live.values()))
                if r < 0.65:
                    ops["decode"] += 1
                    srv.decode(req)
                    if req.committed > 14 * ps:
                        srv.finish(req)
                elif r < 0.9:
                    # Out of the window: whole pages before the one holding the window's first token.
                    last = (req.committed - window) // ps * ps
                    if last > req.swa_evicted:
                        ops["release_swa"] += 1
                        upto = rng.randint(req.swa_evicted + 1, last)
                        ops["inside_a_page"] += upto % ps != 0
                        srv.release_swa(req, upto)
                else:
                    ops["finish"] += 1
                    srv.finish(req)
            srv.finish_all()
            return srv.violations, ops, srv.accounting(), srv.broken

    def _check(self, page_size, need_sort, seeds):
        totals, ops_total, reports, off = {}, {}, [], 0
        for seed in seeds:
            violations, ops, accounting, broken = self._run(seed, page_size, need_sort)
            for kind, n in violations.items():
                totals[kind] = totals.get(kind, 0) + n
            for op, n in ops.items():
                ops_total[op] = ops_total.get(op, 0) + n
            if not broken:
                off += sum(abs(size - free) for free, size in accounting.values())
            reports.append(f"seed={seed} {ops} {dict(violations)}")
        report = (f"page_size={page_size} need_sort={need_sort} seeds={len(seeds)} ops={ops_total} "
                  f"violations={totals} slots_off={off}")
        print(report)
        self.assertEqual(totals, {}, report + "\n" + "\n".join(reports))
        self.assertEqual(off, 0, report)
        # the traffic reached the scenario: releases that stop inside a page, then finishes
        self.assertGreater(ops_total["inside_a_page"], len(seeds) * 5, report)
        self.assertGreater(ops_total["finish"], len(seeds) * 5, report)

    def test_page4(self):
        self._check(4, False, [self.SEED + i for i in range(self.SEEDS)])

    def test_page8_sorted_free_lists(self):
        self._check(8, True, [self.SEED + 100 + i for i in range(self.SEEDS)])


if __name__ == "__main__":
    unittest.main()
