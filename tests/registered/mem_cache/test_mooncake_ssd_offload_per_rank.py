"""HiCache L3 on Mooncake with SSD offload: every rank keeps its own offload directory.

Each scheduler rank embeds its own Mooncake client, and each client keeps its SSD tier as
bucket files in its offload directory. Bucket ids are per process, and a client that finds
buckets resumes after the largest id it scanned at startup, so ranks of one server that
share a directory pick the same ids after a restart; bucket files are opened with
O_CREAT|O_TRUNC, so one rank's write truncates another rank's bucket and that rank's next
read returns the other rank's bytes: wrong KV served from L3, with no error (upstream
#31926). With the fix, the store gives every rank a private directory under the configured
``ssd_offload_path`` (``rank_<dp>_<tp>_<pp>_<attn_cp>``), created before setup.

The checks drive the release's own MooncakeStore per rank, configured the ways a user
does (``--hicache-storage-backend-extra-config``, the MOONCAKE_* environment, the config
file), with the storage config the release's HiCacheController derives for that rank;
only the mooncake client is stood in (tests/seam/mooncake_l3.py).
"""

import os
import random
import tempfile
import unittest

import torch
from seam import mooncake_l3 as l3
from sglang.test.ci.ci_register import register_cpu_ci
from sglang.test.test_utils import CustomTestCase

register_cpu_ci(est_time=10, suite="stage-a-test-cpu")


def _keys(rng: random.Random, n: int) -> list:
    return [f"{rng.getrandbits(64):016x}" for _ in range(n)]


class _L3Case(CustomTestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.base = os.path.join(self._tmp.name, "ssd")
        os.makedirs(self.base)

    def tearDown(self):
        self._tmp.cleanup()

    def _round(self, ranks, rng, gen, batches_per_rank, written):
        """Each rank backs up its own batches (interleaved at random), then every page
        written in this server start is read back by the rank that wrote it. Returns the
        violations: pages read back with other bytes, failed reads, failed backups."""
        order = [r for r in ranks for _ in range(batches_per_rank)]
        rng.shuffle(order)
        bad = {"wrong_bytes": 0, "read_failed": 0, "backup_failed": 0}
        mine = {id(r): [] for r in ranks}
        for rank in order:
            n = rng.randint(1, 4)
            keys, pages = _keys(rng, n), rank.random_pages(gen, n)
            ok = rank.backup(keys, pages)
            bad["backup_failed"] += ok.count(False)
            mine[id(rank)] += list(zip(keys, pages))
        for rank in ranks:
            pairs = mine[id(rank)]
            got = rank.prefetch([k for k, _ in pairs])
            for (key, page), back in zip(pairs, got):
                if back is None:
                    bad["read_failed"] += 1
                elif not torch.equal(back, page):
                    bad["wrong_bytes"] += 1
            written[0] += len(pairs)
        return {k: v for k, v in bad.items() if v}


class TestSSDOffloadDirectoryPerRank(_L3Case):
    def _assert_private_dirs(self, ranks, how=""):
        dirs = [r.offload_dir for r in ranks]
        self.assertNotIn(None, dirs, f"{how}a rank's Mooncake client was set up without SSD offload")
        base = os.path.realpath(self.base)
        # named under the configured path, so the message is the same on every run
        named = [os.path.normpath(os.path.join("<ssd_offload_path>", os.path.relpath(os.path.realpath(d), base))) for d in dirs]
        self.assertEqual(len(set(dirs)), len(ranks), f"{how}ranks share an SSD offload directory: {named}")
        for d in dirs:
            self.assertEqual(os.path.commonpath([os.path.realpath(d), base]), base,
                             f"{how}{d} is not under the configured ssd_offload_path {base}")

    def test_tp_ranks_resolve_distinct_directories(self):
        # configured through the extra config, the MOONCAKE_* environment, the config file
        for source in ("extra_config", "env", "file"):
            with l3.deployment(self._tmp.name) as dep:
                ranks = dep.start(l3.tp_ranks(2), ssd_offload_path=self.base, source=source)
                self._assert_private_dirs(ranks, f"SSD offload set through {source}: ")

    def test_dp_attention_ranks_resolve_distinct_directories(self):
        # DP attention with attention TP 1: every DP rank's attention TP rank is 0.
        with l3.deployment(self._tmp.name) as dep:
            ranks = dep.start(l3.dp_attention_ranks(2), ssd_offload_path=self.base)
            self._assert_private_dirs(ranks)

    def test_restarted_tp_ranks_keep_their_own_buckets(self):
        rng, gen = random.Random(7), torch.Generator().manual_seed(7)
        with l3.deployment(self._tmp.name) as dep:
            for start in range(2):
                ranks = dep.start(l3.tp_ranks(2), ssd_offload_path=self.base)
                r0, r1 = ranks
                k0, p0 = _keys(rng, 3), r0.random_pages(gen, 3)
                k1, p1 = _keys(rng, 3), r1.random_pages(gen, 3)
                self.assertEqual(r0.backup(k0, p0), [True] * 3)
                self.assertEqual(r1.backup(k1, p1), [True] * 3)
                shared = set(r0.bucket_files) & set(r1.bucket_files)
                self.assertEqual(shared, set(), f"server start {start}: both ranks wrote bucket files {sorted(shared)}")
                for rank, keys, pages in ((r0, k0, p0), (r1, k1, p1)):
                    back = rank.prefetch(keys)
                    self.assertNotIn(None, back, f"server start {start}: TP{rank.spec.tp_rank} could not read its pages")
                    for i, (page, got) in enumerate(zip(pages, back)):
                        self.assertTrue(torch.equal(page, got),
                                        f"server start {start}: TP{rank.spec.tp_rank} page {i} came back with other bytes")


class TestSSDOffloadPerRankRandomized(_L3Case):
    """Seeded server starts (1 to 3 restarts), TP 2 to 4 or DP attention (2 DP ranks,
    attention TP 1 or 2), SSD offload set through each config source in turn, random batch
    interleavings; counts the pages each rank cannot read back as it wrote them."""

    SEED = int(os.environ.get("SGLANG_MOONCAKE_L3_FUZZ_SEED", "20261207"))
    SEEDS = 6
    SOURCES = ("extra_config", "env", "file")

    def test_randomized(self):
        totals, reports, starts, written = {}, [], 0, [0]
        for i, seed in enumerate(range(self.SEED, self.SEED + self.SEEDS)):
            rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
            with tempfile.TemporaryDirectory() as work:
                base = os.path.join(work, "ssd")
                os.makedirs(base)
                with l3.deployment(work) as dep:
                    if i % 2 == 0:
                        specs = l3.tp_ranks(rng.randint(2, 4))
                    else:
                        specs = l3.dp_attention_ranks(2, attn_tp_size=rng.randint(1, 2))
                    source = self.SOURCES[i % len(self.SOURCES)]
                    for start in range(rng.randint(2, 4)):
                        ranks = dep.start(specs, ssd_offload_path=base, source=source)
                        starts += 1
                        n = [0]
                        bad = self._round(ranks, rng, gen, rng.randint(1, 3), n)
                        written[0] += n[0]
                        for k, v in bad.items():
                            totals[k] = totals.get(k, 0) + v
                        kind = "dp-attention" if specs[0].dp_attention else "tp"
                        reports.append(f"seed={seed} {kind} ranks={len(specs)} source={source} start={start} "
                                       f"pages={n[0]} {bad}")
        report = f"seeds={self.SEEDS} server_starts={starts} pages={written[0]} violations={totals}"
        print(report)
        self.assertEqual(totals, {}, report + "\n" + "\n".join(reports))
        self.assertGreater(starts, self.SEEDS, report)
        self.assertGreater(written[0], starts * 2, report)


if __name__ == "__main__":
    unittest.main()
