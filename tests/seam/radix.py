"""How to build a UnifiedRadixCache with HiCache on CPU, per release.

What moved between releases and lives only here:
- module homes: SWATokenToKVPoolAllocator (mem_cache/allocator/swa.py from 0.5.13),
  HostPoolGroup / PoolEntry (mem_cache/pool_host/group.py in later releases);
- constructor arguments that come and go (SWAKVPool, HybridReqToTokenPool);
- the mamba slot allocator (split off the mamba pool from 0.5.13);
- how host pools and a controller are wired into the cache (the attributes the
  hybrid pool assembler sets);
- the slice of HybridCacheController that its copy paths read, and the modules
  that bind the device module at import time;
- the shape of ``ongoing_write_through`` entries (0.5.13 adds a third field).
"""

from __future__ import annotations

from sglang.test.test_utils import maybe_stub_sgl_kernel

maybe_stub_sgl_kernel()

import torch  # noqa: E402

from seam import accepted, locate  # noqa: E402

_MC = "sglang.srt.mem_cache"
EvictParams = locate("EvictParams", f"{_MC}.base_prefix_cache:EvictParams")
InsertParams = locate("InsertParams", f"{_MC}.base_prefix_cache:InsertParams")
MatchPrefixParams = locate("MatchPrefixParams", f"{_MC}.base_prefix_cache:MatchPrefixParams")
CacheInitParams = locate("CacheInitParams", f"{_MC}.cache_init_params:CacheInitParams")
PoolName = locate("PoolName", f"{_MC}.hicache_storage:PoolName")
PoolTransfer = locate("PoolTransfer", f"{_MC}.hicache_storage:PoolTransfer")
ReqToTokenPool = locate("ReqToTokenPool", f"{_MC}.memory_pool:ReqToTokenPool")
LogicalHostPool = locate("LogicalHostPool", f"{_MC}.memory_pool_host:LogicalHostPool")
RadixKey = locate("RadixKey", f"{_MC}.radix_cache:RadixKey")
SWAKVPool = locate("SWAKVPool", f"{_MC}.swa_memory_pool:SWAKVPool")
HostPoolGroup = locate(
    "HostPoolGroup", f"{_MC}.memory_pool_host:HostPoolGroup", f"{_MC}.pool_host.group:HostPoolGroup"
)
PoolEntry = locate("PoolEntry", f"{_MC}.memory_pool_host:PoolEntry", f"{_MC}.pool_host.group:PoolEntry")
SWATokenToKVPoolAllocator = locate(
    "SWATokenToKVPoolAllocator",
    f"{_MC}.swa_memory_pool:SWATokenToKVPoolAllocator",
    f"{_MC}.allocator.swa:SWATokenToKVPoolAllocator",
)
ComponentType = locate("ComponentType", f"{_MC}.unified_cache_components:ComponentType")
UnifiedRadixCache = locate("UnifiedRadixCache", f"{_MC}.unified_radix_cache:UnifiedRadixCache")


# -- device side --------------------------------------------------------------


def swa_allocator(*, page_size, full_size, swa_size):
    """A real SWATokenToKVPoolAllocator over a real SWAKVPool (layer 0 SWA, layer 1 full)."""
    # SWAKVPool hands its **kwargs to the inner full/SWA pools (MHATokenToKVPool).
    inner = locate("MHATokenToKVPool", f"{_MC}.memory_pool:MHATokenToKVPool")
    kvcache = SWAKVPool(
        **accepted(
            SWAKVPool.__init__,
            forwards_to=inner.__init__,
            size=full_size,
            size_swa=swa_size,
            page_size=page_size,
            dtype=torch.bfloat16,
            head_num=1,
            head_dim=4,
            swa_attention_layer_ids=[0],
            full_attention_layer_ids=[1],
            enable_kvcache_transpose=False,
            device="cpu",
        )
    )
    return SWATokenToKVPoolAllocator(
        size=full_size,
        size_swa=swa_size,
        page_size=page_size,
        dtype=torch.bfloat16,
        device="cpu",
        kvcache=kvcache,
        need_sort=False,
    )


def req_to_token_pool(*, size, max_context_len, mamba_size=None):
    """ReqToTokenPool, or HybridReqToTokenPool with a real one-layer mamba pool."""
    if mamba_size is None:
        return ReqToTokenPool(
            size=size, max_context_len=max_context_len, device="cpu", enable_memory_saver=False
        )
    mamba_utils = locate("mamba cache params", "sglang.srt.configs.mamba_utils")
    HybridReqToTokenPool = locate("HybridReqToTokenPool", f"{_MC}.memory_pool:HybridReqToTokenPool")
    shape = mamba_utils.Mamba2StateShape.create(
        tp_world_size=1, intermediate_size=8, n_groups=1, num_heads=1, head_dim=8,
        state_size=4, conv_kernel=2,
    )
    return HybridReqToTokenPool(
        **accepted(
            HybridReqToTokenPool.__init__,
            size=size,
            mamba_size=mamba_size,
            mamba_spec_state_size=mamba_size,
            max_context_len=max_context_len,
            device="cpu",
            enable_memory_saver=False,
            cache_params=mamba_utils.Mamba2CacheParams(shape=shape, layers=[2]),
            mamba_layer_ids=[2],
            enable_mamba_extra_buffer=False,
        )
    )


def mamba_slots(req_pool):
    """The allocator of mamba state slots."""
    allocator = getattr(req_pool, "mamba_allocator", None)
    return req_pool.mamba_pool if allocator is None else allocator


def mamba_device_pool(req_pool):
    return req_pool.mamba_pool


def unified_cache(*, req_pool, allocator, page_size, window, components, mamba_extra_buffer):
    params = CacheInitParams(
        **accepted(
            CacheInitParams,
            disable=False,
            req_to_token_pool=req_pool,
            token_to_kv_pool_allocator=allocator,
            page_size=page_size,
            sliding_window_size=window,
            tree_components=components,
            enable_mamba_extra_buffer=mamba_extra_buffer,
        )
    )
    return UnifiedRadixCache(params)


# -- host side ------------------------------------------------------------------


def pool_entry(**kwargs):
    return PoolEntry(**accepted(PoolEntry, **kwargs))


def wire_host_pools(cache, controller, group, *, kv_host, swa_host, mamba_host, write_policy):
    """Attach host pools and a controller the way the hybrid pool assembler does."""
    FULL, SWA, MAMBA = ComponentType.FULL, ComponentType.SWA, ComponentType.MAMBA
    cache.cache_controller = controller
    cache.host_pool_group = group
    cache.full_kv_pool_host = kv_host
    cache.components[FULL]._full_kv_pool_host = kv_host
    cache.swa_kv_pool_host = swa_host
    cache.components[SWA]._swa_kv_pool_host = swa_host
    if mamba_host is not None:
        cache.mamba_pool_host = mamba_host
        cache.components[MAMBA]._mamba_pool_host = mamba_host
    cache.write_through_threshold = 1 if write_policy == "write_through" else 2
    cache.load_back_threshold = 256


def pending_write_ids(cache) -> set:
    """Ids of the nodes whose device -> host write has not been acknowledged yet."""
    return set(cache.ongoing_write_through)


# -- the real hybrid controller, without its CUDA-only __init__ -------------------

hybrid_cache_controller = locate(
    "hybrid cache controller", f"{_MC}.hybrid_cache.hybrid_cache_controller"
)
cache_controller = locate("cache controller", "sglang.srt.managers.cache_controller")
CacheOperation = locate("CacheOperation", f"{_MC}.hybrid_cache.hybrid_cache_controller:CacheOperation")

# Modules that bind torch's device module at import time; a CPU run replaces it there.
DEVICE_MODULE_HOLDERS = (hybrid_cache_controller, cache_controller)


def bare_hybrid_controller(group, write_policy, allocator, *, device, stream, layer_num=2):
    """A real HybridCacheController with only the state its copy paths read."""
    ctrl = object.__new__(hybrid_cache_controller.HybridCacheController)
    ctrl.mem_pool_host = group
    ctrl.mem_pool_device = None
    ctrl.mem_pool_device_allocator = allocator
    ctrl.write_policy = write_policy
    ctrl.io_backend = "kernel"
    ctrl.device = device
    ctrl.write_queue = []
    ctrl.load_queue = []
    ctrl.ack_write_queue = []
    ctrl.ack_load_queue = []
    ctrl.write_stream = stream
    ctrl.load_stream = stream
    ctrl.layer_num = layer_num
    ctrl.layer_done_counter = cache_controller.LayerDoneCounter(layer_num)
    ctrl.has_draft = False  # no draft-model KV registered (read by copy paths from 0.5.14)
    return ctrl
