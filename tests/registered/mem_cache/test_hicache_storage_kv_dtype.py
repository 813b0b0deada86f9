"""HiCache L3 storage: pages stored under one KV cache dtype are never served to a server
running another.

A HiCache storage backend keeps raw page bytes under keys made of the page's prefix hash
and the server's identity (model name, ranks). The KV cache dtype is not part of that
identity (upstream issue #33268): a store written by a server with ``--kv-cache-dtype
bf16`` and reused by the same model with ``fp8_e4m3`` answers the fp8 server's lookup with
the bf16 server's pages, and the fp8 server loads their first bytes as fp8 KV (silent
wrong KV); the other way round the lookup hits as well and the load fails on a short
read. fp8_e4m3 and fp8_e5m2 store as the same number of bytes, so nothing tells them
apart at all.

The checks run the release's own controller and file backend (HiCacheFile, in a
temporary folder): a server backs up a prefix's pages, a server with another KV cache
dtype starts on the same folder and looks the prefix up and loads what it found, and a
server with the first dtype starts again. A server must find exactly the pages its own
dtype stored, with their bytes, and never a page another dtype stored.
"""

import os
import random
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from seam.hicache_storage import storage_server  # noqa: E402

from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from sglang.test.test_utils import CustomTestCase  # noqa: E402

register_cpu_ci(est_time=5, suite="stage-a-test-cpu")

PAGE = 4


def _tokens(n_pages: int, start: int = 1000) -> list:
    return list(range(start, start + n_pages * PAGE))


class TestStorageKeyCarriesKVDtype(CustomTestCase):
    """One prefix, stored by a server with one KV cache dtype, then looked up by a server
    with another on the same store, then by the first dtype again."""

    def _check(self, first: str, second: str, *, mla: bool = False, pages: int = 6):
        tokens = _tokens(pages)
        with tempfile.TemporaryDirectory() as store:
            with storage_server(store, kv_dtype=first, page_size=PAGE, mla=mla) as server:
                stored = [os.urandom(server.page_bytes) for _ in range(pages)]
                self.assertEqual(server.store(tokens, stored), pages * PAGE, f"{first} server backed up the prefix")

            # A restart with the same dtype reuses the store: the keys are stable.
            with storage_server(store, kv_dtype=first, page_size=PAGE, mla=mla) as server:
                hits = server.lookup(tokens)
                self.assertEqual(len(hits), pages, f"a {first} server finds the pages a {first} server stored")
                self.assertEqual(server.load(tokens, hits), stored, f"and loads their bytes")

            with storage_server(store, kv_dtype=second, page_size=PAGE, mla=mla) as server:
                hits = server.lookup(tokens)
                self.assertEqual(
                    len(hits), 0,
                    f"a {second} server's lookup answered {len(hits)} of the {pages} pages a {first} server stored")
                self.assertEqual(server.load(tokens, hits), [])
                # It stores its own pages of the same prefix next to the first dtype's.
                own = [os.urandom(server.page_bytes) for _ in range(pages)]
                self.assertEqual(server.store(tokens, own), pages * PAGE, f"{second} server backed up the prefix")

            for dtype, expected in ((first, stored), (second, own)):
                with storage_server(store, kv_dtype=dtype, page_size=PAGE, mla=mla) as server:
                    hits = server.lookup(tokens)
                    self.assertEqual(len(hits), pages, f"a {dtype} server after both stored the prefix")
                    self.assertEqual(server.load(tokens, hits), expected, f"a {dtype} server loads its own pages")

    def test_fp8_server_does_not_read_bf16_pages(self):
        self._check("bf16", "fp8_e4m3")

    def test_bf16_server_does_not_read_fp8_pages(self):
        self._check("fp8_e4m3", "bf16")

    def test_fp8_variants_do_not_share_pages(self):
        # Both store as one byte per element: the pages are the same size.
        self._check("fp8_e4m3", "fp8_e5m2")

    def test_mla_fp8_server_does_not_read_bf16_pages(self):
        # MLA pages are keyed once for every rank (no TP rank in the key).
        self._check("bf16", "fp8_e4m3", mla=True)


class TestStorageKeyCarriesKVDtypeRandomized(CustomTestCase):
    """Seeded server runs on one store, each with one of the KV cache dtypes, each serving
    requests whose prompts share prefixes: look the prompt up, load what was found,
    back the prompt up. Counted against what each dtype's servers stored."""

    SEED = int(os.environ.get("SGLANG_HICACHE_KV_DTYPE_FUZZ_SEED", "20261208"))
    SEEDS = 5
    RUNS = 6
    REQUESTS = 3

    def _run(self, seed: int) -> dict:
        rng = random.Random(seed)
        mla = rng.random() < 0.5
        dtypes = rng.sample(["bf16", "fp16", "fp8_e4m3", "fp8_e5m2"], rng.choice((2, 3)))
        # Prompts that share a few prefixes (system prompts, turns of one conversation).
        stems = [_tokens(rng.randint(1, 4), start=10_000 * (i + 1)) for i in range(2)]
        prompts = [rng.choice(stems) + _tokens(rng.randint(0, 3), start=rng.randrange(1, 9) * 1000)
                   for _ in range(5)]
        stored = {d: {} for d in dtypes}  # what each dtype's servers stored: page key -> bytes
        counts = {"foreign hits": 0, "missed own pages": 0, "wrong bytes": 0, "raised": 0, "lookups": 0,
                  "lookups of pages another dtype stored": 0, "pages stored": 0}
        with tempfile.TemporaryDirectory() as store:
            for _ in range(self.RUNS):
                dtype = rng.choice(dtypes)
                with storage_server(store, kv_dtype=dtype, page_size=PAGE, mla=mla) as server:
                    for _ in range(self.REQUESTS):
                        tokens = rng.choice(prompts)
                        keys = server.page_hashes(tokens)
                        own = stored[dtype]
                        expected = next((i for i, k in enumerate(keys) if k not in own), len(keys))
                        counts["lookups"] += 1
                        if any(k in stored[d] for d in dtypes if d != dtype for k in keys):
                            counts["lookups of pages another dtype stored"] += 1
                        try:
                            hits = server.lookup(tokens)
                            pages = server.load(tokens, hits)
                        except Exception:  # a load of another dtype's page can fail its read
                            counts["raised"] += 1
                            continue
                        counts["foreign hits"] += max(0, len(hits) - expected)
                        counts["missed own pages"] += max(0, expected - len(hits))
                        counts["wrong bytes"] += sum(
                            1 for k, page in zip(keys, pages) if own.get(k) != page)
                        payloads = [os.urandom(server.page_bytes) for _ in keys]
                        server.store(tokens, payloads)
                        for k, payload in zip(keys, payloads):
                            # A page already in the store is not written again.
                            if k not in own:
                                own[k] = payload
                                counts["pages stored"] += 1
        return counts

    def test_servers_with_other_kv_dtypes_on_one_store(self):
        violations, seen = {}, {}
        for i in range(self.SEEDS):
            seed = self.SEED + i
            counts = self._run(seed)
            for name, n in counts.items():
                seen[name] = seen.get(name, 0) + n
            bad = {k: counts[k] for k in ("foreign hits", "missed own pages", "wrong bytes", "raised") if counts[k]}
            if bad:
                violations[seed] = bad
        self.assertGreater(seen["pages stored"], 0)
        self.assertGreater(seen["lookups of pages another dtype stored"], 0)
        self.assertEqual(violations, {}, f"per seed, what a server got that its own dtype did not store ({seen})")


if __name__ == "__main__":
    unittest.main()
