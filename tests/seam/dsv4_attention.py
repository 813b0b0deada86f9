"""The DeepSeek-V4 attention backend and the SWA KV store path, built on the
installed release.

Checks ask for "a DSV4 pool with rows we can read", "a backend over it", "a forward
batch", "init the batch's metadata", "store layer L's SWA KV as the model does";
this module knows how each release spells them:

- 0.5.13+: ``MQALayer._compute_kv_to_cache`` takes the attention backend and reads
  the pool from the active forward context (``model_executor.forward_context``);
  0.5.12 reads ``forward_batch.token_to_kv_pool``.
- 0.5.13+: ``DeepseekV4AttnBackend`` builds metadata through ``_build_forward_metadata``
  and asserts ``req_to_token_pool.req_to_token is req_to_token``; 0.5.12 reads the
  batch's ``req_to_token_pool``.
- The pool is built by ``seam.dsv4_pool.build_dsv4_pool`` (server args, dtypes).
- 0.5.16+: the backend reads the runner's ``spec_algorithm`` object, and server
  args reach it through ``global_server_args`` (the release's own override;
  from 0.5.17 the config bags). ``ForwardBatch.init_new`` takes the hidden-state
  choices as keywords and reads more runner fields (n-gram embeddings; 0.5.19+
  ``prefill_attention_backend_str``, the decode-CP size, and a
  ``KVIndexTranslator`` that the release builds from the same pool).
- 0.5.21+: the pool's ``store_cache`` path calls ``fused_store_cache`` itself and
  the store kernels take the KV layout; ``get_swa_out_cache_loc`` first asks the
  pool for its request window (request-window mode), and 0.5.23 handles IDLE
  before any cached value.
- The spec-v2 verify step (``verify_step_under_dp``): up to 0.5.20 the
  attention-DP size and rank are ``dp_attention`` globals; from 0.5.21 they are
  set with the runtime context's scoped ``get_parallel().override``. From 0.5.21
  the backend plans C4 / C128 metadata only for the ratios its pool holds; from
  0.5.22 ``ForwardBatch.init_new`` takes its write plan from the runner's real
  ``KVIndexTranslator``; 0.5.23's forward reads the model's
  ``shared_experts_config`` and the output's ``last_hidden_states``.
- The multi-layer EAGLE verify step (``multi_layer_verify_step``): the same path
  through ``MultiLayerEagleWorkerV2.verify``, which says the metadata is planned
  with ``skip_attn_backend_init`` (0.5.12) or ``mark_forward_metadata_ready``
  (0.5.13 - 0.5.15) and from 0.5.16 with ``run_eagle_verify``'s
  ``metadata_ready_pre_pad``.

GPU kernels are replaced, on every device, by torch code with the same contract
where only the destination matters here: the fused norm+rope+FlashMLA store writes
the given rows at the given SWA slots (int32, as the kernel takes them), FlashMLA
planning returns nothing, and the compression-metadata kernels (triton) are skipped
(every layer here is uncompressed). Call ``maybe_stub_sgl_kernel()`` before
importing this module on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import types
from typing import Optional, Sequence
from unittest import mock

import torch

from seam import CannotRun, accepted, applies_only_if, building, locate, require, takes
from seam.dsv4_pool import build_dsv4_pool, global_server_args, server_args_defaults

ROW_DIM = 8  # width of one stand-in SWA KV row
PAGE_SIZE = 256  # DeepseekV4AttnBackend asserts this page size


def backend_module():
    return locate(
        "the DSV4 attention backend",
        "sglang.srt.layers.attention.deepseek_v4_backend",
    )


def _pool_module():
    return locate(
        "the DSV4 memory pool", "sglang.srt.mem_cache.deepseek_v4_memory_pool"
    )


def forward_mode(name: str):
    mode = locate("ForwardMode", "sglang.srt.model_executor.forward_batch_info:ForwardMode")
    return getattr(mode, name)


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


class RowSWAPool:
    """Inner SWA pool stand-in: one [num_slots, ROW_DIM] buffer per stage layer."""

    def __init__(self, layer_num, num_slots, page_size, device, row_dim=ROW_DIM,
                 dtype=torch.float32):
        self.page_size = page_size
        self.kv_buffer = [
            torch.full((num_slots, row_dim), -1, dtype=dtype, device=device)
            for _ in range(layer_num)
        ]

    def set_key_buffer_fused(self, layer_id, loc, cache_k):
        assert loc.dtype == torch.int32, f"store kernels take int32, got {loc.dtype}"
        self.kv_buffer[layer_id][loc.long()] = cache_k

    def set_key_buffer(self, layer_id, loc, cache):
        self.set_key_buffer_fused(layer_id, loc, cache)

    def get_key_buffer(self, layer_id):
        return self.kv_buffer[layer_id]


def _row_store(kv, kv_weight, eps, freqs_cis, positions, out_loc, kvcache, page_size,
               **layout):
    # 0.5.21+ also pass the KV layout (and 0.5.23 a query to rope): rows here.
    assert out_loc.dtype == torch.int32, f"kernel takes int32, got {out_loc.dtype}"
    kvcache[out_loc.long()] = kv


def _row_store_cache(input, cache, indices, page_size, **layout):
    """fused_store_cache, which the pool's store_cache path calls from 0.5.21
    (before, it went through the SWA pool's set_key_buffer_fused)."""
    assert indices.dtype == torch.int32, f"store kernels take int32, got {indices.dtype}"
    cache[indices.long()] = input


class _NoCompression:
    def __getattr__(self, name):
        return None


@contextlib.contextmanager
def store_kernels():
    """Replace the GPU kernels on the SWA store and metadata paths (see module doc)."""
    backend = backend_module()
    pool = _pool_module()
    require(
        hasattr(pool, "fused_k_norm_rope_flashmla"),
        "deepseek_v4_memory_pool has no fused_k_norm_rope_flashmla store kernel",
    )
    meta_cls = locate(
        "DSV4AttnMetadata",
        "sglang.srt.layers.attention.deepseek_v4_backend:DSV4AttnMetadata",
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(pool, "fused_k_norm_rope_flashmla", _row_store))
        if hasattr(pool, "fused_store_cache"):
            stack.enter_context(mock.patch.object(pool, "fused_store_cache", _row_store_cache))
        stack.enter_context(
            mock.patch.object(backend, "_create_flashmla_metadata", lambda: None)
        )
        for name in ("init_compression_metadata", "init_flashmla_related"):
            if hasattr(meta_cls, name):
                stack.enter_context(mock.patch.object(meta_cls, name, lambda self, *a, **k: None))
        # The C4 indexer's planning (deep_gemm) serves compressed layers only.
        stack.enter_context(
            mock.patch.object(
                backend.DeepseekV4AttnBackend, "init_forward_metadata_indexer",
                lambda self, *a, **k: None,
            )
        )
        if hasattr(backend, "create_paged_compressor_data"):
            stack.enter_context(
                mock.patch.object(
                    backend, "create_paged_compressor_data",
                    lambda *a, **k: _NoCompression(),
                )
            )
        yield


# ---------------------------------------------------------------------------
# Pool, mapping, backend
# ---------------------------------------------------------------------------


def make_pool(*, page_size=PAGE_SIZE, layer_num, start_layer=0, swa_pages=4,
              device="cpu", row_dim=ROW_DIM, row_dtype=torch.float32):
    """A real DeepSeekV4TokenToKVPool for layers [start_layer, start_layer +
    layer_num) (a PP stage when start_layer > 0), every layer uncompressed, its
    inner SWA pool replaced by RowSWAPool so rows can be read back."""
    end_layer = start_layer + layer_num
    swa_tokens = swa_pages * page_size
    pool = build_dsv4_pool(
        compression_ratios=[0] * end_layer,
        device=device,
        start_layer=start_layer,
        end_layer=end_layer,
        page_size=page_size,
        swa_tokens=swa_tokens,
        full_tokens=swa_tokens,
        dtype=torch.uint8,
    )
    pool.swa_kv_pool = RowSWAPool(
        layer_num, swa_tokens + page_size + 1, page_size, device, row_dim, row_dtype
    )
    return pool


def paged_mapping(full_pages, swa_page_of, page_size, device):
    """full -> SWA index mapping laid out like SWATokenToKVPoolAllocator's (size +
    page_size entries, then a trailing -1): full page p maps to SWA page
    swa_page_of[p], in-page offset kept; other pages map to 0."""
    size = full_pages * page_size
    mapping = torch.zeros(size + page_size + 1, dtype=torch.int64)
    mapping[-1] = -1
    for full_page, swa_page in swa_page_of.items():
        offsets = torch.arange(page_size)
        mapping[full_page * page_size + offsets] = swa_page * page_size + offsets
    return mapping.to(device)


def register_mapping(pool, mapping) -> None:
    """What a HiCache commit / load-back does: a new full -> SWA mapping."""
    pool.register_mapping(mapping)


def rows_at(pool, layer_id, swa_loc):
    """Rows of (global) layer ``layer_id`` at SWA slots ``swa_loc``."""
    return pool.swa_kv_pool.kv_buffer[layer_id - pool.start_layer][swa_loc.long()]


def make_backend(pool, *, num_reqs=2, max_context=2 * PAGE_SIZE, topk=0,
                 num_steps=0, step_id=0, num_draft_tokens=None, req_stride=PAGE_SIZE):
    """DeepseekV4AttnBackend over ``pool``, built by the release's own constructor
    from a model runner stand-in that carries what it reads (topk / num_steps /
    step_id: an MTP draft step backend). req_to_token maps request r, position i to
    full slot PAGE_SIZE + req_stride * r + i (one page per request by default)."""
    cls = locate(
        "DeepseekV4AttnBackend",
        "sglang.srt.layers.attention.deepseek_v4_backend:DeepseekV4AttnBackend",
    )
    device = torch.device(pool.device)
    req_to_token = (
        torch.arange(max_context, dtype=torch.int32).repeat(num_reqs, 1)
        + PAGE_SIZE
        + req_stride * torch.arange(num_reqs, dtype=torch.int32)[:, None]
    ).to(device)
    model_runner = _Loose(
        device=str(device),
        page_size=PAGE_SIZE,
        model_config=_Loose(
            context_len=max_context,
            head_dim=512,
            v_head_dim=512,
            hf_text_config=types.SimpleNamespace(index_topk=512),
        ),
        req_to_token_pool=types.SimpleNamespace(req_to_token=req_to_token),
        token_to_kv_pool=pool,
        hisparse_coordinator=None,
        is_draft_worker=False,
    )
    fields = server_args_for(topk=topk, num_draft_tokens=num_draft_tokens)
    # 0.5.16+ read the runner's speculative algorithm object.
    model_runner.spec_algorithm = _spec_algorithm(fields["speculative_algorithm"])
    with global_server_args(**fields) as published, building(
        "DeepseekV4AttnBackend"
    ), _device_capability(device):
        model_runner.server_args = published
        backend = cls(
            model_runner,
            **accepted(
                cls.__init__,
                speculative_step_id=step_id,
                topk=topk,
                speculative_num_steps=num_steps,
            ),
        )
    # Pinned host staging needs a CUDA driver; a plain copy does the same.
    backend._move_to_device = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)
    if not hasattr(backend, "req_to_token_pool"):
        # 0.5.12 keeps only req_to_token; the batches here carry the pool.
        backend.req_to_token_pool = model_runner.req_to_token_pool
    _SERVER_ARGS[id(backend)] = fields
    return backend


@contextlib.contextmanager
def _device_capability(device: torch.device):
    """0.5.21 builds the DSV4 backend's candidate indexer after asking the CUDA
    device capability without checking for CUDA first (0.5.22 checks): on a CPU
    device the answer is "not SM100"."""
    try:
        indexer = importlib.import_module("sglang.srt.layers.attention.dsv4.v41_indexer")
    except ImportError:
        indexer = None
    if device.type != "cpu" or not hasattr(indexer, "is_sm100_or_newer"):
        yield
        return
    with mock.patch.object(indexer, "is_sm100_or_newer", lambda: False):
        yield


# Server-args fields each backend was built with, for the forward context of its
# batches.
_SERVER_ARGS: dict = {}


def server_args_for(*, topk=0, num_draft_tokens=None) -> dict:
    """Server-args fields of a DSV4 run (with MTP when topk > 0), for
    ``global_server_args(**fields)``."""
    return dict(
        speculative_algorithm="EAGLE" if topk else None,
        speculative_eagle_topk=topk or None,
        speculative_num_draft_tokens=num_draft_tokens,
        enable_deepseek_v4_fp4_indexer=False,
    )


def _spec_algorithm(name):
    spec = locate(
        "SpeculativeAlgorithm", "sglang.srt.speculative.spec_info:SpeculativeAlgorithm"
    )
    return spec.from_string(name)


# ---------------------------------------------------------------------------
# Forward batches and the forward context
# ---------------------------------------------------------------------------


class _BatchFields(types.SimpleNamespace):
    """The ForwardBatch fields a test gives; every other ForwardBatch field reads
    as the release declares its default (releases add fields the backend reads:
    0.5.21+ encoder SWA replay, 0.5.22+ max_seq_len_override, ...)."""

    def __getattr__(self, name):
        default = _forward_batch_defaults().get(name, _NO_DEFAULT)
        if default is _NO_DEFAULT:
            raise AttributeError(name)
        return default()


_NO_DEFAULT = object()


@functools.lru_cache(maxsize=None)
def _forward_batch_defaults() -> dict:
    """{field: default (or its factory)} of the release's ForwardBatch."""
    cls = locate("ForwardBatch", "sglang.srt.model_executor.forward_batch_info:ForwardBatch")
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = lambda value=f.default: value
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory
    return defaults


def forward_batch(backend, out_cache_loc, mode="EXTEND", *, seq_lens=None,
                  extend_lens=None, batch_size=None):
    """The ForwardBatch fields that DSV4 metadata init and the SWA store read."""
    device = backend.device
    fb = _BatchFields(
        forward_mode=forward_mode(mode),
        out_cache_loc=out_cache_loc,
        token_to_kv_pool=backend.token_to_kv_pool,
        attn_backend=backend,
        req_to_token_pool=backend.req_to_token_pool,
        global_num_tokens_cpu=None,
        global_dp_buffer_len=None,
        extend_start_loc=None,
        spec_info=None,
    )
    if seq_lens is not None:
        fb.seq_lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
        fb.seq_lens_cpu = torch.tensor(seq_lens, dtype=torch.int64)
        fb.seq_lens_sum = int(sum(seq_lens))
        fb.req_pool_indices = torch.arange(len(seq_lens), device=device)
        fb.batch_size = len(seq_lens) if batch_size is None else batch_size
    if extend_lens is not None:
        fb.extend_seq_lens = torch.tensor(extend_lens, dtype=torch.int32, device=device)
        fb.extend_seq_lens_cpu = list(extend_lens)
        fb.extend_num_tokens = int(sum(extend_lens))
    return fb


@contextlib.contextmanager
def forward_context(backend):
    """The per-forward context the release's model code reads (0.5.13+), and the
    global server args the backend and pool read."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(global_server_args(**_SERVER_ARGS.get(id(backend), {})))
        try:
            import sglang.srt.model_executor.forward_context as ctx_mod
        except ImportError:
            ctx_mod = None
        if ctx_mod is not None and hasattr(ctx_mod, "forward_context"):
            ctx = ctx_mod.ForwardContext(**accepted(ctx_mod.ForwardContext, attn_backend=backend))
            stack.enter_context(ctx_mod.forward_context(ctx))
        yield


def init_metadata(backend, fb) -> None:
    """The backend's eager metadata init for the batch (ModelRunner.forward_*)."""
    with forward_context(backend):
        backend.init_forward_metadata(fb)


def metadata_swa_out_cache_loc(backend):
    """The per-batch SWA locations kept on the backend's metadata, or None when
    this release keeps none there."""
    core = getattr(backend.forward_metadata, "core_attn_metadata", None)
    return getattr(core, "swa_out_cache_loc", None)


class _PoolWithoutRequestWindow:
    """A stand-in pool as written before 0.5.21, read by a release that asks
    first for the pool's request window (``request_window`` mode): it has none."""

    request_window = None

    def __init__(self, pool):
        self._pool = pool

    def __getattr__(self, name):
        return getattr(self._pool, name)


@contextlib.contextmanager
def stand_in_pools_without_request_window():
    """Inside the block a backend made with ``object.__new__`` (upstream's
    TestDSV4SwaOutCacheLocResolution) whose stand-in pool says nothing of a
    request window is read as having none. From 0.5.21 ``get_swa_out_cache_loc``
    asks ``token_to_kv_pool.request_window`` before the cached and translated
    locations it has always chosen between; the stand-in pool predates that."""
    cls = locate(
        "DeepseekV4AttnBackend",
        "sglang.srt.layers.attention.deepseek_v4_backend:DeepseekV4AttnBackend",
    )
    require(
        "token_to_kv_pool" not in vars(cls),
        "DeepseekV4AttnBackend defines token_to_kv_pool on the class",
    )

    def get(self):
        try:
            return self.__dict__["token_to_kv_pool"]
        except KeyError:
            raise AttributeError("token_to_kv_pool") from None

    def set(self, pool):
        if not hasattr(pool, "request_window"):
            pool = _PoolWithoutRequestWindow(pool)
        self.__dict__["token_to_kv_pool"] = pool

    with mock.patch.object(cls, "token_to_kv_pool", property(get, set), create=True):
        yield


def core_metadata(backend):
    """The per-layer-kind attention metadata of the backend's current batch, upgraded
    from raw as the batch's first layer does (0.5.12 upgrades lazily there). No
    metadata at all is the code under test planning nothing: the check's failure, not
    a fixture this release cannot build."""
    assert backend.forward_metadata is not None, "no attention metadata was planned for the batch"
    upgrade = getattr(backend, "_maybe_upgrade_forward_metadata", None)
    if upgrade is not None:
        upgrade()
    core = getattr(backend.forward_metadata, "core_attn_metadata", None)
    require(core is not None and hasattr(core, "copy_"), "the DSV4 metadata has no core_attn_metadata.copy_")
    return core


def copy_for_replay(captured, fresh) -> None:
    """What CUDA graph replay does with a batch's metadata: copy it into the one the
    graph captured. The stand-in kernels skip FlashMLA / indexer planning, so the
    fields planning would set get placeholders first (same on both sides)."""
    for f in dataclasses.fields(fresh):
        for meta in (captured, fresh):
            if not hasattr(meta, f.name):
                setattr(meta, f.name, torch.zeros(1, device=fresh.page_table.device))
    captured.copy_(fresh)


def _mqa_layer_cls():
    return locate("MQALayer", "sglang.srt.models.deepseek_v4:MQALayer")


def store_layer(layer_id: int, fb, kv: torch.Tensor, in_context: bool = False) -> None:
    """One layer's SWA KV store as DeepseekV4's MQALayer does it (fused
    norm + rope + store), the layer reduced to what that path reads.
    ``in_context``: the caller already holds ``forward_context(backend)``."""
    cls = _mqa_layer_cls()
    fn = getattr(cls, "_compute_kv_to_cache", None)
    require(fn is not None, "MQALayer has no _compute_kv_to_cache")
    layer = types.SimpleNamespace(
        q_lora_rank=0,
        layer_id=layer_id,
        kv_norm=types.SimpleNamespace(
            weight=types.SimpleNamespace(data=torch.ones(kv.shape[-1], device=kv.device))
        ),
        eps=1e-6,
        freqs_cis=None,
    )
    positions = torch.zeros(kv.shape[0], dtype=torch.int64, device=kv.device)
    backend = fb.attn_backend
    with contextlib.nullcontext() if in_context else forward_context(backend):
        if takes(fn, "attn_backend"):
            fn(layer, kv, positions, fb, backend, qkv_a=kv)
        else:
            fn(layer, kv, positions, fb, qkv_a=kv)


def store_cache(backend, layer_id: int, fb, kv: torch.Tensor) -> None:
    """The backend's store_cache (the NSA prefill-CP SWA store), fused variant."""
    with forward_context(backend):
        backend.store_cache(layer_id, kv, fb)


def store_layers(fb, layer_ids: Sequence[int], kv: torch.Tensor) -> None:
    """A forward batch's SWA stores over many layers, alternating the model's fused
    norm+rope path and the backend's store_cache."""
    for i, layer_id in enumerate(layer_ids):
        if i % 2 == 0:
            store_layer(layer_id, fb, kv)
        else:
            store_cache(fb.attn_backend, layer_id, fb, kv)


def new_batch_hook(pool) -> None:
    """What the model runner does for the pool before each forward batch on this
    release (a per-batch invalidation where the pool has one)."""
    hook = getattr(pool, "invalidate_loc_cache", None)
    if hook is not None:
        hook()


# ---------------------------------------------------------------------------
# Counting translations at the mapping gather
# ---------------------------------------------------------------------------


class TranslationCounter:
    """Counts the pool's translations of 1-D location vectors (out-cache
    locations), whoever asks (metadata init, stores, the allocator); the 2-D page
    index translations of metadata build are kept apart."""

    def __init__(self, pool):
        self.pool = pool
        self.out_loc_calls = 0
        self.other_calls = 0
        orig = pool.translate_loc_from_full_to_swa

        def counting(kv_indices):
            if kv_indices.dim() == 1:
                self.out_loc_calls += 1
            else:
                self.other_calls += 1
            return orig(kv_indices)

        pool.translate_loc_from_full_to_swa = counting

    def reset(self):
        self.out_loc_calls = 0
        self.other_calls = 0

    def remove(self):
        del self.pool.translate_loc_from_full_to_swa

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


# ---------------------------------------------------------------------------
# Multi-step draft decode
# ---------------------------------------------------------------------------


def draft_step_locations(out_cache_loc, batch_size, topk, num_steps):
    """[num_steps, batch_size * topk]: the rows EAGLE's draft_forward gives each
    draft step, from the buffer laid out [batch_size, topk, num_steps]."""
    return (
        out_cache_loc.view(batch_size, topk, num_steps)
        .permute(2, 0, 1)
        .reshape(num_steps, -1)
    )


def draft_step_backends(pool, *, topk, num_steps, **kwargs):
    """The per-step backends of DeepseekV4MultiStepBackend (step i has
    speculative_step_id i), built like make_backend."""
    backends = [
        make_backend(pool, topk=topk, num_steps=num_steps, step_id=i, **kwargs)
        for i in range(num_steps)
    ]
    # One model runner: one req_to_token for every step.
    for backend in backends[1:]:
        backend.req_to_token = backends[0].req_to_token
        backend.req_to_token_pool = backends[0].req_to_token_pool
    return backends


# ---------------------------------------------------------------------------
# The real ForwardBatch construction
# ---------------------------------------------------------------------------


class _Loose(types.SimpleNamespace):
    """A scheduler batch / model runner stand-in: fields it was not given read
    as None (no LoRA, no multimodal, no logprobs, no DP, ...)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def _kv_index_translator(model_runner):
    """0.5.19+: the runner's KVIndexTranslator, which ForwardBatch construction
    hands the batch's write locations to; built by the release from the same
    allocator and pool. None before 0.5.19 (nothing reads it)."""
    try:
        module = importlib.import_module("sglang.srt.mem_cache.kv_index_translator")
    except ImportError:
        return None
    cls = module.KVIndexTranslator
    return cls(
        **accepted(
            cls.__init__,
            req_to_token=model_runner.req_to_token_pool.req_to_token,
            token_to_kv_pool_allocator=model_runner.token_to_kv_pool_allocator,
            token_to_kv_pool=model_runner.token_to_kv_pool,
            page_size=PAGE_SIZE,
            device=model_runner.device,
            is_draft_worker=False,
        )
    )


def new_forward_batch(backend, out_cache_loc, mode="DECODE", *, seq_lens,
                      extend_lens=None, deepseek_v4_arch=True):
    """A ForwardBatch from the release's own ``ForwardBatch.init_new`` for a DSV4
    model runner (hybrid SWA, DeepseekV4 architecture), so whatever the
    construction translates is seen by a TranslationCounter on the pool.
    ``deepseek_v4_arch=False``: another hybrid-SWA model's runner."""
    fbi = locate(
        "forward_batch_info", "sglang.srt.model_executor.forward_batch_info"
    )
    device = backend.device
    pool = backend.token_to_kv_pool
    seq = torch.tensor(seq_lens, dtype=torch.int64)
    batch = _Loose(
        forward_mode=forward_mode(mode),
        batch_size=len(seq_lens),
        input_ids=torch.zeros(out_cache_loc.shape[0], dtype=torch.int64, device=device),
        req_pool_indices=torch.arange(len(seq_lens), device=device),
        seq_lens=seq.to(device),
        seq_lens_cpu=seq,
        orig_seq_lens=seq.to(device),
        seq_lens_sum=int(seq.sum()),
        out_cache_loc=out_cache_loc,
        return_logprob=False,
        is_extend_in_batch=mode == "EXTEND",
        all_extend_in_batch=mode == "EXTEND",
        can_run_dp_cuda_graph=False,
        is_prefill_only=False,
        reqs=[],
    )
    if extend_lens is not None:
        batch.extend_seq_lens = list(extend_lens)
        batch.extend_prefix_lens = [s - e for s, e in zip(seq_lens, extend_lens)]
        batch.extend_num_tokens = int(sum(extend_lens))
        batch.extend_logprob_start_lens = list(batch.extend_prefix_lens)
        # 0.5.13+ build from the ScheduleBatch, whose names these are.
        batch.extend_lens = batch.extend_seq_lens
        batch.prefix_lens = batch.extend_prefix_lens
    model_runner = _Loose(
        device=str(device),
        is_hybrid_swa=True,
        model_config=_Loose(is_deepseek_v4_arch=deepseek_v4_arch, is_hybrid_swa=True),
        # SWATokenToKVPoolAllocator delegates the translation to its pool.
        token_to_kv_pool_allocator=types.SimpleNamespace(
            translate_loc_from_full_to_swa=lambda loc: pool.translate_loc_from_full_to_swa(loc)
        ),
        token_to_kv_pool=pool,
        req_to_token_pool=backend.req_to_token_pool,
        attn_backend=backend,
        # compute_position: the triton kernel on CUDA, its torch twin on CPU.
        server_args=_Loose(
            enable_lora=False,
            attention_backend="triton" if device.type == "cuda" else "torch_native",
        ),
        model_is_mrope=False,
        use_ngram_embedding=False,
        dcp_size=1,  # read with getattr(..., 1) from 0.5.15 on
        # 0.5.16+: n-gram embeddings off; 0.5.19+ name the prefill backend and
        # the decode-context-parallel size here (0.5.19-0.5.20 under .ps).
        ngram_embedding_manager=types.SimpleNamespace(enabled=False),
        prefill_attention_backend_str="triton" if device.type == "cuda" else "torch_native",
        attn_dcp_size=1,
        attn_dcp_rank=0,
        ps=types.SimpleNamespace(attn_dcp_size=1, attn_dcp_rank=0),
        is_draft_worker=False,
    )
    with building("the model runner's KVIndexTranslator"):
        model_runner.kv_index_translator = _kv_index_translator(model_runner)
    with contextlib.ExitStack() as stack:
        # Reads the MoE expert-parallel group (torch.distributed state).
        if hasattr(fbi, "enable_num_token_non_padded"):
            stack.enter_context(
                mock.patch.object(fbi, "enable_num_token_non_padded", lambda *a, **k: False)
            )
        stack.enter_context(global_server_args())
        stack.enter_context(building("a ForwardBatch (ForwardBatch.init_new)"))
        # 0.5.16+ take the per-forward hidden-state choices as keywords (none
        # captured: no draft model reads them).
        fb = fbi.ForwardBatch.init_new(
            batch,
            model_runner,
            **accepted(
                fbi.ForwardBatch.init_new,
                capture_hidden_mode=fbi.CaptureHiddenMode.NULL,
                return_hidden_states_before_norm=False,
            ),
        )
    for name, value in (
        ("attn_backend", backend),
        ("token_to_kv_pool", pool),
        ("req_to_token_pool", backend.req_to_token_pool),
    ):
        if getattr(fb, name, None) is None:
            setattr(fb, name, value)
    return fb


def attention_forward_prologue(backend) -> None:
    """What the backend's attention forward does first with the batch's metadata
    (0.5.12: upgrade raw metadata to full, lazily); a no-op where metadata init
    already did it."""
    upgrade = getattr(backend, "_maybe_upgrade_forward_metadata", None)
    if upgrade is not None:
        upgrade()


# ---------------------------------------------------------------------------
# CUDA graphs (decode bucket), as CudaGraphRunner drives the backend
# ---------------------------------------------------------------------------


def update_mapping_in_place(pool, mapping) -> None:
    """What HiCache load-back / alloc do between batches: rewrite the registered
    mapping tensor's entries (a captured graph keeps reading the same tensor)."""
    pool.full_to_swa_index_mapping.copy_(mapping)


def _replay_metadata(backend, fb) -> None:
    """The graph runner's metadata preparation before a decode replay."""
    bs = fb.batch_size
    if hasattr(backend, "init_forward_metadata_replay_cuda_graph") and takes(
        backend.init_forward_metadata_replay_cuda_graph, "seq_lens_cpu"
    ):
        # 0.5.12: the batch reaches the backend out of band.
        backend._replay_forward_batch = fb
        backend.init_forward_metadata_replay_cuda_graph(
            bs, fb.req_pool_indices, fb.seq_lens, fb.seq_lens_sum, None,
            fb.forward_mode, None, fb.seq_lens_cpu,
        )
        backend._replay_forward_batch = None
    elif hasattr(backend, "init_forward_metadata_out_graph"):
        backend.init_forward_metadata_out_graph(fb)
    else:
        raise CannotRun("no decode graph replay preparation on the DSV4 backend")


def capture_decode_graph(fb, layer_ids, kv):
    """Capture, for the static decode batch ``fb`` (its tensors are the graph's
    input buffers), what a decode graph holds for the SWA path: the release's
    in-graph metadata step where it has one, then every layer's SWA store.
    Returns replay(out_cache_loc, seq_lens), which refills the buffers, prepares
    the metadata as the graph runner does, and replays."""
    backend = fb.attn_backend
    bs = fb.batch_size
    backend.init_cuda_graph_state(bs, bs)
    with forward_context(backend):
        capture = getattr(backend, "init_forward_metadata_capture_cuda_graph", None)
        if capture is not None and takes(capture, "bs"):
            capture(bs, bs, fb.req_pool_indices, fb.seq_lens, None, fb.forward_mode, None)
        elif hasattr(backend, "init_forward_metadata_out_graph"):
            backend.init_forward_metadata_out_graph(fb, in_capture=True)
        else:
            raise CannotRun("no decode graph capture on the DSV4 backend")
        # The graph runner calls this inside the captured region where the
        # release has it (0.5.12 has none: stores translate inside the graph).
        in_graph = getattr(backend, "init_forward_metadata_in_graph", None)

        def run_once():
            if in_graph is not None:
                in_graph(fb)
            for i, layer_id in enumerate(layer_ids):
                store_layer(layer_id, fb, kv, in_context=True)
                if i == 0:
                    attention_forward_prologue(backend)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run_once()  # warmup, as CudaGraphRunner does
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        backend.on_after_cuda_graph_warmup()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run_once()
    torch.cuda.synchronize()

    def replay(out_cache_loc, seq_lens, kv_rows):
        fb.out_cache_loc.copy_(out_cache_loc)
        fb.seq_lens.copy_(torch.as_tensor(seq_lens, device=fb.seq_lens.device))
        fb.seq_lens_cpu.copy_(torch.as_tensor(seq_lens))
        fb.seq_lens_sum = int(sum(seq_lens))
        kv.copy_(kv_rows)
        with forward_context(backend):
            _replay_metadata(backend, fb)
        graph.replay()
        torch.cuda.synchronize()

    return replay


def require_precomputed_swa_locations() -> None:
    """Skip (not applicable) where ForwardBatch construction precomputes SWA
    locations for no model (``out_cache_loc_swa``; upstream dropped it after
    0.5.12 and SWAKVPool translates at its stores): nothing is left to keep."""
    fbi = locate("forward_batch_info", "sglang.srt.model_executor.forward_batch_info")
    applies_only_if(
        "out_cache_loc_swa" in getattr(fbi.ForwardBatch, "__dataclass_fields__", {}),
        "its ForwardBatch precomputes SWA locations (out_cache_loc_swa) for no model",
    )


def precomputed_swa_locations(fb):
    """The SWA locations ForwardBatch construction precomputed (see above)."""
    require_precomputed_swa_locations()
    return fb.out_cache_loc_swa


# ---------------------------------------------------------------------------
# Spec v2 target verify under DP attention: the EAGLE v2 worker's verify step
# (prepare_for_v2_verify, then the target forward whose MLP-sync padding runs
# before the model), driven through the release's own worker, TP worker and
# model runner code; only the model is a stand-in (one SWA store per layer).
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class VerifyForward:
    """What the target forward of one verify step saw: the batch as the model
    ran it (after DP padding) and the attention metadata its first layer read."""

    out_cache_loc: torch.Tensor
    batch_size: int
    num_tokens: int
    metadata: object  # the DSV4 core attention metadata the layers read


class _VerifyForwardDone(Exception):
    """Ends the worker's verify after the target forward (sampling is not ours)."""


def _with_methods(real_cls, **fields):
    """A stand-in object carrying ``fields`` and every method the real class
    defines (releases split and rename the steps they take); any other attribute
    reads as None."""
    methods = {}
    for cls in reversed(real_cls.__mro__[:-1]):
        methods.update({
            name: value for name, value in vars(cls).items()
            if inspect.isfunction(value) and not name.startswith("__")
        })
    return type(f"{real_cls.__name__}StandIn", (_Loose,), methods)(**fields)


def _compression_metadata_twin(seq_lens, positions, raw_out_loc, page_table=None,
                               page_size=0, compute_page_indices=True, *, c128_raw=False):
    """Torch twin of DSV4's compression-metadata kernel: per token, the C4 / C128
    write targets (the compressed slot when the token closes a group, else the
    padding slot 0), positions and lengths, and the C128 page indices."""
    i32 = dict(dtype=torch.int32, device=seq_lens.device)
    seq_lens = seq_lens.to(torch.int64)
    positions = positions.to(torch.int64)
    loc = raw_out_loc.to(torch.int64)

    def out_loc(ratio):
        return torch.where(seq_lens % ratio == 0, loc // ratio, 0).to(**i32)

    c4_raw = seq_lens // 4
    c128_lens = seq_lens // 128
    page_indices = None
    if compute_page_indices:
        c128_page = page_size // 128
        offsets = torch.arange(c128_page * page_table.shape[1], device=seq_lens.device)
        pages = page_table.to(torch.int64)[:, offsets // c128_page]
        page_indices = pages * c128_page + offsets % c128_page
        page_indices = torch.where(offsets[None, :] < c128_lens[:, None], page_indices, -1)
        page_indices = page_indices.to(**i32)
    return (
        out_loc(4), (positions & ~3).to(**i32), c4_raw.to(**i32),
        c4_raw.clamp(min=1).to(**i32),
        out_loc(128), (positions & ~127).to(**i32),
        # 0.5.14+ also return C128's unclamped lengths, before the clamped ones.
        *((c128_lens.to(**i32),) if c128_raw else ()),
        c128_lens.clamp(min=1).to(**i32),
        page_indices,
    )


def _returns_c128_raw(kernel) -> bool:
    """Whether the release's compression-metadata kernel returns nine values
    (0.5.14+: C128's raw lengths too) rather than eight."""
    annotation = str(inspect.signature(kernel).return_annotation)
    return annotation.count("Tensor") >= 9


def _extend_cache_locs_twin(req_pool_indices, req_to_token, start_offset,
                            end_offset, batch_size, draft_token_num, device):
    """Torch twin of EAGLE's assign_extend_cache_locs kernel: each request's
    req_to_token slots [start, end), requests in order."""
    rows = [
        req_to_token[int(r), int(s):int(e)]
        for r, s, e in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist())
    ]
    return torch.cat(rows).to(device=device, dtype=torch.int64)


def _uniform_cache_locs_twin(req_pool_indices, req_to_token, start_offset, batch_size,
                             draft_token_num, device, **physical_outputs):
    """Torch twin of the uniform variant (0.5.20+): every request takes
    draft_token_num slots from its start offset."""
    require(all(v is None for v in physical_outputs.values()),
            "assign_extend_cache_locs_uniform_func was asked for physical locations")
    return _extend_cache_locs_twin(req_pool_indices, req_to_token, start_offset,
                                   start_offset + draft_token_num, batch_size,
                                   draft_token_num, device)


def _parallel_override():
    """0.5.21+: a context manager setting attention-DP rank ``dp_rank`` of
    ``dp_size`` (a size of one: no DP attention; attention TP and CP of one)
    through the release's own scoped ``get_parallel().override``, which its DP
    code reads; CannotRun where the release has neither that nor dp_attention's
    module globals."""
    runtime = locate("the runtime context", "sglang.srt.runtime_context")
    get_parallel = getattr(runtime, "get_parallel", None)
    require(
        get_parallel is not None and callable(getattr(get_parallel(), "override", None)),
        "dp_attention keeps no _ATTN_DP_SIZE and the runtime context has no "
        "get_parallel().override to set the attention-DP size and rank with",
    )

    @contextlib.contextmanager
    def override(dp_size, dp_rank):
        # One process per attention-DP rank: the TP group is the DP ranks.
        scoped = get_parallel().override(
            enable_dp_attention=dp_size > 1, dp_size=dp_size, tp_size=dp_size, tp_rank=dp_rank,
            attn_dp_size=dp_size, attn_dp_rank=dp_rank,
            attn_tp_size=1, attn_tp_rank=0, attn_cp_size=1, attn_cp_rank=0,
        )
        try:
            scoped.__enter__()
        except ValueError as exc:  # a field it does not know, or a topology it refuses
            raise CannotRun(
                f"get_parallel().override refuses attention-DP rank {dp_rank} of {dp_size}: {exc}"
            ) from exc
        try:
            yield
        finally:
            scoped.__exit__(None, None, None)

    return override


@contextlib.contextmanager
def _verify_step_kernels(dp_size: int, dp_rank: int):
    """The stand-ins a verify step needs on a machine without a GPU, on top of
    store_kernels(): the two kernels above, host-side stream and pinned-memory
    hints that need a CUDA driver, and the DP-attention rank (dp_size ranks,
    attention TP and CP of one) that parallel-state initialisation would set."""
    backend = backend_module()
    fbi = locate("forward_batch_info", "sglang.srt.model_executor.forward_batch_info")
    dp_attention = locate("dp_attention", "sglang.srt.layers.dp_attention")
    parallel_state = locate("parallel_state", "sglang.srt.distributed.parallel_state")
    # The kernel's homes: eagle_info_v2 (0.5.12-0.5.14, imported there),
    # triton_ops.cache_locs (0.5.13+; 0.5.15's eagle_utils imports it per call)
    # and kernels.ops.speculative.cache_locs (0.5.16+; 0.5.20+ call its uniform
    # variant and cache the import in eagle_utils._PREPARE_FOR_VERIFY_DEPS).
    twins = {"assign_extend_cache_locs_func": _extend_cache_locs_twin,
             "assign_extend_cache_locs_uniform_func": _uniform_cache_locs_twin}
    kernel_patches = []
    for module in ("sglang.srt.speculative.eagle_info_v2",
                   "sglang.srt.speculative.triton_ops.cache_locs",
                   "sglang.kernels.ops.speculative.cache_locs"):
        try:
            home = importlib.import_module(module)
        except ImportError:
            continue
        kernel_patches += [(home, name, twin) for name, twin in twins.items()
                           if hasattr(home, name)]
    # Up to 0.5.20 dp_attention keeps the attention-DP size and rank in module
    # globals; from 0.5.21 they live only in the runtime context's parallel tier.
    parallel_override = None if hasattr(dp_attention, "_ATTN_DP_SIZE") else _parallel_override()
    require(kernel_patches, "no assign_extend_cache_locs_func in eagle_info_v2, "
            "triton_ops.cache_locs or kernels.ops.speculative.cache_locs")
    try:
        eagle_utils = importlib.import_module("sglang.srt.speculative.eagle_utils")
    except ImportError:
        eagle_utils = None
    real_tensor = torch.tensor
    real_record_stream = torch.Tensor.record_stream

    def tensor(*args, pin_memory=False, **kwargs):
        return real_tensor(*args, pin_memory=pin_memory and torch.cuda.is_available(), **kwargs)

    def record_stream(self, stream):
        if self.is_cuda:
            real_record_stream(self, stream)

    with contextlib.ExitStack() as stack:
        patch = stack.enter_context
        for home, name, twin in kernel_patches:
            patch(mock.patch.object(home, name, twin))
        if hasattr(eagle_utils, "_PREPARE_FOR_VERIFY_DEPS"):
            patch(mock.patch.object(eagle_utils, "_PREPARE_FOR_VERIFY_DEPS", None))
        if hasattr(backend, "_init_compression_metadata_triton"):
            twin = functools.partial(
                _compression_metadata_twin,
                c128_raw=_returns_c128_raw(backend._init_compression_metadata_triton),
            )
            patch(mock.patch.object(backend, "_init_compression_metadata_triton", twin))
        patch(mock.patch.object(torch, "tensor", tensor))
        patch(mock.patch.object(torch.Tensor, "record_stream", record_stream))
        if parallel_override is None:
            patch(mock.patch.object(dp_attention, "_ATTN_DP_SIZE", dp_size))
            patch(mock.patch.object(dp_attention, "_ATTN_DP_RANK", dp_rank))
        else:
            patch(parallel_override(dp_size, dp_rank))
        # Attention TP and CP of one (what their parallel groups would say).
        for name, value in (
            ("get_attn_tensor_model_parallel_world_size", 1),
            ("get_attn_tensor_model_parallel_rank", 0),
            ("get_attn_context_model_parallel_world_size", 1),
            ("get_attn_context_model_parallel_rank", 0),
        ):
            # dp_attention imports them; 0.5.14+'s runtime context calls them
            # on parallel_state.
            for home in (dp_attention, parallel_state):
                if hasattr(home, name):
                    patch(mock.patch.object(home, name, lambda value=value: value))
        # The gathered-buffer bookkeeping for the collectives (process-global).
        for name in ("set_dp_buffer_len", "set_is_extend_in_batch"):
            if hasattr(fbi, name):
                patch(mock.patch.object(fbi, name, lambda *a, **k: None))
        yield


@contextlib.contextmanager
def real_compression_metadata():
    """Inside store_kernels(): DSV4's real per-batch compression metadata (the
    C4 / C128 write targets), its kernel replaced by the torch twin above."""
    meta_cls = locate(
        "DSV4AttnMetadata",
        "sglang.srt.layers.attention.deepseek_v4_backend:DSV4AttnMetadata",
    )
    real = _REAL_COMPRESSION_METADATA.get(meta_cls)
    require(real is not None, "DSV4AttnMetadata has no init_compression_metadata")
    with mock.patch.object(meta_cls, "init_compression_metadata", real):
        yield


def remember_compression_metadata() -> None:
    """Keep the real init_compression_metadata before store_kernels() stubs it."""
    meta_cls = locate(
        "DSV4AttnMetadata",
        "sglang.srt.layers.attention.deepseek_v4_backend:DSV4AttnMetadata",
    )
    real = meta_cls.__dict__.get("init_compression_metadata")
    if real is not None and not isinstance(real, mock.Base):
        _REAL_COMPRESSION_METADATA[meta_cls] = real


_REAL_COMPRESSION_METADATA: dict = {}


def _verify_input(draft_tokens: torch.Tensor, positions: torch.Tensor, *, bs, topk,
                  num_draft_tokens, seq_lens_cpu):
    cls = locate("EagleVerifyInput", "sglang.srt.speculative.eagle_info:EagleVerifyInput")
    hidden = locate("CaptureHiddenMode",
                    "sglang.srt.model_executor.forward_batch_info:CaptureHiddenMode")
    device = draft_tokens.device
    retrieve = torch.full((bs, num_draft_tokens), -1, dtype=torch.long, device=device)
    return cls(**accepted(
        cls,
        draft_token=draft_tokens,
        custom_mask=torch.ones(bs * num_draft_tokens ** 2, dtype=torch.bool, device=device),
        positions=positions,
        retrieve_index=retrieve.clone(),
        retrieve_next_token=retrieve.clone(),
        retrieve_next_sibling=retrieve.clone(),
        retrieve_cum_len=None,
        spec_steps=num_draft_tokens - 1,
        topk=topk,
        draft_token_num=num_draft_tokens,
        capture_hidden_mode=hidden.FULL,
        seq_lens_sum=int(seq_lens_cpu.sum()),
        seq_lens_cpu=seq_lens_cpu,
    ))


def _server_args_with_methods(backend):
    """The backend's server args with ServerArgs' own query methods (the verify
    path asks e.g. ``enable_mamba_extra_buffer()``)."""
    server_args = locate("ServerArgs", "sglang.srt.server_args:ServerArgs")
    args = server_args_defaults(**_SERVER_ARGS[id(backend)])
    for name in ("enable_mamba_extra_buffer",):
        if hasattr(server_args, name):
            setattr(args, name, types.MethodType(getattr(server_args, name), args))
    return args


def _verify_model(forward):
    """The target model stand-in: its forward, and what the model loader puts on
    every model that the release's forward reads (0.5.23: the shared-experts
    layout, nothing fused)."""
    model = types.SimpleNamespace(forward=forward)
    try:
        shared = importlib.import_module("sglang.srt.configs.shared_experts")
    except ImportError:  # before 0.5.23 the runner reads no such field
        shared = None
    if hasattr(shared, "SharedExpertsConfig"):
        with building("the model's SharedExpertsConfig"):
            model.shared_experts_config = shared.SharedExpertsConfig()
    return model


@contextlib.contextmanager
def _with_compressed_layers(backend):
    """The verify step's model is DSV4, which has C4 and C128 layers besides the
    uncompressed ones whose SWA stores the stand-in model makes. From 0.5.21 the
    backend plans C4 / C128 metadata only for the compression ratios its pool
    holds (``present_ratios``, read at construction), and the seam's pool
    (make_pool) holds none: inside the block the backend plans for both, through
    its own metadata code (the compressor and indexer planning stay stubbed by
    store_kernels). Before 0.5.21 the backend plans them for every batch."""
    if not hasattr(backend, "present_ratios"):
        yield
        return
    require(
        all(hasattr(backend, name) for name in ("has_c4", "has_c128")),
        "DeepseekV4AttnBackend has present_ratios but no has_c4 / has_c128",
    )
    ratios = tuple(sorted(set(backend.present_ratios) | {4, 128}))
    with contextlib.ExitStack() as stack:
        for name, value in (("present_ratios", ratios), ("has_c4", True), ("has_c128", True)):
            stack.enter_context(mock.patch.object(backend, name, value))
        yield


def verify_step_under_dp(backend, *, seq_lens, num_draft_tokens, dp_batch_sizes,
                         dp_rank, layer_ids, kv_rows) -> VerifyForward:
    """One spec-v2 target-verify step of an EAGLE (MTP, topk 1) worker on DP rank
    ``dp_rank`` of ``len(dp_batch_sizes)`` attention-DP ranks, graphs off: the
    release's own ``EAGLEWorkerV2.verify`` prepares the batch
    (``prepare_for_v2_verify``: locations from req_to_token, ``ForwardBatch``)
    and runs the target forward through ``TpModelWorker.forward_batch_generation``
    and ``ModelRunner.forward`` (MLP-sync padding to the DP ranks' batch, then the
    forward path's metadata planning where the release plans there). The model
    stores ``kv_rows(num_tokens)`` as each layer's SWA KV (``store_layer``).
    ``seq_lens`` are the requests' lengths before the draft tokens."""
    worker_cls = _verify_worker_cls(
        "eagle_worker_v2", "sglang.srt.speculative.eagle_worker_v2", "EAGLEWorkerV2")
    return _verify_step(
        worker_cls, backend, seq_lens=seq_lens, num_draft_tokens=num_draft_tokens,
        dp_batch_sizes=dp_batch_sizes, dp_rank=dp_rank, layer_ids=layer_ids, kv_rows=kv_rows,
    )


def multi_layer_verify_step(backend, *, seq_lens, num_draft_tokens, layer_ids,
                            kv_rows) -> VerifyForward:
    """One spec-v2 target-verify step of a multi-layer EAGLE (MTP, topk 1) worker,
    graphs off, without DP attention (the batch the forward runs is the batch the
    worker prepared): the release's own ``MultiLayerEagleWorkerV2.verify`` prepares
    the batch (0.5.12-0.5.13 ``prepare_for_v2_verify``, 0.5.14+
    ``eagle_prepare_for_verify``; from 0.5.16 through the shared
    ``eagle_worker_common.run_eagle_verify``), says whether the attention metadata
    is planned already (0.5.12 ``skip_attn_backend_init``, 0.5.13+
    ``ForwardBatch.mark_forward_metadata_ready``) and runs the target forward
    through ``TpModelWorker.forward_batch_generation`` and ``ModelRunner.forward``.
    The model stores ``kv_rows(num_tokens)`` as each layer's SWA KV."""
    worker_cls = _verify_worker_cls(
        "multi_layer_eagle_worker_v2", "sglang.srt.speculative.multi_layer_eagle_worker_v2",
        "MultiLayerEagleWorkerV2")
    return _verify_step(
        worker_cls, backend, seq_lens=seq_lens, num_draft_tokens=num_draft_tokens,
        dp_batch_sizes=None, dp_rank=0, layer_ids=layer_ids, kv_rows=kv_rows,
    )


def _verify_worker_cls(what, module, name):
    worker_mod = locate(what, module)
    worker_cls = getattr(worker_mod, name, None)
    require(worker_cls is not None and hasattr(worker_cls, "verify"),
            f"{what} has no {name}.verify")
    return worker_cls


def _verify_step(worker_cls, backend, *, seq_lens, num_draft_tokens, dp_batch_sizes,
                 dp_rank, layer_ids, kv_rows) -> VerifyForward:
    """``worker_cls.verify`` on one batch (see verify_step_under_dp); without
    ``dp_batch_sizes`` the rank runs no DP attention."""
    tp_worker_cls = locate("TpModelWorker", "sglang.srt.managers.tp_worker:TpModelWorker")
    runner_cls = locate("ModelRunner", "sglang.srt.model_executor.model_runner:ModelRunner")
    # 0.5.14+ run the eager forward through the model runner's EagerRunner.
    try:
        eager_mod = importlib.import_module("sglang.srt.model_executor.runner.eager_runner")
    except ImportError:  # no model_executor.runner package (0.5.12, 0.5.13)
        eager_mod = None
    eager_cls = getattr(eager_mod, "EagerRunner", None) if eager_mod else None
    require(eager_mod is None or hasattr(eager_cls, "execute"),
            "model_executor.runner.eager_runner has no EagerRunner.execute")
    spec_algo = locate("SpeculativeAlgorithm",
                       "sglang.srt.speculative.spec_info:SpeculativeAlgorithm")
    logits_output_cls = locate("LogitsProcessorOutput",
                               "sglang.srt.layers.logits_processor:LogitsProcessorOutput")
    device = backend.device
    pool = backend.token_to_kv_pool
    bs = len(seq_lens)
    seq_cpu = torch.tensor(seq_lens, dtype=torch.int64)
    positions = (seq_cpu[:, None] + torch.arange(num_draft_tokens)).reshape(-1).to(device)
    verify_input = _verify_input(
        torch.zeros(bs * num_draft_tokens, dtype=torch.int64, device=device), positions,
        bs=bs, topk=1, num_draft_tokens=num_draft_tokens, seq_lens_cpu=seq_cpu,
    )
    batch = _Loose(
        forward_mode=forward_mode("DECODE"),
        batch_size=bs,
        input_ids=torch.zeros(bs, dtype=torch.int64, device=device),
        req_pool_indices=torch.arange(bs, device=device),
        seq_lens=seq_cpu.to(device),
        seq_lens_cpu=seq_cpu,
        orig_seq_lens=seq_cpu.to(device),
        seq_lens_sum=int(seq_cpu.sum()),
        spec_info=verify_input,
        spec_algorithm=spec_algo.EAGLE,
        global_num_tokens=None if dp_batch_sizes is None else list(dp_batch_sizes),
        global_num_tokens_for_logprob=None if dp_batch_sizes is None else list(dp_batch_sizes),
        is_extend_in_batch=False,
        all_extend_in_batch=False,
        can_run_dp_cuda_graph=False,
        return_logprob=False,
        is_prefill_only=False,
        has_grammar=False,
        lora_ids=[None] * bs,
        reqs=[],
        device=device,  # 0.5.13+: the ScheduleBatch's device and model config
        model_config=_Loose(vocab_size=2, is_deepseek_v4_arch=True, is_hybrid_swa=True),
    )
    seen: list = []
    planned_before = backend.forward_metadata

    def model_forward(input_ids, positions, forward_batch, **kwargs):
        # What store_layer reads off the batch (0.5.13+ keep it in the context).
        for name, value in (("attn_backend", backend), ("token_to_kv_pool", pool)):
            if getattr(forward_batch, name, None) is None:
                setattr(forward_batch, name, value)
        n = forward_batch.out_cache_loc.shape[0]
        kv = kv_rows(n)
        # The verify step (prepare_for_v2_verify or the forward path) must have planned
        # this batch's metadata by now; none, or the one left from before the step, is
        # the code under test planning nothing: a failure of the check.
        assert backend.forward_metadata is not None and backend.forward_metadata is not planned_before, (
            "the target forward ran without attention metadata planned for the verify batch")
        for i, layer_id in enumerate(layer_ids):
            if i == 0:
                # The first layer materialises the batch's metadata (0.5.12
                # upgrades it lazily there) before anything reads it.
                attention_forward_prologue(backend)
                seen.append(VerifyForward(
                    out_cache_loc=forward_batch.out_cache_loc.clone(),
                    batch_size=forward_batch.batch_size,
                    num_tokens=input_ids.shape[0],
                    metadata=core_metadata(backend),
                ))
            store_layer(layer_id, forward_batch, kv)
        # The release's own output type: the forward's post-processing reads
        # fields releases add to it (0.5.23: last_hidden_states).
        return logits_output_cls(
            next_token_logits=torch.zeros(n, 1, device=device),
            hidden_states=torch.zeros(n, 1, device=device),
        )

    model_runner = _with_methods(
        runner_cls,
        device=str(device),
        is_hybrid_swa=True,
        is_generation=True,
        is_draft_worker=False,
        forward_pass_id=0,
        spec_algorithm=spec_algo.EAGLE,
        # 0.5.16+'s padding asks whether the model is mamba-hybrid (it is not).
        model_config=_Loose(is_deepseek_v4_arch=True, is_hybrid_swa=True,
                            hf_config=_Loose(get_text_config=lambda: None)),
        token_to_kv_pool_allocator=types.SimpleNamespace(
            translate_loc_from_full_to_swa=lambda loc: pool.translate_loc_from_full_to_swa(loc)
        ),
        token_to_kv_pool=pool,
        req_to_token_pool=backend.req_to_token_pool,
        attn_backend=backend,
        model=_verify_model(model_forward),
        pp_group=types.SimpleNamespace(is_last_rank=True, is_first_rank=True),
        server_args=_Loose(enable_lora=False, disable_overlap_schedule=True,
                           attention_backend="torch_native"),
        model_is_mrope=False,
        use_ngram_embedding=False,
        dcp_size=1,
        # 0.5.16+: n-gram embeddings off; 0.5.19+ name the prefill backend and
        # the decode-context-parallel size here (0.5.19-0.5.20 under .ps).
        ngram_embedding_manager=types.SimpleNamespace(enabled=False),
        prefill_attention_backend_str="torch_native",
        attn_dcp_size=1,
        attn_dcp_rank=0,
        ps=types.SimpleNamespace(attn_dcp_size=1, attn_dcp_rank=0),
    )
    if eager_cls is not None:
        # Its constructor sizes static input buffers from server args and warms
        # the model up; the verify step runs it with live input
        # (SGLANG_EAGER_INPUT_NO_COPY), so only the runner's steps are needed.
        model_runner.eager_runner = _with_methods(eager_cls, model_runner=model_runner)
    # 0.5.19+: the runner's KV index translator, the release's own over the same
    # pool (ForwardBatch.init_new asks it for the batch's write plan from 0.5.22).
    with building("the model runner's KVIndexTranslator"):
        model_runner.kv_index_translator = _kv_index_translator(model_runner)
    tp_worker = _with_methods(
        tp_worker_cls,
        model_runner=model_runner,
        pp_group=model_runner.pp_group,
    )
    real_generation = tp_worker.forward_batch_generation

    def forward_batch_generation(*args, **kwargs):
        real_generation(*args, **kwargs)
        raise _VerifyForwardDone()

    tp_worker.forward_batch_generation = forward_batch_generation
    worker = _Loose(
        device=str(device),
        speculative_num_steps=num_draft_tokens - 1,
        speculative_num_draft_tokens=num_draft_tokens,
        topk=1,
        plan_stream=None,
        plan_stream_ctx=contextlib.nullcontext(),
        req_to_token_pool=backend.req_to_token_pool,
        target_worker=tp_worker,
        _target_worker=tp_worker,
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(_verify_step_kernels(len(dp_batch_sizes or (0,)), dp_rank))
        stack.enter_context(forward_context(backend))
        args = _server_args_with_methods(backend)
        try:  # 0.5.16+: the graph config the padding consults (post-init fills it)
            graph_config = importlib.import_module("sglang.srt.model_executor.cuda_graph_config")
        except ImportError:
            graph_config = None
        if hasattr(graph_config, "default_cuda_graph_config"):
            args.cuda_graph_config = graph_config.default_cuda_graph_config()
        published = stack.enter_context(global_server_args(args))
        if isinstance(published, locate("ServerArgs", "sglang.srt.server_args:ServerArgs")):
            # 0.5.16+ publish a real ServerArgs; the model runner reads the
            # same one (its padding asks e.g. cuda_graph_config).
            model_runner.server_args = published
        if eager_cls is not None:
            stack.enter_context(mock.patch.dict(os.environ, {"SGLANG_EAGER_INPUT_NO_COPY": "1"}))
        fbi = locate("forward_batch_info", "sglang.srt.model_executor.forward_batch_info")
        if hasattr(fbi, "enable_num_token_non_padded"):
            stack.enter_context(
                mock.patch.object(fbi, "enable_num_token_non_padded", lambda *a, **k: False)
            )
        stack.enter_context(_with_compressed_layers(backend))
        try:
            worker_cls.verify(worker, batch)
        except _VerifyForwardDone:
            pass
        else:
            raise AssertionError("verify returned without running the target forward")
    assert len(seen) == 1, f"the target forward ran the model {len(seen)} times"
    return seen[0]
