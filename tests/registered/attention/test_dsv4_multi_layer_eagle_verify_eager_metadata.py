"""DSV4 multi-layer EAGLE (MTP) spec-v2 target verify with graphs off.

Contract: a verify step that no CUDA graph replays (``--disable-cuda-graph``,
or a batch above the captured sizes) runs its target forward with attention
metadata planned for the batch it runs: planned during the step (neither
missing nor left from the batch before), one row per token of the verify batch
in every per-token field (the locations the SWA and C4 / C128 stores write
through, positions, lengths, SWA page indices, page table), the batch's own
store locations and positions; and every layer stores the verify tokens' SWA
KV at the SWA slots of their locations.

The verify step is the release's own: ``MultiLayerEagleWorkerV2.verify``
prepares the batch and says whether its metadata is planned already, then runs
the target forward through ``TpModelWorker.forward_batch_generation`` and
``ModelRunner.forward``; the backend is the real DSV4 backend over a real DSV4
pool. Only GPU kernels and the model are stand-ins (the adapter seam,
tests/seam/dsv4_attention.py). One rank, no DP attention: the batch the
forward runs is the batch the worker prepared.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from sglang.test.test_utils import maybe_stub_sgl_kernel  # noqa: E402

maybe_stub_sgl_kernel()

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import dsv4_verify_fixtures as vf  # noqa: E402
from seam import dsv4_attention as dsv4  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=30, suite="stage-a-test-cpu")

LAYOUT = {1: 3, 2: 4, 3: 1, 4: 2, 5: 5}  # full page -> SWA page
NUM_DRAFT_TOKENS = 3  # MTP: two draft steps, topk 1
SEQ_LENS = (42, 301)  # request 0's third draft token closes a C4 group
PREFILL_CHUNK = 4  # the last prefill chunk before the verify: its metadata is left on the backend


class _MultiLayerVerifyFixture(vf.VerifyFixture):
    LAYOUT, SEQ_LENS, NUM_DRAFT_TOKENS = LAYOUT, SEQ_LENS, NUM_DRAFT_TOKENS
    swa_pages = 5
    prefill_before = False  # a prefill chunk's metadata is left on the backend first

    def _verify(self):
        backend = self._backend()
        if self.prefill_before:
            loc = torch.tensor(
                [vf.full_slot(r, p) for r, s in enumerate(SEQ_LENS) for p in range(s - PREFILL_CHUNK, s)],
                device=self.device,
            )
            prefill = dsv4.new_forward_batch(
                backend, loc, "EXTEND", seq_lens=SEQ_LENS,
                extend_lens=[PREFILL_CHUNK] * len(SEQ_LENS),
            )
            dsv4.init_metadata(backend, prefill)
            self.assertIsNotNone(backend.forward_metadata)
        self._adjust_backend(backend)
        with dsv4.real_compression_metadata():
            return dsv4.multi_layer_verify_step(
                backend,
                seq_lens=SEQ_LENS,
                num_draft_tokens=NUM_DRAFT_TOKENS,
                layer_ids=self.layers,
                kv_rows=lambda n: vf.rows(n, self.device),
            )


class _EagerVerifyCases(_MultiLayerVerifyFixture):
    def test_eager_verify_runs_with_metadata_planned_for_its_batch(self):
        seen = self._verify()
        tokens = len(SEQ_LENS) * NUM_DRAFT_TOKENS
        self.assertEqual(seen.num_tokens, tokens)
        expected_loc = vf.verify_locations(SEQ_LENS, NUM_DRAFT_TOKENS, self.device)
        self.assertTrue(torch.equal(seen.out_cache_loc.long(), expected_loc))
        meta = seen.metadata
        self.assert_metadata_rows(meta, tokens)
        self.assertTrue(
            torch.equal(meta.raw_out_loc.long(), expected_loc),
            "the metadata's store locations are not the verify batch's",
        )
        positions = torch.tensor(
            [s + i for s in SEQ_LENS for i in range(NUM_DRAFT_TOKENS)], device=self.device
        )
        # A token at position p attends over p + 1 tokens.
        self.assertTrue(
            torch.equal(meta.seq_lens_casual.long(), positions + 1),
            "the metadata's lengths are not the verify tokens'",
        )

    def test_eager_verify_stores_its_tokens_at_their_swa_slots_on_every_layer(self):
        seen = self._verify()
        self.assert_swa_rows_on_every_layer(seen.out_cache_loc.long(), vf.rows(seen.num_tokens, self.device))


class TestDSV4MultiLayerEagleEagerVerifyCPU(_EagerVerifyCases, CustomTestCase):
    """The first step's verify: nothing planned on the backend before it."""


class TestDSV4MultiLayerEagleEagerVerifyAfterPrefillCPU(_EagerVerifyCases, CustomTestCase):
    """A verify after another batch's forward (the requests' last prefill chunk):
    that batch's metadata is on the backend, and must not be what the verify
    forward runs with."""

    prefill_before = True


class TestDSV4MultiLayerEagleVerifyWithoutPlanFails(_MultiLayerVerifyFixture, CustomTestCase):
    """The check of the check: a verify step in which nothing plans the batch's
    metadata fails the check; it is never reported as a release that cannot run it."""

    prefill_before = True

    def _adjust_backend(self, backend):
        backend.init_forward_metadata = lambda *args, **kwargs: None

    def test_eager_verify_runs_with_metadata_planned_for_its_batch(self):
        with self.assertRaisesRegex(AssertionError, "without attention metadata planned"):
            self._verify()


if __name__ == "__main__":
    unittest.main()
