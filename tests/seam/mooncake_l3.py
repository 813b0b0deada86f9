"""HiCache L3 on Mooncake with SSD offload, on CPU: the release's own MooncakeStore per rank,
with only the mooncake package stood in.

A deployment here is what a multi-rank server with ``--hicache-storage-backend mooncake``
builds: per rank, a real host KV pool (MHA, page_first), the storage config the release's
own HiCacheController derives for that rank (``_generate_storage_config``, with the
process-group answers of that rank stood in), the release's StorageBackendFactory creating
its MooncakeStore, and ``register_mem_pool_host``. The one thing stood in is the transport:
``mooncake.store.MooncakeDistributedStore``, put in ``sys.modules`` as a stub ``mooncake``
package for as long as the deployment lives, so that the release's
``from mooncake.store import MooncakeDistributedStore`` finds it (no mooncake package is
installed in the test venvs). Every other line (config loading from extra_config, env vars
or file, setup kwargs, warmup, key naming, zero-copy buffer metadata, batch set/get) is the
release's.

The stand-in client keeps Mooncake's SSD-offload contract, as upstream #31926 describes
Mooncake's bucket storage backend:
- each client (one per rank: every scheduler process embeds its own) writes what it stores
  as bucket files in its offload directory (``setup(..., ssd_offload_path=...)``, else the
  ``MOONCAKE_OFFLOAD_FILE_STORAGE_PATH`` the client reads itself); a bucket file is opened
  with O_CREAT|O_TRUNC;
- bucket ids are per process: a fresh client seeds them from its start time (``ts << 12``),
  and a client that finds buckets in its directory resumes after the largest id it scanned
  at startup; ranks of one server start together, so they scan before any of them writes;
- reads are served from the bucket file (the path a read takes once the object's memory
  replica is gone), at the offset the client recorded: whatever bytes are there now.
The directory must exist when ``setup`` is called (the client creates no directory).

What moved between releases and lives only here:
- module homes: the host KV pool (mem_cache/memory_pool_host.py, mem_cache/pool_host/mha.py
  from 0.5.16); from 0.5.23 it is built from the device pool's description
  (``buffer_info``, ``device_capacity_tokens``, the layer range), not from the device pool;
- how HiCacheController asks for its ranks: module-level group helpers
  (``get_attention_tp_rank``, ``get_tensor_model_parallel_rank``, ...; pipeline helpers from
  0.5.13) up to 0.5.15, ``get_parallel()`` fields from 0.5.16; the host pool the storage
  backend gets (``mem_pool_host``; ``storage_host_pool`` from 0.5.20).
"""

from __future__ import annotations

from sglang.test.test_utils import maybe_stub_sgl_kernel

maybe_stub_sgl_kernel()

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Optional  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402

from seam import CannotRun, accepted, building, locate, require, takes  # noqa: E402

_MC = "sglang.srt.mem_cache"
MooncakeStore = locate("MooncakeStore", f"{_MC}.storage.mooncake_store.mooncake_store:MooncakeStore")
HiCacheController = locate("HiCacheController", "sglang.srt.managers.cache_controller:HiCacheController")
StorageBackendFactory = locate("StorageBackendFactory", f"{_MC}.storage:StorageBackendFactory",
                               f"{_MC}.storage.backend_factory:StorageBackendFactory")
MHATokenToKVPool = locate("MHATokenToKVPool", f"{_MC}.memory_pool:MHATokenToKVPool")
MHATokenToKVPoolHost = locate(
    "MHATokenToKVPoolHost",
    f"{_MC}.memory_pool_host:MHATokenToKVPoolHost",
    f"{_MC}.pool_host.mha:MHATokenToKVPoolHost",
    f"{_MC}.pool_host:MHATokenToKVPoolHost",
)
_controller_module = sys.modules[HiCacheController.__module__]
# MooncakeStore looks the shared transfer engine up here at construction; imported now so
# that nothing the deployment imports is dropped when the stub package goes.
locate("parallel_state", "sglang.srt.distributed.parallel_state")

PAGE_SIZE = 4
MASTER = "127.0.0.1:50051"
_BUCKET = ".bucket"
_SETUP_KWARGS = {"enable_ssd_offload", "ssd_offload_path", "tenant_id"}


# -- the stand-in transport ----------------------------------------------------------


class StandInMooncakeClient:
    """``mooncake.store.MooncakeDistributedStore``: one per rank, as every scheduler process
    embeds its own client. See the module docstring for the SSD-offload contract it keeps."""

    def __init__(self):
        self.deployment = Deployment.current()
        self.deployment.clients.append(self)
        self.setup_called = False
        self.offload_dir: Optional[str] = None
        self.bucket_files: list = []
        self._next_bucket: Optional[int] = None
        self._memory: dict = {}

    # setup -------------------------------------------------------------------------
    def setup(self, local_hostname, metadata_server, global_segment_size, local_buffer_size,
              protocol, device_name, master_server_address, transfer_engine=None, **kwargs):
        unknown = set(kwargs) - _SETUP_KWARGS
        if unknown:
            raise TypeError(f"setup() got unexpected keyword arguments {sorted(unknown)}")
        self.setup_called = True
        if kwargs.get("enable_ssd_offload"):
            path = kwargs.get("ssd_offload_path") or os.environ.get("MOONCAKE_OFFLOAD_FILE_STORAGE_PATH")
            if not path or not os.path.isdir(path):
                return -1
            self.offload_dir = os.path.abspath(path)
            self._next_bucket = self.deployment.first_bucket_id(self.offload_dir)
        return 0

    def setup_dummy(self, *args, **kwargs):
        return -1

    def register_buffer(self, ptr, size):
        return 0

    # objects -----------------------------------------------------------------------
    def _store(self, items) -> None:
        """items: [(key, bytes)] stored as one batch: one bucket file with SSD offload."""
        if self.offload_dir is None:
            for key, data in items:
                self._memory[key] = data
                self.deployment.objects[key] = (self, None, 0, len(data))
            return
        bucket_id = self._next_bucket
        self._next_bucket += 1
        path = os.path.join(self.offload_dir, f"{bucket_id}{_BUCKET}")
        offset, placed = 0, []
        with open(path, "wb") as f:  # O_CREAT | O_TRUNC
            for key, data in items:
                f.write(data)
                placed.append((key, offset, len(data)))
                offset += len(data)
        self.bucket_files.append(path)
        for key, off, size in placed:
            self.deployment.objects[key] = (self, bucket_id, off, size)

    def _load(self, key) -> Optional[bytes]:
        where = self.deployment.objects.get(key)
        if where is None:
            return None
        owner, bucket_id, offset, size = where
        if bucket_id is None:
            return owner._memory.get(key)
        try:
            with open(os.path.join(owner.offload_dir, f"{bucket_id}{_BUCKET}"), "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError:
            return None
        return data if len(data) == size else None

    def put(self, key, value, *args):
        self._store([(key, bytes(value))])
        return 0

    def get(self, key):
        data = self._load(key)
        return b"" if data is None else data

    def is_exist(self, key):
        return 1 if key in self.deployment.objects else 0

    def batch_is_exist(self, keys):
        return [self.is_exist(key) for key in keys]

    def batch_put_from(self, keys, ptrs, sizes, config=None):
        self._store([(k, ctypes.string_at(p, s)) for k, p, s in zip(keys, ptrs, sizes)])
        return [0] * len(keys)

    def batch_put_from_multi_buffers(self, keys, ptrs, sizes, config=None):
        self._store([(k, b"".join(ctypes.string_at(p, s) for p, s in zip(ps, ss)))
                     for k, ps, ss in zip(keys, ptrs, sizes)])
        return [0] * len(keys)

    def batch_get_into(self, keys, ptrs, sizes):
        out = []
        for key, ptr, size in zip(keys, ptrs, sizes):
            data = self._load(key)
            if data is None or len(data) != size:
                out.append(-1)
                continue
            ctypes.memmove(ptr, data, size)
            out.append(size)
        return out

    def batch_get_into_multi_buffers(self, keys, ptrs, sizes):
        out = []
        for key, ps, ss in zip(keys, ptrs, sizes):
            data = self._load(key)
            if data is None or len(data) != sum(ss):
                out.append(-1)
                continue
            offset = 0
            for p, s in zip(ps, ss):
                ctypes.memmove(p, data[offset:offset + s], s)
                offset += s
            out.append(len(data))
        return out

    def remove_all(self):
        for key in [k for k, v in self.deployment.objects.items() if v[0] is self]:
            del self.deployment.objects[key]
        return 0

    def close(self):
        return 0


def _stub_mooncake_package() -> dict:
    pkg = types.ModuleType("mooncake")
    pkg.__path__ = []
    store = types.ModuleType("mooncake.store")
    store.MooncakeDistributedStore = StandInMooncakeClient
    pkg.store = store
    return {"mooncake": pkg, "mooncake.store": store}


# -- ranks -------------------------------------------------------------------------


@dataclass(frozen=True)
class RankSpec:
    """Where one scheduler process sits: TP rank (the attention TP rank under DP
    attention), its group size, and its attention DP rank when DP attention is on."""

    tp_rank: int
    tp_size: int
    dp_rank: Optional[int] = None
    dp_size: int = 1

    @property
    def dp_attention(self) -> bool:
        return self.dp_rank is not None


class _Parallel(types.SimpleNamespace):
    """``get_parallel()`` of one rank (0.5.16+)."""


def _parallel_of(spec: RankSpec) -> _Parallel:
    attn_dp = spec.dp_rank or 0
    world = spec.tp_size * spec.dp_size
    return _Parallel(
        tp_rank=attn_dp * spec.tp_size + spec.tp_rank if spec.dp_attention else spec.tp_rank,
        tp_size=world if spec.dp_attention else spec.tp_size,
        attn_tp_rank=spec.tp_rank, attn_tp_size=spec.tp_size,
        attn_dp_rank=attn_dp, attn_dp_size=spec.dp_size,
        pp_rank=0, pp_size=1,
        attn_cp_rank=0, attn_cp_size=1, attn_dcp_rank=0, attn_dcp_size=1,
    )


@contextlib.contextmanager
def _rank_context(spec: RankSpec):
    """The process-group answers the cache controller reads, as rank ``spec`` gets them."""
    par = _parallel_of(spec)
    answers = {
        "is_dp_attention_enabled": lambda: spec.dp_attention,
        "get_attention_tp_rank": lambda: par.attn_tp_rank,
        "get_attention_tp_size": lambda: par.attn_tp_size,
        "get_attention_dp_rank": lambda: par.attn_dp_rank,
        "get_tensor_model_parallel_rank": lambda: par.tp_rank,
        "get_tensor_model_parallel_world_size": lambda: par.tp_size,
        "get_pipeline_model_parallel_rank": lambda: 0,
        "get_pipeline_model_parallel_world_size": lambda: 1,
        "get_parallel": lambda: par,
    }
    with contextlib.ExitStack() as stack:
        for name, fn in answers.items():
            if hasattr(_controller_module, name):
                stack.enter_context(mock.patch.object(_controller_module, name, fn))
        yield


@building("a host KV pool (MHA, page_first) on CPU")
def _host_pool():
    device_pool = MHATokenToKVPool(**accepted(
        MHATokenToKVPool.__init__, size=64, page_size=PAGE_SIZE, dtype=torch.bfloat16,
        head_num=2, head_dim=8, layer_num=2, device="cpu", enable_memory_saver=False,
        enable_alt_stream=False,
    ))
    described = {}
    if takes(MHATokenToKVPoolHost.__init__, "buffer_info"):
        # 0.5.23: the host pool is built from the device pool's description
        described = dict(buffer_info=device_pool.get_device_pool_infos()[0].buffer_info,
                         device_capacity_tokens=device_pool.size, start_layer=device_pool.start_layer,
                         end_layer=device_pool.end_layer)
    host_pool = MHATokenToKVPoolHost(**accepted(
        MHATokenToKVPoolHost.__init__, device_pool=device_pool, host_to_device_ratio=4.0,
        host_size=0, page_size=PAGE_SIZE, layout="page_first", pin_memory=False, device="cpu",
        **described,
    ))
    return device_pool, host_pool


@building("the storage config HiCacheController derives for a rank")
def _storage_config(spec: RankSpec, device_pool, host_pool, extra_config: Optional[dict]):
    ctl = object.__new__(HiCacheController)
    ctl.mem_pool_device = device_pool
    ctl.mem_pool_host = host_pool
    ctl.storage_host_pool = host_pool
    ctl.page_size = PAGE_SIZE
    ctl.enable_storage_metrics = False
    ctl.attn_cp_group = None
    ctl.pp_rank, ctl.pp_size = 0, 1
    with _rank_context(spec):
        return ctl._generate_storage_config("l3rank-model", dict(extra_config) if extra_config is not None else None)


class Rank:
    """One rank's L3: its host KV pool and the release's MooncakeStore over the stand-in."""

    def __init__(self, spec: RankSpec, host_pool, storage_config, store, client: StandInMooncakeClient):
        self.spec = spec
        self.host_pool = host_pool
        self.storage_config = storage_config
        self.store = store
        self.client = client

    @property
    def offload_dir(self) -> Optional[str]:
        """The directory this rank's Mooncake client keeps its SSD tier in."""
        return self.client.offload_dir

    @property
    def bucket_files(self) -> list:
        return list(self.client.bucket_files)

    def random_pages(self, gen: torch.Generator, n: int) -> list:
        shape = self.host_pool.get_dummy_flat_data_page().shape
        return [torch.randn(shape, generator=gen).to(self.host_pool.dtype) for _ in range(n)]

    def _slots(self, n_pages: int) -> torch.Tensor:
        slots = self.host_pool.alloc(n_pages * PAGE_SIZE)
        require(slots is not None, "the host pool has no room for the pages of one batch")
        return slots

    def backup(self, keys: list, pages: list) -> list:
        """Write ``pages`` into host slots, then back them up to L3 under ``keys``, as the
        cache controller's backup thread does (``batch_set_v1``)."""
        slots = self._slots(len(keys))
        try:
            for i, page in enumerate(pages):
                self.host_pool.set_from_flat_data_page(int(slots[i * PAGE_SIZE]), page)
            return list(self.store.batch_set_v1(keys, slots))
        finally:
            self.host_pool.free(slots)

    def prefetch(self, keys: list) -> list:
        """Read ``keys`` from L3 into fresh host slots (``batch_get_v1``), as a prefetch
        does; each page's contents, or None where the store reports a failed read."""
        slots = self._slots(len(keys))
        try:
            zero = self.host_pool.get_dummy_flat_data_page()
            for i in range(len(keys)):
                self.host_pool.set_from_flat_data_page(int(slots[i * PAGE_SIZE]), zero)
            ok = self.store.batch_get_v1(keys, slots)
            return [self.host_pool.get_data_page(int(slots[i * PAGE_SIZE]), flat=True).clone() if ok[i] else None
                    for i in range(len(keys))]
        finally:
            self.host_pool.free(slots)


# -- a deployment ---------------------------------------------------------------------


@dataclass
class Deployment:
    """The Mooncake side of a server's ranks: the master's object index and every client.
    ``start`` is one server start (its ranks start together); ``restart`` is the next."""

    workdir: str
    clients: list = field(default_factory=list)
    objects: dict = field(default_factory=dict)
    _clock: itertools.count = field(default_factory=lambda: itertools.count(1_700_000_000_000, 7))
    _scanned: dict = field(default_factory=dict)

    _active = None

    @classmethod
    def current(cls) -> "Deployment":
        if cls._active is None:
            raise RuntimeError("a stand-in Mooncake client was created outside a deployment")
        return cls._active

    def first_bucket_id(self, directory: str) -> int:
        """The first bucket id of a client starting on ``directory`` in this server start."""
        if directory not in self._scanned:
            ids = [int(name[: -len(_BUCKET)]) for name in os.listdir(directory)
                   if name.endswith(_BUCKET) and name[: -len(_BUCKET)].isdigit()]
            self._scanned[directory] = max(ids) + 1 if ids else None
        resumed = self._scanned[directory]
        return resumed if resumed is not None else next(self._clock) << 12

    def start(self, specs, *, ssd_offload_path: str, source: str = "extra_config") -> list:
        """Start a server whose ranks are ``specs``, every rank configured with SSD offload
        to the one ``ssd_offload_path``: through the storage backend extra config (what
        ``--hicache-storage-backend-extra-config`` carries), the environment
        (MOONCAKE_MASTER, MOONCAKE_ENABLE_SSD_OFFLOAD, MOONCAKE_OFFLOAD_FILE_STORAGE_PATH),
        or the config file SGLANG_HICACHE_MOONCAKE_CONFIG_PATH names."""
        self._scanned = {}
        self.objects = {}
        mooncake = {"master_server_address": MASTER, "protocol": "tcp", "device_name": "",
                    "global_segment_size": 16 << 20, "check_server": False,
                    "enable_ssd_offload": True, "ssd_offload_path": ssd_offload_path}
        env = {}
        extra = None
        if source == "extra_config":
            extra = dict(mooncake)
        elif source == "env":
            env = {"MOONCAKE_MASTER": MASTER, "MOONCAKE_PROTOCOL": "tcp", "MOONCAKE_DEVICE": "",
                   "MOONCAKE_GLOBAL_SEGMENT_SIZE": str(16 << 20), "MOONCAKE_CHECK_SERVER": "false",
                   "MOONCAKE_ENABLE_SSD_OFFLOAD": "true",
                   "MOONCAKE_OFFLOAD_FILE_STORAGE_PATH": ssd_offload_path}
        elif source == "file":
            path = os.path.join(self.workdir, "mooncake.json")
            with open(path, "w") as f:
                json.dump(mooncake, f)
            env = {"SGLANG_HICACHE_MOONCAKE_CONFIG_PATH": path}
        else:
            raise ValueError(source)
        ranks = []
        with mock.patch.dict(os.environ, env):
            for spec in specs:
                device_pool, host_pool = _host_pool()
                storage_config = _storage_config(spec, device_pool, host_pool, extra)
                before = len(self.clients)
                store = StorageBackendFactory.create_backend("mooncake", storage_config, host_pool)
                require(len(self.clients) == before + 1 and self.clients[-1].setup_called,
                        "MooncakeStore did not set up one Mooncake client per rank")
                with building("the registration of the host pool with MooncakeStore"):
                    store.register_mem_pool_host(host_pool)
                ranks.append(Rank(spec, host_pool, storage_config, store, self.clients[-1]))
        return ranks

    restart = start


@contextlib.contextmanager
def deployment(workdir: str):
    """A stand-in Mooncake deployment for the ranks of the servers a check starts in
    ``workdir``; the stub mooncake package is importable while it lives."""
    require(Deployment._active is None, "deployments do not nest")
    dep = Deployment(workdir)
    with mock.patch.dict(sys.modules, _stub_mooncake_package()):
        Deployment._active = dep
        try:
            yield dep
        finally:
            Deployment._active = None


def tp_ranks(tp_size: int) -> list:
    return [RankSpec(tp_rank=r, tp_size=tp_size) for r in range(tp_size)]


def dp_attention_ranks(dp_size: int, attn_tp_size: int = 1) -> list:
    return [RankSpec(tp_rank=t, tp_size=attn_tp_size, dp_rank=d, dp_size=dp_size)
            for d in range(dp_size) for t in range(attn_tp_size)]


__all__ = ["CannotRun", "Deployment", "Rank", "RankSpec", "deployment", "tp_ranks",
           "dp_attention_ranks", "PAGE_SIZE"]
