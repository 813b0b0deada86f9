"""DSV4 SWA write path: full -> SWA translations, torch ops and time per forward batch.

For each mode (extend, decode, spec-v2 target-verify padded for DP attention,
eager multi-step draft decode, IDLE) one forward batch runs what a DSV4 forward
runs for its SWA KV stores, on the vanilla and on the patched build, each side in
processes of its own:

  ForwardBatch.init_new (the real one: it translates out_cache_loc_swa for hybrid-SWA
  models) -> the attention backend's eager init_forward_metadata -> one SWA store
  per layer through MQALayer's fused norm+rope path.

target_verify_dp_padded runs the EAGLE v2 worker's verify step itself
(EAGLEWorkerV2.verify: prepare_for_v2_verify, then TpModelWorker / ModelRunner's
target forward with its MLP-sync padding for DP attention, graphs off), wherever
each side plans the batch's metadata; the model is one SWA store per layer.

The real DeepSeekV4TokenToKVPool, DeepseekV4AttnBackend, ForwardBatch and MQALayer
code runs (built through tests/seam); only GPU kernels are replaced (the fused
FlashMLA store writes rows of the DSV4 row size, 584 bytes; FlashMLA / indexer /
compression planning is skipped; every layer is uncompressed).

Per mode and side:
  translations_per_batch  out-cache location translations (1-D gathers at the
                          pool's mapping) per forward batch, whoever asks;
  ops_per_batch           torch ops dispatched per forward batch (a TorchDispatchMode
                          counter; on a GPU each is a kernel launch), deterministic;
  ms_per_batch            median over the side's processes of each process's best
                          round (rounds of --batches batches), with the spread
                          (min..max of those bests) next to it.
Processes alternate sides (v p p v v p ...), so load from other work on a shared
machine falls on both sides alike. A side that cannot run a mode (vanilla 0.5.12's
eager multi-step draft decode trips an assert) reports the error instead of numbers.

    python bench/swa_translation.py --vanilla DIR --patched DIR [--device cpu]
        [--json build/bench/swa_translation.json]
"""

import argparse
import json
import os
import statistics
import sys

import sides

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODES = ["extend", "decode", "target_verify_dp_padded", "draft_decode_multi_step", "idle"]
ROW_BYTES = 584  # one DSV4 SWA KV row (FP8 nope + BF16 rope + scales)


def run_side(args):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import time

    from sglang.test.test_utils import maybe_stub_sgl_kernel

    maybe_stub_sgl_kernel()
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from seam import dsv4_attention as dsv4

    device = args.device
    torch.manual_seed(0)
    layers = list(range(args.layers))
    stride = 64  # full slots per request in req_to_token
    reqs = args.tokens  # decode: one token per request

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, a=(), kw=None):
            self.ops += 1
            return func(*a, **(kw or {}))

    def make(layer_num, **backend_kw):
        full_pages = (reqs * stride) // dsv4.PAGE_SIZE + 2
        pool = dsv4.make_pool(layer_num=layer_num, swa_pages=full_pages, device=device)
        # One 584-byte row buffer shared by the layers: real write cost, small RAM.
        shared = torch.zeros(full_pages * dsv4.PAGE_SIZE + dsv4.PAGE_SIZE + 1, ROW_BYTES,
                             dtype=torch.uint8, device=device)
        pool.swa_kv_pool.kv_buffer = [shared] * layer_num
        perm = torch.randperm(full_pages - 1).tolist()
        pool.register_mapping(dsv4.paged_mapping(
            full_pages, {p + 1: perm[p] + 1 for p in range(full_pages - 1)},
            dsv4.PAGE_SIZE, device))
        backend = dsv4.make_backend(pool, num_reqs=reqs, max_context=stride,
                                    req_stride=stride, **backend_kw)
        return pool, backend

    def slots(seq_lens, extend_lens):
        return torch.tensor(
            [dsv4.PAGE_SIZE + stride * r + p
             for r, (s, e) in enumerate(zip(seq_lens, extend_lens))
             for p in range(s - e, s)], dtype=torch.int64, device=device)

    def kv_rows(n):
        return torch.randint(0, 255, (n, ROW_BYTES), dtype=torch.uint8, device=device)

    def store_all(fb, kv, layer_ids):
        with dsv4.forward_context(fb.attn_backend):
            for i, layer_id in enumerate(layer_ids):
                dsv4.store_layer(layer_id, fb, kv, in_context=True)
                if i == 0 and not fb.forward_mode.is_idle():
                    # Layer 0's attention forward: full metadata from here on.
                    dsv4.attention_forward_prologue(fb.attn_backend)

    # Each builder returns (setup, one_batch): one_batch runs one forward batch.
    def extend():
        n_req, ext = max(reqs // 8, 1), 8
        pool, backend = make(args.layers)
        seq, ext_l = [40] * n_req, [ext] * n_req
        loc, kv = slots(seq, ext_l), kv_rows(n_req * ext)

        def one():
            fb = dsv4.new_forward_batch(backend, loc, "EXTEND", seq_lens=seq, extend_lens=ext_l)
            dsv4.new_batch_hook(pool)
            dsv4.init_metadata(backend, fb)
            store_all(fb, kv, layers)
        return pool, one

    def decode():
        pool, backend = make(args.layers)
        seq = [41] * reqs
        loc, kv = slots(seq, [1] * reqs), kv_rows(reqs)

        def one():
            fb = dsv4.new_forward_batch(backend, loc, "DECODE", seq_lens=seq)
            dsv4.new_batch_hook(pool)
            dsv4.init_metadata(backend, fb)
            store_all(fb, kv, layers)
        return pool, one

    def target_verify_dp_padded():
        # The EAGLE v2 worker's verify step on attention-DP rank 0, graphs off:
        # prepare_for_v2_verify, then the target forward, whose MLP-sync padding
        # grows the batch to rank 1's (a third more requests).
        n_draft, n_req = 3, max(reqs // 4, 1)
        pool, backend = make(args.layers, topk=1, num_steps=n_draft - 1,
                             num_draft_tokens=n_draft)
        seq = [40] * n_req
        dp_batch_sizes = (n_req, n_req + max(n_req // 3, 1))
        rows = kv_rows(dp_batch_sizes[1] * n_draft)

        def one():
            dsv4.new_batch_hook(pool)
            dsv4.verify_step_under_dp(
                backend, seq_lens=seq, num_draft_tokens=n_draft,
                dp_batch_sizes=dp_batch_sizes, dp_rank=0, layer_ids=layers,
                kv_rows=lambda n: rows[:n])
        return pool, one

    def draft_decode_multi_step():
        topk, steps, n_req = 1, 3, reqs
        pool, _ = make(1)
        backends = dsv4.draft_step_backends(pool, topk=topk, num_steps=steps, num_reqs=n_req,
                                            max_context=stride, req_stride=stride)
        seq = [40] * n_req
        loc = torch.tensor([dsv4.PAGE_SIZE + stride * r + seq[r] + s
                            for r in range(n_req) for s in range(topk * steps)],
                           dtype=torch.int64, device=device)
        rows = dsv4.draft_step_locations(loc, n_req, topk, steps)
        kv = kv_rows(n_req * topk)

        def one():
            fb = dsv4.new_forward_batch(backends[0], loc, "DECODE", seq_lens=seq)
            dsv4.new_batch_hook(pool)
            for b in backends[:-1]:  # DeepseekV4MultiStepBackend.init_forward_metadata
                dsv4.init_metadata(b, fb)
            for i, b in enumerate(backends[:-1]):  # EAGLEWorker.draft_forward
                fb.out_cache_loc, fb.attn_backend = rows[i], b
                store_all(fb, kv, [0])  # the MTP draft model: one layer
        return pool, one, steps - 1  # forward batches per call

    def idle():
        pool, backend = make(args.layers, topk=1, num_steps=1)
        loc = torch.zeros(reqs, dtype=torch.int64, device=device)  # DP padding
        kv = kv_rows(reqs)

        def one():
            fb = dsv4.forward_batch(backend, loc, "IDLE")
            dsv4.new_batch_hook(pool)
            dsv4.init_metadata(backend, fb)  # returns at once with MTP
            store_all(fb, kv, layers)
        return pool, one

    builders = dict(extend=extend, decode=decode,
                    target_verify_dp_padded=target_verify_dp_padded,
                    draft_decode_multi_step=draft_decode_multi_step, idle=idle)
    out = {}
    with dsv4.store_kernels():
        for mode in MODES:
            try:
                built = builders[mode]()
                pool, one = built[0], built[1]
                per_call = built[2] if len(built) > 2 else 1
                for _ in range(args.warmup):
                    one()
                with dsv4.TranslationCounter(pool) as counter:
                    one()
                    translations = counter.out_loc_calls / per_call
                ops = OpCounter()
                with ops:
                    one()
                best = None
                for _ in range(args.rounds):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    for _ in range(args.batches):
                        one()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    ms = 1000.0 * (time.perf_counter() - start) / (args.batches * per_call)
                    best = ms if best is None else min(best, ms)
                out[mode] = {"translations_per_batch": translations,
                             "ops_per_batch": ops.ops / per_call, "ms_per_batch": best}
            except Exception as exc:  # the side cannot run this mode: say why
                out[mode] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    print(json.dumps({
        "side": "patched" if hasattr(dsv4.backend_module().DeepseekV4AttnBackend,
                                     "get_swa_out_cache_loc") else "vanilla",
        "modes": out,
        "device": device if device == "cpu" else f"cuda ({torch.cuda.get_device_name()})",
        "threads": torch.get_num_threads(),
    }))


def summarize(runs):
    """Per mode and side: counts from the first process (deterministic), time as
    the median of the processes' bests with their spread."""
    modes = {}
    for mode in MODES:
        modes[mode] = {}
        for side, side_runs in runs.items():
            results = [r["modes"][mode] for r in side_runs]
            if any("error" in r for r in results):
                modes[mode][side] = {"translations_per_batch": None, "ms_per_batch": None,
                                     "ops_per_batch": None,
                                     "error": next(r["error"] for r in results if "error" in r)}
                continue
            bests = [r["ms_per_batch"] for r in results]
            modes[mode][side] = {
                "translations_per_batch": results[0]["translations_per_batch"],
                "ms_per_batch": round(statistics.median(bests), 4),
                "ops_per_batch": results[0]["ops_per_batch"],
                "ms_spread": [round(min(bests), 4), round(max(bests), 4)],
                "processes": len(bests),
            }
    return modes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vanilla", default="build/0.5.12/site/vanilla")
    parser.add_argument("--patched", default="build/0.5.12/site/patched")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", type=int, default=43)
    parser.add_argument("--tokens", type=int, default=64, help="decode batch size")
    parser.add_argument("--batches", type=int, default=10, help="batches per timed round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per process")
    parser.add_argument("--processes", type=int, default=3,
                        help="processes per side, alternating sides")
    parser.add_argument("--json", default=os.path.join(REPO, "build", "bench", "swa_translation.json"))
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args)
        return

    options = {n: getattr(args, n) for n in ("device", "layers", "tokens", "batches", "warmup", "rounds")}
    runs = {"vanilla": [], "patched": []}
    order = []
    for i in range(args.processes):
        order += ["vanilla", "patched"] if i % 2 == 0 else ["patched", "vanilla"]
    for side in order:
        result = sides.run(__file__, getattr(args, side), side, options)
        if result["side"] != side:
            sys.exit(f"--{side} tree looks {result['side']} (resolver presence)")
        runs[side].append(result)
    modes = summarize(runs)
    first = runs["vanilla"][0]
    report = {
        "modes": modes,
        "setup": dict(options, processes_per_side=args.processes, order=order,
                      device=first["device"], torch_threads=first["threads"]),
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"DSV4 SWA write path: {args.layers} layers, {args.tokens}-token decode batch; "
          f"{args.processes} processes per side ({' '.join(s[0] for s in order)}), "
          f"best of {args.rounds} rounds x {args.batches} batches each; "
          f"device {first['device']}, torch threads {first['threads']}")
    print(f"{'mode':<25} {'side':<8} {'transl/batch':>12} {'ops/batch':>10} "
          f"{'ms/batch':>9}  spread")
    for mode, per_side in modes.items():
        for side in ("vanilla", "patched"):
            r = per_side[side]
            if r.get("error"):
                print(f"{mode:<25} {side:<8} cannot run: {r['error'][:70]}")
                continue
            print(f"{mode:<25} {side:<8} {r['translations_per_batch']:>12.2f} "
                  f"{r['ops_per_batch']:>10.0f} {r['ms_per_batch']:>9.3f}  "
                  f"{r['ms_spread'][0]:.3f}..{r['ms_spread'][1]:.3f}")
    print(f"wrote {os.path.relpath(args.json, REPO)}")


if __name__ == "__main__":
    main()
