"""HiCache L3 storage, per release: one server's storage side as the scheduler builds it,
the release's own HiCacheController created with the file storage backend
(``--hicache-storage-backend file``: HiCacheFile, in a folder the test owns) over real
device and host KV pools on CPU, and the controller's own storage steps: the page
backup of a prefix, the storage lookup of a prefix (its hash chain, the backend's
exists query) and the page load into host memory.

What differs between releases and lives only here:
- where the pools live and the constructor arguments they take;
- where the controller reads its ranks (module-level helpers, or get_parallel() in
  later releases): a single-rank server is stood in for there, as the scheduler of a
  one-GPU server would see it;
- the module binding of the device module (CPU streams and events stand in);
- the storage operation records and the controller's step methods.

Nothing here stands in for what a check judges: the keys, the backend and the bytes
are the release's.
"""

from __future__ import annotations

from sglang.test.test_utils import maybe_stub_sgl_kernel

maybe_stub_sgl_kernel()

import contextlib  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import types  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402

from seam import CannotRun, accepted, building, locate, require  # noqa: E402
from seam.hicache_standins import CpuDeviceModule  # noqa: E402

_MC = "sglang.srt.mem_cache"
cache_controller = locate("the HiCache controller module", "sglang.srt.managers.cache_controller")
HiCacheController = locate("HiCacheController", "sglang.srt.managers.cache_controller:HiCacheController")
StorageOperation = locate("StorageOperation", "sglang.srt.managers.cache_controller:StorageOperation")
PrefetchOperation = locate("PrefetchOperation", "sglang.srt.managers.cache_controller:PrefetchOperation")
MHATokenToKVPool = locate("MHATokenToKVPool", f"{_MC}.memory_pool:MHATokenToKVPool")
MLATokenToKVPool = locate("MLATokenToKVPool", f"{_MC}.memory_pool:MLATokenToKVPool")
MHATokenToKVPoolHost = locate(
    "MHATokenToKVPoolHost", f"{_MC}.memory_pool_host:MHATokenToKVPoolHost", f"{_MC}.pool_host.mha:MHATokenToKVPoolHost"
)
MLATokenToKVPoolHost = locate(
    "MLATokenToKVPoolHost", f"{_MC}.memory_pool_host:MLATokenToKVPoolHost", f"{_MC}.pool_host.mla:MLATokenToKVPoolHost"
)

# The KV cache dtypes a server runs with (--kv-cache-dtype), as the device pool holds them.
KV_DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


# -- CPU stand-ins for the device module ------------------------------------------------


class _Allocator:
    """The controller reads its device pool off the token allocator; nothing else of it
    is on the storage path."""

    def __init__(self, kvcache):
        self._kvcache = kvcache

    def get_kvcache(self):
        return self._kvcache


def _single_rank_patches() -> list:
    """A one-GPU server's ranks where this release's controller reads them."""
    found = {
        "is_dp_attention_enabled": lambda: False,
        "get_tensor_model_parallel_rank": lambda: 0,
        "get_tensor_model_parallel_world_size": lambda: 1,
        "get_attention_tp_rank": lambda: 0,
        "get_attention_tp_size": lambda: 1,
        "get_attention_dp_rank": lambda: 0,
        "get_pipeline_model_parallel_rank": lambda: 0,
        "get_pipeline_model_parallel_world_size": lambda: 1,
    }
    patches = [mock.patch.object(cache_controller, name, fn) for name, fn in found.items()
               if hasattr(cache_controller, name)]
    if hasattr(cache_controller, "get_parallel"):
        parallel = types.SimpleNamespace(
            tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_tp_rank=0, attn_tp_size=1, attn_dp_rank=0,
            attn_dp_size=1, attn_cp_rank=0, attn_cp_size=1, attn_dcp_rank=0, attn_dcp_size=1,
        )
        patches.append(mock.patch.object(cache_controller, "get_parallel", lambda: parallel))
    if hasattr(cache_controller, "device_module"):
        patches.append(mock.patch.object(cache_controller, "device_module", CpuDeviceModule))
    return patches


# -- pools ---------------------------------------------------------------------------------


@building("a device KV pool on CPU")
def _device_pool(*, mla: bool, dtype, size: int, page_size: int, layer_num: int):
    if mla:
        return MLATokenToKVPool(**accepted(
            MLATokenToKVPool.__init__, size=size, page_size=page_size, dtype=dtype, kv_lora_rank=16,
            qk_rope_head_dim=8, layer_num=layer_num, device="cpu", enable_memory_saver=False))
    return MHATokenToKVPool(**accepted(
        MHATokenToKVPool.__init__, size=size, page_size=page_size, dtype=dtype, head_num=2, head_dim=8,
        layer_num=layer_num, device="cpu", enable_memory_saver=False, enable_alt_stream=False))


@building("a host KV pool on CPU")
def _host_pool(device_pool, *, mla: bool, page_size: int):
    cls = MLATokenToKVPoolHost if mla else MHATokenToKVPoolHost
    # The host pool checks the machine's free memory against a 10 GB reserve; these
    # pools take a few KB.
    reserve = [m for m in (f"{_MC}.memory_pool_host", f"{_MC}.pool_host.base") if _has(m, "HICACHE_HOST_MEMORY_RESERVE_BYTES")]
    with contextlib.ExitStack() as stack:
        for module in reserve:
            stack.enter_context(mock.patch(f"{module}.HICACHE_HOST_MEMORY_RESERVE_BYTES", 0))
        return cls(**accepted(
            cls.__init__, host_to_device_ratio=2.0, host_size=0, page_size=page_size, layout="layer_first",
            pin_memory=False, device="cpu", **_host_pool_source(cls, device_pool, mla=mla)))


def _host_pool_source(cls, device_pool, *, mla: bool) -> dict:
    """What a host pool is built from: the device pool itself, or (0.5.23) the device
    pool's buffer description and capacity, as the release's pool assembler passes them."""
    if "buffer_info" not in inspect.signature(cls.__init__).parameters:
        return {"device_pool": device_pool}
    capacity = getattr(device_pool, "host_capacity_tokens", None)
    source = {
        "buffer_info": device_pool.get_device_pool_infos()[0].buffer_info,
        "device_capacity_tokens": device_pool.size if capacity is None else capacity,
        "start_layer": device_pool.start_layer,
        "end_layer": device_pool.end_layer,
        "write_back_staging": getattr(device_pool, "hicache_write_back_staging", None),
    }
    if mla:
        source.update(override_kv_cache_dim=device_pool.kv_cache_dim, layer_shard_enabled=False,
                      target_layer_num=device_pool.layer_num)
    return source


def _has(module: str, attr: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), attr)
    except ImportError:
        return False


# -- a server's storage side ---------------------------------------------------------------


_request_ids = itertools.count()


class StorageServer:
    """One server's HiCache storage side: the release's controller with its file backend."""

    def __init__(self, controller, host_pool, page_size: int):
        self.controller = controller
        self.host_pool = host_pool
        self.page_size = page_size

    @property
    def page_bytes(self) -> int:
        page = self.host_pool.get_dummy_flat_data_page()
        return page.numel() * page.element_size()

    def _host_pages(self, pages: int) -> torch.Tensor:
        indices = self.host_pool.alloc(pages * self.page_size)
        require(indices is not None, "the host pool has no room for the prefix")
        return indices

    def page_hashes(self, tokens) -> list:
        """The prefix's page keys as the tree and the controller derive them (a hash chain
        from the root, one per page)."""
        chain = getattr(cache_controller, "get_storage_hash_str", None)
        if chain is not None:  # 0.5.20+: one call hashes every page (seeded by the request's namespace)
            return list(chain(list(tokens), None, page_size=self.page_size))
        hashes, last = [], None
        for i in range(0, len(tokens) - len(tokens) % self.page_size, self.page_size):
            last = self.controller.get_hash_str(tokens[i:i + self.page_size], last)
            hashes.append(last)
        return hashes

    def store(self, tokens, pages: list) -> int:
        """Back up `pages` (raw bytes, one per page of `tokens`) from host memory to the
        store, as the write-through to storage does; the tokens it stored."""
        host = self._host_pages(len(pages))
        dummy = self.host_pool.get_dummy_flat_data_page()
        for i, payload in enumerate(pages):
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(dummy.dtype)
            self.host_pool.set_from_flat_data_page(int(host[i * self.page_size]), data)
        op = StorageOperation(**accepted(
            StorageOperation.__init__, host_indices=host, token_ids=list(tokens),
            hash_value=self.page_hashes(tokens)[:len(pages)]))
        self.controller._page_backup(op)
        self.host_pool.free(host)
        return op.completed_tokens

    def _prefetch_op(self, tokens, host):
        op = PrefetchOperation(**accepted(
            PrefetchOperation.__init__, request_id=f"kvdtype-{next(_request_ids)}", host_indices=host,
            token_ids=list(tokens), last_hash=None))
        op.host_indices = host  # 0.5.23 allocates a prefetch's host pages after its lookup
        return op

    def lookup(self, tokens) -> list:
        """The storage lookup of a request's prefix: the page keys the store answers as
        hits (the longest prefix)."""
        pages = len(tokens) // self.page_size
        host = self._host_pages(pages)
        try:
            hashes, _ = self.controller._storage_hit_query(self._prefetch_op(tokens, host))
        finally:
            self.host_pool.free(host)
        return list(hashes)

    def load(self, tokens, hashes) -> list:
        """Load the pages `hashes` names from the store into host memory, as a prefetch
        does after its lookup; the bytes of each page that arrived."""
        host = self._host_pages(len(hashes))
        op = self._prefetch_op(tokens, host)
        op.hash_value = list(hashes)
        try:
            # Up to 0.5.22 the operation counts the tokens it loaded; 0.5.23 returns the pages.
            done = self.controller._page_transfer(op)
            if not isinstance(done, int):
                done = op.completed_tokens // self.page_size
            return [bytes(self.host_pool.get_data_page(int(host[i * self.page_size]), flat=True)
                          .contiguous().view(torch.uint8).numpy()) for i in range(done)]
        finally:
            self.host_pool.free(host)


@contextlib.contextmanager
def storage_server(store_dir: str, *, kv_dtype: str, page_size: int, mla: bool = False,
                   model_name: str = "org/model", layer_num: int = 2):
    """A server started with ``--enable-hierarchical-cache --hicache-storage-backend file``
    and ``--kv-cache-dtype kv_dtype`` (one of KV_DTYPES), its store in `store_dir`."""
    dtype = KV_DTYPES[kv_dtype]
    device = _device_pool(mla=mla, dtype=dtype, size=16 * page_size, page_size=page_size, layer_num=layer_num)
    host = _host_pool(device, mla=mla, page_size=page_size)
    with contextlib.ExitStack() as stack:
        for patch in _single_rank_patches():
            stack.enter_context(patch)
        stack.enter_context(mock.patch.dict(os.environ, {"SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR": store_dir}))
        with building("a HiCacheController with the file storage backend"):
            controller = HiCacheController(**accepted(
                HiCacheController.__init__, token_to_kv_pool_allocator=_Allocator(device), mem_pool_host=host,
                page_size=page_size, tp_group=None, load_cache_event=threading.Event(),
                write_policy="write_through", io_backend="direct", storage_backend="file",
                prefetch_threshold=page_size, model_name=model_name))
        require(getattr(controller, "enable_storage", False), "the controller did not attach its storage backend")
        try:
            yield StorageServer(controller, host, page_size)
        finally:
            controller.detach_storage_backend()


__all__ = ["KV_DTYPES", "CannotRun", "StorageServer", "storage_server"]
