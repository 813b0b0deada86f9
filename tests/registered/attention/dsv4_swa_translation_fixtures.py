"""Builders for the DSV4 full -> SWA translation tests (CPU or CUDA).

The real ``DeepSeekV4TokenToKVPool`` is constructed (all layers uncompressed,
so no compress-state pools are needed); only its inner SWA pool is swapped for
one that writes plain rows, because the fused FlashMLA store kernels need a GPU
build. The attention backend is created without a ModelRunner and given the
attributes its metadata and store methods read.
"""

import contextlib
import types

from sglang.test.test_utils import maybe_stub_sgl_kernel

maybe_stub_sgl_kernel()

import torch  # noqa: E402

from sglang.srt.layers.attention import deepseek_v4_backend as dsv4_backend  # noqa: E402
from sglang.srt.mem_cache import deepseek_v4_memory_pool as dsv4_pool  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402
from sglang.srt.models.deepseek_v4 import MQALayer  # noqa: E402

ROW_DIM = 8  # width of one fake SWA KV row
BACKEND_PAGE_SIZE = 256  # DeepseekV4AttnBackend hardcodes this


class RowSWAPool:
    """Inner SWA pool stand-in: one [num_slots, ROW_DIM] buffer per layer."""

    def __init__(self, layer_num, num_slots, page_size, device):
        self.page_size = page_size
        self.kv_buffer = [
            torch.full((num_slots, ROW_DIM), -1.0, device=device)
            for _ in range(layer_num)
        ]

    def set_key_buffer_fused(self, layer_id, loc, cache_k):
        assert loc.dtype == torch.int32, f"store kernels take int32, got {loc.dtype}"
        self.kv_buffer[layer_id][loc.long()] = cache_k

    def get_key_buffer(self, layer_id):
        return self.kv_buffer[layer_id]


def fake_fused_k_norm_rope_flashmla(
    kv, kv_weight, eps, freqs_cis, positions, out_loc, kvcache, page_size
):
    # Only where the rows land matters here, not the norm/rope math.
    assert out_loc.dtype == torch.int32, f"kernel takes int32, got {out_loc.dtype}"
    kvcache[out_loc.long()] = kv


@contextlib.contextmanager
def cpu_store_kernels():
    """Route the pool's fused norm+rope store and FlashMLA planning to torch."""
    saved_store = dsv4_pool.fused_k_norm_rope_flashmla
    saved_plan = dsv4_backend._create_flashmla_metadata
    dsv4_pool.fused_k_norm_rope_flashmla = fake_fused_k_norm_rope_flashmla
    dsv4_backend._create_flashmla_metadata = lambda: None
    try:
        yield
    finally:
        dsv4_pool.fused_k_norm_rope_flashmla = saved_store
        dsv4_backend._create_flashmla_metadata = saved_plan


def paged_mapping(full_pages, swa_page_of, page_size, device):
    """full -> SWA index mapping laid out like SWATokenToKVPoolAllocator's
    (size + page_size entries, then a trailing -1); full page p maps to SWA
    page swa_page_of[p] with the in-page offset kept, other pages map to 0."""
    size = full_pages * page_size
    mapping = torch.zeros(size + page_size + 1, dtype=torch.int64)
    mapping[-1] = -1
    for full_page, swa_page in swa_page_of.items():
        offsets = torch.arange(page_size)
        mapping[full_page * page_size + offsets] = swa_page * page_size + offsets
    return mapping.to(device)


def make_pool(
    *, page_size, layer_num, start_layer=0, swa_pages=4, device="cpu"
):
    """Real DeepSeekV4TokenToKVPool for layers [start_layer, start_layer +
    layer_num) (a PP stage when start_layer > 0), inner SWA pool swapped."""
    end_layer = start_layer + layer_num
    swa_size = swa_pages * page_size
    pool = dsv4_pool.DeepSeekV4TokenToKVPool(
        max_num_reqs=4,
        swa_size=swa_size,
        c4_size=0,
        c128_size=0,
        c4_state_pool_size=0,
        c128_state_pool_size=0,
        page_size=page_size,
        swa_page_size=page_size,
        dtype=torch.uint8,
        state_dtype=torch.float32,
        qk_nope_head_dim=448,
        qk_rope_head_dim=64,
        indexer_head_dim=128,
        layer_num=layer_num,
        device=device,
        enable_memory_saver=False,
        compression_ratios=[0] * end_layer,
        start_layer=start_layer,
        end_layer=end_layer,
    )
    pool.swa_kv_pool = RowSWAPool(
        layer_num, swa_size + page_size + 1, page_size, device
    )
    return pool


def rows(n, seed, device):
    """n distinct KV rows, different per seed."""
    base = torch.arange(n * ROW_DIM, dtype=torch.float32).view(n, ROW_DIM)
    return (base + 1000.0 * seed).to(device)


def rows_at(pool, layer_id, swa_loc):
    """Rows found in the given (absolute) layer at SWA locations."""
    local = layer_id - pool.start_layer
    return pool.swa_kv_pool.kv_buffer[local][swa_loc.long()]


class TranslationCounter:
    """Counts the pool's translations of 1-D location vectors (out-cache
    locations); the 2-D page-index translations of metadata build are kept
    apart. Installed on the pool instance, so every caller is seen."""

    def __init__(self, pool):
        self.pool = pool
        self.out_loc_calls = 0
        self.other_calls = 0
        self._orig = pool.translate_loc_from_full_to_swa

        def counting(kv_indices):
            if kv_indices.dim() == 1:
                self.out_loc_calls += 1
            else:
                self.other_calls += 1
            return self._orig(kv_indices)

        pool.translate_loc_from_full_to_swa = counting

    def reset(self):
        self.out_loc_calls = 0
        self.other_calls = 0

    def remove(self):
        del self.pool.translate_loc_from_full_to_swa


def make_backend(pool, *, num_reqs=2, max_context=2 * BACKEND_PAGE_SIZE):
    """DeepseekV4AttnBackend with the attributes __init__ would set from a
    ModelRunner; req_to_token maps request r, position i to full slot
    BACKEND_PAGE_SIZE * (r + 1) + i."""
    device = pool.device
    backend = object.__new__(dsv4_backend.DeepseekV4AttnBackend)
    backend.device = torch.device(device)
    backend.cuda_int32_kwargs = {"device": backend.device, "dtype": torch.int32}
    backend.swa_page_size = 128
    backend.page_size = BACKEND_PAGE_SIZE
    backend.req_to_token = (
        torch.arange(max_context, dtype=torch.int32).repeat(num_reqs, 1)
        + BACKEND_PAGE_SIZE * torch.arange(1, num_reqs + 1, dtype=torch.int32)[:, None]
    ).to(device)
    backend.token_to_kv_pool = pool
    backend.MAX_SEQ_LEN_FOR_CAPTURE = max_context
    backend.c4_topk = 512
    backend.topk = 0
    backend.mtp_enabled = False
    backend.speculative_num_steps = 0
    backend.speculative_num_draft_tokens = None
    backend.speculative_step_id = 0
    backend.forward_metadata = None
    backend._replay_forward_batch = None
    # pinned host staging needs a CUDA driver; a plain copy does the same.
    backend._move_to_device = lambda xs: torch.tensor(
        xs, dtype=torch.int32, device=device
    )
    return backend


def extend_metadata(backend, out_cache_loc, seq_lens, extend_lens):
    """Metadata for an EXTEND batch through the backend's own builder
    (without compression, which needs GPU kernels)."""
    device = backend.device
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return backend.init_forward_metadata_prefill(
        max_seq_len=max(seq_lens),
        req_pool_indices=torch.arange(len(seq_lens), device=device),
        seq_lens=seq_lens_t,
        seq_lens_cpu=list(seq_lens),
        out_cache_loc=out_cache_loc,
        num_tokens=sum(extend_lens),
        extend_seq_lens=torch.tensor(extend_lens, dtype=torch.int32, device=device),
        extend_seq_lens_cpu=list(extend_lens),
        need_compress=False,
    )


def forward_batch(backend, out_cache_loc, mode=ForwardMode.EXTEND):
    """The ForwardBatch fields the DSV4 SWA write path reads."""
    return types.SimpleNamespace(
        forward_mode=mode,
        out_cache_loc=out_cache_loc,
        token_to_kv_pool=backend.token_to_kv_pool,
        attn_backend=backend,
    )


def store_via_model(layer_id, fb, kv):
    """One layer's SWA KV write as DeepseekV4 MQALayer does it (fused
    norm + rope + store), with the layer reduced to what that path reads."""
    layer = types.SimpleNamespace(
        q_lora_rank=0,
        layer_id=layer_id,
        kv_norm=types.SimpleNamespace(
            weight=types.SimpleNamespace(data=torch.ones(ROW_DIM, device=kv.device))
        ),
        eps=1e-6,
        freqs_cis=None,
    )
    positions = torch.zeros(kv.shape[0], dtype=torch.int64, device=kv.device)
    MQALayer._compute_kv_to_cache(layer, kv, positions, fb, qkv_a=kv)


def store_layers(backend, fb, layer_ids, kv):
    """A forward batch's SWA writes over many layers, alternating the model's
    fused norm+rope path and the backend's store_cache (NSA prefill-CP)."""
    for i, layer_id in enumerate(layer_ids):
        if i % 2 == 0:
            store_via_model(layer_id, fb, kv)
        else:
            backend.store_cache(layer_id, kv, fb)
