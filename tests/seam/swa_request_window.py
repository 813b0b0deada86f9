"""The tree cache of a DeepSeek-V4 target that keeps its SWA in the encoder-replay
request window, as the release's KV cache builder makes it.

With ``--enable-encoder-swa-bounded-replay`` (0.5.21+) the DSV4 target keeps its
sliding-window KV in a per-request window (``DeepSeekV4TokenToKVPool.request_window``,
``swa_kv_pool`` None) that the tree never owns. Under speculative decoding the pool
still asks for the paged SWA allocator (``needs_paged_swa_allocator``): the draft reads
paged SWA through the target's full->SWA mapping, so the tree gets an SWA component
over an ordinary (not per-request-ring) SWA allocator, and HiCache registers no SWA
host pool (the assembler keeps request-window SWA out of the host cache).

What the checks judge is the cache the release's own builder
(``kv_cache_builder.build_kv_cache``) parameterises for that pool: whatever the
release decides there about the SWA component (0.5.23: ``swa_gates_prefix_match``)
reaches the cache through the builder's CacheInitParams, and a release that decides
nothing passes nothing. What moved and lives only here:
- the builder's signature (0.5.22 drops the process-group arguments, 0.5.23 adds
  ``draft_swa_window``), read through ``accepted``;
- the collaborators it consults that the checks do not judge and a CPU test cannot
  give it (the process groups of a single-rank server, the model's implementation,
  the decode retraction backend, the tree registry), replaced in the builder's module
  for the call: the builder's CacheInitParams is taken as it is built, and the cache
  is built from it here, on the tree core the check is collected for.
Releases without the request window (<= 0.5.20) have no such code path: not applicable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import types
from unittest import mock

from seam import MISFIT, CannotRun, accepted, applies_only_if, building, locate, radix, require, takes
from seam.radix import CacheInitParams, ComponentType

_MC = "sglang.srt.mem_cache"


def has_request_window() -> bool:
    """Whether the release has the DSV4 encoder-replay request window at all."""
    try:
        importlib.import_module(f"{_MC}.dsv41_request_window")
    except ImportError:
        return False
    return True


def _request_window_pool():
    """The target's DSV4 pool as the builder reads it under encoder replay with a
    speculative draft: a request window, no paged SWA pool of its own, and the paged
    SWA allocator kept for the draft (the pool's own decision, deepseek_v4_memory_pool)."""
    pool_cls = locate("DeepSeekV4TokenToKVPool", f"{_MC}.deepseek_v4_memory_pool:DeepSeekV4TokenToKVPool")
    pool = object.__new__(pool_cls)
    pool.request_window = types.SimpleNamespace(kind="encoder replay request window")
    pool.swa_kv_pool = None
    pool.unified_kv_pool = None
    pool.needs_paged_swa_allocator = True
    return pool


class _Group:
    cpu_group = None


def _single_rank_parallel():
    """The parallel layout of a one-GPU server, as the builder reads it."""
    return types.SimpleNamespace(
        dcp_enabled=False, enable_dp_attention=False, tp_size=1, tp_rank=0,
        pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        attn_cp_group=_Group(), attn_tp_group=_Group(), pp_group=_Group(),
    )


class _Captured(Exception):
    def __init__(self, params):
        super().__init__("the builder's CacheInitParams")
        self.params = params


def builder_params(*, req_pool, allocator, page_size, window):
    """The CacheInitParams the release's build_kv_cache makes for a DSV4 target whose
    SWA lives in the request window (its pools: `req_pool`, `allocator`)."""
    applies_only_if(has_request_window(),
                    "no DSV4 encoder-replay request window (dsv41_request_window, 0.5.21+)")
    kvb = locate("the KV cache builder", f"{_MC}.kv_cache_builder")
    require(hasattr(kvb, "build_kv_cache"), "kv_cache_builder has no build_kv_cache")
    spec = locate("SpeculativeAlgorithm", "sglang.srt.speculative.spec_info:SpeculativeAlgorithm")
    with building("the stand-in tp worker of a DSV4 request-window target"):
        model_config = types.SimpleNamespace(hf_config=None, is_multimodal=False,
                                             is_deepseek_v4_arch=True)
        runner = types.SimpleNamespace(
            token_to_kv_pool=_request_window_pool(),
            model_config=model_config,
            mtp_draft_device_pools=(),
            mtp_draft_mamba_pools=(),
            # The builder reads the speculative algorithm for the tree's keys alone
            # (EAGLE bigrams); the checks key the tree by tokens. The draft's need for
            # paged SWA is the pool's needs_paged_swa_allocator above.
            spec_algorithm=spec.NONE,
        )
        worker = types.SimpleNamespace(
            model_runner=runner,
            is_hybrid_swa=True,
            sliding_window_size=window,
            get_tokens_per_layer_info=lambda: (None, None),  # read after the params only
            get_memory_pool=lambda: (req_pool, allocator),
        )

    require(hasattr(kvb, "CacheInitParams"), "kv_cache_builder builds no CacheInitParams of its own")
    real_params = kvb.CacheInitParams

    def capture(*args, **kwargs):
        raise _Captured(real_params(*args, **kwargs))

    standins = {
        "CacheInitParams": capture,
        "get_resolved_model_impl": lambda model_config: None,
        "uses_ssm_state": lambda model_config: False,
        "is_deepseek_dsa": lambda hf_config: True,
        "resolve_decode_retraction_backup": lambda **kwargs: "none",
        "get_parallel": _single_rank_parallel,
        "get_dp_tp_group": lambda: _Group(),
    }
    # get_dp_tp_group: 0.5.22+ (before, the builder takes its process groups as arguments)
    patches = [mock.patch.object(kvb, name, fn) for name, fn in standins.items() if hasattr(kvb, name)]
    kwargs = accepted(
        kvb.build_kv_cache,
        server_args=None, model_config=model_config, tp_worker=worker, page_size=page_size,
        spec_algorithm=spec.NONE, attn_tp_cpu_group=None, tp_cpu_group=None,
        attn_cp_cpu_group=None, enable_metrics=False, enable_kv_cache_events=False,
        tp_group=None, pp_group=_Group(), enable_hierarchical_cache=True,
        hicache_draft_plan=None,
    )
    try:
        with radix.server_args(), contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            kvb.build_kv_cache(**kwargs)
    except _Captured as done:
        return done.params
    except MISFIT as exc:
        raise CannotRun(f"the KV cache builder does not run on the seam's stand-ins "
                        f"({type(exc).__name__}: {exc})") from exc
    raise CannotRun("the KV cache builder built no CacheInitParams")


def target_cache(*, req_pool, allocator, page_size, window, core=None):
    """A FULL+SWA UnifiedRadixCache from the builder's CacheInitParams for a DSV4
    request-window target, on `core` (a name from radix.tree_cores())."""
    params = builder_params(req_pool=req_pool, allocator=allocator, page_size=page_size, window=window)
    require(params.token_to_kv_pool_allocator is allocator and params.sliding_window_size == window,
            "the builder's CacheInitParams do not name the target's SWA allocator and window")
    fields = dict(tree_components=(ComponentType.FULL, ComponentType.SWA), enable_metrics=False,
                  enable_kv_cache_events=False)
    if core is not None and takes(CacheInitParams, "tree_core_backend"):
        fields["tree_core_backend"] = core
    with building("the request-window target's CacheInitParams"):
        params = dataclasses.replace(params, **{k: v for k, v in fields.items()
                                                if k in {f.name for f in dataclasses.fields(params)}})
    return radix.cache_on_core(params, core)
