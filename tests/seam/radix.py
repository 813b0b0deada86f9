"""How to build a UnifiedRadixCache with HiCache on CPU, per release.

What moved between releases and lives only here:
- module homes: HostPoolGroup / PoolEntry (mem_cache/pool_host/group.py in later releases);
- constructor arguments that come and go (HybridReqToTokenPool; the SWA allocator and its
  pool are tests/seam/swa_allocator.py's);
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

import array  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402

from seam import CannotRun, accepted, applies_only_if, building, locate, require, takes  # noqa: E402

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
# The host pool group moved to mem_cache/pool_host/group.py in 0.5.19.
HostPoolGroup = locate(
    "HostPoolGroup", f"{_MC}.memory_pool_host:HostPoolGroup", f"{_MC}.pool_host.group:HostPoolGroup"
)
PoolEntry = locate("PoolEntry", f"{_MC}.memory_pool_host:PoolEntry", f"{_MC}.pool_host.group:PoolEntry")
# 0.5.17 moved the radix tree logic into mem_cache/unified_cache/ (a tree core behind the cache).
ComponentType = locate(
    "ComponentType",
    f"{_MC}.unified_cache_components:ComponentType",
    f"{_MC}.unified_cache.component_type:ComponentType",
)
UnifiedRadixCache = locate("UnifiedRadixCache", f"{_MC}.unified_radix_cache:UnifiedRadixCache")


# -- device side --------------------------------------------------------------


def swa_allocator(*, page_size, full_size, swa_size):
    """A real SWATokenToKVPoolAllocator over a real SWAKVPool (layer 0 SWA, layer 1 full),
    as a server without PD builds it (no sorted free lists)."""
    from seam import swa_allocator as allocators

    return allocators.swa_allocator(page_size=page_size, full_size=full_size, swa_size=swa_size, need_sort=False)


@building("the request-to-token pool")
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


def tree_cores() -> list:
    """The radix tree cores this release can run the cache on: [None] before 0.5.17 (one
    tree, no choice); "python" from 0.5.17 and "rust" where the release ships it (0.5.19+,
    the default from 0.5.21)."""
    try:
        registry = importlib.import_module(f"{_MC}.unified_cache.tree_core_registry")
    except ImportError:
        return [None]
    return [name for name in ("python", "rust") if registry.get_tree_core_factory(name) is not None]


def default_core():
    """The tree core this release runs a cache on unless told otherwise (None before
    0.5.17: one tree only): SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND's default, "python"
    until 0.5.20 and "rust" from 0.5.21, where the release can run it."""
    cores = tree_cores()
    if cores == [None]:
        return None
    field = getattr(importlib.import_module("sglang.srt.environ").envs,
                    "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND", None)
    if field is None:  # one core to choose from (0.5.17, 0.5.18)
        return cores[0]
    name = field.default() if callable(field.default) else field.default
    return name if name in cores else "python"  # the release falls back to its Python core


MAMBA_CACHE_CHUNK_SIZE = 64


@contextlib.contextmanager
def server_args(**fields):
    """Global server args at their defaults (plus `fields`) while the cache is built: the
    0.5.17+ mamba component reads them (get_exec()). Set through the release's own
    override, get_context().override_server_args (0.5.16+); older releases read none here."""
    try:
        get_context = importlib.import_module("sglang.srt.runtime_context").get_context
    except (ImportError, AttributeError):
        get_context = None
    override = getattr(get_context(), "override_server_args", None) if get_context else None
    if override is None:
        yield
        return
    with override(**fields) as args:
        # The mamba state's caching grain comes from the model's config; a dummy model
        # has none, so seed it as upstream's own fixtures do (the FLA chunk, 64 tokens).
        args._mamba_cache_chunk_size = MAMBA_CACHE_CHUNK_SIZE
        yield


_current_core = [None]


def current_core():
    """The tree core the running check is collected for (tests/conftest.py sets it)."""
    return _current_core[0]


def use_core(core) -> None:
    _current_core[0] = core


_CORE_CLASSES = {"python": "UnifiedTreeCore", "rust": "RustUnifiedTreeCore"}


@building("the UnifiedRadixCache")
def unified_cache(*, req_pool, allocator, page_size, window, components, mamba_extra_buffer, core=None,
                  is_eagle=False, hicache_write_policy=None):
    """A UnifiedRadixCache on `core` (a name from tree_cores()). Releases that take the
    core per cache (CacheInitParams.tree_core_backend, 0.5.21) get it there, the others
    through SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND while the cache is built. `is_eagle`:
    the cache of an EAGLE-family speculative server (CacheInitParams.is_eagle), which
    keys its tree by bigrams of token ids. `hicache_write_policy`: the cache of a server
    launched with HiCache under that policy (a release may pick its core by it)."""
    fields = dict(
        disable=False,
        req_to_token_pool=req_pool,
        token_to_kv_pool_allocator=allocator,
        page_size=page_size,
        sliding_window_size=window,
        tree_components=components,
        enable_mamba_extra_buffer=mamba_extra_buffer,
    )
    if is_eagle:
        require(takes(CacheInitParams, "is_eagle"), "CacheInitParams takes no is_eagle (EAGLE bigram keys)")
        fields["is_eagle"] = True
    if core is not None:
        fields["tree_core_backend"] = core
    cache = cache_on_core(CacheInitParams(**accepted(CacheInitParams, **fields)), core,
                          hicache_write_policy=hicache_write_policy)
    if is_eagle:
        require(keys_by_bigram(cache), "the cache built with is_eagle does not key its tree by bigrams")
    return cache


def cache_on_core(params, core=None, *, hicache_write_policy=None):
    """UnifiedRadixCache(params) on `core`: through params (tree_core_backend, 0.5.21) or,
    before that, SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND while it is built; with
    `hicache_write_policy`, built under the server args of a HiCache launch with it. A
    core that cannot load, or a release that falls back to another core, cannot run the
    check."""
    env = {} if core is None or takes(CacheInitParams, "tree_core_backend") else {
        "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": core}
    launch = {} if hicache_write_policy is None else {
        "enable_hierarchical_cache": True, "hicache_write_policy": hicache_write_policy}
    try:
        with mock.patch.dict(os.environ, env), server_args(**launch):
            cache = UnifiedRadixCache(params)
    except Exception as exc:  # the core cannot load here (e.g. the Rust extension against this torch)
        raise CannotRun(f"UnifiedRadixCache on the {core or 'default'} tree core cannot be built "
                        f"({type(exc).__name__}: {exc})") from exc
    if core is not None:
        got = type(cache.tree_core).__name__
        if got != _CORE_CLASSES[core] and launch:
            # A release that resolves the core by the launch (resolve_tree_core_backend)
            # never runs this configuration on the asked-for core: nothing to judge there.
            applies_only_if(_resolved_core(core, params) != core,
                            f"a launch with {hicache_write_policy} HiCache runs this cache on {got}, "
                            f"not on the {core} tree core it was asked for")
        require(got == _CORE_CLASSES[core],
                f"asked for the {core} tree core, the cache runs on {got} (the release fell back)")
    return cache


def _resolved_core(core, params):
    """The core the release resolves `core` to for `params` under default server args
    (no HiCache launch); `core` itself on a release without that resolution."""
    registry = importlib.import_module(f"{_MC}.unified_cache.tree_core_registry")
    resolve = getattr(registry, "resolve_tree_core_backend", None)
    if resolve is None:
        return core
    with server_args():
        return resolve(core, params)


def keys_by_bigram(cache) -> bool:
    """Whether the cache keys its tree by bigrams (EAGLE): the cache's own is_eagle until
    0.5.16, its tree core's from 0.5.17 (either core)."""
    holder = _core(cache) or cache
    return bool(getattr(holder, "is_eagle", False))


def token_ids(tokens):
    """Token ids as the release's tree keys carry them: a list, or an array('q') where the
    release keeps token ids so (utils.common.assert_int64_array, 0.5.23) and on the Rust
    tree core, which asserts 8-byte items from its first release (0.5.19, inline in its
    adapter)."""
    common = importlib.import_module("sglang.srt.utils.common")
    if hasattr(common, "assert_int64_array") or current_core() == "rust":
        return array.array("q", tokens)
    return list(tokens)


def radix_key(tokens, *, bigram: bool = False) -> "RadixKey":
    """A RadixKey of token ids (as token_ids() gives them). `bigram`: the
    EAGLE key over the same tokens (RadixKey.is_bigram: one entry per adjacent pair, one
    fewer than the tokens)."""
    ids = token_ids(tokens)
    if not bigram:
        return RadixKey(ids)
    require(takes(RadixKey, "is_bigram"), "RadixKey takes no is_bigram (EAGLE bigram keys)")
    return RadixKey(ids, is_bigram=True)


def matched_device_indices(cache, match) -> torch.Tensor:
    """The device KV indices of a match's prefix: MatchResult.device_indices until 0.5.22;
    from 0.5.23 the result names the last device node and the cache reads its path."""
    if hasattr(match, "device_indices"):
        return match.device_indices
    path = getattr(cache, "path_device_indices", None)
    require(path is not None, "MatchResult has no device_indices and the cache no path_device_indices")
    return path(match.last_device_node)[: match.device_prefix_len]


def insert_params(*, key, value, mamba_value, prev_prefix_len, swa_evicted_seqlen):
    """InsertParams of a finished request. SWA's evicted prefix length is
    swa_evicted_seqlen until 0.5.20, one entry of component_evicted_seqlens from 0.5.21."""
    fields = dict(key=key, value=value, mamba_value=mamba_value, prev_prefix_len=prev_prefix_len)
    if takes(InsertParams, "swa_evicted_seqlen"):
        return InsertParams(**fields, swa_evicted_seqlen=swa_evicted_seqlen)
    require(takes(InsertParams, "component_evicted_seqlens"),
            "InsertParams takes neither swa_evicted_seqlen nor component_evicted_seqlens")
    return InsertParams(**fields, component_evicted_seqlens={ComponentType.SWA: swa_evicted_seqlen})


# -- the tree, by node ------------------------------------------------------------
# Until 0.5.16 the cache hands out node objects; from 0.5.17 it hands out integer node
# ids and keeps the nodes in its tree core. The checks hold node objects (parent,
# children, key, component_data, backuped, evicted, id), which the Python core still has.
# The Rust core (0.5.19+) keeps its nodes to itself and answers by node id; there the
# checks get a RustNodeView per id (one per node, so `is` holds), read through that API.


def _core(cache):
    return getattr(cache, "tree_core", None)


def _on_rust(cache) -> bool:
    core = _core(cache)
    return core is not None and type(core).__name__ == "RustUnifiedTreeCore"


def root(cache):
    if _on_rust(cache):
        tree = _rust_tree(cache)
        tree.refresh()  # every walk of the checks starts here
        return tree.view(tree.root_id)
    return cache.root_node


def node(cache, handle):
    """The node object for what a match result or action names (a node or its id)."""
    if isinstance(handle, int):
        if _on_rust(cache):
            tree = _rust_tree(cache)
            tree.refresh()  # a match may have split nodes since the last read
            return tree.view(handle)
        return cache.tree_core.node_by_id(handle)
    return handle


def handle(cache, node_obj):
    """What the cache's own methods take for a node: the node (<= 0.5.16) or its id."""
    return node_obj.id if _core(cache) is not None else node_obj


def lock(cache, node_obj):
    """inc_lock_ref; returns what unlock() hands back to dec_lock_ref."""
    return cache.inc_lock_ref(handle(cache, node_obj)).to_dec_params()


def unlock(cache, node_obj, params) -> None:
    cache.dec_lock_ref(handle(cache, node_obj), params)


def evictable_host_leaves(cache) -> set:
    # The Rust core keeps its set to itself, and rebuilding it here would need the host
    # locks it does not tell.
    require(not _on_rust(cache), "the Rust tree core does not tell its evictable host leaves")
    holder = _core(cache) or cache
    return set(holder.evictable_host_leaves)


def load_back(cache, node_obj):
    return cache.load_back(handle(cache, node_obj))


def submit_backups(cache) -> None:
    """What the scheduler does after a batch: submit the tree's queued device->host
    backups. Until 0.5.20 every write starts at once; from 0.5.21 write-through queues
    them (write(flush=False)) for flush_pending_backups()."""
    flush = getattr(cache, "flush_pending_backups", None)
    if flush is not None:
        flush()


def back_up(cache, node_obj, *, write_back: bool = False, key=None) -> int:
    """Back a device node up to host the way the cache does on its own: under
    write-through with the un-backed-up ancestors it needs first (#25065), under
    write-back the node alone. Returns the tokens of the last node written, 0 when
    nothing was written (the host cannot take it, or the code under test built no
    backup: both are the check's outcome, never a refusal).

    <= 0.5.16: UnifiedRadixCache.write_backup(node, write_back=...). From 0.5.17 the tree
    core builds that chain as a BackupKV action (the one its insert emits) and the cache
    executes and commits it; from 0.5.21 the cache's own backup_node_for_write_back builds
    the write-back action for a node on either core. The Rust core builds the
    write-through chain for a node id from 0.5.23 (build_backup_kv_action); before, it
    builds it inside its insert: a finished request over the node's whole path, `key`
    (the path's token ids, which that core keeps to itself), drives it there."""
    core = _core(cache)
    if core is None:
        return cache.write_backup(node_obj, write_back=write_back)
    if write_back and hasattr(cache, "backup_node_for_write_back"):
        return len(node_obj.key) if cache.backup_node_for_write_back(node_obj.id) else 0
    run = getattr(cache, "_execute_and_commit_kv_backup", None)
    require(run is not None, "UnifiedRadixCache has no _execute_and_commit_kv_backup (its BackupKV executor)")
    if _on_rust(cache):
        # The chain is the core's decision (what #25065 fixed), never assembled here.
        applies_only_if(not write_back, "the Rust tree core builds a write-back backup only inside its "
                                        "device eviction (backup_node_for_write_back is the cache's from 0.5.21)")
        if "build_backup_kv_action" in vars(type(core)):
            action = core.build_backup_kv_action(node_obj.id)
            return 0 if action is None else run(action, write_back=False)
        return _back_up_through_insert(cache, node_obj, key)
    build = getattr(core, "_build_backup_kv_action", None)
    require(build is not None, "the tree core has no _build_backup_kv_action (its BackupKV builder)")
    action = build(node_obj, write_back=write_back)
    return 0 if action is None else run(action, write_back=write_back)


def _back_up_through_insert(cache, node_obj, key) -> int:
    """The Rust core's write-through before 0.5.23: a finished request that matched the
    node's whole path inserts it again, and the core's insert emits the chain."""
    require(key is not None, "a write-through of a Rust-core node needs its path's token ids (key=)")
    core = _core(cache)
    value = core.collect_full_device_indices(node_obj.id, core.root_node_handle())
    assert len(value) == len(key), f"node {node_obj.id}'s path holds {len(value)} device tokens, the key {len(key)}"
    cache.insert(insert_params(key=radix_key(key), value=value, mamba_value=None,
                               prev_prefix_len=len(key), swa_evicted_seqlen=0))
    submit_backups(cache)
    return len(node_obj.key) if node_obj.backuped else 0


def held_locks(cache) -> list:
    """Every lock the tree says it holds, one line each ([] when nothing is held).
    Python core: each node's lock_ref and host_lock_ref per component. Rust core: each
    node's FULL lock (its dump) and, per other component, the tokens its locks protect
    (the core counts those per tree, not per node). Host locks the Rust core tells only
    by refusing to evict: drain() sees those."""
    if not _on_rust(cache):
        root_node = root(cache)
        out, stack = [], list(root_node.children.values())
        while stack:
            n = stack.pop()
            stack.extend(n.children.values())
            for ct in cache.components:
                cd = n.component_data[ct]
                for name in ("lock_ref", "host_lock_ref"):
                    if getattr(cd, name):
                        out.append(f"node {n.id} {ct} {name}={getattr(cd, name)}")
        return sorted(out)
    tree = _rust_tree(cache)
    tree.refresh()
    out = [f"node {n} FULL lock_ref={lock}" for n, lock in sorted(tree.full_locks.items())
           if n != tree.root_id and lock]
    for ct in tree.core.tree_components:
        # the binding's own count (the adapter names it from 0.5.21 only)
        protected = tree.core._binding.component_protected_size(int(ct))
        if ct != ComponentType.FULL and protected:
            out.append(f"{ct}: {protected} tokens under a lock")
    return out


def leak_component_lock(cache, node_obj, ct) -> None:
    """Take `ct`'s lock on a node, and no other component's, through the tree core (the
    Rust core's binding itself), and never release it: a leak for the lock checks to
    see. The cores take such a lock from 0.5.21 (skip_lock_components)."""
    core = _core(cache)
    applies_only_if(core is not None and takes(core.inc_lock_ref, "skip_lock_components"),
                    "the tree core takes no lock of one component alone")
    others = [c for c in cache.components if c != ct]
    if _on_rust(cache):
        core._binding.inc_lock_ref(node_obj.id, [int(c) for c in others])
    else:
        core.inc_lock_ref(node_obj.id, skip_lock_components=others)


def leak_host_lock(cache, node_obj) -> None:
    """A host lock on a node, taken through the tree core (the Rust core's binding
    itself) and never released."""
    core = _core(cache)
    applies_only_if(core is not None and hasattr(core, "inc_host_lock_ref"), "the tree core takes no host lock")
    (core._binding if _on_rust(cache) else core).inc_host_lock_ref(node_obj.id)


def drain(cache, *, device_tokens: int, host_tokens: int, mamba_slots: int) -> None:
    """Evict everything from device, then from host, as the cache does under pressure:
    with nothing held, the tree is left with its root alone and every slot free."""
    cache.evict(EvictParams(num_tokens=device_tokens, swa_num_tokens=device_tokens,
                            mamba_num=mamba_slots))
    for ct in cache.components:  # FULL last: its host leaves go once nothing else holds them
        if ct != ComponentType.FULL:
            cache.evict_host(host_tokens, ct)
    cache.evict_host(host_tokens)


# -- the Rust tree core, by node id ---------------------------------------------------
# What the checks read of a node, and where the Rust core answers it:
# - the shape of the tree (ids, parent, children), each node's key length and FULL lock
#   count: its debug dump, pretty_print(), one line per node ("[id] key_len full_lock=N
#   Full=yes ..."), indented by depth; printed by the extension to fd 1, so read from
#   there. Every line must parse, and the nodes parsed must be as many as the core's
#   own sanity check counts;
# - backuped, evicted, a component's device value: node_backuped,
#   is_full_device_evicted, get_component_device_value;
# - host values: build_storage_backup_spec (the FULL host value) and, per other
#   component, its host slots as its storage transfer (build_hicache_transfers in the
#   BACKUP_STORAGE phase), which the core builds only while a storage tier is
#   marked wired and the node is hashed: marked for the read alone and unmarked after it,
#   hashes backfilled; neither is anything a check judges, and
#   TestSeamReadsChangeNothing shows the checks' outcomes are the same without the read);
# - the tokens under each component's locks: component_protected_size (per tree).
# Not readable per node, so refused there (CannotRun), never read as a default: a
# component's lock other than FULL's, and host locks. held_locks() reads the per-tree
# counts, and drain() shows a host lock by the host eviction it blocks.

_DUMP_LINE = re.compile(r"^( *)\[(\d+)\] (\d+) full_lock=(\d+)((?: \w+=(?:yes|no))*)$", re.M)
_NODE_COUNT = re.compile(r"across (\d+) nodes")
_ABSENT = 2**62  # a node id the core never mints


def _fd1_output(fn) -> str:
    """What fn writes to file descriptor 1 (the extension prints there, not to sys.stdout)."""
    sys.stdout.flush()
    with tempfile.TemporaryFile() as out:
        saved = os.dup(1)
        try:
            os.dup2(out.fileno(), 1)
            fn()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        return out.read().decode(errors="replace")


def parse_dump(text: str) -> tuple:
    """(parents, children, key lengths, FULL locks) by node id from pretty_print()'s
    text; CannotRun naming the first line that is not a node line."""
    children, parents, key_lens, locks, stack = {}, {}, {}, {}, []
    lines = [line for line in text.splitlines() if line.strip()]
    found = _DUMP_LINE.findall("\n".join(lines))
    if len(found) != len(lines):
        line = next(line for line in lines if not _DUMP_LINE.match(line))
        raise CannotRun(f"the Rust tree core's pretty_print has a line the seam cannot read: {line!r}")
    for indent, node_id, key_len, lock, _ in found:
        depth, node_id = len(indent), int(node_id)
        require(node_id not in parents, f"the Rust tree core's pretty_print lists node {node_id} twice")
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[node_id] = stack[-1][1] if stack else None
        if stack:
            children[stack[-1][1]].append(node_id)
        children[node_id] = []
        key_lens[node_id] = int(key_len)
        locks[node_id] = int(lock)
        stack.append((depth, node_id))
    return parents, children, key_lens, locks


def rust_node_count(core) -> int:
    """The number of nodes the Rust core holds, root included, as its own sanity check
    counts them: it reports the count with any violation, and an ongoing write for a
    node it never minted is one."""
    try:
        core.sanity_check([(_ABSENT, _ABSENT)], [])
    except AssertionError as exc:
        m = _NODE_COUNT.search(str(exc))
        require(m is not None, f"the Rust tree core's sanity check does not count its nodes: {exc}")
        return int(m.group(1))
    raise CannotRun("the Rust tree core's sanity check accepts an ongoing write of a node it does not hold")


class _RustTree:
    """The node views of one cache on the Rust core, and its last read shape."""

    def __init__(self, cache):
        self.cache = cache
        self.core = cache.tree_core
        self.root_id = self.core.root_node_handle()
        self.views: dict = {}
        self.children: dict = {}
        self.parents: dict = {}
        self.key_lens: dict = {}
        self.full_locks: dict = {}

    def view(self, node_id):
        found = self.views.get(node_id)
        if found is None:
            found = self.views[node_id] = RustNodeView(self, node_id)
        return found

    def refresh(self) -> None:
        dump = getattr(self.core, "pretty_print", None)
        require(dump is not None, "the Rust tree core has no pretty_print (the only dump of its shape)")
        parents, children, key_lens, locks = parse_dump(_fd1_output(dump))
        require(parents.get(self.root_id, 0) is None,
                f"the Rust tree core's pretty_print does not start at its root {self.root_id}")
        count = rust_node_count(self.core)
        require(len(parents) == count,
                f"the Rust tree core's pretty_print shows {len(parents)} nodes, its sanity check counts {count}")
        self.children, self.parents, self.key_lens, self.full_locks = children, parents, key_lens, locks

    def parent_id(self, node_id):
        # The shape as it is now: a check holds nodes across splits and evictions.
        # collect_path_info (0.5.22+) names a node's path from the root; before, the dump.
        paths = getattr(self.core, "collect_path_info", None)
        if paths is None:
            # Re-reading the dump per step up is too slow for the randomized check; the
            # shape read at the last root() / node() (every walk starts at one of them).
            require(node_id in self.parents, f"node {node_id} is not in the Rust tree core's tree")
            return self.parents[node_id]
        if node_id == self.root_id:
            return None
        ((*_, info),) = paths([node_id])
        return info.parent_id

    def key_len(self, node_id) -> int:
        lengths = getattr(self.core._binding, "get_node_key_lengths", None)
        if lengths is not None:  # 0.5.21+: read now
            return lengths([node_id])[0]
        require(node_id in self.key_lens, f"node {node_id} is not in the Rust tree core's tree")
        return self.key_lens[node_id]

    def host_values(self, node_id) -> dict:
        """{component: host indices or None} of a node. FULL's is the storage spec's
        host value (None: not backed up). Another component's host slots are its own
        H->storage transfer: a node's aux host slices outlive its FULL host value (from
        0.5.18 write-back reclaims a FULL host copy that duplicates device KV and leaves
        the SWA host slice under its own pool's LRU), so the node's spec, which the core
        builds only for a backed-up node, does not tell them."""
        core = self.core
        wired = core.enable_storage
        if not wired:
            core.enable_storage = True
        try:
            if not wired:
                core.backfill_missing_hash_values()
            spec = core.build_storage_backup_spec(node_id, False)
            values = {ct: None for ct in core.tree_components}
            if spec is not None:  # None: not backed up
                values[ComponentType.FULL] = spec.host_value
            for ct in core.tree_components:
                if ct == ComponentType.FULL:
                    continue
                xfers = core.build_hicache_transfers(ct, node_id, _storage_phase())
                if xfers:
                    require(len(xfers) == 1, f"the Rust core builds {len(xfers)} {ct} storage transfers for one node")
                    values[ct] = xfers[0].host_indices
        finally:
            if not wired:
                core.enable_storage = False
        for ct in core.tree_components:
            # Where the core answers the same question itself, the two must agree.
            if ct != ComponentType.FULL and core.get_component_device_value(node_id, ct) is None:
                host_only = core.component_has_host_value_only(node_id, ct)
                require(host_only == (values[ct] is not None),
                        f"node {node_id} {ct}: its storage transfer says host value "
                        f"{'absent' if values[ct] is None else 'present'}, component_has_host_value_only "
                        f"says {host_only}")
        return values


def _storage_phase():
    """CacheTransferPhase.BACKUP_STORAGE (the release's enum, which the Rust adapter takes)."""
    phase = locate("CacheTransferPhase", f"{_MC}.unified_cache.components:CacheTransferPhase")
    return phase.BACKUP_STORAGE


def _rust_tree(cache) -> _RustTree:
    tree = cache.__dict__.get("_seam_rust_tree")
    if tree is None:
        tree = cache.__dict__["_seam_rust_tree"] = _RustTree(cache)
    return tree


class _KeySpan:
    """A node's key as the Rust core tells it: its length (the tokens stay in the core)."""

    def __init__(self, length: int):
        self._length = length

    def __len__(self) -> int:
        return self._length


class RustComponentView:
    def __init__(self, tree: _RustTree, node_id, ct):
        self._tree, self._id, self._ct = tree, node_id, ct

    @property
    def value(self):
        return self._tree.core.get_component_device_value(self._id, self._ct)

    @property
    def host_value(self):
        return self._tree.host_values(self._id)[self._ct]

    @property
    def lock_ref(self) -> int:
        require(self._ct == ComponentType.FULL,
                f"the Rust tree core does not tell a node's {self._ct} lock (held_locks() reads its per-tree count)")
        require(self._id in self._tree.full_locks, f"node {self._id} is not in the Rust tree core's tree")
        return self._tree.full_locks[self._id]

    @property
    def host_lock_ref(self) -> int:
        raise CannotRun("the Rust tree core does not tell a node's host lock (drain() shows one by the "
                        "host eviction it blocks)")


class RustNodeView:
    """A node of the Rust tree core, read by its id."""

    def __init__(self, tree: _RustTree, node_id):
        self._tree = tree
        self.id = node_id
        by_type = {ct: RustComponentView(tree, node_id, ct) for ct in tree.core.tree_components}
        self.component_data = _ComponentData(by_type)

    def __repr__(self):
        return f"RustNodeView({self.id})"

    @property
    def parent(self):
        parent = self._tree.parent_id(self.id)
        return None if parent is None else self._tree.view(parent)

    @property
    def children(self) -> dict:
        """The children as of the last root() (every walk of the checks starts there)."""
        return {child: self._tree.view(child) for child in self._tree.children.get(self.id, ())}

    @property
    def key(self) -> _KeySpan:
        return _KeySpan(self._tree.key_len(self.id))

    @property
    def backuped(self) -> bool:
        return self._tree.core.is_backuped(self.id)

    @property
    def evicted(self) -> bool:
        return self._tree.core.is_full_device_evicted(self.id)


class _ComponentData:
    """node.component_data: indexed by ComponentType, iterated over the tree's components."""

    def __init__(self, by_type: dict):
        self._by_type = by_type

    def __getitem__(self, ct):
        return self._by_type[ct]

    def __iter__(self):
        return iter(self._by_type.values())


# -- host side ------------------------------------------------------------------


@building("a host pool group entry (PoolEntry)")
def pool_entry(**kwargs):
    return PoolEntry(**accepted(PoolEntry, **kwargs))


@building("a host pool")
def host_pool(cls, size, page_size):
    return cls(size, page_size)


@building("the host pool group (HostPoolGroup)")
def host_pool_group(entries):
    return HostPoolGroup(entries)


@building("the cache's HiCache wiring (host pools, controller)")
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
    core = _core(cache)
    if core is not None:  # 0.5.17+: init_hicache tells the tree core as well
        core.set_hicache_enabled()
        core.has_swa_host_pool = swa_host is not None
        cache.is_write_back = write_policy == "write_back"
    attachment = _storage_attachment()
    if attachment is not None:  # 0.5.19+: init_hicache builds the runtime attach/detach
        cache._storage_attachment = attachment.StorageAttachment(cache)


def _storage_attachment():
    try:
        return importlib.import_module(f"{_MC}.unified_cache.storage_attachment")
    except ImportError:
        return None


def switch_write_policy(cache, write_policy: str) -> tuple:
    """Ask the running cache for `write_policy` as the admin API does (attach_storage_backend
    with hicache_write_policy, 0.5.19+), and return the release's (ok, message). The
    release applies or refuses the policy before it starts the storage backend; the
    seam's controller has no storage to start, so that later step reports a failure."""
    applies_only_if(_storage_attachment() is not None and hasattr(cache, "attach_storage_backend"),
                    "this release switches no HiCache write policy at runtime (0.5.19+)")
    return cache.attach_storage_backend(storage_backend="file", hicache_write_policy=write_policy)


def pending_write_ids(cache) -> set:
    """Ids of the nodes whose device -> host write has not been acknowledged yet."""
    return set(cache.ongoing_write_through)


# -- the real hybrid controller, without its CUDA-only __init__ -------------------

hybrid_cache_controller = locate(
    "hybrid cache controller", f"{_MC}.hybrid_cache.hybrid_cache_controller"
)
cache_controller = locate("cache controller", "sglang.srt.managers.cache_controller")
CacheOperation = locate(
    "CacheOperation",
    f"{_MC}.hybrid_cache.hybrid_cache_controller:CacheOperation",
    "sglang.srt.managers.cache_controller:CacheOperation",
)
HiCacheAck = locate("HiCacheAck", "sglang.srt.managers.cache_controller:HiCacheAck")


def hicache_ack(start_event, finish_event, node_ids):
    """A write/load acknowledgement as the release's controllers queue it (the tree reads
    it by field name from 0.5.16, by position before)."""
    return HiCacheAck(start_event, finish_event, node_ids)


def _l2_transfer():
    """0.5.18+: the base controller's transfer engine runs the copies."""
    try:
        return importlib.import_module(f"{_MC}.l2_transfer")
    except ImportError:
        return None


def device_module_holders() -> tuple:
    """Modules that bind torch's device module at import time; a CPU run replaces it there."""
    modules = (hybrid_cache_controller, cache_controller, _l2_transfer())
    return tuple(m for m in modules if m is not None and hasattr(m, "device_module"))


@building("a HybridCacheController without its CUDA __init__")
def bare_hybrid_controller(group, write_policy, allocator, *, device, stream, layer_num=2, io_backend="kernel"):
    """A real HybridCacheController with only the state its copy paths read. Call it
    with the device module replaced (hicache_standins.cpu_device_module_patches): from
    0.5.18 the copies go through the base controller's transfer engine, built here."""
    ctrl = object.__new__(hybrid_cache_controller.HybridCacheController)
    ctrl.mem_pool_host = group
    ctrl.mem_pool_device = None
    ctrl.mem_pool_device_allocator = allocator
    ctrl.write_policy = write_policy
    ctrl.io_backend = io_backend
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
    l2 = _l2_transfer()
    if l2 is not None:
        ctrl.l2_transfer_engine = l2.L2TransferEngine(io_backend)  # as the controller builds it
        # 0.5.23: no forward to fence a copy against here
        ctrl.write_fence_stream = ctrl.load_fence_stream = None
    ctrl.transfer_layer_id_max = layer_num  # 0.5.21 renamed transfer_layer_num
    return ctrl
