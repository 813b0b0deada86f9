"""DeepSeek-V4 memory pools and their HiCache stack, built on the installed release.

What moved between releases and is absorbed here (checks never see it):

- 0.5.13+: ``DeepSeekV4TokenToKVPool.__init__`` reads ``get_global_server_args()``
  (``enable_deepseek_v4_fp4_indexer``; every release reads ``speculative_algorithm``
  for the state ring size). 0.5.15 keeps the slot in the runtime context
  (``sglang.srt.runtime_context.get_context()._server_args``) instead of
  ``sglang.srt.server_args._global_server_args``.
- 0.5.15: ``state_dtype`` became ``c4_state_dtype`` / ``c128_state_dtype``.
- 0.5.13+: ``build_deepseek_v4_hicache_stack`` takes ``pp_group`` instead of
  ``pp_rank`` / ``pp_size``; 0.5.13+ no longer registers the C128 state pool.
- 0.5.14+: the host-memory reserve and the pinned allocators moved to
  ``mem_cache/pool_host/``; ``memory_pool_host`` imports them, and the DSV4 host
  pools (defined in ``memory_pool_host`` on every release) read them there.
- 0.5.13+: ``memory_pool_host`` imports sgl_kernel's ``transfer_kv_direct`` only on
  CUDA/HIP.
- 0.5.16+: server args are published with the release's own
  ``get_context().override_server_args(**fields)``; from 0.5.17 the pool, the
  backend and the stack read them from the config bags that publishing projects
  (``get_spec()``, ``get_exec()``, ``get_memory()``). 0.5.20: ``ServerArgs`` is a
  msgspec Struct (``__struct_fields__``; ``dataclasses.fields`` raises) and
  ``get_global_server_args()`` raises.
- 0.5.17+: ``build_deepseek_v4_hicache_stack`` reads the page size and the
  tp/cp/pp groups off the cache params; 0.5.19+ it no longer takes
  ``server_args`` and takes ``layer_mappings`` (derived from the pool when not
  given, as the model runner derives them); 0.5.20 adds ``host_c128_evict_fn``.
  0.5.18+: the SWA entry appends MTP draft layers (``params.mtp_draft_device_pools``)
  after the stage's own. 0.5.21: the controller's ``transfer_layer_num`` became
  ``transfer_layer_id_max``.
- 0.5.19+: host pools ask ``host_memory_budget_bytes()`` for free host RAM;
  0.5.20+ key ``ALLOC_MEMORY_FUNCS`` by the device-type string.
- 0.5.21+: ``DeepSeekV4TokenToKVPool`` takes more keyword arguments (all with
  defaults; in request-window mode the SWA pool is absent).

Stable names for other test modules (keep them): ``server_args_defaults``,
``global_server_args``, ``build_dsv4_pool``, ``build_dsv4_hicache_stack``,
``HiCacheStack``, ``StateHostPoolRecorder``, ``dsv4_host_transfers``,
``stack_entry``, ``pp_stage_layers``, ``compress_state_ring_size``; the pool/entry
accessors below them. ``global_server_args`` takes field values (keywords or a
dict) and yields the server args object the release reads.

Call ``sglang.test.test_utils.maybe_stub_sgl_kernel()`` before importing this
module on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from typing import Optional, Sequence
from unittest import mock

import torch

from seam import CannotRun, accepted, building, locate, require, require_call, takes

__all__ = [
    "HiCacheStack",
    "StateHostPoolRecorder",
    "build_dsv4_hicache_stack",
    "build_dsv4_pool",
    "dsv4_host_transfers",
    "global_server_args",
    "server_args_defaults",
    "stack_entry",
]


# ---------------------------------------------------------------------------
# Server args
# ---------------------------------------------------------------------------


def _server_args_cls():
    return locate("ServerArgs", "sglang.srt.server_args:ServerArgs")


def _server_args_field_names() -> set:
    server_args = _server_args_cls()
    if dataclasses.is_dataclass(server_args):
        return {f.name for f in dataclasses.fields(server_args)}
    return set(getattr(server_args, "__struct_fields__", ()))


def _declared_defaults(server_args) -> dict:
    """{field: default} of every ServerArgs field that declares one: a dataclass
    up to 0.5.19, a msgspec Struct from 0.5.20 (``dataclasses.fields`` raises)."""
    if dataclasses.is_dataclass(server_args):
        fields = [(f.name, f.default, f.default_factory) for f in dataclasses.fields(server_args)]
        missing = dataclasses.MISSING
    else:
        require(
            hasattr(server_args, "__struct_fields__"),
            "ServerArgs is neither a dataclass nor a msgspec Struct",
        )
        import msgspec

        fields = [(f.name, f.default, f.default_factory) for f in msgspec.structs.fields(server_args)]
        missing = msgspec.NODEFAULT
    values = {}
    for name, default, factory in fields:
        if default is not missing:
            values[name] = default
        elif factory is not missing:
            values[name] = factory()
    return values


def server_args_defaults(**overrides) -> types.SimpleNamespace:
    """Every ``ServerArgs`` field at its declared default, with ``overrides`` on top.

    A plain namespace, not a ``ServerArgs``: ``ServerArgs.__post_init__`` wants a
    model. ``speculative_algorithm`` defaults to None (no draft model), so the DSV4
    pool sizes its state rings for plain decoding."""
    values = _declared_defaults(_server_args_cls())
    values.setdefault("speculative_algorithm", None)
    values.update(overrides)
    return types.SimpleNamespace(**values)


def _server_args_slot():
    """(object, attribute) that ``get_global_server_args()`` reads."""
    from sglang.srt import server_args

    if hasattr(server_args, "_global_server_args"):
        return server_args, "_global_server_args"
    # 0.5.15+: the legacy accessor reads the process runtime context.
    get_context = locate(
        "the runtime context", "sglang.srt.runtime_context:get_context"
    )
    context = get_context()
    require(
        hasattr(context, "_server_args"),
        "neither server_args._global_server_args nor a runtime-context "
        "_server_args slot holds the global server args",
    )
    return context, "_server_args"


def _release_override():
    """``get_context().override_server_args`` (0.5.16+), or None before it."""
    try:
        from sglang.srt.runtime_context import get_context
    except ImportError:
        return None
    return getattr(get_context(), "override_server_args", None)


@contextlib.contextmanager
def global_server_args(args=None, **overrides):
    """Inside the block the release's code reads server args with ``overrides``
    (or the fields of the mapping ``args``) over the defaults; what was published
    before comes back afterwards. Yields the server args object the release reads,
    so a stand-in model runner can carry the same one.

    0.5.16+: through the release's own ``get_context().override_server_args``,
    which publishes a real ``ServerArgs`` and, from 0.5.17, the config bags
    (``get_spec()``, ``get_memory()``, ...) projected from it; fields this release
    does not declare are left out (0.5.20+ refuses unknown ones). Before 0.5.16:
    ``get_global_server_args()`` returns ``server_args_defaults(...)`` (or ``args``
    itself when it is such a namespace)."""
    if args is not None and overrides:
        raise TypeError("pass either args or field overrides, not both")
    fields = dict(args) if isinstance(args, dict) else (vars(args) if args is not None else overrides)
    override = _release_override()
    if override is not None:
        known = _server_args_field_names()
        with override(**{k: v for k, v in fields.items() if k in known}) as published:
            yield published
        return
    if args is None or isinstance(args, dict):
        args = server_args_defaults(**fields)
    target, attr = _server_args_slot()
    with mock.patch.object(target, attr, args):
        yield args


# ---------------------------------------------------------------------------
# The DSV4 token-to-KV pool
# ---------------------------------------------------------------------------


def _pool_module():
    return locate(
        "the DSV4 memory pool", "sglang.srt.mem_cache.deepseek_v4_memory_pool"
    )


def compress_state_ring_size(ratio: int, is_speculative: bool = False) -> int:
    """Tokens in one C4 (ratio 4) or C128 (ratio 128) compress-state ring."""
    return _pool_module().get_compress_state_ring_size(ratio, is_speculative)


def pp_stage_layers(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """[start, end) of stage ``pp_rank`` of ``pp_size``, as the model splits them."""
    get_pp_indices = locate(
        "get_pp_indices", "sglang.srt.distributed.utils:get_pp_indices"
    )
    return tuple(get_pp_indices(num_layers, pp_rank, pp_size))


def build_dsv4_pool(
    *,
    compression_ratios: Sequence[int],
    device: str = "cpu",
    start_layer: Optional[int] = None,
    end_layer: Optional[int] = None,
    page_size: int = 256,
    swa_page_size: Optional[int] = None,
    swa_tokens: int = 4 * 256,
    full_tokens: int = 4 * 256,
    max_num_reqs: int = 4,
    dtype: torch.dtype = torch.float8_e4m3fn,
    state_dtype: torch.dtype = torch.float32,
    qk_nope_head_dim: int = 448,
    qk_rope_head_dim: int = 64,
    indexer_head_dim: int = 128,
    server_args: Optional[dict] = None,
):
    """A real ``DeepSeekV4TokenToKVPool`` on ``device`` (default "cpu").

    ``compression_ratios`` has one entry per model layer (0: uncompressed, 4: C4,
    128: C128); ``[start_layer, end_layer)`` is the pipeline stage the pool serves
    (default: every layer), so ``layer_num`` is ``end_layer - start_layer``. The
    C4/C128 KV pools hold ``full_tokens`` // ratio entries; the state pools one ring
    per SWA page, as the pool configurator sizes them. ``state_dtype`` is used for
    both C4 and C128 states on releases that take one per ratio.

    Construction runs inside ``global_server_args(**(server_args or {}))``; code
    that calls into the pool later and reads server args again (an attention
    forward) wraps itself in ``global_server_args`` too."""
    pool_cls = locate(
        "DeepSeekV4TokenToKVPool",
        "sglang.srt.mem_cache.deepseek_v4_memory_pool:DeepSeekV4TokenToKVPool",
    )
    ratios = list(compression_ratios)
    start = 0 if start_layer is None else start_layer
    end = len(ratios) if end_layer is None else end_layer
    swa_page_size = page_size if swa_page_size is None else swa_page_size
    swa_pages = swa_tokens // swa_page_size
    init = pool_cls.__init__

    # 0.5.12-0.5.14 take one state dtype; 0.5.15 one per compress ratio.
    if takes(init, "state_dtype"):
        dtypes = dict(state_dtype=state_dtype)
    elif takes(init, "c4_state_dtype") and takes(init, "c128_state_dtype"):
        dtypes = dict(c4_state_dtype=state_dtype, c128_state_dtype=state_dtype)
    else:
        raise CannotRun(
            "DeepSeekV4TokenToKVPool takes neither state_dtype nor "
            "c4_state_dtype/c128_state_dtype"
        )

    kwargs = dict(
        max_num_reqs=max_num_reqs,
        swa_size=swa_tokens,
        c4_size=full_tokens // 4,
        c128_size=full_tokens // 128,
        c4_state_pool_size=swa_pages * compress_state_ring_size(4),
        c128_state_pool_size=swa_pages * compress_state_ring_size(128),
        page_size=page_size,
        swa_page_size=swa_page_size,
        dtype=dtype,
        qk_nope_head_dim=qk_nope_head_dim,
        qk_rope_head_dim=qk_rope_head_dim,
        indexer_head_dim=indexer_head_dim,
        layer_num=end - start,
        device=device,
        enable_memory_saver=False,
        compression_ratios=ratios,
        start_layer=start,
        end_layer=end,
        **dtypes,
    )
    missing = [k for k in ("start_layer", "end_layer") if not takes(init, k)]
    require(not missing, f"DeepSeekV4TokenToKVPool takes no {', '.join(missing)}")
    with global_server_args(**(server_args or {})), building("DeepSeekV4TokenToKVPool"):
        return pool_cls(**kwargs)


# ---------------------------------------------------------------------------
# The DSV4 HiCache stack
# ---------------------------------------------------------------------------


class ControllerRecorder:
    """Stands in for ``HybridCacheController`` (CUDA streams, a process group);
    keeps the arguments the stack was going to build it with."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class StateHostPoolRecorder:
    """Stands in for ``DeepSeekV4StateHostPool`` where a check only looks at the
    KV/SWA side of the stack: keeps the state pools it was given."""

    layout = "layer_first"
    # 0.5.19+: the group asks each host pool whether it can use the write-back
    # JIT kernels; a pool that records nothing cannot.
    can_use_write_back_jit = False

    def __init__(self, *, pool_name, state_pools, **kwargs):
        self.pool_name = pool_name
        self.state_pools = state_pools
        self.layer_num = len(state_pools)


@dataclasses.dataclass
class HiCacheStack:
    """What ``build_deepseek_v4_hicache_stack`` returned for one stage's pool.

    ``group``: the real host pool group; ``controller``: the recorded controller
    arguments; ``transfer_layer_num``: the layer count the controller was given."""

    group: object
    controller: ControllerRecorder

    @property
    def transfer_layer_num(self) -> int:
        kwargs = self.controller.kwargs
        # 0.5.21 renamed the keyword (same meaning: the stage's transfer layers).
        for name in ("transfer_layer_num", "transfer_layer_id_max"):
            if name in kwargs:
                return kwargs[name]
        raise CannotRun(
            "the HybridCacheController is given neither transfer_layer_num nor "
            "transfer_layer_id_max"
        )


def _memory_pool_host():
    return locate("memory_pool_host", "sglang.srt.mem_cache.memory_pool_host")


def _alloc_unpinned(dims, dtype, device, pin_memory, allocator, **kwargs):
    return allocator.allocate(dims, dtype=dtype, device=device)


@contextlib.contextmanager
def _host_pool_patches(device: str):
    host = _memory_pool_host()
    with contextlib.ExitStack() as stack:
        # A few MB of host pools here; do not depend on the 10 GB of free host
        # RAM that the real reserve asks for (0.5.19+ ask host_memory_budget_bytes()).
        if hasattr(host, "host_memory_budget_bytes"):
            stack.enter_context(
                mock.patch.object(host, "host_memory_budget_bytes", lambda: 1 << 40)
            )
        else:
            require(
                hasattr(host, "HICACHE_HOST_MEMORY_RESERVE_BYTES"),
                "memory_pool_host has neither host_memory_budget_bytes nor "
                "HICACHE_HOST_MEMORY_RESERVE_BYTES",
            )
            stack.enter_context(
                mock.patch.object(host, "HICACHE_HOST_MEMORY_RESERVE_BYTES", 0)
            )
        if torch.device(device).type == "cpu":
            # Host pools pin (cudaHostRegister) their buffers, which needs a CUDA
            # driver: allocate plainly for CPU device pools. The table is keyed by
            # torch.device up to 0.5.19, by the device-type string from 0.5.20.
            require(
                hasattr(host, "ALLOC_MEMORY_FUNCS"),
                "memory_pool_host has no ALLOC_MEMORY_FUNCS",
            )
            stack.enter_context(
                mock.patch.dict(
                    host.ALLOC_MEMORY_FUNCS,
                    {torch.device("cpu"): _alloc_unpinned, "cpu": _alloc_unpinned},
                )
            )
        yield


# The HiCache settings of these stacks: write-through, "direct" io, layer-first
# host layout, host pools sized by hicache_ratio 2, no storage backend.
HICACHE_SERVER_ARGS = dict(
    hicache_size=0,
    hicache_ratio=2.0,
    hicache_mem_layout="layer_first",
    hicache_storage_backend=None,
    hicache_write_policy="write_through",
    hicache_io_backend="direct",
)


def _cache_init_params(full_tokens: int, page_size: int, pp_rank: int, pp_size: int):
    swa_attn_allocator = types.SimpleNamespace(
        alloc=lambda need_size: None, free=lambda indices: None
    )
    # size_full sizes the FULL-side (C4/C128) host pools.
    allocator = types.SimpleNamespace(
        size_full=full_tokens, swa_attn_allocator=swa_attn_allocator
    )
    # 0.5.17+ read the page size and the process groups (PP included) off the
    # params; 0.5.18+ the MTP draft pools whose SWA layers follow the stage's
    # own (none here: no draft model).
    return types.SimpleNamespace(
        token_to_kv_pool_allocator=allocator,
        page_size=page_size,
        tp_cache_group=None,
        attn_cp_cache_group=None,
        attn_tp_cache_group=None,
        pp_cache_group=_pp_group(pp_rank, pp_size),
        pp_rank=pp_rank,
        pp_size=pp_size,
        mtp_draft_device_pools=(),
    )


def _pp_group(pp_rank: int, pp_size: int):
    """What the stack reads off a PP group: this stage's rank and the stage count."""
    return types.SimpleNamespace(rank_in_group=pp_rank, world_size=pp_size)


def build_dsv4_hicache_stack(
    pool,
    *,
    full_tokens: int,
    pp_rank: int = 0,
    pp_size: int = 1,
    page_size: Optional[int] = None,
    state_host_pool_cls=None,
) -> HiCacheStack:
    """Run the release's real ``build_deepseek_v4_hicache_stack`` on ``pool`` as
    stage ``pp_rank`` of ``pp_size``, with ``full_tokens`` device FULL tokens (the
    ``full_tokens`` the pool was built with) and the settings of
    ``HICACHE_SERVER_ARGS``.

    The controller is recorded, not built. ``state_host_pool_cls`` replaces
    ``DeepSeekV4StateHostPool`` (for a check of the KV side alone). On a CPU pool
    the host pools are not pinned. The stack derives its layer mappings from the
    pool (0.5.19+ take them as ``layer_mappings``; the model runner passes what
    the same derivation gives, so none is passed here)."""
    assembler = locate(
        "the hybrid pool assembler",
        "sglang.srt.mem_cache.hybrid_cache.hybrid_pool_assembler",
    )
    build = getattr(assembler, "build_deepseek_v4_hicache_stack", None)
    require(
        build is not None,
        "hybrid_pool_assembler has no build_deepseek_v4_hicache_stack",
    )
    require(
        hasattr(assembler, "HybridCacheController"),
        "hybrid_pool_assembler builds no HybridCacheController",
    )
    page_size = pool.page_size if page_size is None else page_size
    if takes(build, "pp_rank"):
        # 0.5.12
        pp = dict(pp_rank=pp_rank, pp_size=pp_size)
    elif takes(build, "pp_group"):
        # 0.5.13-0.5.16: the stack hands the group to the controller (recorded).
        pp = dict(pp_group=_pp_group(pp_rank, pp_size))
    elif takes(build, "params"):
        # 0.5.17+: the PP group rides on the cache params.
        pp = {}
    else:
        raise CannotRun("build_deepseek_v4_hicache_stack takes no PP stage")
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(assembler, "HybridCacheController", ControllerRecorder)
        )
        if state_host_pool_cls is not None:
            require(
                hasattr(assembler, "DeepSeekV4StateHostPool"),
                "hybrid_pool_assembler builds no DeepSeekV4StateHostPool",
            )
            stack.enter_context(
                mock.patch.object(
                    assembler, "DeepSeekV4StateHostPool", state_host_pool_cls
                )
            )
        stack.enter_context(_host_pool_patches(pool.device))
        # 0.5.12-0.5.18 take the server args; 0.5.17+ read them from the config
        # bags the release publishes (get_memory()).
        published = stack.enter_context(global_server_args(**HICACHE_SERVER_ARGS))
        kwargs = dict(
            **accepted(
                build,
                params=_cache_init_params(full_tokens, page_size, pp_rank, pp_size),
                server_args=published,
                kvcache=pool,
                page_size=page_size,
                tp_group=None,
                load_cache_event=None,
                storage_backend=None,
            ),
            **pp,
        )
        require_call(build, "build_deepseek_v4_hicache_stack", **kwargs)
        group, controller = build(**kwargs)
    return HiCacheStack(group=group, controller=controller)


def stack_entry(group, name: str):
    """The group's entry for pool ``name`` (a ``PoolName`` member name such as
    "DEEPSEEK_V4_C4_STATE"), or None when this release does not register it."""
    pool_name = locate("PoolName", "sglang.srt.mem_cache.hicache_storage:PoolName")
    member = getattr(pool_name, name, None)
    if member is None:
        return None
    return group.entry_map.get(member)


def pool_transfer(name, host_indices, device_indices):
    """One ``PoolTransfer`` for entry ``name`` (the entry's own name object)."""
    cls = locate("PoolTransfer", "sglang.srt.mem_cache.hicache_storage:PoolTransfer")
    return cls(name=name, host_indices=host_indices, device_indices=device_indices)


def _torch_transfer_kv_direct(src_layers, dst_layers, src_indices, dst_indices, page_size):
    """Row copy with the semantics of sgl_kernel's transfer_kv_direct at
    page_size 1, the way the DSV4 host pools call it."""
    assert page_size == 1
    assert len(src_layers) == len(dst_layers)
    for src, dst in zip(src_layers, dst_layers):
        dst[dst_indices.to(dst.device)] = src[src_indices.to(src.device)].to(dst.device)


@contextlib.contextmanager
def dsv4_host_transfers(device: str):
    """Inside the block the DSV4 host pools' "direct" copies move real bytes.

    On CPU sgl_kernel is stubbed (its copy does nothing) and from 0.5.13 not even
    imported by memory_pool_host: use the same row copy in torch. On CUDA the
    real kernel runs."""
    if torch.device(device).type != "cpu":
        yield
        return
    with mock.patch.object(
        _memory_pool_host(), "transfer_kv_direct", _torch_transfer_kv_direct, create=True
    ):
        yield


# ---------------------------------------------------------------------------
# The pool's per-layer lists and device tensors, and the stack's entries
# ---------------------------------------------------------------------------

# Per-global-layer lists of the pool (None outside the stage): the layer map and
# the compress-state pools of the C4 (and C128) attention and the C4 indexer.
LAYER_LISTS = ("layer_mapping", "compress_state_pools", "indexer_compress_state_pools")
# State kind -> the pool's list that holds it (C4 and C128 attention states share
# one list; the layer's compress ratio tells them apart).
STATE_LISTS = {
    "c4": "compress_state_pools",
    "c4_indexer": "indexer_compress_state_pools",
    "c128": "compress_state_pools",
}


def wrap_layer_lists(pool, wrap) -> dict:
    """Replace each of the pool's per-global-layer lists (LAYER_LISTS) with
    ``wrap(list)``; returns {name: wrapped}. For recording which layers are read."""
    wrapped = {}
    for name in LAYER_LISTS:
        require(hasattr(pool, name), f"DeepSeekV4TokenToKVPool has no {name}")
        wrapped[name] = wrap(getattr(pool, name))
        setattr(pool, name, wrapped[name])
    return wrapped


def state_pool_list(pool, kind: str):
    """The pool's list (by global layer id) holding ``kind`` ("c4", "c4_indexer",
    "c128") compress-state pools, as the pool holds it now (wrapped or not)."""
    return getattr(pool, STATE_LISTS[kind])


def state_pool_pages(state_pool) -> tuple[torch.Tensor, int]:
    """A device compress-state pool's tensor and the bytes of one page (one ring
    per SWA page)."""
    t = state_pool.kv_score_buffer.kv_score
    return t, state_pool.ring_size * t[0].nbytes


def kv_device_buffers(pool) -> dict:
    """The stage's paged device KV buffers, per kind: "swa" (one per stage layer),
    "c4", "c4_indexer", "c128" (one per stage layer of that ratio)."""
    return {
        "swa": list(pool.swa_kv_pool.kv_buffer),
        "c4": list(pool.c4_kv_pool.kv_buffer),
        "c4_indexer": list(pool.c4_indexer_kv_pool.index_k_with_scale_buffer),
        "c128": list(pool.c128_kv_pool.kv_buffer),
    }


def model_device_buffer(pool, kind: str, layer_id: int) -> torch.Tensor:
    """The device buffer the model reads for global layer ``layer_id``'s ``kind``
    ("swa", "c4", "c4_indexer", "c128") KV. 0.5.20 renamed the SWA accessor
    ``get_swa_key_buffer`` to ``get_swa_key_buffer_radix``."""
    names = {
        "swa": ("get_swa_key_buffer", "get_swa_key_buffer_radix"),
        "c4": ("get_extra_key_buffer",),
        "c4_indexer": ("get_index_k_with_scale_buffer",),
        "c128": ("get_extra_key_buffer",),
    }[kind]
    for name in names:
        if hasattr(pool, name):
            return getattr(pool, name)(layer_id)
    raise CannotRun(f"DeepSeekV4TokenToKVPool has no {' / '.join(names)}")


def host_layer_num(entry) -> int:
    return entry.host_pool.layer_num


def host_device_tensor(entry, slot: int) -> torch.Tensor:
    """The device tensor that host slot ``slot`` of a paged (KV) entry copies."""
    return entry.host_pool.device_buffers[slot]


def host_state_pool(entry, slot: int):
    """The device compress-state pool that host slot ``slot`` of a state entry
    wraps, and the device page view the slot's copies use."""
    host = entry.host_pool
    return host.state_pools[slot], host.device_page_views[slot]


def host_page_bytes(entry, slot: int, page: int) -> torch.Tensor:
    """Host page ``page`` of slot ``slot`` (layer-first host layout), as bytes."""
    return entry.host_pool.kv_buffer[slot][page].view(torch.uint8).reshape(-1)


def stack_transfers(group, host_indices, device_indices) -> list:
    """One transfer per non-anchor entry of the group, same indices for all (the
    anchor KV entry travels through the group's own indices)."""
    anchor = stack_entry(group, "KV")
    return [
        pool_transfer(e.name, host_indices, device_indices)
        for e in group.entries
        if e is not anchor
    ]


def _entry_transfers(group, host_indices, device_indices, transfers) -> list:
    """(entry, host indices, device indices) per entry a transfer moves: the
    anchor with the group's own indices, then each pool transfer's entry. From
    0.5.18 the group moves nothing itself: the controller resolves these (one
    L2Transfer per entry, HybridCacheController._l2_transfers) and its transfer
    engine calls each entry's host pool; the seam does what the engine does, in
    order, with the entry's own layer mapper."""
    anchor = group.anchor_entry
    moves = [(anchor, host_indices, device_indices)] if host_indices.numel() else []
    for transfer in transfers:
        moves.append(
            (group.entry_map[transfer.name], transfer.host_indices, transfer.device_indices)
        )
    # 0.5.21+: the engine lets each host pool resolve its indices first and then
    # calls its *_physical copy methods.
    prepared = []
    for entry, host_idx, device_idx in moves:
        prepare = getattr(entry.host_pool, "prepare_transfer_indices", None)
        if prepare is not None:
            host_idx, device_idx = prepare(host_idx, device_idx, "direct")
        prepared.append((entry, host_idx, device_idx))
    return prepared


def _physical(host_pool, name: str):
    return getattr(host_pool, f"{name}_physical", None) or getattr(host_pool, name)


def backup_all_layers(group, pool, host_indices, device_indices, transfers) -> None:
    """Device -> host for every layer, "direct" io (inside dsv4_host_transfers)."""
    if hasattr(group, "backup_from_device_all_layer"):
        # 0.5.12-0.5.17: the group routes the transfers to its entries.
        group.backup_from_device_all_layer(
            pool, host_indices, device_indices, "direct", pool_transfers=transfers
        )
        return
    for entry, host_idx, device_idx in _entry_transfers(
        group, host_indices, device_indices, transfers
    ):
        _physical(entry.host_pool, "backup_from_device_all_layer")(
            entry.device_pool, host_idx, device_idx, "direct"
        )


def load_layer(group, pool, host_indices, device_indices, layer, transfers) -> None:
    """Host -> device for stage-local transfer layer ``layer``, "direct" io."""
    if hasattr(group, "load_to_device_per_layer"):
        # 0.5.12-0.5.17
        group.load_to_device_per_layer(
            pool, host_indices, device_indices, layer, "direct", pool_transfers=transfers
        )
        return
    for entry, host_idx, device_idx in _entry_transfers(
        group, host_indices, device_indices, transfers
    ):
        local = entry.layer_mapper(layer) if entry.layer_mapper is not None else layer
        if local is not None:
            _physical(entry.host_pool, "load_to_device_per_layer")(
                entry.device_pool, host_idx, device_idx, local, "direct"
            )


def spread_swa_pool_over(pool, num_layers: int) -> None:
    """Give the pool's SWA pool one buffer per model layer (``num_layers``), as a
    pool allocated with the global layer count would hold (upstream before
    #29106); the extra buffers are fresh, of the same shape."""
    bufs = list(pool.swa_kv_pool.kv_buffer)
    require(len(bufs) <= num_layers, "the SWA pool already holds more buffers")
    bufs += [torch.empty_like(bufs[0]) for _ in range(num_layers - len(bufs))]
    pool.swa_kv_pool.kv_buffer = bufs
