"""DSV4 eager multi-step draft decode (MTP, #26239).

An EAGLE draft decode batch holds batch_size * topk * num_steps out-cache
locations, laid out [batch_size, topk, num_steps]; DeepseekV4MultiStepBackend
inits every step backend's metadata with that whole batch, and draft step i then
runs with row i of the per-step view as its out_cache_loc. Contract: the real
backend's metadata init accepts the batch, and each step's SWA stores land at
that step's own locations, with one translation per step.
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

register_cpu_ci(est_time=10, suite="stage-a-test-cpu")

PS = dsv4.PAGE_SIZE
TOPK = 1


class _MultiStepDraftDecodeCases:
    device = "cpu"
    num_layers = 3

    def setUp(self):
        self._kernels = dsv4.store_kernels()
        self._kernels.__enter__()
        self.pool = dsv4.make_pool(layer_num=self.num_layers, device=self.device)
        self.mapping = dsv4.paged_mapping(6, {1: 3, 2: 1, 3: 4, 4: 2}, PS, self.device)
        dsv4.register_mapping(self.pool, self.mapping)
        self.layers = list(range(self.num_layers))

    def tearDown(self):
        self._kernels.__exit__(None, None, None)

    def _run(self, num_steps, seq_lens):
        bs = len(seq_lens)
        # Request r's draft tokens go right after its current length.
        locs = [
            PS * (r + 1) + seq_lens[r] + k * num_steps + s
            for r in range(bs)
            for k in range(TOPK)
            for s in range(num_steps)
        ]
        out_loc = torch.tensor(locs, dtype=torch.int64, device=self.device)
        step_locs = dsv4.draft_step_locations(out_loc, bs, TOPK, num_steps)
        backends = dsv4.draft_step_backends(self.pool, topk=TOPK, num_steps=num_steps)
        fb = dsv4.forward_batch(backends[0], out_loc, "DECODE", seq_lens=seq_lens)
        with dsv4.TranslationCounter(self.pool) as counter:
            # DeepseekV4MultiStepBackend.init_forward_metadata: every step but
            # the last (which only samples).
            for backend in backends[:-1]:
                dsv4.init_metadata(backend, fb)
            # EAGLEWorker.draft_forward: step i runs with row i and its backend.
            written = []
            for i, backend in enumerate(backends[:-1]):
                fb.out_cache_loc = step_locs[i]
                fb.attn_backend = backend
                kv = torch.full(
                    (bs * TOPK, dsv4.ROW_DIM), 10.0 * (i + 1), device=self.device
                )
                for layer_id in self.layers:
                    dsv4.store_layer(layer_id, fb, kv)
                written.append((step_locs[i], kv))
            translations = counter.out_loc_calls
        for i, (loc, kv) in enumerate(written):
            for layer_id in self.layers:
                self.assertTrue(
                    torch.equal(dsv4.rows_at(self.pool, layer_id, self.mapping[loc]), kv),
                    f"draft step {i}, layer {layer_id}: not at the step's own slots",
                )
        self.assertEqual(translations, num_steps - 1, "one translation per draft step")

    def test_three_steps_two_requests(self):
        self._run(3, (40, 300))

    def test_two_steps(self):
        self._run(2, (40, 100))


class TestDSV4MultiStepDraftDecodeCPU(_MultiStepDraftDecodeCases, CustomTestCase):
    device = "cpu"


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device")
class TestDSV4MultiStepDraftDecodeCUDA(_MultiStepDraftDecodeCases, CustomTestCase):
    device = "cuda"


if __name__ == "__main__":
    unittest.main()
