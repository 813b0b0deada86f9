"""The CPU placement the SWA allocator checks run with is the paged allocator's own.

On a machine without a GPU, tests/seam/swa_allocator.py stands in for the two
Triton launches of the paged allocator (alloc_extend_kernel, alloc_decode_kernel).
Here that stand-in is held to the release's code on random batches: on the CPU to
the release's own reference placement of an extend (alloc_extend_naive), on a GPU
to both kernels themselves.
"""

import os
import random
import sys
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from seam import swa_allocator as seam  # noqa: E402

from sglang.test.ci.ci_register import register_cpu_ci, register_cuda_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=5, suite="stage-a-test-cpu")
register_cuda_ci(est_time=10, suite="stage-b-test-small-1-gpu")

NEEDS_CUDA = "needs a CUDA device: runs the paged allocator's Triton kernels"
BATCHES = 200


def _i64(values):
    return torch.tensor(values, dtype=torch.int64)


def _extend_batch(rng):
    """prefix_lens, seq_lens, last_loc, free_pages, page_size of a random extend batch
    whose requests hold their prefixes in pages of their own."""
    ps = rng.choice((2, 4, 8, 16))
    bs = rng.randint(1, 6)
    pages = list(range(1, 200))
    rng.shuffle(pages)
    prefix, seq, last = [], [], []
    for _ in range(bs):
        p = rng.choice((0, rng.randint(1, 5 * ps)))
        prefix.append(p)
        seq.append(p + rng.randint(1, 6 * ps))
        # a prefix's last token sits at its position in its own (used) page
        last.append(-1 if p == 0 else pages.pop() * ps + (p - 1) % ps)
    need = sum(-(-s // ps) - (-(-p // ps)) for p, s in zip(prefix, seq))
    free = pages[: need + rng.randint(0, 3)]
    return _i64(prefix), _i64(seq), _i64(last), _i64(free), ps


def _decode_batch(rng):
    ps = rng.choice((2, 4, 8, 16))
    bs = rng.randint(1, 8)
    pages = list(range(1, 200))
    rng.shuffle(pages)
    seq, last = [], []
    for _ in range(bs):
        s = rng.randint(1, 6 * ps)
        seq.append(s)
        last.append(-1 if s == 1 else pages.pop() * ps + (s - 2) % ps)
    need = sum(1 for s in seq if (s - 1) % ps == 0)
    free = pages[: need + rng.randint(0, 3)]
    return _i64(seq), _i64(last), _i64(free), ps


class TestPlacementStandInMatchesReleaseReference(CustomTestCase):
    def test_extend(self):
        rng = random.Random(int(os.environ.get("SGLANG_SWA_ALLOC_FUZZ_SEED", "20261207")))
        mismatches = []
        for _ in range(BATCHES):
            prefix, seq, last, free, ps = _extend_batch(rng)
            ours = seam.place_extend_on_cpu(prefix, seq, last, free, ps)
            theirs = seam.release_extend_reference(prefix, seq, last, free, ps)
            if not torch.equal(ours, theirs):
                mismatches.append((prefix.tolist(), seq.tolist(), ps))
        self.assertEqual(mismatches, [], f"{len(mismatches)} of {BATCHES} batches placed differently")


@unittest.skipUnless(torch.cuda.is_available(), NEEDS_CUDA)
class TestPlacementStandInMatchesKernelsCUDA(CustomTestCase):
    def _check(self, kind, make, place):
        rng = random.Random(int(os.environ.get("SGLANG_SWA_ALLOC_FUZZ_SEED", "20261207")))
        mismatches = 0
        for _ in range(BATCHES):
            *batch, ps = make(rng)
            ours = place(*batch, ps)
            theirs = seam.release_kernel_placement(kind, *batch, page_size=ps)
            mismatches += not torch.equal(ours, theirs)
        self.assertEqual(mismatches, 0, f"{mismatches} of {BATCHES} {kind} batches placed differently")

    def test_extend(self):
        self._check("extend", _extend_batch, seam.place_extend_on_cpu)

    def test_decode(self):
        self._check("decode", _decode_batch, seam.place_decode_on_cpu)


if __name__ == "__main__":
    unittest.main()
