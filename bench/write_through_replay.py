"""HiCache write-through with SWA: KV lost on device eviction, multi-turn replay.

Replays the same seeded multi-turn conversations (shared system prompts, each
turn = history + user message + answer, SWA window evicted behind the decode
position) through a real FULL+SWA UnifiedRadixCache on CPU pools, with the
in-process HiCache controller of tests/registered/mem_cache/radix_fixtures.py
under write-through, and a device pool much smaller than the working set.
Each side runs in its own subprocess with its PYTHONPATH; both run at once.

Per side it prints:
  lost      tokens evicted from device without a host copy (recomputed later)
  recompute history tokens of a new turn found neither on device nor on host
  reused    history tokens found on device or host
  written   tokens written to host (the price of write-through)

    python bench/write_through_replay.py --vanilla DIR --patched DIR
"""

import argparse
import json
import os
import random
import sys
import time

import sides

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(REPO, "tests", "registered", "mem_cache")


def conversations(args):
    """Seeded turn stream: [(conversation, history_len, tokens, swa_evicted)]."""
    rng = random.Random(args.seed)
    ps = args.page_size

    def chunk(lo, hi):
        n = rng.randint(lo, hi) // ps * ps or ps
        return [rng.randrange(1, 100000) for _ in range(n)]

    systems = [chunk(64, 256) for _ in range(args.system_prompts)]
    histories = [list(rng.choice(systems)) for _ in range(args.conversations)]
    stream = []
    for _ in range(args.turns):
        order = list(range(args.conversations))
        rng.shuffle(order)
        for c in order:
            history = histories[c]
            tokens = history + chunk(16, 128) + chunk(32, 256)
            # Decode released SWA KV behind the window.
            evicted = max(0, (len(tokens) - args.window) // ps * ps)
            stream.append((c, len(history), tokens, evicted))
            histories[c] = tokens
    return stream


def run_side(args):
    sys.path.insert(0, FIXTURES)
    import radix_fixtures as rf

    h = rf.build_tree(
        page_size=args.page_size,
        window=args.window,
        full_size=args.device_tokens,
        swa_size=args.device_swa_tokens,
        max_context_len=8192,
    )
    rf.attach_fake_hicache(
        h,
        write_policy="write_through",
        host_full_size=args.host_tokens,
        host_swa_size=args.host_tokens,
    )
    stats = rf.ServeStats()
    history_tokens = 0
    start = time.perf_counter()
    for c, history_len, tokens, evicted in conversations(args):
        # Scheduler step: the previous step's host copies have landed.
        h.controller.complete_writes()
        h.cache.writing_check()
        before = stats.reusable_tokens
        if rf.serve_request(h, tokens, evicted, stats):
            history_tokens += history_len
        else:
            stats.reusable_tokens = before
    h.controller.complete_writes()
    h.cache.writing_check()
    elapsed = time.perf_counter() - start
    h.assert_healthy()
    print(
        json.dumps(
            {
                "requests": stats.requests,
                "rejected": stats.rejected,
                "lost": stats.lost_tokens,
                "history": history_tokens,
                "reused": stats.reusable_tokens,
                "recompute": history_tokens - stats.reusable_tokens,
                "written": sum(w[1] for w in h.controller.write_log),
                "failed_writes": h.controller.failed_writes,
                "seconds": round(elapsed, 2),
            }
        )
    )


SIZES = {
    "seed": 20261121,
    "conversations": 48,
    "turns": 6,
    "system_prompts": 4,
    "page_size": 16,
    "window": 256,
    "device_tokens": 8192,
    "device_swa_tokens": 4096,
    "host_tokens": 65536,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vanilla", default="build/0.5.12/site/vanilla")
    parser.add_argument("--patched", default="build/0.5.12/site/patched")
    for name, default in SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args)
        return

    procs = {side: sides.start(__file__, getattr(args, side), side, {n: getattr(args, n) for n in SIZES}) for side in ("vanilla", "patched")}
    res = {side: sides.result(side, proc) for side, proc in procs.items()}
    print(
        f"write-through replay: {args.conversations} conversations x {args.turns} "
        f"turns, seed {args.seed}, page {args.page_size}, SWA window "
        f"{args.window}; device {args.device_tokens} full / "
        f"{args.device_swa_tokens} SWA tokens, host {args.host_tokens} tokens"
    )
    cols = ("lost", "recompute", "reused", "history", "written", "rejected")
    print(f"{'side':<8}" + "".join(f"{c:>11}" for c in cols))
    for side in ("vanilla", "patched"):
        print(f"{side:<8}" + "".join(f"{res[side][c]:>11}" for c in cols))
    diff = {c: res["patched"][c] - res["vanilla"][c] for c in cols}
    print(f"{'diff':<8}" + "".join(f"{diff[c]:>+11}" for c in cols))
    print(
        f"tokens lost on eviction: vanilla {res['vanilla']['lost']}, "
        f"patched {res['patched']['lost']} "
        f"(difference {diff['lost']:+}); failed host writes: vanilla "
        f"{res['vanilla']['failed_writes']}, patched "
        f"{res['patched']['failed_writes']}"
    )
    print(
        f"replay time (after import): vanilla {res['vanilla']['seconds']} s, "
        f"patched {res['patched']['seconds']} s"
    )
    if res["patched"]["lost"] != 0:
        sys.exit("patched side lost KV on eviction")


if __name__ == "__main__":
    main()
