"""What the DSV4 target-verify checks share: a real DSV4 pool and backend whose
requests own known full pages, the KV rows the stand-in model stores, and the two
judgements every verify check makes (the metadata has a row per token of the batch
the forward ran; every layer stores the tokens' SWA KV at their SWA slots).

A check names its batch (sequence lengths, draft tokens, the full -> SWA page layout)
and how the release's worker runs the step (tests/seam/dsv4_attention.py)."""

import torch

from seam import dsv4_attention as dsv4

PS = dsv4.PAGE_SIZE
REQ_STRIDE = 2 * PS  # request r owns full pages 1 + 2r and 2 + 2r


def full_slot(request, position):
    """The full-pool slot make_backend's req_to_token gives a request's position."""
    return PS + REQ_STRIDE * request + position


def rows(n, device):
    """The KV rows the stand-in model stores for a batch of n tokens: all distinct."""
    return torch.arange(n * dsv4.ROW_DIM, dtype=torch.float32, device=device).view(n, dsv4.ROW_DIM) + 1.0


def verify_locations(seq_lens, num_draft_tokens, device):
    """The full-pool locations of every request's draft tokens, request by request."""
    return torch.tensor(
        [full_slot(r, s + i) for r, s in enumerate(seq_lens) for i in range(num_draft_tokens)], device=device
    )


# Every per-token field of the DSV4 metadata a verify forward reads, with what it is.
PER_TOKEN_FIELDS = {
    "raw_out_loc (SWA / C4 / C128 store locations)": "raw_out_loc",
    "c4_out_loc (C4 write targets)": "c4_out_loc",
    "c128_out_loc (C128 write targets)": "c128_out_loc",
    "seq_lens_casual": "seq_lens_casual",
    "positions_casual": "positions_casual",
    "swa_page_indices": "swa_page_indices",
    "swa_topk_lengths": "swa_topk_lengths",
    "page_table": "page_table",
}


class VerifyFixture:
    """setUp / tearDown around the stand-in store kernels, and the pool and backend of a
    verify batch. A subclass sets LAYOUT, SEQ_LENS, NUM_DRAFT_TOKENS (class attributes)
    and may adjust the backend before the step (_adjust_backend)."""

    device = "cpu"
    num_layers = 4
    swa_pages = None  # the pool's default

    def setUp(self):
        dsv4.remember_compression_metadata()
        self._kernels = dsv4.store_kernels()
        self._kernels.__enter__()

    def tearDown(self):
        self._kernels.__exit__(None, None, None)

    def _backend(self):
        extra = {} if self.swa_pages is None else {"swa_pages": self.swa_pages}
        self.pool = dsv4.make_pool(layer_num=self.num_layers, device=self.device, **extra)
        self.mapping = dsv4.paged_mapping(6, self.LAYOUT, PS, self.device)
        dsv4.register_mapping(self.pool, self.mapping)
        self.layers = list(range(self.num_layers))
        return dsv4.make_backend(
            self.pool, num_reqs=len(self.SEQ_LENS), req_stride=REQ_STRIDE, topk=1,
            num_steps=self.NUM_DRAFT_TOKENS - 1, num_draft_tokens=self.NUM_DRAFT_TOKENS,
        )

    def _adjust_backend(self, backend):
        pass

    def assert_metadata_rows(self, meta, tokens, why=""):
        """Every per-token field planned, one row per token of a batch of `tokens`."""
        for name, field in PER_TOKEN_FIELDS.items():
            value = getattr(meta, field)
            self.assertIsNotNone(value, f"{name}: not planned")
            self.assertEqual(value.shape[0], tokens, f"{name} has {value.shape[0]} rows for a batch of {tokens} tokens{why}")

    def assert_swa_rows_on_every_layer(self, loc, kv):
        """Every layer holds the tokens' SWA KV (kv) at the SWA slots of their locations."""
        for layer_id in self.layers:
            self.assertTrue(
                torch.equal(dsv4.rows_at(self.pool, layer_id, self.mapping[loc]), kv),
                f"layer {layer_id}: the verify tokens' SWA KV is not at their SWA slots",
            )
