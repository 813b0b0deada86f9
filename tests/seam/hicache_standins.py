"""CPU stand-ins for the parts of HiCache that need CUDA: a HiCache controller that
allocates host slots like the real one but copies nothing, device events and streams,
and a host index pool that records what a real controller copies and frees.

They stand in for a release's objects, so they take the shape that release expects
(its ack record, its host pool classes) from the seam; no check builds them itself.
"""

from __future__ import annotations

import contextlib
from typing import Optional
from unittest import mock

import torch

from seam import radix


class FakeCompletion:
    """Stands in for a device event; finished once the test completes it."""

    def __init__(self):
        self.done = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True


class FakeHiCacheController:
    """The controller surface that write-through, writing_check and eviction use.

    ``write`` allocates host slots the way HybridCacheController.write does: the KV
    anchor first, then every extra pool transfer (evicting that pool's host side once
    when it is full), rolling everything back and returning None when any pool cannot
    take it. Copies are not performed; each write gets an ack whose completion the
    test controls.
    """

    def __init__(self, mem_pool_host, write_policy: str):
        self.mem_pool_host = mem_pool_host
        self.write_policy = write_policy
        self.ack_write_queue: list = []
        self.ack_load_queue: list = []
        # (node_id, kv_tokens, {pool_name: tokens}) per accepted write
        self.write_log: list = []
        self.failed_writes = 0

    def reset(self) -> None:
        self.ack_write_queue.clear()
        self.ack_load_queue.clear()

    def write(self, device_indices: torch.Tensor, priority: Optional[int] = None, node_id: int = -1,
              extra_pools=None, **_ignored) -> Optional[torch.Tensor]:
        host_indices = self.mem_pool_host.alloc(len(device_indices))
        if host_indices is None:
            self.failed_writes += 1
            return None
        taken = []
        for xfer in extra_pools or ():
            if getattr(xfer, "indices_from_pool", None) is not None:
                continue
            if xfer.host_indices is not None or xfer.device_indices is None:
                continue
            entry = self.mem_pool_host.entry_map.get(xfer.name)
            if entry is None:
                continue
            size = len(xfer.device_indices)
            slots = entry.host_pool.alloc(size)
            if slots is None and entry.host_evict_fn is not None:
                entry.host_evict_fn(size)
                slots = entry.host_pool.alloc(size)
            if slots is None:
                for prev_xfer, prev_entry, prev_slots in taken:
                    prev_entry.host_pool.free(prev_slots)
                    prev_xfer.host_indices = None
                self.mem_pool_host.free(host_indices)
                self.failed_writes += 1
                return None
            # Like the real controller: the tree reads the slots back from here.
            xfer.host_indices = slots
            taken.append((xfer, entry, slots))
        self.ack_write_queue.append(radix.hicache_ack(FakeCompletion(), FakeCompletion(), [node_id]))
        self.write_log.append((node_id, len(host_indices), {x.name: len(s) for x, _, s in taken}))
        return host_indices

    def start_writing(self) -> None:
        """Nothing is copied: the writes are queued as acks by write() already."""

    def start_loading(self) -> int:
        return -1

    def pending_writes(self) -> int:
        return sum(1 for ack in self.ack_write_queue if not ack.finish_event.done)

    def complete_writes(self, count: Optional[int] = None) -> None:
        """Finish the oldest ``count`` outstanding writes (all when None)."""
        for ack in self.ack_write_queue:
            if count is not None and count <= 0:
                break
            if not ack.finish_event.done:
                ack.finish_event.done = True
                if count is not None:
                    count -= 1


# -- device events and streams for the real controller on CPU ----------------------


class CpuEvent:
    """A device event whose copies complete immediately."""

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def query(self):
        return True

    def synchronize(self):
        pass


class CpuStream:
    def wait_event(self, event):
        pass

    def synchronize(self):
        pass


class CpuDeviceModule:
    """The slice of torch.cuda that the controllers touch."""

    Event = CpuEvent
    Stream = CpuStream

    @staticmethod
    def stream(stream):
        return contextlib.nullcontext()

    @staticmethod
    def current_stream():
        return CpuStream()


def cpu_device_module_patches() -> list:
    """Patchers that point every module binding the device module at import time at
    CpuDeviceModule; start them in setUp and stop them on cleanup."""
    return [mock.patch.object(m, "device_module", CpuDeviceModule) for m in radix.device_module_holders()]


class RecordingHostPool(radix.LogicalHostPool):
    """Real index pool that also records what the controller copies and frees (in place
    of the copies, which a CPU run cannot make)."""

    def __init__(self, size, page_size):
        super().__init__(size, page_size)
        self.backups = []
        self.loads = []
        self.freed = []

    def backup_from_device_all_layer(self, device_pool, host_indices, device_indices, io_backend, *args, **kwargs):
        self.backups.append((host_indices, device_indices))

    def load_to_device_per_layer(self, device_pool, host_indices, device_indices, layer_id, io_backend,
                                 *args, **kwargs):
        self.loads.append((host_indices, device_indices, layer_id))

    # 0.5.23's transfer engine calls the copies by their physical-index names.
    backup_from_device_all_layer_physical = backup_from_device_all_layer
    load_to_device_per_layer_physical = load_to_device_per_layer

    def free(self, indices):
        # The real free() moves to CPU first: a device tensor fails here,
        # as MambaPoolHost.free() failed in #23429.
        n = super().free(indices)
        self.freed.append(indices)
        return n


class OnCopyDevice:
    """A device pool as the copy path sees it: on `device` (where the controller moves
    transfer indices), everything else the real pool's. The host pool group (0.5.17+)
    moves indices to their device pool's device itself; on CPU that device is simulated."""

    def __init__(self, pool, device):
        self._pool = pool
        self.device = device

    def __getattr__(self, name):
        return getattr(self._pool, name)
