"""DSV4 spec-v2 target verify under DP attention with graphs off (#26244).

Contract: the attention metadata a verify forward runs with describes the batch
the model runs, i.e. the batch after the MLP-sync padding for DP attention: one
row per token of the padded batch in every per-token field (the locations the
SWA and C4 / C128 stores write through, positions, lengths, SWA page indices,
page table), the padded locations themselves; and every layer stores the real
tokens' SWA KV at the SWA slots of their locations.

The verify step is the release's own: ``EAGLEWorkerV2.verify`` prepares the batch
(``prepare_for_v2_verify``) and runs the target forward through
``TpModelWorker.forward_batch_generation`` and ``ModelRunner.forward``, whose
``prepare_mlp_sync_batch`` pads it; the backend is the real DSV4 backend over a
real DSV4 pool. Only GPU kernels and the model are stand-ins (the adapter seam,
tests/seam/dsv4_attention.py).
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

LAYOUT = {1: 3, 2: 4, 3: 1, 4: 2}  # full page -> SWA page
NUM_DRAFT_TOKENS = 2  # MTP: one draft step, topk 1
SEQ_LENS = (42, 302)  # this rank's two requests; the second draft token of request 0 closes a C4 group
DP_BATCH_SIZES = (2, 4)  # requests per attention-DP rank: this rank (0) is padded to the other's 4


class _VerifyFixture(vf.VerifyFixture):
    LAYOUT, SEQ_LENS, NUM_DRAFT_TOKENS = LAYOUT, SEQ_LENS, NUM_DRAFT_TOKENS

    def _verify(self):
        backend = self._backend()
        self._adjust_backend(backend)
        with dsv4.real_compression_metadata():
            return dsv4.verify_step_under_dp(
                backend,
                seq_lens=SEQ_LENS,
                num_draft_tokens=NUM_DRAFT_TOKENS,
                dp_batch_sizes=DP_BATCH_SIZES,
                dp_rank=0,
                layer_ids=self.layers,
                kv_rows=lambda n: vf.rows(n, self.device),
            )


class _VerifyUnderDPCases(_VerifyFixture):
    def test_verify_metadata_describes_the_dp_padded_batch(self):
        seen = self._verify()
        padded = max(DP_BATCH_SIZES) * NUM_DRAFT_TOKENS
        real = len(SEQ_LENS) * NUM_DRAFT_TOKENS
        # The forward ran the padded batch (the DP padding did happen).
        self.assertEqual(seen.num_tokens, padded)
        self.assertEqual(seen.out_cache_loc.shape[0], padded)
        expected_real = vf.verify_locations(SEQ_LENS, NUM_DRAFT_TOKENS, self.device)
        self.assertTrue(torch.equal(seen.out_cache_loc[:real].long(), expected_real))
        self.assert_metadata_rows(seen.metadata, padded, " (planned before the DP padding?)")
        self.assertTrue(
            torch.equal(seen.metadata.raw_out_loc.long(), seen.out_cache_loc.long()),
            "the metadata's store locations are not the padded batch's",
        )

    def test_verify_stores_real_tokens_at_their_swa_slots_on_every_layer(self):
        seen = self._verify()
        real = len(SEQ_LENS) * NUM_DRAFT_TOKENS
        self.assert_swa_rows_on_every_layer(seen.out_cache_loc[:real].long(), vf.rows(seen.num_tokens, self.device)[:real])


class TestDSV4SpecV2VerifyUnderDPCPU(_VerifyUnderDPCases, CustomTestCase):
    device = "cpu"


class TestDSV4SpecV2VerifyWithoutPlanFails(_VerifyFixture, CustomTestCase):
    """The check of the check: a verify step in which nothing plans the batch's
    metadata (what the 0.5.12 line's verify worker does with 0007's flag reverted)
    fails the check; it is never reported as a release that cannot run it."""

    def _adjust_backend(self, backend):
        backend.init_forward_metadata = lambda *args, **kwargs: None

    def test_verify_metadata_describes_the_dp_padded_batch(self):
        with self.assertRaisesRegex(AssertionError, "without attention metadata planned"):
            self._verify()


if __name__ == "__main__":
    unittest.main()
