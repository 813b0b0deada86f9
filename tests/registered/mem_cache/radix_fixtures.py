"""CPU fixtures for UnifiedRadixCache HiCache tests (not a test module).

Builds a real ``UnifiedRadixCache`` over real device pools on "cpu"
(``SWAKVPool`` + ``SWATokenToKVPoolAllocator`` + ``ReqToTokenPool``, or
``HybridReqToTokenPool`` with a real ``MambaPool`` for FULL+SWA+MAMBA) and
attaches a small stand-in for the HiCache controller (tests/seam/hicache_standins.py):
the real one needs CUDA streams and pinned memory. Host slots come from the real ``HostPoolGroup`` /
``LogicalHostPool`` index pools, so host accounting is the real one and a
leaked host slot shows up as a size mismatch. Everything that differs between
releases (module homes, constructor arguments, how the cache is wired to its
host pools, how a node is named and locked, which tree core holds the nodes) is
asked of the seam, tests/seam/radix.py.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Optional

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

from seam import radix as seam  # noqa: E402
from seam.hicache_standins import FakeHiCacheController  # noqa: E402
from seam.radix import (  # noqa: E402
    ComponentType,
    EvictParams,
    HostPoolGroup,
    LogicalHostPool,
    MatchPrefixParams,
    PoolName,
    ReqToTokenPool,
    UnifiedRadixCache,
)
from seam.swa_allocator import SWATokenToKVPoolAllocator  # noqa: E402

FULL = ComponentType.FULL
SWA = ComponentType.SWA
MAMBA = ComponentType.MAMBA


class RadixTestCase(CustomTestCase):
    """Checks on a UnifiedRadixCache: they run once per tree core the release has
    (tests/conftest.py collects one copy per core, the core in the test id)."""

    runs_on_every_tree_core = True


# ---------------------------------------------------------------------------
# Tree construction
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class HostPools:
    kv: LogicalHostPool
    swa: LogicalHostPool
    mamba: Optional[LogicalHostPool]


@dataclasses.dataclass
class RadixHarness:
    cache: UnifiedRadixCache
    allocator: SWATokenToKVPoolAllocator
    req_to_token_pool: ReqToTokenPool
    page_size: int
    window: int
    has_mamba: bool
    controller: Optional[Any] = None  # FakeHiCacheController or a real one
    host: Optional[HostPools] = None
    free_at_start: dict = dataclasses.field(default_factory=dict)  # pool -> free slots when built

    # -- device allocation ---------------------------------------------------

    def alloc_kv(self, num_tokens: int) -> Optional[torch.Tensor]:
        """Full + SWA device slots for num_tokens (page-aligned) tokens."""
        assert num_tokens % self.page_size == 0
        if num_tokens == 0:
            return torch.empty((0,), dtype=torch.int64)
        a = self.allocator
        if (
            a.full_attn_allocator.available_size() < num_tokens
            or a.swa_attn_allocator.available_size() < num_tokens
        ):
            return None
        full = a.full_attn_allocator.alloc(num_tokens)
        swa = a.swa_attn_allocator.alloc(num_tokens)
        a.set_full_to_swa_mapping(full, swa)
        return full.to(torch.int64)

    @property
    def mamba_slots(self):
        return seam.mamba_slots(self.req_to_token_pool)

    def alloc_mamba(self) -> Optional[torch.Tensor]:
        return self.mamba_slots.alloc(1)

    # -- request-level operations -------------------------------------------

    def insert_finished(
        self,
        tokens: list,
        kv: torch.Tensor,
        prefix_len: int,
        swa_evicted_seqlen: int,
        mamba_value: Optional[torch.Tensor] = None,
    ):
        """Insert a finished request the way cache_finished_req does.

        SWA slots below ``swa_evicted_seqlen`` that the request owns were
        already released by the scheduler while decoding: drop them first.
        """
        if swa_evicted_seqlen > prefix_len:
            self.allocator.free_swa(kv[prefix_len:swa_evicted_seqlen])
        result = self.cache.insert(
            seam.insert_params(
                key=seam.radix_key(tokens),
                value=kv,
                mamba_value=mamba_value,
                prev_prefix_len=prefix_len,
                swa_evicted_seqlen=swa_evicted_seqlen,
            )
        )
        if mamba_value is not None and result.mamba_exist:
            self.mamba_slots.free(mamba_value)
        return result

    def match(self, tokens: list):
        return self.cache.match_prefix(MatchPrefixParams(key=seam.radix_key(tokens)))

    def node(self, handle):
        """The node a match result names (a node, or its id from 0.5.17)."""
        return seam.node(self.cache, handle)

    def lock(self, node):
        """Lock a node on device; returns what unlock() takes."""
        return seam.lock(self.cache, node)

    def unlock(self, node, params) -> None:
        seam.unlock(self.cache, node, params)

    def write_through(self, node, key: list) -> int:
        """Back a node up as write-through does (its un-backed-up ancestors first);
        `key`: the token ids of the node's path from the root."""
        return seam.back_up(self.cache, node, key=key)

    def write_back(self, node) -> int:
        """Back a node up as write-back eviction does (the node alone, no lock)."""
        return seam.back_up(self.cache, node, write_back=True)

    def submit_backups(self) -> None:
        """Submit the queued device->host backups, as the scheduler does after a batch."""
        seam.submit_backups(self.cache)

    def load_back(self, node):
        return seam.load_back(self.cache, node)

    def evictable_host_leaves(self) -> set:
        return seam.evictable_host_leaves(self.cache)

    @property
    def root(self):
        return seam.root(self.cache)

    def evict_counting_lost(self, params: EvictParams):
        """Device eviction; returns (EvictResult, tokens lost without a host copy).

        A node removed from the tree while it still held device KV and had no
        host copy is KV that will have to be recomputed.
        """
        at_risk = {
            id(n): len(n.key) for n in self.nodes() if not n.evicted and not n.backuped
        }
        result = self.cache.evict(params)
        alive = {id(n) for n in self.nodes()}
        lost = sum(t for nid, t in at_risk.items() if nid not in alive)
        return result, lost

    # -- inspection ----------------------------------------------------------

    def nodes(self) -> list:
        """All nodes except the root."""
        out, stack = [], list(self.root.children.values())
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def path_ids(self, node) -> set:
        """Ids of the nodes from `node` up to the root (the root left out)."""
        ids, root = set(), self.root
        while node is not None and node is not root:
            ids.add(node.id)
            node = node.parent
        return ids

    def backup_invariant_violations(self) -> list:
        """Ids of backed-up nodes whose parent is neither root nor backed up."""
        root = self.root
        bad, stack = [], [(root, child) for child in root.children.values()]
        while stack:
            parent, n = stack.pop()
            if n.backuped and parent is not root and not parent.backuped:
                bad.append(n.id)
            stack.extend((n, child) for child in n.children.values())
        return bad

    def locked_nodes(self) -> list:
        """Every lock the tree holds, as the tree core tells them ([] when none)."""
        return seam.held_locks(self.cache)

    def assert_drained(self) -> None:
        """With no request left, the whole tree can go: every write acknowledged, device
        then host eviction leave the root alone and every device and host slot free.
        A lock left anywhere (a component's, a host lock) or a slot the tree lost track
        of fails here, on every tree core."""
        # the stand-in's writes finish when told; the release's controller's on CPU at once
        complete = getattr(self.controller, "complete_writes", None)
        if complete is not None:
            complete()
        # as the cache itself polls its acks under its write policy
        self.cache.writing_check(write_back=getattr(self.controller, "write_policy", None) == "write_back")
        seam.drain(self.cache, device_tokens=10**6, host_tokens=10**6, mamba_slots=10**6)
        left = [(n.id, len(n.key)) for n in self.nodes()]
        assert not left, f"the tree did not drain: nodes (id, tokens) {left} are left; held: {self.locked_nodes()}"
        now = self.free_slots()
        short = {name: f"{now[name]} of {was} free" for name, was in self.free_at_start.items() if now[name] != was}
        assert not short, f"slots still taken with the tree drained: {short}"

    def free_slots(self) -> dict:
        """Free slots per pool, device and host."""
        a = self.allocator
        free = {"full": a.full_available_size(), "swa": a.swa_available_size()}
        if self.has_mamba:
            free["mamba"] = self.mamba_slots.available_size()
        if self.host is not None:
            for name, pool in (("host kv", self.host.kv), ("host swa", self.host.swa), ("host mamba", self.host.mamba)):
                if pool is not None:
                    free[name] = pool.available_size()
        return free

    def host_slot_leaks(self) -> dict:
        """Per host pool: slots in use minus slots the tree references."""
        pools = {FULL: self.host.kv, SWA: self.host.swa}
        if self.host.mamba is not None:
            pools[MAMBA] = self.host.mamba
        leaks = {}
        for ct, pool in pools.items():
            referenced = sum(
                len(n.component_data[ct].host_value)
                for n in self.nodes()
                if n.component_data[ct].host_value is not None
            )
            in_use = pool.size - pool.available_size()
            if in_use != referenced:
                leaks[str(ct)] = in_use - referenced
        return leaks

    def assert_healthy(self) -> None:
        """Tree's own sanity check plus the write-through backup invariant."""
        self.cache.sanity_check()
        bad = self.backup_invariant_violations()
        assert not bad, f"backed-up nodes under un-backed-up parents: {bad}"


def over_seeds(run_seed, seeds, notes=("crash",)) -> tuple[dict, list]:
    """The counters run_seed(seed) returns, summed over `seeds`, and its text entries named
    in `notes` (what went wrong in a seed) as "seed=S: text"."""
    totals, told = {}, []
    for seed in seeds:
        counts = run_seed(seed)
        for key in notes:
            if key in counts:
                told.append(f"seed={seed}: {counts.pop(key)}")
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    return totals, told


@dataclasses.dataclass
class ServeStats:
    requests: int = 0
    rejected: int = 0
    lost_tokens: int = 0
    device_hit_tokens: int = 0
    host_hit_tokens: int = 0
    # Prefix tokens found on device or host (reusable without recompute).
    reusable_tokens: int = 0


def serve_request(
    h: RadixHarness, tokens: list, swa_evicted_seqlen: int, stats: ServeStats
) -> bool:
    """One finished request: match, lock, allocate (evicting under pressure),
    insert, unlock. Returns False when the pools cannot hold it."""
    assert len(tokens) % h.page_size == 0
    assert swa_evicted_seqlen % h.page_size == 0
    # Keep a new leaf: at least one page inside the window.
    swa_evicted_seqlen = min(swa_evicted_seqlen, len(tokens) - h.page_size)
    stats.requests += 1
    m = h.match(tokens)
    prefix = seam.matched_device_indices(h.cache, m).to(torch.int64)
    stats.device_hit_tokens += len(prefix)
    stats.host_hit_tokens += m.host_hit_length
    node, root = h.node(m.best_match_node), h.root
    while node is not root:
        stats.reusable_tokens += len(node.key)
        node = node.parent
    last_device = h.node(m.last_device_node)
    lock = h.lock(last_device)

    need = len(tokens) - len(prefix)
    kv_new = h.alloc_kv(need)
    if kv_new is None:
        a = h.allocator
        _, lost = h.evict_counting_lost(
            EvictParams(
                num_tokens=max(0, need - a.full_available_size()),
                swa_num_tokens=max(0, need - a.swa_available_size()),
            )
        )
        stats.lost_tokens += lost
        kv_new = h.alloc_kv(need)
    mamba_value = None
    if kv_new is not None and h.has_mamba:
        mamba_value = h.alloc_mamba()
        if mamba_value is None:
            _, lost = h.evict_counting_lost(EvictParams(mamba_num=1))
            stats.lost_tokens += lost
            mamba_value = h.alloc_mamba()
        if mamba_value is None:
            h.allocator.free(kv_new)
            kv_new = None
    if kv_new is None:
        h.unlock(last_device, lock)
        stats.rejected += 1
        return False

    kv = torch.cat([prefix, kv_new])
    h.insert_finished(tokens, kv, len(prefix), swa_evicted_seqlen, mamba_value)
    h.unlock(last_device, lock)
    return True


def build_tree(
    *,
    page_size: int = 1,
    window: int = 4,
    full_size: int = 512,
    swa_size: int = 256,
    with_mamba: bool = False,
    mamba_size: int = 64,
    max_context_len: int = 2048,
    is_eagle: bool = False,
    hicache_write_policy: str | None = None,
) -> RadixHarness:
    """FULL+SWA (or FULL+SWA+MAMBA) UnifiedRadixCache on real CPU pools; `is_eagle`: the
    cache of an EAGLE speculative server (its tree keyed by bigrams of token ids);
    `hicache_write_policy`: of a server launched with HiCache under that policy (pass
    what attach_hicache will wire: a release may pick its tree core by it)."""
    allocator = seam.swa_allocator(page_size=page_size, full_size=full_size, swa_size=swa_size)
    req_pool = seam.req_to_token_pool(
        size=8, max_context_len=max_context_len, mamba_size=mamba_size if with_mamba else None
    )
    components = (FULL, SWA, MAMBA) if with_mamba else (FULL, SWA)
    cache = seam.unified_cache(
        req_pool=req_pool,
        allocator=allocator,
        page_size=page_size,
        window=window,
        components=components,
        # Page sizes above 1 need the extra buffer with a mamba component.
        mamba_extra_buffer=with_mamba and page_size > 1,
        core=seam.current_core(),
        is_eagle=is_eagle,
        hicache_write_policy=hicache_write_policy,
    )
    h = RadixHarness(
        cache=cache,
        allocator=allocator,
        req_to_token_pool=req_pool,
        page_size=page_size,
        window=window,
        has_mamba=with_mamba,
    )
    h.free_at_start = h.free_slots()
    return h


def attach_hicache(
    h: RadixHarness,
    make_controller,
    *,
    write_policy: str = "write_through",
    host_full_size: int = 4096,
    host_swa_size: int = 4096,
    host_mamba_size: int = 512,
    host_pool_cls=LogicalHostPool,
    copy_view=lambda pool: pool,
):
    """Wire host pools + a controller the way the hybrid pool assembler does.

    ``make_controller(host_pool_group, write_policy)`` builds the controller;
    ``copy_view(device_pool)`` is the device pool as the group's copy path sees it.
    """
    cache = h.cache
    kvcache = h.allocator.get_kvcache()
    kv_host = seam.host_pool(host_pool_cls, host_full_size, h.page_size)
    swa_host = seam.host_pool(host_pool_cls, host_swa_size, h.page_size)
    entries = [
        seam.pool_entry(
            name=PoolName.KV,
            host_pool=kv_host,
            device_pool=copy_view(kvcache.full_kv_pool),
            layer_mapper=lambda i: i,
            is_primary_index_anchor=True,
        ),
        seam.pool_entry(
            name=PoolName.SWA,
            host_pool=swa_host,
            device_pool=copy_view(kvcache.swa_kv_pool),
            layer_mapper=lambda i: i,
            host_evict_fn=lambda n: cache.evict_host(n, SWA),
            device_evict_fn=lambda n: cache.evict(EvictParams(swa_num_tokens=n)),
            device_alloc_fn=h.allocator.swa_attn_allocator.alloc,
            device_free_fn=h.allocator.swa_attn_allocator.free,
        ),
    ]
    mamba_host = None
    if h.has_mamba:
        mamba_host = seam.host_pool(host_pool_cls, host_mamba_size, 1)
        entries.append(
            seam.pool_entry(
                name=PoolName.MAMBA,
                host_pool=mamba_host,
                device_pool=copy_view(seam.mamba_device_pool(h.req_to_token_pool)),
                layer_mapper=lambda i: i,
                host_evict_fn=lambda n: cache.evict_host(n, MAMBA),
                device_evict_fn=lambda n: cache.evict(EvictParams(mamba_num=n)),
                device_alloc_fn=h.mamba_slots.alloc,
                device_free_fn=h.mamba_slots.free,
            )
        )
    group = seam.host_pool_group(entries)
    controller = make_controller(group, write_policy)

    seam.wire_host_pools(
        cache, controller, group,
        kv_host=kv_host, swa_host=swa_host, mamba_host=mamba_host, write_policy=write_policy,
    )

    h.controller = controller
    h.host = HostPools(kv=kv_host, swa=swa_host, mamba=mamba_host)
    h.free_at_start = h.free_slots()
    return controller


def attach_fake_hicache(h: RadixHarness, **kwargs) -> FakeHiCacheController:
    """attach_hicache with the in-process FakeHiCacheController."""
    return attach_hicache(h, FakeHiCacheController, **kwargs)
