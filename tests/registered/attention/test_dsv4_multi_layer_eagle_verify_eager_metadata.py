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

from seam import dsv4_attention as dsv4  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=30, suite="stage-a-test-cpu")

PS = dsv4.PAGE_SIZE
REQ_STRIDE = 2 * PS  # request r owns full pages 1 + 2r and 2 + 2r
LAYOUT = {1: 3, 2: 4, 3: 1, 4: 2, 5: 5}  # full page -> SWA page
NUM_DRAFT_TOKENS = 3  # MTP: two draft steps, topk 1
SEQ_LENS = (42, 301)  # request 0's third draft token closes a C4 group
PREFILL_CHUNK = 4  # the last prefill chunk before the verify: its metadata is left on the backend


def full_slot(request, position):
    """The full-pool slot make_backend's req_to_token gives a request's position."""
    return PS + REQ_STRIDE * request + position


def rows(n, device):
    return torch.arange(n * dsv4.ROW_DIM, dtype=torch.float32, device=device).view(
        n, dsv4.ROW_DIM
    ) + 1.0


class _MultiLayerVerifyFixture:
    device = "cpu"
    num_layers = 4
    prefill_before = False  # a prefill chunk's metadata is left on the backend first

    def setUp(self):
        dsv4.remember_compression_metadata()
        self._kernels = dsv4.store_kernels()
        self._kernels.__enter__()

    def tearDown(self):
        self._kernels.__exit__(None, None, None)

    def _verify(self):
        pool = dsv4.make_pool(layer_num=self.num_layers, device=self.device, swa_pages=5)
        self.mapping = dsv4.paged_mapping(6, LAYOUT, PS, self.device)
        dsv4.register_mapping(pool, self.mapping)
        self.pool = pool
        backend = dsv4.make_backend(
            pool, num_reqs=len(SEQ_LENS), req_stride=REQ_STRIDE, topk=1,
            num_steps=NUM_DRAFT_TOKENS - 1, num_draft_tokens=NUM_DRAFT_TOKENS,
        )
        if self.prefill_before:
            loc = torch.tensor(
                [full_slot(r, p) for r, s in enumerate(SEQ_LENS) for p in range(s - PREFILL_CHUNK, s)],
                device=self.device,
            )
            prefill = dsv4.new_forward_batch(
                backend, loc, "EXTEND", seq_lens=SEQ_LENS,
                extend_lens=[PREFILL_CHUNK] * len(SEQ_LENS),
            )
            dsv4.init_metadata(backend, prefill)
            self.assertIsNotNone(backend.forward_metadata)
        self._adjust_backend(backend)
        self.layers = list(range(self.num_layers))
        with dsv4.real_compression_metadata():
            return dsv4.multi_layer_verify_step(
                backend,
                seq_lens=SEQ_LENS,
                num_draft_tokens=NUM_DRAFT_TOKENS,
                layer_ids=self.layers,
                kv_rows=lambda n: rows(n, self.device),
            )

    def _adjust_backend(self, backend):
        pass


class _EagerVerifyCases(_MultiLayerVerifyFixture):
    def test_eager_verify_runs_with_metadata_planned_for_its_batch(self):
        seen = self._verify()
        tokens = len(SEQ_LENS) * NUM_DRAFT_TOKENS
        self.assertEqual(seen.num_tokens, tokens)
        expected_loc = torch.tensor(
            [full_slot(r, s + i) for r, s in enumerate(SEQ_LENS) for i in range(NUM_DRAFT_TOKENS)],
            device=self.device,
        )
        self.assertTrue(torch.equal(seen.out_cache_loc.long(), expected_loc))

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
                value.shape[0], tokens,
                f"{name} has {value.shape[0]} rows for a verify batch of {tokens} tokens",
            )
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
        loc = seen.out_cache_loc.long()
        kv = rows(seen.num_tokens, self.device)
        for layer_id in self.layers:
            self.assertTrue(
                torch.equal(dsv4.rows_at(self.pool, layer_id, self.mapping[loc]), kv),
                f"layer {layer_id}: the verify tokens' SWA KV is not at their SWA slots",
            )


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
