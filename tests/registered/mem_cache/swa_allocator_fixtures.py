"""A scheduler's use of the paged SWA allocator, with page ownership kept (not a test module).

``PagedSWAServer`` drives a real ``SWATokenToKVPoolAllocator`` (page_size > 1) the way a
scheduler does: requests get full and SWA slots (prefill, a PD decode server's SWA tail
preallocation, decode, speculative over-allocation), release out-of-window SWA, and
finish. It keeps, apart from the allocator, which request holds which page of each pool,
read off the allocator's free lists around every call, and counts what a correct
allocator never does:

- ``double_free``: a page returned while it is already free;
- ``freed_while_held``: a page returned by a request that does not hold it, while
  another request does (that request's KV can be handed to a third one);
- ``handed_out_twice``: an allocation that gives a request a page another one holds;
- ``not_returned``: a finished request whose pages did not all come back;
- ``accounting_assert``: the allocator's own check that a pool never has more free
  slots than its size.

Everything release-specific (construction, the calls' tensors, the free lists, the
CPU stand-in for the placement kernels) is asked of the seam, tests/seam/swa_allocator.py.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from seam import raised_by_release  # noqa: E402
from seam import swa_allocator as seam  # noqa: E402

POOLS = ("full", "swa")


class DrivenAllocator:
    """A release's SWA allocator driven on CPU (its placement kernels stood in), with the
    violations its driver counts. The allocator's own accounting assert (a pool
    over-freed) is one of them, and breaks the driver: later calls would only repeat it."""

    def __init__(self, allocator, page_size):
        self.ps = page_size
        self.allocator = allocator
        self.violations = collections.Counter()
        self.broken = False
        self._placement = seam.cpu_placement(allocator)

    def __enter__(self):
        self._placement.__enter__()
        return self

    def __exit__(self, *exc):
        return self._placement.__exit__(*exc)

    def _count(self, kind, n=1):
        if n > 0:
            self.violations[kind] += n

    @contextlib.contextmanager
    def allocator_asserts(self):
        """Around a call: the release's accounting assert is counted, never raised."""
        try:
            yield
        except AssertionError as exc:
            if not raised_by_release(exc):
                raise
            self._count("accounting_assert")
            self.broken = True


@dataclasses.dataclass
class Request:
    rid: int
    slots: list  # full slot of each token position, [0, allocated)
    committed: int
    swa_evicted: int = 0  # SWA released for positions [0, swa_evicted)

    @property
    def allocated(self) -> int:
        return len(self.slots)


class PagedSWAServer(DrivenAllocator):
    def __init__(self, *, page_size, full_pages, swa_pages, need_sort):
        super().__init__(seam.paged_swa_allocator(
            page_size=page_size,
            full_size=full_pages * page_size,
            swa_size=swa_pages * page_size,
            need_sort=need_sort,
        ), page_size)
        self.pool_pages = {"full": full_pages, "swa": swa_pages}
        self.sides = dict(zip(POOLS, seam.sides(self.allocator)))
        self.owner = {pool: {} for pool in POOLS}  # page id -> rid
        self.live: dict[int, Request] = {}
        self._next_rid = 0

    # -- free lists -----------------------------------------------------------

    def _free(self) -> dict:
        return {pool: collections.Counter(seam.free_page_ids(side)) for pool, side in self.sides.items()}

    @contextlib.contextmanager
    def _tracked(self, rid, taking: bool):
        before = self._free()
        with self.allocator_asserts():
            yield
        if self.broken:
            return
        after = self._free()
        for pool in POOLS:
            owner = self.owner[pool]
            if taking:
                for page, n in (before[pool] - after[pool]).items():
                    if owner.get(page, rid) != rid or n > 1:
                        self._count("handed_out_twice", 1)
                    owner[page] = rid
                continue
            for page, n in (after[pool] - before[pool]).items():
                held_by = owner.pop(page, None)
                if held_by is None:
                    self._count("double_free", n)
                else:
                    if held_by != rid:
                        self._count("freed_while_held", 1)
                    self._count("double_free", n - 1)

    # -- what a scheduler does ------------------------------------------------

    def admit_extend(self, length):
        """A prefill of `length` tokens with no prefix (full and SWA for every token)."""
        rid = self._next_rid
        with self._tracked(rid, taking=True):
            kv = seam.alloc_extend(self.allocator, [0], [length], [-1])
        return self._admitted(rid, kv, length)

    def admit_pd_tail(self, length, window):
        """A request transferred to a PD decode server: full slots for its prompt, SWA
        slots only for the tail the window needs (from a page-aligned window start)."""
        rid = self._next_rid
        window_start = max(0, length - window) // self.ps * self.ps
        with self._tracked(rid, taking=True):
            kv = seam.alloc_extend_swa_tail(self.allocator, length, length - window_start)
        req = self._admitted(rid, kv, length)
        if req is not None:
            req.swa_evicted = window_start
        return req

    def _admitted(self, rid, kv, length):
        if self.broken or kv is None:
            return None
        self._next_rid += 1
        req = Request(rid=rid, slots=kv.tolist(), committed=length)
        assert len(req.slots) == length
        self.live[rid] = req
        return req

    def extend(self, req, new_allocated) -> bool:
        """More slots for one request, up to new_allocated (a speculative decode's
        over-allocation: spec v2 allocates ahead of what verify commits)."""
        cur = req.allocated
        if new_allocated <= cur:
            return True
        with self._tracked(req.rid, taking=True):
            kv = seam.alloc_extend(self.allocator, [cur], [new_allocated], [req.slots[cur - 1]])
        if self.broken or kv is None:
            return False
        req.slots += kv.tolist()
        return True

    def decode(self, req) -> bool:
        """One plain decode step: a slot for the next token. Like the scheduler, only
        with a free page in both pools (it retracts a request otherwise)."""
        assert req.allocated == req.committed
        if self.allocator.available_size() < self.ps:
            return False
        with self._tracked(req.rid, taking=True):
            kv = seam.alloc_decode(self.allocator, [req.committed + 1], [req.slots[-1]])
        if self.broken or kv is None:
            return False
        req.slots += kv.tolist()
        req.committed += 1
        return True

    def release_swa(self, req, upto):
        """Release the SWA of positions [swa_evicted, upto): out of the window."""
        if upto <= req.swa_evicted:
            return
        with self._tracked(req.rid, taking=False):
            self.allocator.free_swa(seam.indices(req.slots[req.swa_evicted:upto]))
        req.swa_evicted = upto

    def finish(self, req):
        """What a finished request returns: its committed KV, then the over-allocated
        slots from the next page boundary on (the page of its last committed token
        went back with it)."""
        del self.live[req.rid]
        with self._tracked(req.rid, taking=False):
            self.allocator.free(seam.indices(req.slots[: req.committed]))
            start = -(-req.committed // self.ps) * self.ps
            if start < req.allocated:
                self.allocator.free(seam.indices(req.slots[start:]))
        if self.broken:
            return
        for pool in POOLS:
            kept = [p for p, rid in self.owner[pool].items() if rid == req.rid]
            self._count("not_returned", len(kept))
            for page in kept:
                del self.owner[pool][page]

    def finish_all(self):
        for req in list(self.live.values()):
            if self.broken:
                return
            self.finish(req)

    # -- accounting -------------------------------------------------------------

    def accounting(self) -> dict:
        """Per pool: free slots as the allocator counts them, and its size."""
        return {
            pool: (side.available_size(), self.pool_pages[pool] * self.ps)
            for pool, side in self.sides.items()
        }

    def duplicate_free_pages(self) -> int:
        return sum(n - 1 for free in self._free().values() for n in free.values() if n > 1)
