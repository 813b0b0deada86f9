"""DSV4 full -> SWA translation of a forward batch's out-cache locations.

Contract: an SWA KV store lands at the SWA slots given by the batch's own
locations and by the mapping registered before the batch started (a HiCache
commit / load-back may rebuild it between batches), on every layer of the stage,
whichever layer stores first; and the batch's locations are translated once per
forward batch, counted at the mapping gather whoever asks (metadata init, the
stores), in extend and decode.

The objects come from the adapter seam (tests/seam/dsv4_attention.py); only the
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

register_cpu_ci(est_time=30, suite="stage-a-test-cpu")

PS = dsv4.PAGE_SIZE
FULL_PAGES = 6
# Two layouts of the same full pages in the SWA pool, as before and after a
# HiCache commit / load-back rebuilds the mapping.
OLD_LAYOUT = {1: 1, 2: 2, 3: 3, 4: 4}
NEW_LAYOUT = {1: 4, 2: 3, 3: 2, 4: 1}


def rows(n, seed, device):
    """n distinct KV rows, different per seed."""
    base = torch.arange(n * dsv4.ROW_DIM, dtype=torch.float32).view(n, dsv4.ROW_DIM)
    return (base + 1000.0 * seed).to(device)


class _Base:
    device = "cpu"

    def setUp(self):
        self._kernels = dsv4.store_kernels()
        self._kernels.__enter__()

    def tearDown(self):
        self._kernels.__exit__(None, None, None)

    def _pool(self, start_layer=0, layer_num=6):
        pool = dsv4.make_pool(
            layer_num=layer_num, start_layer=start_layer, device=self.device
        )
        self.old = dsv4.paged_mapping(FULL_PAGES, OLD_LAYOUT, PS, self.device)
        self.new = dsv4.paged_mapping(FULL_PAGES, NEW_LAYOUT, PS, self.device)
        dsv4.register_mapping(pool, self.old)
        return pool, list(range(start_layer, start_layer + layer_num))

    def _extend_batch(self, backend, seq_lens, extend_lens):
        """An EXTEND batch consistent with the backend's req_to_token (request
        r, position i -> full slot 256 * (r + 1) + i), built by ForwardBatch's
        own constructor, metadata initialised."""
        locs = []
        for r, (seq_len, ext) in enumerate(zip(seq_lens, extend_lens)):
            locs += [PS * (r + 1) + p for p in range(seq_len - ext, seq_len)]
        out_loc = torch.tensor(locs, dtype=torch.int64, device=self.device)
        fb = dsv4.new_forward_batch(
            backend, out_loc, "EXTEND", seq_lens=seq_lens, extend_lens=extend_lens
        )
        dsv4.new_batch_hook(backend.token_to_kv_pool)
        dsv4.init_metadata(backend, fb)
        return fb

    def _decode_batch(self, backend, seq_lens):
        locs = [PS * (r + 1) + s - 1 for r, s in enumerate(seq_lens)]
        out_loc = torch.tensor(locs, dtype=torch.int64, device=self.device)
        fb = dsv4.new_forward_batch(backend, out_loc, "DECODE", seq_lens=seq_lens)
        dsv4.new_batch_hook(backend.token_to_kv_pool)
        dsv4.init_metadata(backend, fb)
        return fb

    def _assert_rows(self, pool, layers, mapping, loc, kv, what):
        for layer_id in layers:
            self.assertTrue(
                torch.equal(dsv4.rows_at(pool, layer_id, mapping[loc]), kv),
                f"{what}: layer {layer_id} did not write at the batch's SWA slots",
            )


class _MappingRebuildCases(_Base):
    """A stale translation must never be used: after a mapping rebuild, or by a
    batch whose first SWA store is not at the pool's start_layer (#25889)."""

    def _two_batches(self, start_layer, seqs_b, rebuild):
        """Batch A stores on every layer; batch B (after a mapping rebuild when
        asked) makes its first SWA store on the stage's second layer."""
        pool, layers = self._pool(start_layer)
        backend = dsv4.make_backend(pool)
        fb_a = self._extend_batch(backend, (40, 300), (4, 4))
        kv_a = rows(8, seed=1, device=self.device)
        dsv4.store_layers(fb_a, layers, kv_a)
        mapping = self.old
        if rebuild:
            dsv4.register_mapping(pool, self.new)
            mapping = self.new
        fb_b = self._extend_batch(backend, *seqs_b)
        kv_b = rows(fb_b.out_cache_loc.shape[0], seed=2, device=self.device)
        dsv4.store_layers(fb_b, layers[1:], kv_b)
        self._assert_rows(pool, layers[1:], mapping, fb_b.out_cache_loc, kv_b, "batch B")

    def test_rebuilt_mapping_is_used_by_next_batch_with_same_locations(self):
        # Same locations in both batches: only the mapping tells them apart.
        self._two_batches(0, ((40, 300), (4, 4)), rebuild=True)

    def test_batch_whose_first_store_is_not_start_layer(self):
        self._two_batches(0, ((45, 310), (2, 3)), rebuild=True)

    def test_pp_stage_batch_whose_first_store_is_not_start_layer(self):
        self._two_batches(4, ((45, 310), (2, 3)), rebuild=True)

    def test_shorter_batch_is_not_written_with_longer_translation(self):
        # Without a rebuild: the previous batch's translation has another length.
        self._two_batches(4, ((41, 301), (1, 1)), rebuild=False)

    def test_rebuilt_mapping_used_by_next_full_batch(self):
        # Regression guard: batches that store on every layer, in order.
        pool, layers = self._pool(start_layer=4)
        backend = dsv4.make_backend(pool)
        for seed, mapping in ((1, self.old), (2, self.new)):
            dsv4.register_mapping(pool, mapping)
            fb = self._extend_batch(backend, (40, 300), (3, 2))
            kv = rows(5, seed=seed, device=self.device)
            dsv4.store_layers(fb, layers, kv)
            self._assert_rows(pool, layers, mapping, fb.out_cache_loc, kv, f"batch {seed}")


class _OncePerBatchCases(_Base):
    """One translation of the batch's locations per forward batch (#27091),
    counted at the mapping gather from metadata init through every store."""

    num_layers = 12

    def _count(self, pool, run):
        with dsv4.TranslationCounter(pool) as counter:
            run()
            return counter.out_loc_calls

    def test_extend_translates_once_and_keeps_it_on_the_metadata(self):
        pool, layers = self._pool(layer_num=self.num_layers)
        backend = dsv4.make_backend(pool)
        state = {}

        def run():
            state["fb"] = fb = self._extend_batch(backend, (40, 300), (3, 2))
            dsv4.store_layers(fb, layers, rows(5, 1, self.device))

        self.assertEqual(self._count(pool, run), 1)
        fb = state["fb"]
        kept = dsv4.metadata_swa_out_cache_loc(backend)
        self.assertIsNotNone(kept, "no per-batch translation on the metadata")
        self.assertEqual(kept.dtype, torch.int32)
        self.assertTrue(torch.equal(kept.long(), self.old[fb.out_cache_loc]))
        self._assert_rows(pool, layers, self.old, fb.out_cache_loc, rows(5, 1, self.device), "extend")

    def test_decode_translates_once(self):
        pool, layers = self._pool(layer_num=self.num_layers)
        backend = dsv4.make_backend(pool)
        state = {}

        def run():
            state["fb"] = fb = self._decode_batch(backend, (41, 301))
            dsv4.store_layers(fb, layers, rows(2, 3, self.device))

        self.assertEqual(self._count(pool, run), 1)
        self.assertIsNotNone(dsv4.metadata_swa_out_cache_loc(backend))
        self._assert_rows(pool, layers, self.old, state["fb"].out_cache_loc, rows(2, 3, self.device), "decode")

    def test_metadata_of_a_batch_copies_into_the_captured_graph_metadata(self):
        # CUDA graph replay copies each batch's metadata into the captured one;
        # the copy names every field, the per-batch SWA locations included.
        pool, _ = self._pool(layer_num=2)
        backend = dsv4.make_backend(pool)
        self._decode_batch(backend, (41, 301))
        captured = dsv4.core_metadata(backend)
        fb = self._decode_batch(backend, (42, 302))
        fresh = dsv4.core_metadata(backend)
        dsv4.copy_for_replay(captured, fresh)
        self.assertIsNotNone(captured.swa_out_cache_loc)
        self.assertTrue(torch.equal(captured.swa_out_cache_loc.long(), self.old[fb.out_cache_loc]))

    def test_other_hybrid_swa_models_keep_their_precomputed_locations(self):
        # Only DSV4 stops precomputing: SWAKVPool models still read it.
        dsv4.require_precomputed_swa_locations()
        pool, _ = self._pool(layer_num=2)
        backend = dsv4.make_backend(pool)
        loc = torch.tensor([PS + 40, 2 * PS + 300], device=self.device)
        with dsv4.TranslationCounter(pool) as counter:
            fb = dsv4.new_forward_batch(
                backend, loc, "DECODE", seq_lens=(41, 301), deepseek_v4_arch=False
            )
            self.assertEqual(counter.out_loc_calls, 1)
        swa = dsv4.precomputed_swa_locations(fb)
        self.assertIsNotNone(swa)
        self.assertTrue(torch.equal(swa.long(), self.old[loc]))

    def test_mapping_rebuilt_between_batches_on_every_pp_stage_layer(self):
        pool, layers = self._pool(start_layer=4, layer_num=self.num_layers)
        backend = dsv4.make_backend(pool)
        fb = self._extend_batch(backend, (40, 300), (3, 2))
        dsv4.store_layers(fb, layers, rows(5, 1, self.device))
        dsv4.register_mapping(pool, self.new)
        state = {}

        def run():
            state["fb"] = fb2 = self._extend_batch(backend, (41, 301), (1, 1))
            dsv4.store_layers(fb2, layers, rows(2, 2, self.device))

        self.assertEqual(self._count(pool, run), 1)
        self._assert_rows(pool, layers, self.new, state["fb"].out_cache_loc, rows(2, 2, self.device), "after rebuild")


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device")
class TestDSV4SwaTranslationDecodeGraphCUDA(_Base, CustomTestCase):
    """A decode CUDA graph replays the batch's translation inside the graph:
    every replay writes at the replayed batch's locations through the mapping
    as it is at replay time (updated in place between replays, as HiCache
    load-back does), on every layer, with no translation made outside it."""

    device = "cuda"
    num_layers = 8

    def test_replays_follow_locations_and_in_place_mapping_updates(self):
        pool, layers = self._pool(layer_num=self.num_layers)
        backend = dsv4.make_backend(pool)
        seq_lens = [41, 301]
        out_loc = torch.tensor([PS + 40, 2 * PS + 300], device="cuda")
        fb = dsv4.forward_batch(backend, out_loc.clone(), "DECODE", seq_lens=seq_lens)
        kv = rows(2, 0, "cuda")
        replay = dsv4.capture_decode_graph(fb, layers, kv)
        batches = [
            ([42, 302], self.old),
            ([60, 400], self.old),
            ([61, 401], self.new),  # mapping entries rewritten in place
        ]
        for seed, (lens, mapping) in enumerate(batches, start=1):
            dsv4.update_mapping_in_place(pool, mapping)
            loc = torch.tensor([PS + lens[0] - 1, 2 * PS + lens[1] - 1], device="cuda")
            with dsv4.TranslationCounter(pool) as counter:
                replay(loc, lens, rows(2, seed, "cuda"))
                self.assertEqual(counter.out_loc_calls, 0, "translated outside the graph")
            self._assert_rows(pool, layers, mapping, loc, rows(2, seed, "cuda"), f"replay {seed}")


class TestDSV4PoolMappingRebuildCPU(_MappingRebuildCases, CustomTestCase):
    device = "cpu"


class TestDSV4SwaTranslationOncePerBatchCPU(_OncePerBatchCases, CustomTestCase):
    device = "cpu"


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device")
class TestDSV4PoolMappingRebuildCUDA(_MappingRebuildCases, CustomTestCase):
    device = "cuda"


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device")
class TestDSV4SwaTranslationOncePerBatchCUDA(_OncePerBatchCases, CustomTestCase):
    device = "cuda"


if __name__ == "__main__":
    unittest.main()
