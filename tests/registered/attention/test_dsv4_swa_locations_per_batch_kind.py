"""Where a DSV4 SWA store writes, for each kind of forward batch (#27091).

Contract: every SWA store of a forward batch writes at the SWA slots of that batch's
own locations. Where the batch's metadata was planned for it, the stores take the
translation kept on the metadata (no store translates again); where it was not, they
translate the batch's locations themselves: a batch whose metadata was never planned,
one re-padded after planning (DP attention rebinds its locations to a longer tensor),
and an IDLE batch (never planned: the metadata left there is the previous batch's, of
the same length), whose dummy rows must not land on the previous batch's slots.

The stores are the model's own (MQALayer) and the backend's store_cache on the real
DSV4 backend and pool, from the adapter seam (tests/seam/dsv4_attention.py); only the
GPU kernels are replaced.
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

register_cpu_ci(est_time=15, suite="stage-a-test-cpu")

PS = dsv4.PAGE_SIZE
LAYOUT = {1: 3, 2: 4, 3: 1, 4: 2}  # full page -> SWA page
SEQ_LENS = (41, 301)  # request r owns full page r + 1 (make_backend's req_to_token)


def rows(n, seed, device):
    base = torch.arange(n * dsv4.ROW_DIM, dtype=torch.float32).view(n, dsv4.ROW_DIM)
    return (base + 1000.0 * seed + 1.0).to(device)


class _PerBatchKindCases:
    device = "cpu"
    layers = (0, 1, 2, 3)

    def setUp(self):
        self._kernels = dsv4.store_kernels()
        self._kernels.__enter__()
        self.pool = dsv4.make_pool(layer_num=len(self.layers), device=self.device)
        self.mapping = dsv4.paged_mapping(6, LAYOUT, PS, self.device)
        dsv4.register_mapping(self.pool, self.mapping)
        self.backend = dsv4.make_backend(self.pool)

    def tearDown(self):
        self._kernels.__exit__(None, None, None)

    def _decode(self, seq_lens=SEQ_LENS, plan=True):
        """A decode batch built by ForwardBatch's own constructor; planned as the model
        runner plans an eager batch when `plan`."""
        loc = torch.tensor([PS * (r + 1) + s - 1 for r, s in enumerate(seq_lens)], device=self.device)
        fb = dsv4.new_forward_batch(self.backend, loc, "DECODE", seq_lens=seq_lens)
        dsv4.new_batch_hook(self.pool)
        if plan:
            dsv4.init_metadata(self.backend, fb)
        return fb

    def _stores(self, fb, kv) -> int:
        """Every layer's SWA store of the batch; returns how many times the stores
        translated locations (at the pool's mapping gather)."""
        with dsv4.TranslationCounter(self.pool) as counter:
            dsv4.store_layers(fb, self.layers, kv)
            return counter.out_loc_calls

    def _assert_at(self, loc, kv, what):
        for layer_id in self.layers:
            self.assertTrue(
                torch.equal(dsv4.rows_at(self.pool, layer_id, self.mapping[loc]), kv),
                f"{what}: layer {layer_id} did not write at the SWA slots of the batch's own locations",
            )

    def test_planned_batch_stores_through_its_metadata(self):
        fb = self._decode()
        kv = rows(2, 1, self.device)
        translated = self._stores(fb, kv)
        self._assert_at(fb.out_cache_loc, kv, "planned decode")
        self.assertEqual(translated, 0, "the stores translated the locations again instead of taking the "
                                        "planned batch's translation from its metadata")

    def test_batch_without_metadata_translates_its_own_locations(self):
        fb = self._decode(plan=False)
        kv = rows(2, 2, self.device)
        self.assertGreaterEqual(self._stores(fb, kv), 1)
        self._assert_at(fb.out_cache_loc, kv, "decode without metadata")

    def test_batch_re_padded_after_planning_translates_its_padded_locations(self):
        fb = self._decode()
        real = fb.out_cache_loc
        # DP attention pads the planned batch to the ranks' size with location 0
        fb.out_cache_loc = torch.cat([real, torch.zeros(2, dtype=real.dtype, device=self.device)])
        kv = rows(4, 3, self.device)
        self._stores(fb, kv)
        self._assert_at(real, kv[:2], "re-padded decode")

    def test_idle_batch_never_takes_the_previous_batch_translation(self):
        before = self._decode()
        kv_before = rows(2, 4, self.device)
        self._stores(before, kv_before)
        # The IDLE batch is never planned: the metadata there is the decode's, and its
        # zero locations are as many as the decode's.
        idle = dsv4.forward_batch(self.backend, torch.zeros(2, dtype=torch.int64, device=self.device), "IDLE")
        dummy = rows(2, 5, self.device)
        self.assertGreaterEqual(self._stores(idle, dummy), 1)
        self._assert_at(before.out_cache_loc, kv_before, "the decode before the IDLE batch")
        for layer_id in self.layers:
            self.assertTrue(torch.equal(dsv4.rows_at(self.pool, layer_id, self.mapping[idle.out_cache_loc[:1]]),
                                        dummy[1:]), f"IDLE: layer {layer_id} did not write at its own slot")


class TestDSV4SwaLocationsPerBatchKindCPU(_PerBatchKindCases, CustomTestCase):
    device = "cpu"


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device")
class TestDSV4SwaLocationsPerBatchKindCUDA(_PerBatchKindCases, CustomTestCase):
    device = "cuda"


if __name__ == "__main__":
    unittest.main()
