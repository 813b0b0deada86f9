"""EAGLE multi-step draft: each draft step's locations as one contiguous row.

A multi-step draft decode batch holds batch_size * topk * num_steps out-cache
locations, laid out [batch_size, topk, num_steps]; draft step i writes its KV at
row i of the per-step view, [num_steps, batch_size * topk], which
``per_step_draft_out_cache_loc`` builds for EAGLEWorkerV2.draft_forward and the
attention backends. Kernels downstream take a row's data pointer and load
``loc_ptr + j`` for its j-th location (DSV4's compression-metadata kernel, the
triton KV-store kernels), so the row must hold step i's locations in its own
memory, back to back. A strided view of the buffer (element stride num_steps)
has the right values for torch but hands such a kernel the step-interleaved
window: the draft KV (and DSV4's C4 / C128 write targets) of every token but the
first lands at another token's slot.

Contract: every row holds step i's locations, request-major then branch, and a
reader of its memory by pointer gets exactly those; on the DSV4 step backends the
C4 / C128 write targets planned for draft step i are those of step i's locations.
"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from sglang.test.test_utils import maybe_stub_sgl_kernel  # noqa: E402

maybe_stub_sgl_kernel()

import torch  # noqa: E402

from seam import dsv4_attention as dsv4  # noqa: E402
from seam import spec_draft  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=15, suite="stage-a-test-cpu")


def read_by_pointer(row: torch.Tensor) -> torch.Tensor:
    """What a kernel given ``row``'s data pointer loads as ``loc_ptr + j`` for
    j < row.numel(): the row's memory from its first element on, strides ignored
    (cut short where the buffer ends)."""
    memory = torch.empty(0, dtype=row.dtype, device=row.device).set_(row.untyped_storage())
    start = row.storage_offset()
    return memory[start : start + row.numel()]


def step_locations(buffer, batch_size, topk, num_steps, step):
    """Step ``step``'s locations from the [batch_size, topk, num_steps] buffer:
    request 0's branches, then request 1's, ... (element by element)."""
    values = buffer.tolist()
    return [
        values[(r * topk + k) * num_steps + step]
        for r in range(batch_size)
        for k in range(topk)
    ]


def draft_buffer(rng, batch_size, topk, num_steps, page_size, device="cpu"):
    """A draft decode batch's out_cache_loc as EAGLE lays it out: with page_size 1
    or topk 1 each request's topk * num_steps draft slots follow one another after
    its prefix; otherwise every branch starts a page of its own, at the prefix's
    in-page offset. Pages are drawn at random from a pool."""
    pages = rng.sample(range(1, 4 * batch_size * topk * num_steps + 8), batch_size * topk + batch_size)
    values = []
    for r in range(batch_size):
        prefix = rng.randrange(1, 4 * page_size + 2)
        if page_size == 1 or topk == 1:
            # One region per request, wide enough for its prefix and draft slots.
            start = pages[r] * page_size * (4 * page_size + 2 + topk * num_steps) + prefix
            values.extend(start + j for j in range(topk * num_steps))
        else:
            for k in range(topk):
                page = pages[batch_size + r * topk + k]
                base = page * page_size * ((num_steps + page_size - 1) // page_size + 1)
                values.extend(base + prefix % page_size + s for s in range(num_steps))
    assert len(set(values)) == len(values), "the fixture gave two draft tokens one slot"
    return torch.tensor(values, dtype=torch.int64, device=device)


class _PerStepRowsCases:
    device = "cpu"

    def setUp(self):
        self.helper = spec_draft.per_step_draft_out_cache_loc()

    def _check(self, batch_size, topk, num_steps, page_size, rng):
        buffer = draft_buffer(rng, batch_size, topk, num_steps, page_size, self.device)
        before = buffer.clone()
        rows = self.helper(buffer, batch_size, topk, num_steps)
        where = f"batch_size={batch_size} topk={topk} num_steps={num_steps} page_size={page_size}"
        self.assertEqual(tuple(rows.shape), (num_steps, batch_size * topk), where)
        self.assertTrue(torch.equal(buffer, before), f"{where}: the draft buffer was changed")
        for step in range(num_steps):
            expected = step_locations(buffer, batch_size, topk, num_steps, step)
            row = rows[step]
            self.assertEqual(row.tolist(), expected, f"{where}: step {step}'s values")
            self.assertEqual(
                read_by_pointer(row).tolist(),
                expected,
                f"{where}: a kernel reading step {step}'s row by pointer gets other "
                f"locations (row strides {tuple(row.stride())})",
            )
            self.assertTrue(row.is_contiguous(), f"{where}: step {step}'s row is a strided view")

    def test_steps_batches_and_page_sizes(self):
        rng = random.Random(0)
        for batch_size, topk, num_steps, page_size in (
            (2, 1, 2, 1),
            (3, 1, 3, 1),
            (30, 1, 3, 64),
            (4, 1, 5, 256),
            (5, 4, 3, 1),
            (2, 2, 4, 16),
            (7, 2, 5, 64),
            (3, 8, 2, 256),
        ):
            with self.subTest(batch_size=batch_size, topk=topk, num_steps=num_steps, page_size=page_size):
                self._check(batch_size, topk, num_steps, page_size, rng)

    def test_randomized(self):
        rng = random.Random(20261207)
        for _ in range(40):
            batch_size = rng.randint(2, 24)
            topk = rng.choice((1, 1, 2, 4, 8))
            num_steps = rng.randint(2, 6)
            page_size = rng.choice((1, 16, 64, 256))
            with self.subTest(batch_size=batch_size, topk=topk, num_steps=num_steps, page_size=page_size):
                self._check(batch_size, topk, num_steps, page_size, rng)


class TestPerStepDraftRowsCPU(_PerStepRowsCases, CustomTestCase):
    device = "cpu"


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device")
class TestPerStepDraftRowsCUDA(_PerStepRowsCases, CustomTestCase):
    device = "cuda"


PS = dsv4.PAGE_SIZE
LAYOUT = {1: 3, 2: 1, 3: 4, 4: 2}  # full page -> SWA page (requests own full pages 1..4)


class _DSV4DraftStepTargetsCases:
    """DSV4 MTP (topk 1): the real step backends plan a multi-step draft decode
    batch; the compression-metadata kernel reads each step's locations by pointer."""

    device = "cpu"

    def setUp(self):
        spec_draft.per_step_draft_out_cache_loc()
        dsv4.remember_compression_metadata()
        self._kernels = dsv4.store_kernels()
        self._kernels.__enter__()
        self.pool = dsv4.make_pool(layer_num=2, device=self.device)
        dsv4.register_mapping(self.pool, dsv4.paged_mapping(6, LAYOUT, PS, self.device))

    def tearDown(self):
        self._kernels.__exit__(None, None, None)

    def _check(self, seq_lens, num_steps):
        bs = len(seq_lens)
        # Request r's draft tokens follow its prefix in its own page.
        buffer = torch.tensor(
            [PS * (r + 1) + seq_lens[r] + s for r in range(bs) for s in range(num_steps)],
            dtype=torch.int64,
            device=self.device,
        )
        backends = spec_draft.draft_step_backends(
            self.pool, num_reqs=bs, topk=1, num_steps=num_steps, req_stride=PS
        )
        where = f"seq_lens={seq_lens} num_steps={num_steps}"
        with spec_draft.compression_kernel_reading(read_by_pointer, backends):
            # Every step but the last (which only samples) runs a forward.
            for step, backend in enumerate(backends[:-1]):
                core = spec_draft.plan_draft_step(backend, buffer, seq_lens)
                expected = torch.tensor(
                    step_locations(buffer, bs, 1, num_steps, step), device=self.device
                )
                self.assertEqual(
                    read_by_pointer(core.raw_out_loc).long().tolist(),
                    expected.tolist(),
                    f"{where}: draft step {step}'s store locations, as a kernel reads them",
                )
                seq = core.seq_lens_casual.long()
                for ratio, targets in ((4, core.c4_out_loc), (128, core.c128_out_loc)):
                    self.assertIsNotNone(targets, f"{where}: no C{ratio} write targets planned")
                    want = torch.where(seq % ratio == 0, expected // ratio, 0)
                    self.assertEqual(
                        targets.long().tolist(),
                        want.tolist(),
                        f"{where}: draft step {step}'s C{ratio} write targets",
                    )

    def test_three_steps(self):
        # Request 1 (128 tokens) closes a C4 and a C128 group: both its targets are
        # real slots (its step's location // 4 and // 128), the others' the padding 0.
        self._check((41, 128, 254), 3)

    def test_randomized(self):
        rng = random.Random(7)
        for _ in range(6):
            bs = rng.randint(2, 4)
            num_steps = rng.randint(2, 4)
            seq_lens = tuple(rng.randint(1, PS - num_steps - 1) for _ in range(bs))
            with self.subTest(seq_lens=seq_lens, num_steps=num_steps):
                self._check(seq_lens, num_steps)


class TestDSV4DraftStepTargetsCPU(_DSV4DraftStepTargetsCases, CustomTestCase):
    device = "cpu"


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device")
class TestDSV4DraftStepTargetsCUDA(_DSV4DraftStepTargetsCases, CustomTestCase):
    device = "cuda"


if __name__ == "__main__":
    unittest.main()
