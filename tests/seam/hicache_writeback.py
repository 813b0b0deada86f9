"""HiCache write-back and load-back, per release: the release's own
HybridCacheController on CPU (its write, load and ack queues; the copies recorded,
not made), a ledger of host pages that says when a page a load-back reads was
freed, and a stack whose pools hold KV data and whose copies are made (on CUDA by
the release's kernels, on CPU by a row copy in torch).

What differs between releases and lives only here:
- which node ids have a load-back the tree has not acknowledged yet
  (``ongoing_load_back``, keyed by node id on every release; its entries name the
  node until 0.5.16, its id from 0.5.17);
- which load-back owns a node's Full KV host copy until its ack (a node field from
  0.5.18 on the Python tree core; no such owner before; kept inside the Rust core);
- how the scheduler's per-step HiCache work reaches the cache (start the queued
  loads, poll load acks, wait for write-back copies).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from unittest import mock

import torch

from seam import CannotRun, applies_only_if, building, radix, require
from seam import swa_allocator as allocators
from seam.hicache_standins import CpuStream, RecordingHostPool, cpu_device_module_patches

__all__ = [
    "KVDataStack",
    "LoadBackWatch",
    "PageLedgerHostPool",
    "acknowledge_loads",
    "cpu_controller",
    "cpu_device_module_patches",
    "kv_data_stack",
    "load_back_owners",
    "require_aux_load_backs",
    "pending_load_back_ids",
    "pending_load_back_nodes",
    "row_copies_on_cpu",
    "start_loads",
    "wait_write_backs",
]


def cpu_controller(allocator):
    """A factory for radix_fixtures.attach_hicache: the release's HybridCacheController
    (write, load, start_loading, ack queues) on CPU. Start cpu_device_module_patches()
    first: its streams and events are then CPU stand-ins whose copies finish at once."""
    return lambda group, policy: radix.bare_hybrid_controller(
        group, policy, allocator, device="cpu", stream=CpuStream()
    )


class PageLedgerHostPool(RecordingHostPool):
    """A host index pool that counts how often each slot was freed (its generation), so
    a page read after it was freed and handed out again is told apart from the page
    that was read at first; a LoadBackWatch hears of every free."""

    def __init__(self, size, page_size):
        super().__init__(size, page_size)
        self.generation = torch.zeros(size, dtype=torch.int64)
        self.watch = None

    def free(self, indices):
        slots = indices.to(device="cpu", dtype=torch.int64).flatten()
        if self.watch is not None:
            self.watch.on_free(self, slots)
        self.generation[slots] += 1
        return super().free(indices)


def pending_load_back_ids(cache) -> set:
    """Node ids whose host->device load-back the tree has not acknowledged yet."""
    pending = getattr(cache, "ongoing_load_back", None)
    require(pending is not None, "UnifiedRadixCache has no ongoing_load_back")
    return set(pending)


def load_back_owners(cache):
    """{node id: anchor node id} for every node whose Full KV host copy an
    unacknowledged write-back load-back holds against the duplicate reclaim (the
    load-back's owner of the node: UnifiedTreeNode.load_back_pending_id, 0.5.18+).

    {} where the release's load-backs own no node (before 0.5.18 the tree has no such
    owner: nothing to tell). None on the Rust tree core, which keeps its owners to
    itself: no value is read in its place, the caller judges that core by what an
    owner does (a load-back refused, or the core's own assert)."""
    if radix._on_rust(cache):
        return None
    top = radix.root(cache)
    if not hasattr(top, "load_back_pending_id"):
        return {}
    owners, stack = {}, list(top.children.values())
    while stack:
        node_obj = stack.pop()
        stack.extend(node_obj.children.values())
        if node_obj.load_back_pending_id is not None:
            owners[node_obj.id] = node_obj.load_back_pending_id
    return owners


def require_aux_load_backs() -> None:
    """Only where the release loads an SWA or Mamba component back apart from Full KV (its
    MatchResult reports their host hits on their own, swa_host_hit_length: 0.5.13+):
    before that a load-back always reads Full KV with the rest, and no SWA / Mamba
    load-back exists to take anyone's owner."""
    match_cls = radix.locate("MatchResult", f"{radix._MC}.base_prefix_cache:MatchResult")
    fields = getattr(match_cls, "_fields", None) or getattr(match_cls, "__dataclass_fields__", {})
    applies_only_if("swa_host_hit_length" in fields,
                    "MatchResult reports no SWA host hit apart from Full KV (no SWA / Mamba-only load-back)")


def pending_load_back_nodes(cache) -> list:
    """The anchor nodes of the load-backs the tree has not acknowledged yet (each entry
    names its node first: the node until 0.5.16, its id from 0.5.17)."""
    pending = getattr(cache, "ongoing_load_back", None)
    require(pending is not None, "UnifiedRadixCache has no ongoing_load_back")
    return [radix.node(cache, entry[0]) for entry in pending.values()]


def start_loads(cache) -> None:
    """The scheduler after it scheduled a batch: launch the queued host->device loads."""
    cache.ready_to_load_host_cache()


def acknowledge_loads(cache) -> None:
    """The scheduler's next step: take the finished loads' acks."""
    cache.loading_check()


def wait_write_backs(cache) -> None:
    """Wait for the device->host copies of write-back evictions. From 0.5.13 the
    cache's evict does it itself (#24585); 0.5.12's non-blocking poll would release a
    lock that a write-back never took, so the blocking wait is used on every release."""
    cache.writing_check(write_back=True)


class LoadBackWatch:
    """Counts host pages that a load-back reads and that were freed before the tree
    acknowledged that load-back: from the moment load_back() is called (it reads the
    pages' indices off the tree then) until its node leaves ongoing_load_back.

    - freed_before_load: pages handed to the controller's load() that were freed
      after load_back() began (the load copies whatever another write put there);
    - freed_in_flight: pages freed after load() took them, before the ack.
    """

    def __init__(self, cache, controller, pools: dict):
        """``pools``: {PoolName: PageLedgerHostPool} of the host pool group."""
        self.cache = cache
        self.pools = pools
        self._names = {id(pool): str(name) for name, pool in pools.items()}
        self.in_flight: dict = {}  # node id -> [(pool, slots)]
        self.freed_before_load = 0
        self.freed_in_flight = 0
        self.loads = 0
        self.events: list = []
        self._since = None
        for pool in pools.values():
            pool.watch = self
        real = controller.load
        try:
            self._signature = inspect.signature(real)
        except (TypeError, ValueError) as exc:
            raise CannotRun(f"the controller's load has no signature to read: {exc}") from exc
        controller.load = self._load_through(real)

    def load_back(self, node_obj):
        """The cache's load_back of node_obj, with its host pages watched."""
        self._since = {pool: pool.generation.clone() for pool in self.pools.values()}
        try:
            return radix.load_back(self.cache, node_obj)
        finally:
            self._since = None

    def settle(self) -> None:
        """Forget the loads the tree has acknowledged (after its loading_check)."""
        pending = pending_load_back_ids(self.cache)
        for node_id in [n for n in self.in_flight if n not in pending]:
            del self.in_flight[node_id]

    @property
    def violations(self) -> int:
        return self.freed_before_load + self.freed_in_flight

    def _load_through(self, real):
        def load(*args, **kwargs):
            device_indices = real(*args, **kwargs)
            if device_indices is None:
                return None
            call = self._signature.bind(*args, **kwargs).arguments
            node_id = call.get("node_id", -1)
            pages = self._pages(call.get("host_indices"), call.get("extra_pools") or ())
            self.loads += 1
            if self._since is not None:
                for pool, slots in pages:
                    moved = int((pool.generation[slots] != self._since[pool][slots]).sum())
                    if moved:
                        self.freed_before_load += moved
                        self.events.append(f"load of node {node_id} reads {moved} {self._names[id(pool)]} "
                                           "host page(s) freed after its load_back began")
            self.in_flight[node_id] = pages
            return device_indices

        return load

    def _pages(self, host_indices, extra_pools) -> list:
        pages = []
        kv = self.pools.get(radix.PoolName.KV)
        if kv is not None and host_indices is not None and host_indices.numel():
            pages.append((kv, host_indices.to(device="cpu", dtype=torch.int64).flatten()))
        for xfer in extra_pools:
            pool = self.pools.get(xfer.name)
            indices = getattr(xfer, "host_indices", None)
            if pool is not None and indices is not None and indices.numel():
                pages.append((pool, indices.to(device="cpu", dtype=torch.int64).flatten()))
        return pages

    def on_free(self, pool, slots: torch.Tensor) -> None:
        for node_id, pages in self.in_flight.items():
            for held_pool, held in pages:
                if held_pool is pool:
                    hit = int(torch.isin(slots, held).sum())
                    if hit:
                        self.freed_in_flight += hit
                        self.events.append(f"{hit} {self._names[id(pool)]} host page(s) of node {node_id}'s "
                                           "load-back freed before its ack")


# -- a stack that holds KV data: the copies are made (CUDA; on CPU see below) ---------


class KVDataStack:
    """A FULL+SWA UnifiedRadixCache under write-back whose device pools (layer 0 SWA,
    layer 1 full) and host pools (MHATokenToKVPoolHost, layer-first, "direct" copies)
    hold real KV, driven by the release's HybridCacheController."""

    def __init__(self, cache, allocator, req_pool, controller, kv_host, swa_host):
        self.cache = cache
        self.allocator = allocator
        self.req_to_token_pool = req_pool
        self.controller = controller
        self.kv_host = kv_host
        self.swa_host = swa_host
        kvcache = allocator.get_kvcache()
        self.full_pool = kvcache.full_kv_pool
        self.swa_pool = kvcache.swa_kv_pool

    def write_tokens(self, full_locs: torch.Tensor, tokens) -> None:
        """Store each token's id as its K and V, in the full and the SWA pool."""
        values = torch.tensor(tokens, dtype=torch.float32, device=full_locs.device)[:, None, None]
        swa_locs = self.allocator.translate_loc_from_full_to_swa(full_locs)
        for pool, locs in ((self.full_pool, full_locs), (self.swa_pool, swa_locs)):
            for buffer in (pool.k_buffer[0], pool.v_buffer[0]):
                buffer[locs.to(buffer.device)] = values.to(buffer.device).expand(-1, *buffer.shape[1:])

    def read_tokens(self, full_locs: torch.Tensor, *, swa: bool = False) -> list:
        """The token ids stored at these locations (K of the full or the SWA pool)."""
        pool = self.swa_pool if swa else self.full_pool
        locs = self.allocator.translate_loc_from_full_to_swa(full_locs) if swa else full_locs
        buffer = pool.k_buffer[0]
        return [int(v) for v in buffer[locs.to(buffer.device)][:, 0, 0].float().cpu()]


def _mha_host_pool_cls():
    # 0.5.16 moved the host pools into mem_cache/pool_host/.
    return radix.locate("MHATokenToKVPoolHost", f"{radix._MC}.memory_pool_host:MHATokenToKVPoolHost",
                        f"{radix._MC}.pool_host.mha:MHATokenToKVPoolHost")


def _mha_host_pool(device_pool, size: int, page_size: int, device):
    """The host KV pool of a device MHA pool. Until 0.5.22 it takes the device pool;
    from 0.5.23 it takes the device pool's buffer description and capacity, which the
    release's pool assembler reads off the device pool (_mha_host_inputs): built here
    the same way, by that helper."""
    cls = _mha_host_pool_cls()
    common = dict(host_to_device_ratio=size / device_pool.size, host_size=0, page_size=page_size,
                  layout="layer_first", pin_memory=torch.device(device).type == "cuda", device="cpu")
    if not radix.takes(cls.__init__, "buffer_info"):
        return cls(**radix.accepted(cls.__init__, device_pool=device_pool, **common))
    assembler = radix.locate("the hybrid pool assembler's MHA host inputs",
                             f"{radix._MC}.hybrid_cache.hybrid_pool_assembler:_mha_host_inputs")
    cls, buffer_info, inputs = assembler(device_pool)
    return cls(buffer_info, **radix.accepted(cls.__init__, **common), **inputs)


@building("a FULL+SWA HiCache stack that holds KV data (pools, host pools, controller)")
def kv_data_stack(*, device, page_size, full_size, swa_size, window, host_full_size, host_swa_size, core=None):
    """Device pools on `device`, the host pools sized about host_*_size tokens
    (a host KV pool is always a page larger than asked, and larger than its device
    pool), the release's controller with its own streams on `device`."""
    EvictParams, PoolName, SWA = radix.EvictParams, radix.PoolName, radix.ComponentType.SWA
    allocator = allocators.swa_allocator(page_size=page_size, full_size=full_size, swa_size=swa_size, need_sort=False,
                                         device=device, dtype=torch.float32, head_dim=8)
    kvcache = allocator.get_kvcache()
    req_pool = radix.req_to_token_pool(size=8, max_context_len=2048)
    cache = radix.unified_cache(
        req_pool=req_pool, allocator=allocator, page_size=page_size, window=window,
        components=(radix.ComponentType.FULL, SWA), mamba_extra_buffer=False, core=core,
        hicache_write_policy="write_back",
    )
    kv_host = _mha_host_pool(kvcache.full_kv_pool, host_full_size, page_size, device)
    swa_host = _mha_host_pool(kvcache.swa_kv_pool, host_swa_size, page_size, device)
    entries = [
        radix.pool_entry(name=PoolName.KV, host_pool=kv_host, device_pool=kvcache.full_kv_pool,
                         layer_mapper={1: 0}.get, is_primary_index_anchor=True),
        radix.pool_entry(name=PoolName.SWA, host_pool=swa_host, device_pool=kvcache.swa_kv_pool,
                         layer_mapper={0: 0}.get,
                         host_evict_fn=lambda n: cache.evict_host(n, SWA),
                         device_evict_fn=lambda n: cache.evict(EvictParams(swa_num_tokens=n)),
                         device_alloc_fn=allocator.swa_attn_allocator.alloc,
                         device_free_fn=allocator.swa_attn_allocator.free),
    ]
    group = radix.host_pool_group(entries)
    stream = torch.cuda.Stream() if torch.device(device).type == "cuda" else CpuStream()
    controller = radix.bare_hybrid_controller(group, "write_back", allocator, device=device, stream=stream,
                                              io_backend="direct")
    radix.wire_host_pools(cache, controller, group, kv_host=kv_host, swa_host=swa_host,
                          mamba_host=None, write_policy="write_back")
    cache.load_back_threshold = page_size
    return KVDataStack(cache, allocator, req_pool, controller, kv_host, swa_host)


def _torch_transfer_kv_direct(src_layers, dst_layers, src_indices, dst_indices, page_size):
    """sgl_kernel's transfer_kv_direct as a row copy: the indices name every token,
    so a page size only groups them."""
    for src, dst in zip(src_layers, dst_layers, strict=True):
        dst[dst_indices.to(dst.device)] = src[src_indices.to(src.device)].to(dst.device)


@contextlib.contextmanager
def row_copies_on_cpu(device):
    """On CPU the host pools' "direct" copies move real rows (sgl_kernel is stubbed
    there, and not even imported by memory_pool_host from 0.5.13); on CUDA the
    release's kernel runs. Patched where MHATokenToKVPoolHost's module binds it
    (mem_cache/pool_host/mha.py from 0.5.16)."""
    if torch.device(device).type != "cpu":
        yield
        return
    module = sys.modules[_mha_host_pool_cls().__module__]
    with mock.patch.object(module, "transfer_kv_direct", _torch_transfer_kv_direct, create=True):
        yield
