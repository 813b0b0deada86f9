"""DeepSeek-V4 pools of one pipeline stage and their HiCache stack, for tests.

The real ``DeepSeekV4TokenToKVPool`` for stage ``k`` of ``N`` and the real
``build_deepseek_v4_hicache_stack`` run on it; how to build them on the installed
release, and every stand-in they need, live in ``seam.dsv4_pool``. The mixins at
the bottom hold the checks; the CPU and CUDA test files bind them to a device.

Call ``maybe_stub_sgl_kernel()`` before importing this module on a machine
without a GPU.
"""

import os
import sys

import torch

# tests/ holds the seam; conftest puts it on the path under pytest, this line
# when a test file runs as a script.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from seam import dsv4_pool as seam  # noqa: E402

# DSV4 shape in small: uncompressed first layers, then C4 and C128 layers
# alternating, so that each of three 4-layer stages holds both kinds.
COMPRESS_RATIOS = [0, 0, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128]
PP_SIZE = 3
# The model runner requires page_size == swa_page_size == 256 for DSV4.
PAGE_SIZE = 256
FULL_TOKENS = 4 * PAGE_SIZE
SWA_TOKENS = 4 * PAGE_SIZE

# (HiCache entry, state kind, compress ratio). Whether a release registers an
# entry is its choice (C128 states are not backed up from 0.5.13 on); an entry
# that is registered must wrap the right state pools.
STATE_ENTRIES = (
    ("DEEPSEEK_V4_C4_STATE", "c4", 4),
    ("DEEPSEEK_V4_C4_INDEXER_STATE", "c4_indexer", 4),
    ("DEEPSEEK_V4_C128_STATE", "c128", 128),
)
# C4 states have to be backed up on every release: without them a C4 layer
# restored from host cannot continue compressing.
REQUIRED_STATE_ENTRIES = ("DEEPSEEK_V4_C4_STATE", "DEEPSEEK_V4_C4_INDEXER_STATE")


def stage_range(pp_rank: int, pp_size: int = PP_SIZE) -> tuple[int, int]:
    return seam.pp_stage_layers(len(COMPRESS_RATIOS), pp_rank, pp_size)


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


def build_stage_pool(pp_rank: int, device: str, pp_size: int = PP_SIZE):
    """Real DSV4 pool of one stage, with its per-layer lists access-recorded."""
    start, end = stage_range(pp_rank, pp_size)
    pool = seam.build_dsv4_pool(
        compression_ratios=COMPRESS_RATIOS,
        device=device,
        start_layer=start,
        end_layer=end,
        page_size=PAGE_SIZE,
        swa_tokens=SWA_TOKENS,
        full_tokens=FULL_TOKENS,
        state_dtype=torch.float32,
    )
    seam.wrap_layer_lists(pool, AccessRecordingList)
    return pool


def build_stage_stack(pool, pp_rank: int, pp_size: int = PP_SIZE, state_host_pool_cls=None):
    """The real HiCache stack for one stage's pool (controller recorded)."""
    return seam.build_dsv4_hicache_stack(
        pool,
        full_tokens=FULL_TOKENS,
        pp_rank=pp_rank,
        pp_size=pp_size,
        page_size=PAGE_SIZE,
        state_host_pool_cls=state_host_pool_cls,
    )


def state_pool_at(pool, kind: str, global_layer: int):
    """The device state pool of ``kind`` for a global layer, without recording."""
    return list.__getitem__(seam.state_pool_list(pool, kind), global_layer)


def stage_device_pages(pool, state_kinds) -> dict[str, tuple[torch.Tensor, int]]:
    """Every device tensor the stage's HiCache stack should copy, by a stable
    name, with the bytes of one page (a KV row, or one state ring per SWA page).
    ``state_kinds``: the state kinds the release backs up."""
    pages = {}
    for kind, bufs in seam.kv_device_buffers(pool).items():
        for i, buf in enumerate(bufs):
            pages[f"{kind}[{i}]"] = (buf, buf[0].nbytes)
    for kind, ratio in state_kinds:
        for layer_id in range(pool.start_layer, pool.end_layer):
            if COMPRESS_RATIOS[layer_id] != ratio:
                continue
            state = state_pool_at(pool, kind, layer_id)
            assert state is not None, f"pool holds no {kind} state for layer {layer_id}"
            pages[f"{kind}_state[{layer_id}]"] = seam.state_pool_pages(state)
    return pages


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same bytes of the same storage: releases hand out a fresh view per call."""
    return a.data_ptr() == b.data_ptr() and a.nbytes == b.nbytes


def page_bytes_of(raw: torch.Tensor, page: int, page_bytes: int) -> torch.Tensor:
    """Page ``page`` of a uint8 view of a device tensor."""
    return raw.reshape(-1)[page * page_bytes : (page + 1) * page_bytes]


def fill_with_seeded_bytes(tensors) -> None:
    gen = torch.Generator().manual_seed(1234)
    for t in tensors:
        raw = t.view(torch.uint8)
        raw.copy_(
            torch.randint(0, 256, raw.shape, dtype=torch.uint8, generator=gen).to(
                raw.device
            )
        )


def page_token_indices(pages: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(p * PAGE_SIZE, (p + 1) * PAGE_SIZE) for p in pages])


def expected_compress_layer_ids(start: int, end: int, ratio: int) -> dict[int, int]:
    """Stage-local transfer layer -> index in this stage's C4 or C128 pool."""
    local = [l for l in range(end - start) if COMPRESS_RATIOS[start + l] == ratio]
    return {l: i for i, l in enumerate(local)}


def registered_state_entries(test, group):
    """(entry name, entry, kind, ratio) for each state entry the stack holds;
    the C4 ones must be there."""
    found = []
    for name, kind, ratio in STATE_ENTRIES:
        entry = seam.stack_entry(group, name)
        if entry is None:
            test.assertNotIn(name, REQUIRED_STATE_ENTRIES, f"{name} is not backed up")
            continue
        found.append((name, entry, kind, ratio))
    return found


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
        stack = build_stage_stack(
            pool, pp_rank, state_host_pool_cls=seam.StateHostPoolRecorder
        )
        group = stack.group

        self.assertEqual(stack.transfer_layer_num, n)
        self.assertEqual(pool.layer_mapping.touched_none(), [])
        self.assertTrue(pool.layer_mapping.touched <= set(range(start, end)))

        kv = seam.stack_entry(group, "KV")
        swa = seam.stack_entry(group, "SWA")
        for entry in (kv, swa):
            self.assertIsNotNone(entry)
            self.assertEqual([entry.layer_mapper(l) for l in range(n)], list(range(n)))
            self.assertIsNone(entry.layer_mapper(n))
        self.assertIs(kv.device_pool, pool)
        for l in range(n):
            self.assertTrue(
                same_memory(
                    seam.host_device_tensor(swa, swa.layer_mapper(l)),
                    seam.model_device_buffer(pool, "swa", start + l),
                ),
                f"SWA layer {l}",
            )

        compressed = (
            ("DEEPSEEK_V4_C4", 4, "c4"),
            ("DEEPSEEK_V4_C4_INDEXER", 4, "c4_indexer"),
            ("DEEPSEEK_V4_C128", 128, "c128"),
        )
        for name, ratio, kind in compressed:
            entry = seam.stack_entry(group, name)
            self.assertIsNotNone(entry, name)
            expected = expected_compress_layer_ids(start, end, ratio)
            self.assertTrue(expected, "every stage holds C4 and C128 layers")
            self.assertEqual(seam.host_layer_num(entry), len(expected))
            for l in range(n + 1):
                self.assertEqual(entry.layer_mapper(l), expected.get(l), (name, l))
            for l, slot in expected.items():
                # The slot the transfer uses is the buffer the model uses for
                # the global layer.
                self.assertTrue(
                    same_memory(
                        seam.host_device_tensor(entry, slot),
                        seam.model_device_buffer(pool, kind, start + l),
                    ),
                    (name, l),
                )


class StatePoolChecks(EachStage):
    """Host state pools wrap the state pool of the global layer they claim."""

    def test_refuses_swa_pool_of_every_layer(self):
        # A SWA pool with a buffer per model layer (not PP-stage-local) would
        # have its first n buffers backed up as the stage's layers: the stack
        # must refuse it. The first stage, so no other fault stops the build.
        pool = build_stage_pool(0, self.device)
        seam.spread_swa_pool_over(pool, len(COMPRESS_RATIOS))
        with self.assertRaisesRegex(ValueError, "SWA"):
            build_stage_stack(pool, 0)

    def _check_stage(self, pp_rank):
        start, end = stage_range(pp_rank)
        n = end - start
        pool = build_stage_pool(pp_rank, self.device)
        try:
            group = build_stage_stack(pool, pp_rank).group
        except ValueError as e:
            self.fail(f"stage {pp_rank} ({start}..{end}): stack build failed: {e}")

        for name, entry, kind, ratio in registered_state_entries(self, group):
            expected_layers = [
                l for l in range(n) if COMPRESS_RATIOS[start + l] == ratio
            ]
            self.assertTrue(expected_layers, "every stage holds C4 and C128 layers")
            self.assertEqual(seam.host_layer_num(entry), len(expected_layers), name)
            slots = []
            for l in range(n + 1):
                slot = entry.layer_mapper(l)
                if l not in expected_layers:
                    self.assertIsNone(slot, (name, l))
                    continue
                self.assertIsNotNone(slot, (name, l))
                slots.append(slot)
                device_state = state_pool_at(pool, kind, start + l)
                self.assertIsNotNone(device_state)
                host_state, page_view = seam.host_state_pool(entry, slot)
                self.assertIs(host_state, device_state, (name, l))
                self.assertTrue(
                    same_memory(
                        page_view.reshape(-1),
                        seam.state_pool_pages(device_state)[0]
                        .view(torch.uint8)
                        .reshape(-1)[: page_view.numel()],
                    ),
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
        try:
            group = build_stage_stack(pool, pp_rank).group
        except ValueError as e:
            self.fail(f"stage {pp_rank} ({start}..{end}): stack build failed: {e}")
        state_entries = registered_state_entries(self, group)
        pages = stage_device_pages(
            pool, [(kind, ratio) for _, _, kind, ratio in state_entries]
        )
        fill_with_seeded_bytes(t for t, _ in pages.values())
        before = {k: t.view(torch.uint8).clone() for k, (t, _) in pages.items()}

        # With io_backend "direct" the controller hands both index tensors to
        # the host pools on the CPU (CacheController.move_indices).
        device_idx = page_token_indices(self.DEVICE_PAGES)
        host_idx = page_token_indices(self.HOST_PAGES)
        # The same page numbers serve FULL (C4/C128) and SWA (SWA/state) here.
        transfers = seam.stack_transfers(group, host_idx, device_idx)

        with seam.dsv4_host_transfers(self.device):
            seam.backup_all_layers(group, pool, host_idx, device_idx, transfers)
            self._sync()
            self._check_host_copy(state_entries, start, end, before, pages)
            for t, _ in pages.values():
                t.view(torch.uint8).zero_()
            for l in range(end - start):
                seam.load_layer(group, pool, host_idx, device_idx, l, transfers)
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

    def _check_host_copy(self, state_entries, start, end, before, pages):
        # Each host slot must hold the pages of the global layer it claims.
        for name, entry, kind, _ in state_entries:
            for l in range(end - start):
                slot = entry.layer_mapper(l)
                if slot is None:
                    continue
                key = f"{kind}_state[{start + l}]"
                page_bytes = pages[key][1]
                for dev_p, host_p in zip(self.DEVICE_PAGES, self.HOST_PAGES):
                    self.assertTrue(
                        torch.equal(
                            seam.host_page_bytes(entry, slot, host_p).cpu(),
                            page_bytes_of(before[key], dev_p, page_bytes).cpu(),
                        ),
                        f"{name} slot {slot} (layer {start + l}) host page {host_p}",
                    )
