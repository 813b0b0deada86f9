"""Requests that run against a FULL+SWA UnifiedRadixCache (not a test module).

The scheduler's side of the SWA component, on the release's own cache and pools
(radix_fixtures.build_tree): admit a request on its prefix match and lock it, give it
fresh KV, cache it while it runs, release the SWA slots that left its window while it
decodes, finish it. What differs between releases (how a request carries its KV row,
its SWA boundary and its tree lock; how a running request is cached) is asked of the
seam, tests/seam/swa_component.py.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

import radix_fixtures as rf  # noqa: E402
import torch  # noqa: E402

from seam import radix as seam  # noqa: E402
from seam import swa_component as swa_seam  # noqa: E402
from seam.swa_component import Request  # noqa: E402

EvictParams = rf.EvictParams


@dataclasses.dataclass
class Violations:
    """What the checks count, summed over steps and seeds."""

    locked_full_freed: int = 0  # slots of a running request's row a new allocation would get
    swa_unaccounted: int = 0  # |SWA pool check difference|, summed per step
    dead_swa_in_tree: int = 0  # live-looking SWA entries with no live SWA slot behind them
    dead_swa_served: int = 0  # window slots of a prefix hit with no live SWA slot behind them
    prefix_tokens_lost: int = 0  # finished full KV the tree did not keep
    release_asserted: int = 0  # scenarios the release's own code stopped with an assert
    full_unaccounted: int = 0  # |Full pool check difference|, summed per step
    slots_leaked: int = 0  # slots neither free nor held once the tree is evicted (idle)

    def total(self) -> int:
        return sum(dataclasses.astuple(self))

    def __add__(self, other: "Violations") -> "Violations":
        return Violations(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


class Scheduler:
    """The part of the scheduler that drives the SWA component: one tree, its pools,
    running requests on rows of the request-to-token pool."""

    def __init__(self, *, page_size: int, window: int, full_size: int = 1024, swa_size: int = 1024,
                 rows: int = 8, eagle: bool = False):
        """`eagle`: an EAGLE speculative server, whose tree is keyed by bigrams of token
        ids (a key one entry shorter than the tokens it spans)."""
        self.h = rf.build_tree(page_size=page_size, window=window, full_size=full_size,
                               swa_size=swa_size, is_eagle=eagle)
        self.eagle = eagle
        self.h.req_to_token_pool.req_to_token.zero_()
        self.page = page_size
        self.window = window
        self.free_rows = list(range(rows))
        self.running: list[Request] = []
        self._rid = 0

    @property
    def cache(self):
        return self.h.cache

    @property
    def allocator(self):
        return self.h.allocator

    @property
    def req_pool(self):
        return self.h.req_to_token_pool

    # -- a request's life -----------------------------------------------------------

    def admit(self, tokens: list):
        """Match, lock the match, allocate the rest (whole pages: a partial last page is
        allocated in full), write the row. Returns the request and its prefix match, or
        (None, match) when the pools cannot hold it."""
        match = swa_seam.match(self.cache, tokens)
        prefix = seam.matched_device_indices(self.cache, match).to(torch.int64)
        pages = -(-len(tokens) // self.page)
        fresh = self.h.alloc_kv(pages * self.page - len(prefix))
        if fresh is None or not self.free_rows:
            if fresh is not None:
                self.allocator.free(fresh)
            return None, match
        self._rid += 1
        req = Request(f"r{self._rid}", tokens)
        swa_seam.place(self.req_pool, req, self.free_rows.pop(), torch.cat([prefix, fresh]))
        req.cache_protected_len = len(prefix)
        req.prefix_indices = prefix
        swa_seam.admit(self.cache, req, self.h.node(match.last_device_node))
        self.running.append(req)
        return req, match

    def grow(self, req: Request, tokens: list) -> bool:
        """The request decoded `tokens` more: they fill its last page, then fresh pages."""
        filled = len(req.tokens) + len(tokens)
        need = -(-filled // self.page) * self.page - req.kv_allocated_len
        if need > 0:
            fresh = self.h.alloc_kv(need)
            if fresh is None:
                return False
            start = req.kv_allocated_len
            self.req_pool.req_to_token[req.req_pool_idx, start : start + need] = fresh.to(
                self.req_pool.req_to_token.dtype)
            req.kv_allocated_len = start + need
        req.tokens = req.tokens + list(tokens)
        req.kv_committed_len = filled
        return True

    def cache_running(self, req: Request) -> None:
        """The prefill is done (or a chunk of it): cache the request's KV so far."""
        swa_seam.cache_unfinished(self.cache, req)

    def scheduler_release(self, req: Request) -> None:
        """A decode step: the scheduler's own out-of-window release for the request
        (its frontier rule, its switches), at the request's last position."""
        swa_seam.scheduler_release_out_of_window(self.cache, self.allocator, self.req_pool, req,
                                                 len(req.tokens) - 1)

    def decode_release(self, req: Request, upto: int) -> None:
        """Decoding moved the window: free the request's SWA slots below `upto`."""
        swa_seam.release_out_of_window(self.allocator, self.req_pool, req, upto)

    def out_of_window_frontier(self, req: Request) -> int:
        """Where the scheduler moves the SWA boundary of a decoding request: a window
        and a page below its last token, page-aligned (the default margin)."""
        pre_len = req.kv_allocated_len - 1
        frontier = max(0, pre_len - self.window - self.page)
        return frontier // self.page * self.page

    def finish(self, req: Request):
        """The request finished: insert its page-aligned KV into the tree, free the rest of
        its row (the partial last page), drop its lock, give the row back. Under EAGLE the
        key is the bigram key of its tokens: page-aligned in bigrams, one fewer than the
        tokens, so it covers the KV of every token but the last."""
        tokens = len(req.tokens) - 1 if self.eagle else len(req.tokens)
        aligned = tokens // self.page * self.page
        kv = swa_seam.row(self.req_pool, req)
        key = swa_seam.radix_key(req.tokens[: aligned + 1], bigram=True) if self.eagle and aligned \
            else swa_seam.radix_key(req.tokens[:aligned])
        result = self.cache.insert(
            seam.insert_params(
                key=key,
                value=kv[:aligned],
                mamba_value=None,
                prev_prefix_len=req.cache_protected_len,
                swa_evicted_seqlen=req.swa_evicted_seqlen,
            )
        )
        if aligned < len(kv):
            self.allocator.free(kv[aligned:])
        swa_seam.release_lock(self.cache, req)
        self.running.remove(req)
        self.free_rows.append(req.req_pool_idx)
        return result

    def evict_swa(self, tokens: int) -> None:
        """SWA pool pressure: the scheduler asks the tree for SWA slots only."""
        self.cache.evict(EvictParams(num_tokens=0, swa_num_tokens=tokens))

    # -- what a user would hit ------------------------------------------------------

    def locked_full_freed(self) -> int:
        """Slots of running requests' rows (their locked prefix included) that the full
        allocator would hand to the next request."""
        if not self.running:
            return 0
        held = torch.cat([swa_seam.row(self.req_pool, r) for r in self.running])
        return swa_seam.handed_out_again(self.allocator.full_attn_allocator, held)

    def swa_unaccounted(self) -> int:
        return abs(swa_seam.swa_unaccounted(self.cache, self.allocator, self.running))

    def full_unaccounted(self) -> int:
        return abs(swa_seam.full_unaccounted(self.cache, self.allocator, self.running))

    def dead_swa_in_tree(self) -> int:
        values = [n.component_data[rf.SWA].value for n in self.h.nodes()]
        values = [v for v in values if v is not None]
        if not values:
            return 0
        return swa_seam.dead_swa_refs(self.allocator, torch.cat(values))

    def dead_swa_served(self, match) -> int:
        """A prefix hit is served with its last window of SWA KV: each of those slots
        must be a live SWA slot."""
        prefix = seam.matched_device_indices(self.cache, match).to(torch.int64)
        if len(prefix) == 0:
            return 0
        window = prefix[-self.window:]
        return swa_seam.dead_swa_refs(self.allocator, self.allocator.translate_loc_from_full_to_swa(window))

    def leaked_after_evicting_all(self) -> int:
        """Slots neither free nor held by a running request once the tree is empty."""
        a = self.allocator
        held_full = sum(swa_seam.full_held(r) for r in self.running)
        held_swa = sum(swa_seam.swa_held(r) for r in self.running)
        return (a.full_attn_allocator.size - a.full_attn_allocator.available_size() - held_full
                + a.swa_attn_allocator.size - a.swa_attn_allocator.available_size() - held_swa)

    def tree_full_tokens(self) -> int:
        return self.cache.full_evictable_size() + self.cache.full_protected_size()
