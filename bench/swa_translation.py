"""DSV4 SWA KV write path: full -> SWA translations and time per forward batch.

Runs the same DSV4-shaped batch (many SWA layers, a decode batch of a few
hundred tokens) on the vanilla and the patched tree, each in its own
subprocess with its PYTHONPATH, and prints for both sides the translations of
out-cache locations per forward batch and the time per batch, and the ratio.

Per batch, each side does what it does in a real forward:
  vanilla: one SWA store per layer through DeepseekV4's fused norm+rope path
           (the pool translates at its start_layer and reuses the result);
  patched: the backend's metadata-time translation, then one store per layer
           whose locations come from the backend's resolver.
The real DeepSeekV4TokenToKVPool, DeepseekV4AttnBackend methods and MQALayer
store code run; the fused FlashMLA store kernel is replaced by a plain row
write of the DSV4 row size (584 bytes), on CPU and on CUDA alike, so both
sides pay the same write and differ only in how locations are obtained.

    python bench/swa_translation.py --vanilla DIR --patched DIR [--device cpu]
"""

import argparse
import json
import os
import sys

import sides

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(REPO, "tests", "registered", "attention")


def run_side(args):
    sys.path.insert(0, FIXTURES)
    import time

    import torch
    from dsv4_swa_translation_fixtures import (
        BACKEND_PAGE_SIZE,
        TranslationCounter,
        cpu_store_kernels,
        forward_batch,
        make_backend,
        make_pool,
        paged_mapping,
        store_via_model,
    )

    from sglang.srt.layers.attention.deepseek_v4_backend import DSV4Metadata
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    device = args.device
    torch.manual_seed(0)
    full_pages = args.tokens // BACKEND_PAGE_SIZE + 2
    pool = make_pool(
        page_size=BACKEND_PAGE_SIZE,
        layer_num=args.layers,
        swa_pages=full_pages,
        device=device,
    )
    # DSV4 rows are 584 bytes; store them as such so the write cost is real.
    for i, buf in enumerate(pool.swa_kv_pool.kv_buffer):
        pool.swa_kv_pool.kv_buffer[i] = torch.zeros(
            buf.shape[0], 584, dtype=torch.uint8, device=device
        )
    perm = torch.randperm(full_pages - 1).tolist()
    pool.register_mapping(
        paged_mapping(
            full_pages,
            {p + 1: perm[p] + 1 for p in range(full_pages - 1)},
            BACKEND_PAGE_SIZE,
            device,
        )
    )
    backend = make_backend(pool)
    patched = hasattr(backend, "get_swa_out_cache_loc")
    kv = torch.randint(0, 255, (args.tokens, 584), dtype=torch.uint8, device=device)
    counter = TranslationCounter(pool)

    def new_out_loc():
        # Decode: one fresh slot per request, anywhere in the full pool.
        return torch.randperm(args.tokens * 2, device=device)[: args.tokens] + (
            BACKEND_PAGE_SIZE
        )

    def one_batch(out_loc):
        fb = forward_batch(backend, out_loc, ForwardMode.DECODE)
        if patched:
            # What metadata build adds for the SWA writes: one translation.
            core = type("Core", (), {})()
            core.swa_out_loc = backend.translate_out_loc_for_metadata(out_loc)
            backend.forward_metadata = DSV4Metadata(core, None)
        else:
            hook = getattr(pool, "invalidate_loc_cache", None)
            if hook is not None:
                hook()
        for layer_id in range(args.layers):
            store_via_model(layer_id, fb, kv)

    locs = [new_out_loc() for _ in range(args.batches)]
    round_ms = []
    with cpu_store_kernels():
        for out_loc in locs[: args.warmup]:
            one_batch(out_loc)
        counter.reset()
        for _ in range(args.rounds):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for out_loc in locs:
                one_batch(out_loc)
            if device == "cuda":
                torch.cuda.synchronize()
            round_ms.append(1000.0 * (time.perf_counter() - start) / len(locs))
    print(
        json.dumps(
            {
                "side": "patched" if patched else "vanilla",
                "translations_per_batch": counter.out_loc_calls
                / (len(locs) * args.rounds),
                "ms_per_batch": sorted(round_ms)[len(round_ms) // 2],
                "device": device
                if device == "cpu"
                else f"cuda ({torch.cuda.get_device_name()})",
                "threads": torch.get_num_threads(),
            }
        )
    )


def _run_side(args, side):
    options = {name: getattr(args, name) for name in ("device", "layers", "tokens", "batches", "warmup", "rounds")}
    return sides.run(__file__, getattr(args, side), side, options)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vanilla", default="build/0.5.12/site/vanilla")
    parser.add_argument("--patched", default="build/0.5.12/site/patched")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", type=int, default=43)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per run")
    parser.add_argument(
        "--passes",
        type=int,
        default=2,
        help="runs per side, alternating sides to spread machine load",
    )
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args)
        return

    runs = {"vanilla": [], "patched": []}
    for _ in range(args.passes):
        for side in ("vanilla", "patched"):
            runs[side].append(_run_side(args, side))
    # Fastest run per side: the least disturbed by other load on the machine.
    v = min(runs["vanilla"], key=lambda r: r["ms_per_batch"])
    p = min(runs["patched"], key=lambda r: r["ms_per_batch"])
    for name, r in (("vanilla", v), ("patched", p)):
        if r["side"] != name:
            sys.exit(f"--{name} tree looks {r['side']} (resolver presence)")
    print(
        f"DSV4 SWA write path: {args.layers} SWA layers, decode batch of "
        f"{args.tokens} tokens, {args.batches} batches x {args.rounds} rounds, "
        f"best of {args.passes} runs per side; device {v['device']}, "
        f"torch threads {v['threads']}"
    )
    print(f"{'side':<8} {'translations/batch':>19} {'ms/batch':>10}")
    for name, r in (("vanilla", v), ("patched", p)):
        print(
            f"{name:<8} {r['translations_per_batch']:>19.2f} {r['ms_per_batch']:>10.3f}"
        )
    ratio = p["ms_per_batch"] / v["ms_per_batch"]
    print(
        f"patched/vanilla time ratio: {ratio:.3f} "
        f"(difference {p['ms_per_batch'] - v['ms_per_batch']:+.3f} ms/batch)"
    )


if __name__ == "__main__":
    main()
