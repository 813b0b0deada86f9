"""Running requests against a FULL+SWA UnifiedRadixCache, per release.

The cache is built by seam/radix.py; this module adds what the scheduler does to it
for a request that is still running, which moved between releases and lives only here:
- the request the cache reads when it caches one: its KV record on the request
  (<= 0.5.15) or on ``req.kv`` (0.5.16+); its SWA eviction boundary as
  ``swa_evicted_seqlen`` (<= 0.5.20) or an entry of ``component_evicted_seqlens``
  (0.5.21+); its tokens as ``fill_ids``, ``get_fill_ids()`` or
  ``full_untruncated_fill_ids`` (0.5.22+), in the container the release's Req keeps
  them in: a list (0.5.12), array('q') from 0.5.13 (``Req.get_fill_ids() -> array``),
  which the Rust tree core (0.5.19+) asserts on every key the cache builds from them;
- how a request holds its tree lock: ``last_node`` + ``swa_uuid_for_lock`` (<= 0.5.16),
  + ``skip_lock_node_ids`` (0.5.17 - 0.5.19), a ``lock_receipt`` (0.5.20 - 0.5.21),
  a lock handle from ``cache.lock()`` (0.5.22+);
- how a running request is cached: ``cache_unfinished_req`` (<= 0.5.21),
  ``checkpoint(req, up_to=...)`` (0.5.22+);
- the scheduler's release of a running request's SWA slots that left the window
  (``free_swa`` over its row, then the boundary moves), and the pools' accounting.
"""

from __future__ import annotations

import array

import torch

from seam import locate, radix, require, takes
from seam.radix import ComponentType

SWA = ComponentType.SWA
DecLockRefParams = locate("DecLockRefParams", "sglang.srt.mem_cache.base_prefix_cache:DecLockRefParams")


class _KvRecord:
    """What a release reads of a request's KV row, under every name it has used."""

    def __init__(self):
        self.req_pool_idx = None
        self.cache_protected_len = 0
        self.cache_inserted_len = 0
        self.kv_committed_len = 0
        self.kv_allocated_len = 0
        self.swa_evict_floor = 0
        self.component_evicted_seqlens = {}
        self.retraction_backup = None
        self.mamba_pool_idx = None
        self.mamba_ping_pong_track_buffer = None
        self.mamba_next_track_idx = None
        self.mamba_last_track_idx = None
        self.mamba_last_track_seqlen = None
        self.mamba_prev_track_seqlen = None
        self.mamba_cow_src_index = None
        self.mamba_needs_clear = False

    @property
    def swa_evicted_seqlen(self) -> int:
        return self.component_evicted_seqlens.get(SWA, 0)

    @swa_evicted_seqlen.setter
    def swa_evicted_seqlen(self, length: int) -> None:
        self.component_evicted_seqlens[SWA] = length

    def get_evicted_seqlen(self, component_type) -> int:
        return self.component_evicted_seqlens.get(component_type, 0)

    def set_evicted_seqlen(self, component_type, length: int) -> None:
        self.component_evicted_seqlens[component_type] = length

    @property
    def max_evicted_seqlen(self) -> int:
        return max(self.component_evicted_seqlens.values(), default=0)

    @property
    def holds_kv(self) -> bool:
        return self.req_pool_idx is not None

    def swa_dead_lo(self, page_size: int) -> int:
        return max(self.cache_protected_len, self.swa_evict_floor)


def _on_kv(name):
    return property(lambda self: getattr(self.kv, name), lambda self, v: setattr(self.kv, name, v))


Req = locate("Req", "sglang.srt.managers.schedule_batch:Req")


def _keeps_token_arrays() -> bool:
    """Whether the release's Req keeps its token ids as array('q') (0.5.13+: its
    get_fill_ids() is annotated to return an array) rather than lists (0.5.12)."""
    fill = getattr(Req, "get_fill_ids", None)
    returns = getattr(fill, "__annotations__", {}).get("return")
    return returns in ("array", array.array)


_TOKEN_ARRAYS = _keeps_token_arrays()


def token_ids(tokens):
    """Token ids in the container the release's Req hands the cache."""
    return array.array("q", tokens) if _TOKEN_ARRAYS else list(tokens)


def radix_key(tokens, *, bigram: bool = False):
    """The key the scheduler builds for these tokens: from its Req's container, so the
    keys the cache builds from a request (cache_unfinished_req, checkpoint) and the
    checks' own keys are of one kind (the Python tree core asserts they are).
    `bigram`: EAGLE's key over the same tokens (one entry per adjacent pair)."""
    ids = token_ids(tokens)
    if not bigram:
        return radix.RadixKey(ids)
    radix.require(radix.takes(radix.RadixKey, "is_bigram"), "RadixKey takes no is_bigram (EAGLE bigram keys)")
    return radix.RadixKey(ids, is_bigram=True)


def match(cache, tokens):
    """The scheduler's prefix match for a request's tokens."""
    return cache.match_prefix(radix.MatchPrefixParams(key=radix_key(tokens)))


class Request:
    """A running request as the cache's caching paths read it (no sampling, no output).
    The checks read and extend its tokens as a list (``tokens``); the cache reads them
    under the release's names, in the release's container (``token_ids``)."""

    req_pool_idx = _on_kv("req_pool_idx")
    cache_protected_len = _on_kv("cache_protected_len")
    swa_evicted_seqlen = _on_kv("swa_evicted_seqlen")
    kv_allocated_len = _on_kv("kv_allocated_len")
    kv_committed_len = _on_kv("kv_committed_len")

    def __init__(self, rid: str, tokens: list):
        self.rid = rid
        self.kv = _KvRecord()
        self.tokens = list(tokens)
        self.extra_key = None
        self.cache_salt = None
        self.session = None
        self.session_id = None
        self.priority = 0
        self.kv_rotation_base = None
        self.prefix_indices = torch.empty((0,), dtype=torch.int64)
        self.last_node = None
        self.swa_uuid_for_lock = None
        self.skip_lock_node_ids = {}
        self.lock_receipt = None
        self.lock = None
        self.swa_prefix_lock_released = False
        self.swa_branching_seqlen = None
        self.finished_reason = None
        self.is_retracted = False
        self.mamba_pool_idx = None
        self.mamba_last_track_seqlen = None

    @property
    def tokens(self) -> list:
        return list(self._tokens)

    @tokens.setter
    def tokens(self, tokens) -> None:
        """The prompt is what the request had when admitted; what follows, its output."""
        tokens = list(tokens)
        prompt = getattr(self, "_prompt_len", len(tokens))
        self._prompt_len = prompt
        self._tokens = tokens
        self.origin_input_ids = token_ids(tokens[:prompt])
        self.output_ids = token_ids(tokens[prompt:])
        self._fill_ids = token_ids(tokens)

    @property
    def fill_ids(self):
        return self._fill_ids

    def get_fill_ids(self):
        return self._fill_ids

    @property
    def full_untruncated_fill_ids(self):
        return self._fill_ids

    def finished(self) -> bool:
        return False


def place(req_pool, req: Request, row: int, kv: torch.Tensor) -> None:
    """The request's KV row: what the scheduler wrote to req_to_token for it."""
    req.req_pool_idx = row
    req_pool.req_to_token[row, : len(kv)] = kv.to(req_pool.req_to_token.dtype)
    req.kv_allocated_len = len(kv)  # whole pages
    req.kv_committed_len = min(len(kv), len(req.tokens))


def row(req_pool, req: Request) -> torch.Tensor:
    return req_pool.req_to_token[req.req_pool_idx, : req.kv_allocated_len].to(torch.int64)


def admit(cache, req: Request, node) -> None:
    """Lock the node a request's prefix match ended on, as the scheduler does at
    admission, and keep what its release needs on the request."""
    handle = radix.handle(cache, node)
    req.last_node = handle
    if _locks_by_handle(cache):
        req.lock = cache.lock(handle)
        return
    result = cache.inc_lock_ref(handle)
    req.swa_uuid_for_lock = getattr(result, "swa_uuid_for_lock", None)
    req.skip_lock_node_ids = {}
    req.lock_receipt = result.to_dec_params()


def release_lock(cache, req: Request) -> None:
    """Drop the tree lock the request holds (the cache may have moved it while caching)."""
    if _locks_by_handle(cache):
        cache.unlock(req.lock)
        req.lock = None
        return
    dec = getattr(cache, "_dec_req_lock", None)
    if dec is not None:
        dec(req)
        return
    cache.dec_lock_ref(req.last_node, DecLockRefParams(swa_uuid_for_lock=req.swa_uuid_for_lock))


def _locks_by_handle(cache) -> bool:
    """0.5.22+: the scheduler holds a lock handle from cache.lock() and gives it back."""
    return callable(getattr(cache, "lock", None)) and callable(getattr(cache, "unlock", None))


def cache_unfinished(cache, req: Request) -> None:
    """Cache a running request's KV so far, as the scheduler does after a prefill chunk
    or when a disaggregated decode takes over a request: cache_unfinished_req until
    0.5.21, checkpoint(up_to=...) from 0.5.22."""
    unfinished = getattr(cache, "cache_unfinished_req", None)
    if unfinished is not None:
        unfinished(req)
        return
    checkpoint = getattr(cache, "checkpoint", None)
    require(checkpoint is not None and takes(checkpoint, "up_to"),
            "UnifiedRadixCache has neither cache_unfinished_req nor checkpoint(up_to=...)")
    checkpoint(req, up_to=len(req.tokens))


def release_out_of_window(allocator, req_pool, req: Request, upto: int) -> None:
    """What the scheduler does while a request decodes: free the SWA slots of its row
    that left the sliding window, never below what the tree owns, and move the
    request's SWA boundary there."""
    start = max(req.swa_evicted_seqlen, req.cache_protected_len)
    req.swa_evicted_seqlen = start
    if upto <= start:
        return
    allocator.free_swa(row(req_pool, req)[start:upto])
    req.swa_evicted_seqlen = upto


def swa_held(req: Request) -> int:
    """SWA slots a running request holds outside the tree, as the scheduler's memory
    check counts them: its row past both the tree's prefix and the SWA boundary."""
    return req.kv_allocated_len - max(req.cache_protected_len, req.swa_evicted_seqlen)


def full_held(req: Request) -> int:
    return req.kv_allocated_len - req.cache_protected_len


def swa_unaccounted(cache, allocator, running) -> int:
    """The scheduler's SWA pool check: free + the tree's evictable and protected + what
    running requests hold must be the pool. Returns the difference (0 when balanced)."""
    pool = allocator.swa_attn_allocator
    counted = (pool.available_size() + cache.swa_evictable_size() + cache.swa_protected_size()
               + sum(swa_held(r) for r in running))
    return counted - pool.size


def full_unaccounted(cache, allocator, running) -> int:
    pool = allocator.full_attn_allocator
    counted = (pool.available_size() + cache.full_evictable_size() + cache.full_protected_size()
               + sum(full_held(r) for r in running))
    return counted - pool.size


def handed_out_again(sub_allocator, slots: torch.Tensor) -> int:
    """How many of `slots` (still in use by someone) the allocator would hand to the
    next allocation: take everything it has free, look, give it back."""
    free = sub_allocator.available_size()
    if free == 0 or slots.numel() == 0:
        return 0
    taken = sub_allocator.alloc(free)
    require(taken is not None, f"{type(sub_allocator).__name__}.alloc({free}) of its own free size failed")
    hit = int(torch.isin(slots.to(torch.int64), taken.to(torch.int64)).sum())
    sub_allocator.free(taken)
    return hit


def dead_swa_refs(allocator, swa_values: torch.Tensor) -> int:
    """Entries of live-looking SWA values that point at no SWA slot (the pool's padding
    slot 0) or at a slot the SWA allocator has free."""
    swa_values = swa_values.to(torch.int64)
    live = swa_values[swa_values > 0]
    return int((swa_values <= 0).sum()) + handed_out_again(allocator.swa_attn_allocator, live)


ScheduleBatch = locate("ScheduleBatch", "sglang.srt.managers.schedule_batch:ScheduleBatch")


class _DecodingBatch:
    """What ScheduleBatch._evict_swa reads of its batch."""

    def __init__(self, cache, allocator, req_pool):
        self.tree_cache = cache
        self.token_to_kv_pool_allocator = allocator
        self.req_to_token_pool = req_pool


def scheduler_release_out_of_window(cache, allocator, req_pool, req: Request, pre_len: int) -> None:
    """The scheduler's own release of a decoding request's out-of-window SWA KV, with the
    release's frontier rule: ScheduleBatch._evict_swa(req, pre_len) on every release (it
    computes the frontier itself until 0.5.13, through mem_cache.common's
    free_swa_out_of_window_slots from 0.5.14, through the cache from 0.5.21)."""
    evict = getattr(ScheduleBatch, "_evict_swa", None)
    require(evict is not None, "ScheduleBatch has no _evict_swa (the decode-time SWA release)")
    evict(_DecodingBatch(cache, allocator, req_pool), req, pre_len)
