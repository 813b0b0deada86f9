"""HiCache write-back and load-back on CPU, per release: the release's own
HybridCacheController (its write, load and ack queues; the copies recorded, not made)
and a ledger of host pages that says when a page a load-back reads was freed.

What differs between releases and lives only here:
- which node ids have a load-back the tree has not acknowledged yet
  (``ongoing_load_back``, keyed by node id on every release);
- how the scheduler's per-step HiCache work reaches the cache (start the queued
  loads, poll load acks, wait for write-back copies).
"""

from __future__ import annotations

import inspect

import torch

from seam import CannotRun, radix, require
from seam.hicache_standins import CpuStream, RecordingHostPool, cpu_device_module_patches

__all__ = [
    "LoadBackWatch",
    "PageLedgerHostPool",
    "acknowledge_loads",
    "cpu_controller",
    "cpu_device_module_patches",
    "pending_load_back_ids",
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
