"""How to drive a paged SWATokenToKVPoolAllocator on CPU, per release.

The paged allocators place the tokens of an extend or a decode step with two Triton
kernels (``alloc_extend_kernel``, ``alloc_decode_kernel``), which need a GPU. While a
check runs, ``cpu_placement`` stands in for those two launches only, with a CPU
computation of the same contract; every other line of the allocators (page
accounting, the full->SWA mapping, the frees) is the release's own. The stand-in
refuses to run (CannotRun) when a kernel's parameters are not the ones it was
written for, so a changed kernel never meets a stale stand-in.

What moved between releases and lives only here:
- module homes: SWATokenToKVPoolAllocator (mem_cache/allocator/swa.py from 0.5.13),
  the paged allocator and its kernels (allocator/paged.py, triton_ops/allocator.py);
- which free lists a paged allocator keeps (``free_pages`` and ``release_pages``;
  pages staged for a merge from 0.5.20, listed by ``get_all_free_pages``);
- what the tree's tombstone recovery over a locked Full KV asks of the allocator
  (``recover_swa_keeping_locked_full``): the incoming slots' mapping cleared by a
  write (<= 0.5.18) or ``clear_full_to_swa_mapping`` (0.5.19+), their Full side
  returned by the full sub-allocator (<= 0.5.18) or ``free_full`` (0.5.19+); and how
  it releases a tombstoned node's Full KV (``free`` <= 0.5.18, ``free_full`` 0.5.19+).
"""

from __future__ import annotations

from sglang.test.test_utils import maybe_stub_sgl_kernel

maybe_stub_sgl_kernel()

import contextlib  # noqa: E402
import inspect  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402

from seam import CannotRun, accepted, building, locate, require, require_call  # noqa: E402

_MC = "sglang.srt.mem_cache"
SWAKVPool = locate("SWAKVPool", f"{_MC}.swa_memory_pool:SWAKVPool")
SWATokenToKVPoolAllocator = locate(
    "SWATokenToKVPoolAllocator",
    f"{_MC}.swa_memory_pool:SWATokenToKVPoolAllocator",
    f"{_MC}.allocator.swa:SWATokenToKVPoolAllocator",
)

# The kernels' parameters, as the CPU stand-ins below read them.
EXTEND_PARAMS = ("pre_lens_ptr", "seq_lens_ptr", "last_loc_ptr", "free_page_ptr", "out_indices", "bs_upper", "page_size")
DECODE_PARAMS = ("seq_lens_ptr", "last_loc_ptr", "free_page_ptr", "out_indices", "bs_upper", "page_size")


@building("a paged SWATokenToKVPoolAllocator over SWAKVPool")
def paged_swa_allocator(*, page_size, full_size, swa_size, need_sort):
    """A real SWATokenToKVPoolAllocator over a real SWAKVPool (layer 0 SWA, layer 1
    full). need_sort is what the scheduler passes: True on a PD prefill or decode server."""
    require(page_size > 1, "the paged SWA allocator needs page_size > 1")
    return swa_allocator(page_size=page_size, full_size=full_size, swa_size=swa_size, need_sort=need_sort)


@building("a SWATokenToKVPoolAllocator over SWAKVPool")
def swa_allocator(*, page_size, full_size, swa_size, need_sort, device="cpu", dtype=torch.bfloat16, head_dim=4):
    """paged_swa_allocator for any page size (page_size 1: token sub-allocators); its
    SWAKVPool is the allocator's get_kvcache()."""
    inner = locate("MHATokenToKVPool", f"{_MC}.memory_pool:MHATokenToKVPool")
    kvcache = SWAKVPool(
        **accepted(
            SWAKVPool.__init__,
            forwards_to=inner.__init__,
            size=full_size,
            size_swa=swa_size,
            page_size=page_size,
            dtype=dtype,
            head_num=1,
            head_dim=head_dim,
            swa_attention_layer_ids=[0],
            full_attention_layer_ids=[1],
            enable_kvcache_transpose=False,
            device=device,
        )
    )
    return SWATokenToKVPoolAllocator(
        size=full_size,
        size_swa=swa_size,
        page_size=page_size,
        dtype=dtype,
        device=device,
        kvcache=kvcache,
        need_sort=need_sort,
    )


def sides(allocator) -> tuple:
    """(the full-attention allocator, the SWA allocator) inside the composite."""
    full = getattr(allocator, "full_attn_allocator", None)
    swa = getattr(allocator, "swa_attn_allocator", None)
    require(full is not None and swa is not None,
            "SWATokenToKVPoolAllocator has no full_attn_allocator / swa_attn_allocator")
    return full, swa


def free_page_ids(sub) -> list:
    """Every page id a paged allocator holds as free, with repeats (a page freed twice
    is there twice). 0.5.20+ list them (get_all_free_pages: the free list and the pages
    staged since the last merge); before, the free list and, under need_sort, the
    pages released since the last merge (release_pages)."""
    get_all = getattr(sub, "get_all_free_pages", None)
    if get_all is not None:
        return get_all().tolist()
    pages = getattr(sub, "free_pages", None)
    require(isinstance(pages, torch.Tensor), f"{type(sub).__name__} keeps no free_pages tensor")
    released = getattr(sub, "release_pages", None)
    ids = pages.tolist()
    if isinstance(released, torch.Tensor):
        ids += released.tolist()
    return ids


# -- the allocators' calls, with the tensors the scheduler passes -------------------


def indices(values) -> torch.Tensor:
    """Slot indices as the scheduler hands them to the allocators."""
    return torch.tensor(list(values), dtype=torch.int64)


_t = indices


def _call(fn, what, **kwargs):
    require_call(fn, what, **kwargs)
    return fn(**kwargs)


def alloc_extend(allocator, prefix_lens, seq_lens, last_locs):
    """Full and SWA slots for a batch of extends (prefill, or a speculative decode's
    over-allocation), one token per slot; None when the pools cannot hold them."""
    return _call(
        allocator.alloc_extend, "SWATokenToKVPoolAllocator.alloc_extend",
        prefix_lens=_t(prefix_lens), prefix_lens_cpu=_t(prefix_lens),
        seq_lens=_t(seq_lens), seq_lens_cpu=_t(seq_lens), last_loc=_t(last_locs),
        extend_num_tokens=sum(s - p for p, s in zip(prefix_lens, seq_lens)),
    )


def alloc_extend_swa_tail(allocator, seq_len, swa_tail_len):
    """A PD decode server's preallocation of one transferred request: full slots for
    the whole prompt, SWA slots for its last swa_tail_len tokens only."""
    fn = getattr(allocator, "alloc_extend_swa_tail", None)
    require(fn is not None, "SWATokenToKVPoolAllocator has no alloc_extend_swa_tail (PD decode SWA tail prealloc)")
    return _call(
        fn, "SWATokenToKVPoolAllocator.alloc_extend_swa_tail",
        prefix_lens=_t([0]), prefix_lens_cpu=_t([0]), seq_lens=_t([seq_len]), seq_lens_cpu=_t([seq_len]),
        last_loc=_t([-1]), extend_num_tokens=seq_len, swa_tail_len=swa_tail_len,
    )


def alloc_request(allocator, length):
    """Full and SWA slots for a new request of `length` tokens (a prefill with no
    prefix): ``alloc`` at page_size 1, ``alloc_extend`` above (inside cpu_placement);
    None when the pools cannot hold them."""
    if allocator.page_size == 1:
        return _call(allocator.alloc, "SWATokenToKVPoolAllocator.alloc", need_size=length)
    return alloc_extend(allocator, [0], [length], [-1])


def recover_swa_keeping_locked_full(allocator, kept_full, incoming_full):
    """What the tree's recovery of an SWA tombstone whose Full KV a running request
    holds (RecoverSWAWithLockedFull) asks of the allocator: the kept Full slots take
    over the SWA slots of the incoming request's Full slots for the same tokens
    (``set_full_to_swa_mapping``, a cache action's mapping write), then the incoming
    slots are unmapped and only their Full side goes back."""
    for name in ("translate_loc_from_full_to_swa", "set_full_to_swa_mapping"):
        require(hasattr(allocator, name), f"SWATokenToKVPoolAllocator has no {name}")
    kept_full, incoming_full = kept_full.to(torch.int64), incoming_full.to(torch.int64)
    swa = allocator.translate_loc_from_full_to_swa(incoming_full)
    # The tree hands the mapping slots in the mapping's own dtype (int64 on 0.5.12, whose
    # translation returns int32).
    mapping = getattr(allocator, "full_to_swa_index_mapping", None)
    if mapping is not None:
        swa = swa.to(mapping.dtype)
    allocator.set_full_to_swa_mapping(kept_full, swa)
    clear = getattr(allocator, "clear_full_to_swa_mapping", None)
    if clear is not None:
        clear(incoming_full)
    else:
        allocator.full_to_swa_index_mapping[incoming_full] = 0
    free_full = getattr(allocator, "free_full", None)
    if free_full is not None:
        free_full(incoming_full)
    else:
        allocator.full_attn_allocator.free(incoming_full)


def free_tombstoned_full(allocator, full):
    """The tree's release of a node whose SWA already went back: ``free_full`` (0.5.19+,
    the Full side only), else ``free`` (its unmapped entries read as the padding slot,
    which free_swa skips)."""
    free_full = getattr(allocator, "free_full", None)
    (free_full or allocator.free)(full)


def alloc_decode(allocator, seq_lens, last_locs):
    """One slot per request of a decode batch (seq_lens count the new token)."""
    return _call(
        allocator.alloc_decode, "SWATokenToKVPoolAllocator.alloc_decode",
        seq_lens=_t(seq_lens), seq_lens_cpu=_t(seq_lens), last_loc=_t(last_locs),
    )


# -- CPU stand-ins for the two placement kernels ------------------------------------


def _pages(n: int, ps: int) -> int:
    return (n + ps - 1) // ps


def _free_page(free_page_ptr, i: int) -> int:
    """free_page_ptr[i]; the kernels read past the free list when it is too short (the
    allocator then discards the result and returns None): read that as page 0, the
    allocators' dummy page."""
    return int(free_page_ptr[i]) if i < len(free_page_ptr) else 0


def _extend_on_cpu(pid, pre_lens_ptr, seq_lens_ptr, last_loc_ptr, free_page_ptr, out_indices, bs_upper, page_size):
    """Request pid's tokens [pre, seq): those that fit the page its last token is in
    follow last_loc; the rest fill its new pages (taken from the free list in request
    order) in order. Output rows are packed in request order."""
    pre, seq = pre_lens_ptr.tolist(), seq_lens_ptr.tolist()
    ps = page_size
    out = sum(seq[j] - pre[j] for j in range(pid))
    first_page = sum(_pages(seq[j], ps) - _pages(pre[j], ps) for j in range(pid))
    p, s = pre[pid], seq[pid]
    last_loc = int(last_loc_ptr[pid])
    for t in range(p, s):
        if t < _pages(p, ps) * ps:
            loc = last_loc + 1 + (t - p)
        else:
            loc = _free_page(free_page_ptr, first_page + t // ps - _pages(p, ps)) * ps + t % ps
        out_indices[out + t - p] = loc


def _decode_on_cpu(pid, seq_lens_ptr, last_loc_ptr, free_page_ptr, out_indices, bs_upper, page_size):
    """Request pid's one new token: after last_loc, or at the start of the next free
    page (in request order) when its last page is full."""
    seq = seq_lens_ptr.tolist()
    ps = page_size

    def opens_page(s):
        return _pages(s, ps) - _pages(s - 1, ps)

    if opens_page(seq[pid]):
        first_page = sum(opens_page(seq[j]) for j in range(pid))
        out_indices[pid] = _free_page(free_page_ptr, first_page) * ps
    else:
        out_indices[pid] = int(last_loc_ptr[pid]) + 1


class _CpuLaunch:
    """``kernel[grid](*args)`` run as ``compute(pid, **args)`` for each program id."""

    def __init__(self, kernel, compute):
        self._signature = inspect.signature(getattr(kernel, "fn", kernel))
        self._compute = compute

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            bound = self._signature.bind(*args, **kwargs)
            (programs,) = grid
            for pid in range(programs):
                self._compute(pid, **bound.arguments)

        return launch


def _stand_in(globals_: dict, name: str, params: tuple, compute) -> _CpuLaunch:
    kernel = globals_.get(name)
    require(kernel is not None, f"the paged allocator launches no {name}")
    found = tuple(inspect.signature(getattr(kernel, "fn", kernel)).parameters)
    if found != params:
        raise CannotRun(f"{name} takes {found}; the CPU stand-in computes the contract of {params}")
    return _CpuLaunch(kernel, compute)


@contextlib.contextmanager
def cpu_placement(allocator):
    """While in it, the paged sub-allocators of `allocator` place tokens on the CPU:
    the two kernel launches their alloc_extend / alloc_decode make are replaced, where
    those methods look them up, by the stand-ins above. At page_size 1 nothing is
    placed by a kernel, and nothing is replaced."""
    if allocator.page_size == 1:
        yield
        return
    patches = {}
    for sub in sides(allocator):
        for method, name, params, compute in (
            ("alloc_extend", "alloc_extend_kernel", EXTEND_PARAMS, _extend_on_cpu),
            ("alloc_decode", "alloc_decode_kernel", DECODE_PARAMS, _decode_on_cpu),
        ):
            fn = getattr(type(sub), method, None)
            require(fn is not None, f"{type(sub).__name__} has no {method}")
            globals_ = fn.__globals__
            patches.setdefault(id(globals_), (globals_, {}))[1][name] = _stand_in(globals_, name, params, compute)
    with contextlib.ExitStack() as stack:
        for globals_, values in patches.values():
            stack.enter_context(mock.patch.dict(globals_, values))
        yield


# -- the stand-ins on their own, and what they are held to --------------------------


def place_extend_on_cpu(prefix_lens, seq_lens, last_loc, free_pages, page_size) -> torch.Tensor:
    """The stand-in for alloc_extend_kernel, for a batch given as int64 tensors."""
    out = torch.empty(int((seq_lens - prefix_lens).sum()), dtype=torch.int64)
    for pid in range(len(seq_lens)):
        _extend_on_cpu(pid, prefix_lens, seq_lens, last_loc, free_pages, out, None, page_size)
    return out


def place_decode_on_cpu(seq_lens, last_loc, free_pages, page_size) -> torch.Tensor:
    """The stand-in for alloc_decode_kernel, for a batch given as int64 tensors."""
    out = torch.empty(len(seq_lens), dtype=torch.int64)
    for pid in range(len(seq_lens)):
        _decode_on_cpu(pid, seq_lens, last_loc, free_pages, out, None, page_size)
    return out


def _paged_globals() -> dict:
    paged = locate(
        "PagedTokenToKVPoolAllocator",
        f"{_MC}.allocator:PagedTokenToKVPoolAllocator",
        f"{_MC}.allocator.paged:PagedTokenToKVPoolAllocator",
    )
    return paged.alloc_extend.__globals__


def release_extend_reference(prefix_lens, seq_lens, last_loc, free_pages, page_size) -> torch.Tensor:
    """The release's own CPU placement of an extend (alloc_extend_naive, in every
    release), on the same batch."""
    naive = _paged_globals().get("alloc_extend_naive")
    require(naive is not None, "the paged allocator's module has no alloc_extend_naive")
    out = torch.empty(int((seq_lens - prefix_lens).sum()), dtype=torch.int64)
    naive(prefix_lens, seq_lens, last_loc, free_pages, out, page_size, "cpu")
    return out


def release_kernel_placement(kind, *args, page_size) -> torch.Tensor:
    """The release's Triton kernel ("extend" or "decode") on CUDA copies of the batch
    (extend: prefix_lens, seq_lens, last_loc, free_pages; decode: seq_lens, last_loc,
    free_pages); the result back on the CPU."""
    globals_ = _paged_globals()
    name, params = {"extend": ("alloc_extend_kernel", EXTEND_PARAMS), "decode": ("alloc_decode_kernel", DECODE_PARAMS)}[kind]
    _stand_in(globals_, name, params, None)  # the same parameters the stand-in reads
    kernel = globals_[name]
    args = [a.cuda() for a in args]
    seq_lens = args[1] if kind == "extend" else args[0]
    n = int((args[1] - args[0]).sum()) if kind == "extend" else len(seq_lens)
    out = torch.empty(n, dtype=torch.int64, device="cuda")
    bs = len(seq_lens)
    kernel[(bs,)](*args, out, 1 << max(bs - 1, 0).bit_length(), page_size)
    return out.cpu()

