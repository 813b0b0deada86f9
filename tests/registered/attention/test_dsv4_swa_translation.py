"""DSV4 full -> SWA translation of out-cache locations.

Contract: an SWA KV write lands at the SWA slots given by the mapping that is
registered when it runs and by the locations of the batch it belongs to, on
every layer; the attention backend translates a batch's out-cache locations
once, when it builds its forward metadata (int32), and every SWA write takes
its locations from one resolver that falls back to a live translation when
the metadata's value is not this batch's (IDLE, stale length, placeholder
locations, no metadata). CUDA graph replays use the replayed batch's
translation.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from dsv4_swa_translation_fixtures import (  # noqa: E402
    BACKEND_PAGE_SIZE,
    TranslationCounter,
    cpu_store_kernels,
    extend_metadata,
    forward_batch,
    make_backend,
    make_pool,
    paged_mapping,
    rows,
    rows_at,
    store_layers,
)

from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=30, suite="stage-a-test-cpu")

FULL_PAGES = 6
# Two layouts of the same full pages in the SWA pool, as before and after a
# HiCache commit / load-back rebuilds the mapping.
OLD_LAYOUT = {1: 1, 2: 2, 3: 3, 4: 4}
NEW_LAYOUT = {1: 4, 2: 3, 3: 2, 4: 1}


def _new_batch_hook(pool):
    # The per-forward-batch hook the model runner calls where the pool has one.
    hook = getattr(pool, "invalidate_loc_cache", None)
    if hook is not None:
        hook()


class _PoolMappingCases:
    """Stale-mapping scenarios through the real pool's store entry points."""

    device = "cpu"
    page_sizes = (128, 256)

    def _setup(self, page_size, start_layer=0, layer_num=6):
        pool = make_pool(
            page_size=page_size,
            layer_num=layer_num,
            start_layer=start_layer,
            device=self.device,
        )
        old = paged_mapping(FULL_PAGES, OLD_LAYOUT, page_size, self.device)
        new = paged_mapping(FULL_PAGES, NEW_LAYOUT, page_size, self.device)
        pool.register_mapping(old)
        layers = list(range(start_layer, start_layer + layer_num))
        return pool, old, new, layers

    def _locs(self, page_size, offsets):
        return torch.tensor(offsets, dtype=torch.int64, device=self.device) + page_size

    def _store(self, pool, layer_id, loc, kv, i):
        # Alternate the two fused SWA store entry points of the pool.
        if i % 2 == 0:
            pool.set_swa_key_buffer_radix_fused(layer_id, loc, kv)
        else:
            pool.set_swa_key_buffer_radix_fused_norm_rope(
                layer_id, loc, kv, None, 1e-6, None, None
            )

    def test_register_mapping_is_honoured_by_later_stores(self):
        for page_size in self.page_sizes:
            with cpu_store_kernels():
                pool, old, new, layers = self._setup(page_size)
                loc = self._locs(page_size, [3, 4, page_size + 7, 2 * page_size + 1])
                kv = rows(len(loc), seed=1, device=self.device)
                self._store(pool, layers[0], loc, kv, 0)
                # HiCache commit / load-back replaces the mapping.
                pool.register_mapping(new)
                for i, layer_id in enumerate(layers[1:], start=1):
                    self._store(pool, layer_id, loc, kv, i)
                self.assertTrue(torch.equal(rows_at(pool, layers[0], old[loc]), kv))
                for layer_id in layers[1:]:
                    self.assertTrue(
                        torch.equal(rows_at(pool, layer_id, new[loc]), kv),
                        f"page {page_size}: layer {layer_id} wrote with the replaced mapping",
                    )

    def _run_next_batch_off_start_layer(self, start_layer, offsets_of, rebuild):
        """Batch A stores on every layer; the next batch (other slots, after a
        mapping rebuild when asked) makes its first SWA store on a layer that
        is not the pool's start_layer."""
        for page_size in self.page_sizes:
            with cpu_store_kernels():
                pool, old, new, layers = self._setup(page_size, start_layer)
                loc_a = self._locs(page_size, [0, 1, 2, 3])
                kv_a = rows(4, seed=1, device=self.device)
                for i, layer_id in enumerate(layers):
                    self._store(pool, layer_id, loc_a, kv_a, i)

                _new_batch_hook(pool)
                mapping = old
                if rebuild:
                    pool.register_mapping(new)
                    mapping = new
                loc_b = self._locs(page_size, offsets_of(page_size))
                kv_b = rows(len(loc_b), seed=2, device=self.device)
                for i, layer_id in enumerate(layers[1:], start=1):
                    self._store(pool, layer_id, loc_b, kv_b, i)
                for layer_id in layers[1:]:
                    self.assertTrue(
                        torch.equal(rows_at(pool, layer_id, mapping[loc_b]), kv_b),
                        f"page {page_size}: layer {layer_id} wrote at another batch's slots",
                    )

    def test_batch_whose_first_store_is_not_start_layer(self):
        self._run_next_batch_off_start_layer(
            0, lambda ps: [ps + 5, ps + 6, 9, 10], rebuild=True
        )

    def test_pp_stage_batch_whose_first_store_is_not_start_layer(self):
        self._run_next_batch_off_start_layer(
            4, lambda ps: [ps + 5, ps + 6, 9, 10], rebuild=True
        )

    def test_shorter_batch_is_not_written_with_longer_translation(self):
        # Without a rebuild: another batch's translation has the wrong length
        # (a shape error / IndexError in the store otherwise).
        self._run_next_batch_off_start_layer(
            4, lambda ps: [11, ps + 12], rebuild=False
        )

    def test_rebuilt_mapping_used_by_next_full_batch(self):
        # Regression guard: a batch that stores on every layer in order.
        for page_size in self.page_sizes:
            with cpu_store_kernels():
                pool, old, new, layers = self._setup(page_size, start_layer=4)
                loc = self._locs(page_size, [0, 1, page_size + 2])
                for seed, mapping in ((1, old), (2, new)):
                    _new_batch_hook(pool)
                    pool.register_mapping(mapping)
                    kv = rows(len(loc), seed=seed, device=self.device)
                    for i, layer_id in enumerate(layers):
                        self._store(pool, layer_id, loc, kv, i)
                    for layer_id in layers:
                        self.assertTrue(
                            torch.equal(rows_at(pool, layer_id, mapping[loc]), kv)
                        )


class _ResolverCases:
    """The backend's once-per-batch translation and its resolver."""

    device = "cpu"
    num_layers = 12

    def setUp(self):
        self._kernels = cpu_store_kernels()
        self._kernels.__enter__()
        self.pool = make_pool(
            page_size=BACKEND_PAGE_SIZE, layer_num=self.num_layers, device=self.device
        )
        self.old = paged_mapping(FULL_PAGES, OLD_LAYOUT, BACKEND_PAGE_SIZE, self.device)
        self.new = paged_mapping(FULL_PAGES, NEW_LAYOUT, BACKEND_PAGE_SIZE, self.device)
        self.pool.register_mapping(self.old)
        self.backend = make_backend(self.pool)
        self.layers = list(range(self.num_layers))

    def tearDown(self):
        self._kernels.__exit__(None, None, None)

    def _batch(self, seq_lens=(40, 300), extend_lens=(3, 2)):
        """out-cache locations of an EXTEND batch consistent with the
        backend's req_to_token (request r, position i -> 256 * (r + 1) + i)."""
        locs = []
        for r, (seq_len, ext) in enumerate(zip(seq_lens, extend_lens)):
            locs += [BACKEND_PAGE_SIZE * (r + 1) + p for p in range(seq_len - ext, seq_len)]
        out_loc = torch.tensor(locs, dtype=torch.int64, device=self.device)
        metadata = extend_metadata(self.backend, out_loc, list(seq_lens), list(extend_lens))
        self.backend.forward_metadata = metadata
        return out_loc, metadata

    def _resolve(self, fb):
        return self.backend.get_swa_out_cache_loc(fb)

    def test_valid_metadata_is_returned_as_int32(self):
        out_loc, metadata = self._batch()
        swa_out_loc = metadata.core_attn_metadata.swa_out_loc
        self.assertEqual(swa_out_loc.dtype, torch.int32)
        self.assertTrue(torch.equal(swa_out_loc.long(), self.old[out_loc]))
        got = self._resolve(forward_batch(self.backend, out_loc))
        self.assertIs(got, swa_out_loc)

    def test_stale_length_falls_back_to_live_translation(self):
        out_loc, metadata = self._batch()
        padded = torch.cat([out_loc, out_loc.new_zeros(3)])  # DP padding
        got = self._resolve(forward_batch(self.backend, padded))
        self.assertEqual(got.dtype, torch.int32)
        self.assertTrue(torch.equal(got.long(), self.old[padded]))

    def test_idle_falls_back_to_live_translation(self):
        self._batch()  # metadata left from the previous batch
        idle_loc = torch.tensor(
            [BACKEND_PAGE_SIZE * 3 + 1] * 5, dtype=torch.int64, device=self.device
        )
        got = self._resolve(forward_batch(self.backend, idle_loc, ForwardMode.IDLE))
        self.assertEqual(got.dtype, torch.int32)
        self.assertTrue(torch.equal(got.long(), self.old[idle_loc]))

    def test_no_metadata_falls_back_to_live_translation(self):
        self.backend.forward_metadata = None
        loc = torch.tensor([260, 261, 900], dtype=torch.int64, device=self.device)
        got = self._resolve(forward_batch(self.backend, loc))
        self.assertEqual(got.dtype, torch.int32)
        self.assertTrue(torch.equal(got.long(), self.old[loc]))

    def test_placeholder_draft_extend_metadata_is_not_used(self):
        # DRAFT_EXTEND graph buckets build metadata without the batch's
        # locations (zeros); the store must use the batch's own.
        seq_lens = torch.tensor([40, 300], dtype=torch.int32, device=self.device)
        metadata = self.backend.init_forward_metadata_draft_extend(
            max_seq_len=300,
            req_pool_indices=torch.arange(2, device=self.device),
            seq_lens=seq_lens,
            seq_lens_cpu=[40, 300],
            num_tokens_per_bs=2,
        )
        self.backend.forward_metadata = metadata
        loc = torch.tensor([294, 295, 810, 811], dtype=torch.int64, device=self.device)
        fb = forward_batch(self.backend, loc, ForwardMode.DRAFT_EXTEND)
        got = self._resolve(fb)
        self.assertTrue(torch.equal(got.long(), self.old[loc]))
        store_layers(self.backend, fb, self.layers, rows(4, 5, self.device))
        for layer_id in self.layers:
            self.assertTrue(
                torch.equal(rows_at(self.pool, layer_id, self.old[loc]), rows(4, 5, self.device))
            )

    def test_multi_step_draft_decode_uses_each_steps_locations(self):
        # Per-step draft backends share metadata built once for all steps.
        self.backend.speculative_num_steps = 3
        out_loc, _ = self._batch()
        step_loc = out_loc + 20
        got = self._resolve(forward_batch(self.backend, step_loc))
        self.assertTrue(torch.equal(got.long(), self.old[step_loc]))

    def test_one_translation_per_batch_across_layers(self):
        counter = TranslationCounter(self.pool)
        try:
            out_loc, _ = self._batch()
            self.assertEqual(counter.out_loc_calls, 1, "metadata build")
            counter.reset()
            kv = rows(len(out_loc), seed=1, device=self.device)
            store_layers(self.backend, forward_batch(self.backend, out_loc), self.layers, kv)
            self.assertEqual(counter.out_loc_calls, 0, "SWA stores re-translated")
        finally:
            counter.remove()
        for layer_id in self.layers:
            self.assertTrue(torch.equal(rows_at(self.pool, layer_id, self.old[out_loc]), kv))

    def test_mapping_rebuilt_between_batches_is_used_by_next_batch(self):
        out_loc, _ = self._batch()
        kv = rows(len(out_loc), seed=1, device=self.device)
        store_layers(self.backend, forward_batch(self.backend, out_loc), self.layers, kv)
        _new_batch_hook(self.pool)
        self.pool.register_mapping(self.new)
        out_loc2, metadata2 = self._batch(seq_lens=(41, 301), extend_lens=(1, 1))
        self.assertTrue(
            torch.equal(metadata2.core_attn_metadata.swa_out_loc.long(), self.new[out_loc2])
        )
        kv2 = rows(len(out_loc2), seed=2, device=self.device)
        store_layers(self.backend, forward_batch(self.backend, out_loc2), self.layers, kv2)
        for layer_id in self.layers:
            self.assertTrue(torch.equal(rows_at(self.pool, layer_id, self.new[out_loc2]), kv2))


class TestDSV4PoolMappingRebuildCPU(_PoolMappingCases, CustomTestCase):
    device = "cpu"


class TestDSV4SwaOutCacheLocResolverCPU(_ResolverCases, CustomTestCase):
    device = "cpu"


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device")
class TestDSV4PoolMappingRebuildCUDA(_PoolMappingCases, CustomTestCase):
    device = "cuda"


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device")
class TestDSV4SwaOutCacheLocResolverCUDA(_ResolverCases, CustomTestCase):
    device = "cuda"

    def _capture(self, out_loc_buf, kv_buf, counter):
        """Capture one batch's SWA stores over all layers, as the graph
        runner does: metadata from placeholder locations, then the graph."""
        seq_lens, extend_lens = [40, 300], [3, 2]
        metadata = extend_metadata(
            self.backend, torch.zeros_like(out_loc_buf), seq_lens, extend_lens
        )
        self.backend.forward_metadata = metadata
        fb = forward_batch(self.backend, out_loc_buf)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            store_layers(self.backend, fb, self.layers, kv_buf)  # warmup
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        counter.reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            store_layers(self.backend, fb, self.layers, kv_buf)
        self.assertEqual(counter.out_loc_calls, 0, "translation baked into the graph")
        return graph, metadata

    def _replay(self, graph, captured, out_loc_buf, kv_buf, out_loc, kv):
        out_loc_buf.copy_(out_loc)
        kv_buf.copy_(kv)
        temp = extend_metadata(self.backend, out_loc, [40, 300], [3, 2])
        captured.copy_(temp)  # what replay_cuda_graph_metadata_from does
        self.backend.forward_metadata = captured
        graph.replay()
        torch.cuda.synchronize()

    def test_graph_replay_uses_replayed_batch_translation(self):
        n = 5
        out_loc_buf = torch.zeros(n, dtype=torch.int64, device="cuda")
        kv_buf = torch.zeros(n, rows(1, 0, "cuda").shape[1], device="cuda")
        counter = TranslationCounter(self.pool)
        try:
            graph, captured = self._capture(out_loc_buf, kv_buf, counter)
            batches = [
                ([37, 38, 39, 298, 299], self.old),
                ([100, 101, 102, 200, 201], self.old),
                ([110, 111, 112, 210, 211], self.new),  # mapping rebuilt
            ]
            for seed, (positions, mapping) in enumerate(batches, start=1):
                if mapping is not self.pool.full_to_swa_index_mapping:
                    self.pool.register_mapping(mapping)
                out_loc = torch.tensor(
                    [p + BACKEND_PAGE_SIZE * (1 if i < 3 else 2) for i, p in enumerate(positions)],
                    dtype=torch.int64,
                    device="cuda",
                )
                kv = rows(n, seed, "cuda")
                self._replay(graph, captured, out_loc_buf, kv_buf, out_loc, kv)
                for layer_id in self.layers:
                    self.assertTrue(
                        torch.equal(rows_at(self.pool, layer_id, mapping[out_loc]), kv),
                        f"replay {seed}: layer {layer_id} used another translation",
                    )
        finally:
            counter.remove()


if __name__ == "__main__":
    unittest.main()
