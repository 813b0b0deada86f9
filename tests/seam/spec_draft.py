"""EAGLE's multi-step draft locations: the per-step rows of a draft decode batch's
out_cache_loc, as the installed release hands them to each draft step, and one
consumer that reads them by raw pointer.

- 0.5.13+: ``sglang.srt.speculative.eagle_utils.per_step_draft_out_cache_loc``
  ``(out_cache_loc, batch_size, topk, num_steps)`` is the one place that slices the
  draft buffer (laid out [batch_size, topk, num_steps]) into its
  [num_steps, batch_size * topk] step rows: EAGLEWorkerV2.draft_forward, the DSV4
  backends (and from 0.5.23 the FA3 / triton backends' SWA write ids) take row i
  for draft step i. The 0.5.12 line gets it with its backport of #26239 (0005).
- Vanilla 0.5.12 / 0.5.12.post1 have no such helper (draft_forward slices inline
  and no backend slices per step): nothing there for these checks to judge.
- The DSV4 backend turns a step's row into its C4 / C128 write targets with the
  triton kernel ``_init_compression_metadata_triton`` (dsv4/metadata_kernel.py),
  which loads ``raw_out_loc_ptr + i``: element i of the row's memory, whatever its
  strides. ``compression_kernel_reading(read)`` runs the release's real metadata
  code with that kernel replaced by the torch twin of tests/seam/dsv4_attention.py,
  fed what the kernel would load (``read(raw_out_loc)``).

Import after ``maybe_stub_sgl_kernel()`` on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from unittest import mock

from seam import CannotRun, applies_only_if, require
from seam import dsv4_attention as dsv4


def per_step_draft_out_cache_loc():
    """The release's per-step draft location helper (see the module doc)."""
    try:
        eagle_utils = importlib.import_module("sglang.srt.speculative.eagle_utils")
    except ImportError as exc:
        raise CannotRun(f"sglang.srt.speculative.eagle_utils does not import ({exc})")
    helper = getattr(eagle_utils, "per_step_draft_out_cache_loc", None)
    applies_only_if(
        helper is not None,
        "no per_step_draft_out_cache_loc (draft_forward slices its buffer inline)",
    )
    return helper


@contextlib.contextmanager
def compression_kernel_reading(read, backends=()):
    """Inside ``dsv4.store_kernels()`` (after ``dsv4.remember_compression_metadata()``):
    the DSV4 metadata's real C4 / C128 planning, its kernel fed ``read(raw_out_loc)``.
    ``backends`` plan C4 / C128 whatever ratios the stand-in pool holds (from 0.5.21
    a backend plans only the ratios its pool has; the seam's pool has none)."""
    backend_module = dsv4.backend_module()
    kernel = getattr(backend_module, "_init_compression_metadata_triton", None)
    require(
        kernel is not None,
        "deepseek_v4_backend has no _init_compression_metadata_triton kernel",
    )
    twin = functools.partial(
        dsv4._compression_metadata_twin, c128_raw=dsv4._returns_c128_raw(kernel)
    )

    def kernel_twin(seq_lens, positions, raw_out_loc, *args, **kwargs):
        return twin(seq_lens, positions, read(raw_out_loc), *args, **kwargs)

    with contextlib.ExitStack() as stack:
        stack.enter_context(dsv4.real_compression_metadata())
        stack.enter_context(
            mock.patch.object(backend_module, "_init_compression_metadata_triton", kernel_twin)
        )
        for backend in backends:
            stack.enter_context(dsv4._with_compressed_layers(backend))
        yield


def draft_step_backends(pool, *, num_reqs, topk, num_steps, req_stride):
    """DeepseekV4MultiStepBackend's per-step backends (step i: speculative_step_id i)."""
    return dsv4.draft_step_backends(
        pool, topk=topk, num_steps=num_steps, num_reqs=num_reqs, req_stride=req_stride
    )


def plan_draft_step(backend, out_cache_loc, seq_lens):
    """The step backend's eager metadata init for the whole draft decode batch
    (DeepseekV4MultiStepBackend.init_forward_metadata), and the core metadata it
    planned: ``raw_out_loc``, ``c4_out_loc``, ``c128_out_loc``, ``seq_lens_casual``."""
    fb = dsv4.forward_batch(backend, out_cache_loc, "DECODE", seq_lens=seq_lens)
    dsv4.init_metadata(backend, fb)
    return dsv4.core_metadata(backend)
