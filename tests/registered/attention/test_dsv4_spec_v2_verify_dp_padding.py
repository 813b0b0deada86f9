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

from seam import dsv4_attention as dsv4  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=30, suite="stage-a-test-cpu")

PS = dsv4.PAGE_SIZE
REQ_STRIDE = 2 * PS  # request r owns full pages 1 + 2r and 2 + 2r
LAYOUT = {1: 3, 2: 4, 3: 1, 4: 2}  # full page -> SWA page
NUM_DRAFT_TOKENS = 2  # MTP: one draft step, topk 1
SEQ_LENS = (42, 302)  # this rank's two requests; the second draft token of request 0 closes a C4 group
DP_BATCH_SIZES = (2, 4)  # requests per attention-DP rank: this rank (0) is padded to the other's 4


def full_slot(request, position):
    """The full-pool slot make_backend's req_to_token gives a request's position."""
    return PS + REQ_STRIDE * request + position


def rows(n, device):
    return torch.arange(n * dsv4.ROW_DIM, dtype=torch.float32, device=device).view(
        n, dsv4.ROW_DIM
    ) + 1.0


class _VerifyFixture:
    device = "cpu"
    num_layers = 4

    def setUp(self):
        dsv4.remember_compression_metadata()
        self._kernels = dsv4.store_kernels()
        self._kernels.__enter__()

    def tearDown(self):
        self._kernels.__exit__(None, None, None)

    def _verify(self):
        pool = dsv4.make_pool(layer_num=self.num_layers, device=self.device)
        self.mapping = dsv4.paged_mapping(6, LAYOUT, PS, self.device)
        dsv4.register_mapping(pool, self.mapping)
        self.pool = pool
        backend = dsv4.make_backend(
            pool, num_reqs=len(SEQ_LENS), req_stride=REQ_STRIDE, topk=1, num_steps=NUM_DRAFT_TOKENS - 1,
            num_draft_tokens=NUM_DRAFT_TOKENS,
        )
        self._adjust_backend(backend)
        self.layers = list(range(self.num_layers))
        with dsv4.real_compression_metadata():
            return dsv4.verify_step_under_dp(
                backend,
                seq_lens=SEQ_LENS,
                num_draft_tokens=NUM_DRAFT_TOKENS,
                dp_batch_sizes=DP_BATCH_SIZES,
                dp_rank=0,
                layer_ids=self.layers,
                kv_rows=lambda n: rows(n, self.device),
            )

    def _adjust_backend(self, backend):
        pass


class _VerifyUnderDPCases(_VerifyFixture):
    def test_verify_metadata_describes_the_dp_padded_batch(self):
        seen = self._verify()
        padded = max(DP_BATCH_SIZES) * NUM_DRAFT_TOKENS
        real = len(SEQ_LENS) * NUM_DRAFT_TOKENS
        # The forward ran the padded batch (the DP padding did happen).
        self.assertEqual(seen.num_tokens, padded)
        self.assertEqual(seen.out_cache_loc.shape[0], padded)
        expected_real = torch.tensor(
            [full_slot(r, s + i) for r, s in enumerate(SEQ_LENS) for i in range(NUM_DRAFT_TOKENS)],
            device=self.device,
        )
        self.assertTrue(torch.equal(seen.out_cache_loc[:real].long(), expected_real))

        meta = seen.metadata
        per_token = {
            "raw_out_loc (SWA / C4 / C128 store locations)": meta.raw_out_loc,
            "c4_out_loc (C4 write targets)": meta.c4_out_loc,
            "c128_out_loc (C128 write targets)": meta.c128_out_loc,
            "seq_lens_casual": meta.seq_lens_casual,
            "positions_casual": meta.positions_casual,
            "swa_page_indices": meta.swa_page_indices,
            "swa_topk_lengths": meta.swa_topk_lengths,
            "page_table": meta.page_table,
        }
        for name, value in per_token.items():
            self.assertIsNotNone(value, f"{name}: not planned")
            self.assertEqual(
                value.shape[0], padded,
                f"{name} has {value.shape[0]} rows for a batch of {padded} tokens "
                f"(planned before the DP padding?)",
            )
        self.assertTrue(
            torch.equal(meta.raw_out_loc.long(), seen.out_cache_loc.long()),
            "the metadata's store locations are not the padded batch's",
        )

    def test_verify_stores_real_tokens_at_their_swa_slots_on_every_layer(self):
        seen = self._verify()
        real = len(SEQ_LENS) * NUM_DRAFT_TOKENS
        loc = seen.out_cache_loc[:real].long()
        kv = rows(seen.num_tokens, self.device)[:real]
        for layer_id in self.layers:
            self.assertTrue(
                torch.equal(dsv4.rows_at(self.pool, layer_id, self.mapping[loc]), kv),
                f"layer {layer_id}: the verify tokens' SWA KV is not at their SWA slots",
            )


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
