"""DeepSeek-V4 pools of one pipeline stage and their HiCache stack, for tests.

Builds the real ``DeepSeekV4TokenToKVPool`` for stage ``k`` of ``N`` and runs
the real ``build_deepseek_v4_hicache_stack`` on it. The mixins at the bottom
hold the checks; the CPU and CUDA test files bind them to a device.

Call ``maybe_stub_sgl_kernel()`` before importing this module on a machine
without a GPU.
"""

import contextlib
import dataclasses
import inspect
import types
from unittest import mock

import torch

from sglang.srt.distributed.utils import get_pp_indices
from sglang.srt.mem_cache import memory_pool_host
from sglang.srt.mem_cache.deepseek_v4_memory_pool import (
    DeepSeekV4TokenToKVPool,
    get_compress_state_ring_size,
)
from sglang.srt.mem_cache.hicache_storage import PoolName, PoolTransfer
from sglang.srt.mem_cache.hybrid_cache import hybrid_pool_assembler

# DSV4 shape in small: uncompressed first layers, then C4 and C128 layers
# alternating, so that each of three 4-layer stages holds both kinds.
COMPRESS_RATIOS = [0, 0, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128]
PP_SIZE = 3
# The model runner requires page_size == swa_page_size == 256 for DSV4.
PAGE_SIZE = 256
FULL_TOKENS = 4 * PAGE_SIZE
SWA_TOKENS = 4 * PAGE_SIZE

# (state entry, DeepSeekV4TokenToKVPool list attribute, compress ratio)
STATE_ENTRIES = (
    (PoolName.DEEPSEEK_V4_C4_STATE, "compress_state_pools", 4),
    (PoolName.DEEPSEEK_V4_C4_INDEXER_STATE, "indexer_compress_state_pools", 4),
    (PoolName.DEEPSEEK_V4_C128_STATE, "compress_state_pools", 128),
)


def stage_range(pp_rank: int, pp_size: int = PP_SIZE) -> tuple[int, int]:
    return get_pp_indices(len(COMPRESS_RATIOS), pp_rank, pp_size)


class AccessRecordingList(list):
    """A list that remembers which positions were read by index or slice."""

    def __init__(self, items):
        super().__init__(items)
        self.touched = set()

    def __getitem__(self, key):
        if isinstance(key, slice):
            self.touched.update(range(*key.indices(len(self))))
        else:
            self.touched.add(key % len(self))
        return super().__getitem__(key)

    def touched_none(self) -> list[int]:
        return sorted(i for i in self.touched if list.__getitem__(self, i) is None)


def _default_server_args(**overrides) -> types.SimpleNamespace:
    """ServerArgs field defaults (no __post_init__, which wants a model)."""
    from sglang.srt.server_args import ServerArgs

    values = {
        f.name: f.default
        for f in dataclasses.fields(ServerArgs)
        if f.default is not dataclasses.MISSING
    }
    values.update(overrides)
    return types.SimpleNamespace(**values)


@contextlib.contextmanager
def _non_speculative_global_args():
    # The pool reads the global server args (speculative_algorithm for the
    # ring size; later releases more fields, hence every default).
    from sglang.srt import server_args

    args = _default_server_args(speculative_algorithm=None)
    if hasattr(server_args, "_global_server_args"):
        target, attr = server_args, "_global_server_args"
    else:
        # 0.5.15+: the runtime context owns the slot.
        from sglang.srt.runtime_context import get_context

        target, attr = get_context(), "_server_args"
    with mock.patch.object(target, attr, args):
        yield


def build_stage_pool(pp_rank: int, device: str, pp_size: int = PP_SIZE):
    """Real DSV4 pool of one stage, with the layer/state lists access-recorded."""
    start, end = stage_range(pp_rank, pp_size)
    swa_pages = SWA_TOKENS // PAGE_SIZE
    # 0.5.12 takes one state_dtype, 0.5.15+ one per compress ratio; pass the
    # same float32 states under whichever names the release takes.
    taken = inspect.signature(DeepSeekV4TokenToKVPool).parameters
    extra = {
        name: torch.float32
        for name in ("state_dtype", "c4_state_dtype", "c128_state_dtype")
        if name in taken
    }
    with _non_speculative_global_args():
        pool = DeepSeekV4TokenToKVPool(
            **extra,
            max_num_reqs=4,
            swa_size=SWA_TOKENS,
            c4_size=FULL_TOKENS // 4,
            c128_size=FULL_TOKENS // 128,
            # Sized like the pool configurator: one ring per SWA page.
            c4_state_pool_size=swa_pages * get_compress_state_ring_size(4),
            c128_state_pool_size=swa_pages * get_compress_state_ring_size(128),
            page_size=PAGE_SIZE,
            swa_page_size=PAGE_SIZE,
            dtype=torch.float8_e4m3fn,
            qk_nope_head_dim=448,
            qk_rope_head_dim=64,
            indexer_head_dim=128,
            layer_num=end - start,
            device=device,
            enable_memory_saver=False,
            compression_ratios=list(COMPRESS_RATIOS),
            start_layer=start,
            end_layer=end,
        )
    pool.layer_mapping = AccessRecordingList(pool.layer_mapping)
    pool.compress_state_pools = AccessRecordingList(pool.compress_state_pools)
    pool.indexer_compress_state_pools = AccessRecordingList(
        pool.indexer_compress_state_pools
    )
    return pool


def stage_device_pages(pool) -> dict[str, tuple[torch.Tensor, int]]:
    """Every device tensor the stage's HiCache stack copies, by a stable name,
    with the bytes of one page (a KV row, or one state ring per SWA page)."""
    pages = {}
    for name, bufs in (
        ("swa", pool.swa_kv_pool.kv_buffer),
        ("c4", pool.c4_kv_pool.kv_buffer),
        ("c4_indexer", pool.c4_indexer_kv_pool.index_k_with_scale_buffer),
        ("c128", pool.c128_kv_pool.kv_buffer),
    ):
        for i, buf in enumerate(bufs):
            pages[f"{name}[{i}]"] = (buf, buf[0].nbytes)
    for attr in ("compress_state_pools", "indexer_compress_state_pools"):
        for layer_id in range(pool.start_layer, pool.end_layer):
            state = list.__getitem__(getattr(pool, attr), layer_id)
            if state is not None:
                t = state.kv_score_buffer.kv_score
                pages[f"{attr}[{layer_id}]"] = (t, state.ring_size * t[0].nbytes)
    return pages


def page_bytes_of(raw: torch.Tensor, page: int, page_bytes: int) -> torch.Tensor:
    """Page ``page`` of a uint8 view of a device tensor."""
    return raw.reshape(-1)[page * page_bytes : (page + 1) * page_bytes]


def fill_with_seeded_bytes(tensors) -> None:
    gen = torch.Generator().manual_seed(1234)
    for t in tensors:
        raw = t.view(torch.uint8)
        raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8, generator=gen))


class ControllerRecorder:
    """Stands in for HybridCacheController, which needs CUDA streams and a
    process group; the tests only need the arguments it was built with."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class StateHostPoolRecorder:
    """Stands in for DeepSeekV4StateHostPool where a test only looks at the
    KV/SWA side of the stack."""

    layout = "layer_first"

    def __init__(self, *, pool_name, state_pools, **kwargs):
        self.pool_name = pool_name
        self.state_pools = state_pools


def _alloc_unpinned(dims, dtype, device, pin_memory, allocator):
    return allocator.allocate(dims, dtype=dtype, device=device)


@contextlib.contextmanager
def host_pool_patches(device: str):
    with contextlib.ExitStack() as stack:
        # The pools here are a few MB; do not make the test depend on the
        # 10 GB of free host RAM that the real reserve asks for.
        stack.enter_context(
            mock.patch.object(memory_pool_host, "HICACHE_HOST_MEMORY_RESERVE_BYTES", 0)
        )
        if torch.device(device).type == "cpu":
            # Host pools pin (cudaHostRegister) their buffers, which needs a
            # CUDA driver: switch pinning off for CPU-only device pools.
            stack.enter_context(
                mock.patch.dict(
                    memory_pool_host.ALLOC_MEMORY_FUNCS,
                    {torch.device("cpu"): _alloc_unpinned},
                )
            )
        yield


def torch_transfer_kv_direct(src_layers, dst_layers, src_indices, dst_indices, page_size):
    """Row copy with the semantics of sgl_kernel's transfer_kv_direct
    (page_size=1 as the DSV4 host pools call it)."""
    assert page_size == 1
    assert len(src_layers) == len(dst_layers)
    for src, dst in zip(src_layers, dst_layers):
        dst[dst_indices.to(dst.device)] = src[src_indices.to(src.device)].to(dst.device)


@contextlib.contextmanager
def host_transfer_patches(device: str):
    if torch.device(device).type == "cpu":
        # Without a GPU sgl_kernel is stubbed and its copy kernel does nothing;
        # use the same row copy in torch so the round trip moves real bytes.
        # create=True: later releases import the kernel only on CUDA.
        with mock.patch.object(
            memory_pool_host,
            "transfer_kv_direct",
            torch_transfer_kv_direct,
            create=True,
        ):
            yield
    else:
        yield


def _fake_params():
    swa_attn_allocator = types.SimpleNamespace(
        alloc=lambda need_size: None, free=lambda indices: None
    )
    allocator = types.SimpleNamespace(
        size_full=FULL_TOKENS, swa_attn_allocator=swa_attn_allocator
    )
    return types.SimpleNamespace(token_to_kv_pool_allocator=allocator)


def _hicache_server_args():
    return types.SimpleNamespace(
        hicache_size=0,
        hicache_ratio=2.0,
        hicache_mem_layout="layer_first",
        hicache_storage_backend=None,
        hicache_write_policy="write_through",
        hicache_io_backend="direct",
    )


def build_stage_stack(pool, pp_rank: int, pp_size: int = PP_SIZE, state_host_pool_cls=None):
    """Run the real build_deepseek_v4_hicache_stack for one stage's pool."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(
                hybrid_pool_assembler, "HybridCacheController", ControllerRecorder
            )
        )
        if state_host_pool_cls is not None:
            stack.enter_context(
                mock.patch.object(
                    hybrid_pool_assembler,
                    "DeepSeekV4StateHostPool",
                    state_host_pool_cls,
                )
            )
        stack.enter_context(host_pool_patches(pool.device))
        build = hybrid_pool_assembler.build_deepseek_v4_hicache_stack
        # 0.5.12 takes pp_rank/pp_size; later releases take a pp_group.
        if "pp_rank" in inspect.signature(build).parameters:
            pp = dict(pp_rank=pp_rank, pp_size=pp_size)
        else:
            pp = dict(
                pp_group=types.SimpleNamespace(rank_in_group=pp_rank, world_size=pp_size)
            )
        return build(
            params=_fake_params(),
            server_args=_hicache_server_args(),
            kvcache=pool,
            page_size=PAGE_SIZE,
            tp_group=None,
            load_cache_event=None,
            storage_backend=None,
            **pp,
        )


def page_token_indices(pages: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(p * PAGE_SIZE, (p + 1) * PAGE_SIZE) for p in pages])


def expected_compress_layer_ids(start: int, end: int, ratio: int) -> dict[int, int]:
    """Stage-local transfer layer -> index in this stage's C4 or C128 pool."""
    local = [l for l in range(end - start) if COMPRESS_RATIOS[start + l] == ratio]
    return {l: i for i, l in enumerate(local)}


class EachStage:
    """First, a middle and the last stage of the split, each its own test."""

    device = "cpu"

    def test_first_stage(self):
        self._check_stage(0)

    def test_middle_stage(self):
        self._check_stage(PP_SIZE // 2)

    def test_last_stage(self):
        self._check_stage(PP_SIZE - 1)


class LayerCountChecks(EachStage):
    """The #25477 part: transfer-layer count and KV/SWA/C4/C128 mappings."""

    def _check_stage(self, pp_rank):
        start, end = stage_range(pp_rank)
        n = end - start
        pool = build_stage_pool(pp_rank, self.device)
        # Only the KV side is checked here; the state host pools are replaced
        # so this guard does not depend on the state-pool fix.
        group, controller = build_stage_stack(
            pool, pp_rank, state_host_pool_cls=StateHostPoolRecorder
        )

        self.assertEqual(controller.kwargs["transfer_layer_num"], n)
        self.assertEqual(pool.layer_mapping.touched_none(), [])
        self.assertTrue(pool.layer_mapping.touched <= set(range(start, end)))

        kv = group.entry_map[PoolName.KV]
        swa = group.entry_map[PoolName.SWA]
        for name in (PoolName.KV, PoolName.SWA):
            entry = group.entry_map[name]
            self.assertEqual([entry.layer_mapper(l) for l in range(n)], list(range(n)))
            self.assertIsNone(entry.layer_mapper(n))
        self.assertIs(kv.device_pool, pool)
        for l in range(n):
            self.assertIs(
                swa.host_pool.device_buffers[swa.layer_mapper(l)],
                pool.get_swa_key_buffer(start + l),
            )

        compressed = (
            (PoolName.DEEPSEEK_V4_C4, 4, pool.get_extra_key_buffer),
            (PoolName.DEEPSEEK_V4_C4_INDEXER, 4, pool.get_index_k_with_scale_buffer),
            (PoolName.DEEPSEEK_V4_C128, 128, pool.get_extra_key_buffer),
        )
        for name, ratio, device_buffer_of in compressed:
            entry = group.entry_map[name]
            expected = expected_compress_layer_ids(start, end, ratio)
            self.assertTrue(expected, "every stage holds C4 and C128 layers")
            self.assertEqual(entry.host_pool.layer_num, len(expected))
            for l in range(n + 1):
                self.assertEqual(entry.layer_mapper(l), expected.get(l), (name, l))
            for l, slot in expected.items():
                # The slot the transfer uses is the buffer the model uses for
                # the global layer.
                self.assertIs(
                    entry.host_pool.device_buffers[slot], device_buffer_of(start + l)
                )


class StatePoolChecks(EachStage):
    """Host state pools wrap the state pool of the global layer they claim."""

    def _check_stage(self, pp_rank):
        start, end = stage_range(pp_rank)
        n = end - start
        pool = build_stage_pool(pp_rank, self.device)
        try:
            group, _ = build_stage_stack(pool, pp_rank)
        except ValueError as e:
            self.fail(f"stage {pp_rank} ({start}..{end}): stack build failed: {e}")

        for name, attr, ratio in STATE_ENTRIES:
            entry = group.entry_map[name]
            host = entry.host_pool
            state_pools = getattr(pool, attr)
            expected_layers = [
                l for l in range(n) if COMPRESS_RATIOS[start + l] == ratio
            ]
            self.assertEqual(host.layer_num, len(expected_layers), name)
            slots = []
            for l in range(n + 1):
                slot = entry.layer_mapper(l)
                if l not in expected_layers:
                    self.assertIsNone(slot, (name, l))
                    continue
                self.assertIsNotNone(slot, (name, l))
                slots.append(slot)
                device_state = list.__getitem__(state_pools, start + l)
                self.assertIsNotNone(device_state)
                self.assertIs(host.state_pools[slot], device_state, (name, l))
                self.assertEqual(
                    host.device_page_views[slot].data_ptr(),
                    device_state.kv_score_buffer.kv_score.data_ptr(),
                    (name, l),
                )
            self.assertEqual(sorted(slots), list(range(len(expected_layers))), name)

        for attr in ("compress_state_pools", "indexer_compress_state_pools"):
            touched = getattr(pool, attr)
            self.assertEqual(touched.touched_none(), [], attr)
            self.assertTrue(touched.touched <= set(range(start, end)), attr)


class RoundTripChecks:
    """Device -> host -> device through the assembled entries, byte for byte."""

    device = "cpu"
    # Device pages copied out, and the host pages they land in (sorted, as
    # the controller sorts host indices for the direct io backend).
    DEVICE_PAGES = [3, 1]
    HOST_PAGES = [2, 5]

    def test_round_trip_first_stage(self):
        self._round_trip(0)

    def test_round_trip_middle_stage(self):
        self._round_trip(PP_SIZE // 2)

    def test_round_trip_last_stage(self):
        self._round_trip(PP_SIZE - 1)

    def _round_trip(self, pp_rank):
        start, end = stage_range(pp_rank)
        pool = build_stage_pool(pp_rank, self.device)
        pages = stage_device_pages(pool)
        fill_with_seeded_bytes(t for t, _ in pages.values())
        before = {k: t.view(torch.uint8).clone() for k, (t, _) in pages.items()}
        try:
            group, _ = build_stage_stack(pool, pp_rank)
        except ValueError as e:
            self.fail(f"stage {pp_rank} ({start}..{end}): stack build failed: {e}")

        # With io_backend "direct" the controller hands both index tensors to
        # the host pools on the CPU (CacheController.move_indices).
        device_idx = page_token_indices(self.DEVICE_PAGES)
        host_idx = page_token_indices(self.HOST_PAGES)
        # The same page numbers serve FULL (C4/C128) and SWA (SWA/state) here.
        transfers = [
            PoolTransfer(name=e.name, host_indices=host_idx, device_indices=device_idx)
            for e in group.entries
            if e.name != PoolName.KV
        ]

        with host_transfer_patches(self.device):
            group.backup_from_device_all_layer(
                pool, host_idx, device_idx, "direct", pool_transfers=transfers
            )
            self._sync()
            self._check_host_copy(group, start, end, before, pages)
            for t, _ in pages.values():
                t.view(torch.uint8).zero_()
            for l in range(end - start):
                group.load_to_device_per_layer(
                    pool, host_idx, device_idx, l, "direct", pool_transfers=transfers
                )
        self._sync()

        for key, (t, page_bytes) in pages.items():
            for p in self.DEVICE_PAGES:
                self.assertTrue(
                    torch.equal(
                        page_bytes_of(t.view(torch.uint8), p, page_bytes),
                        page_bytes_of(before[key], p, page_bytes),
                    ),
                    f"{key} device page {p} differs after the round trip",
                )

    def _sync(self):
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()

    def _check_host_copy(self, group, start, end, before, pages):
        # Each host slot must hold the pages of the global layer it claims.
        for name, attr, _ in STATE_ENTRIES:
            entry = group.entry_map[name]
            for l in range(end - start):
                slot = entry.layer_mapper(l)
                if slot is None:
                    continue
                key = f"{attr}[{start + l}]"
                page_bytes = pages[key][1]
                for dev_p, host_p in zip(self.DEVICE_PAGES, self.HOST_PAGES):
                    self.assertTrue(
                        torch.equal(
                            entry.host_pool.kv_buffer[slot][host_p].cpu(),
                            page_bytes_of(before[key], dev_p, page_bytes).cpu(),
                        ),
                        f"{name} slot {slot} (layer {start + l}) host page {host_p}",
                    )
