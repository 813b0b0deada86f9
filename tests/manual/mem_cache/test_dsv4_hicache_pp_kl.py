"""DeepSeek-V4 with HiCache on two pipeline stages: multi-turn KL check.

A server with --pp-size 2 and the hierarchical cache on the unified radix
tree. The device KV pool is kept smaller than the conversation history, so
later turns find part of their prefix only on the host and load it back on
both stages, the compressor states of the second stage included. Decode-time
logprobs are then compared with a cold prefill of the same tokens (mean of
(exp(r) - 1) - r per token below 0.005).

Needs:
  SGLANG_SERIES_DSV4_MODEL  path of a DeepSeek-V4 checkpoint (e.g. DeepSeek-V4-Flash-FP8)
  SGLANG_SERIES_GPUS        GPUs to use, an even number >= 2 (tp = GPUS / 2, pp = 2)
Optional:
  SGLANG_SERIES_DSV4_MAX_TOTAL_TOKENS  device KV tokens (default 16384)

Before the series, stage 2 of 2 fails at start-up with
"deepseek_v4_c4_state state_pools must not contain None".
"""

import os
import unittest

import torch

from sglang.srt.utils import kill_process_tree
from sglang.srt.utils.hf_transformers_utils import get_tokenizer
from sglang.test.kl_multiturn_utils import (
    test_input_output_logprobs_match_decode_cache_hit_helper as decode_cache_hit_kl,
)
from sglang.test.kl_multiturn_utils import (
    test_input_output_logprobs_match_prefill_cache_hit_helper as prefill_cache_hit_kl,
)
from sglang.test.test_utils import (
    DEFAULT_URL_FOR_TEST,
    CustomTestCase,
    popen_launch_server,
)

MODEL = os.environ.get("SGLANG_SERIES_DSV4_MODEL", "")
GPUS = int(os.environ.get("SGLANG_SERIES_GPUS", "0") or 0)
MAX_TOTAL_TOKENS = int(os.environ.get("SGLANG_SERIES_DSV4_MAX_TOTAL_TOKENS", "16384"))

KL_THRESHOLD = 0.005
DSV4_PAGE_SIZE = 256
NUM_SAMPLES = 12
MAX_NEW_TOKENS = 128
LAUNCH_TIMEOUT = 3600


def _skip_reason():
    if not MODEL or not os.path.exists(MODEL):
        return "set SGLANG_SERIES_DSV4_MODEL to a local DeepSeek-V4 checkpoint"
    if GPUS < 2 or GPUS % 2:
        return "set SGLANG_SERIES_GPUS to an even number >= 2 (two pipeline stages)"
    if torch.cuda.device_count() < GPUS:
        return f"needs {GPUS} CUDA devices, found {torch.cuda.device_count()}"
    return None


def _assert_dsv4_decode_cached_tokens(result, history_len, output_len, label):
    # The radix tree caches whole 256-token pages; the last partial page of
    # the history may be recomputed.
    expected = history_len + output_len
    actual = result["meta_info"]["cached_tokens"]
    lower = max(0, expected - DSV4_PAGE_SIZE)
    assert actual >= lower, f"{label}: expected cached_tokens>={lower}, got {actual}"


def _assert_dsv4_prefill_cached_tokens(result, prefix_len, label):
    actual = result["meta_info"]["cached_tokens"]
    lower = (prefix_len // DSV4_PAGE_SIZE) * DSV4_PAGE_SIZE - DSV4_PAGE_SIZE
    assert lower <= actual <= prefix_len, (
        f"{label}: expected cached_tokens in [{lower}, {prefix_len}], got {actual}"
    )


def _prompts(tokenizer, num_samples):
    """Distinct long prompts cut from the packaged long_prompt.txt (no download)."""
    import sglang.test

    path = os.path.join(os.path.dirname(sglang.test.__file__), "long_prompt.txt")
    with open(path) as f:
        tokens = tokenizer.encode(f.read())
    prompts = []
    for i in range(num_samples):
        length = 1200 + (i * 173) % 1600
        offset = (i * 397) % (len(tokens) - length)
        prompts.append(tokens[offset : offset + length])
    return prompts


SKIP_REASON = _skip_reason()


@unittest.skipIf(SKIP_REASON is not None, SKIP_REASON or "")
class TestDSV4HiCachePipelineParallelKL(CustomTestCase):
    @classmethod
    def setUpClass(cls):
        cls.base_url = DEFAULT_URL_FOR_TEST
        cls.process = popen_launch_server(
            MODEL,
            cls.base_url,
            timeout=LAUNCH_TIMEOUT,
            other_args=[
                "--trust-remote-code",
                "--tp-size",
                str(GPUS // 2),
                "--pp-size",
                "2",
                "--page-size",
                str(DSV4_PAGE_SIZE),
                "--enable-hierarchical-cache",
                "--hicache-ratio",
                "4",
                "--hicache-write-policy",
                "write_through",
                "--hicache-io-backend",
                "direct",
                "--hicache-mem-layout",
                "layer_first",
                "--max-total-tokens",
                str(MAX_TOTAL_TOKENS),
                "--max-running-requests",
                "4",
            ],
            # 0.5.12 attaches HiCache to DSV4 pools only on the unified tree.
            env={"SGLANG_ENABLE_UNIFIED_RADIX_TREE": "1"},
        )
        cls.tokenizer = get_tokenizer(MODEL, trust_remote_code=True)
        cls.input_ids = _prompts(cls.tokenizer, NUM_SAMPLES)
        cls.suffix = cls.tokenizer.encode(" Please continue.", add_special_tokens=False)

    @classmethod
    def tearDownClass(cls):
        kill_process_tree(cls.process.pid)

    def _assert_history_exceeds_device_pool(self, turns):
        # Otherwise every hit could be served from the device and the host
        # path (and the second stage's state pools) would go untested.
        history = sum(len(p) for p in self.input_ids) + turns * NUM_SAMPLES * (
            MAX_NEW_TOKENS + len(self.suffix)
        )
        self.assertGreater(history, MAX_TOTAL_TOKENS)

    def test_multiturn_decode_cache_hit(self):
        turn_suffixes = [[self.suffix] * NUM_SAMPLES for _ in range(2)]
        self._assert_history_exceeds_device_pool(turns=len(turn_suffixes) + 1)
        decode_cache_hit_kl(
            self.base_url,
            MODEL,
            KL_THRESHOLD,
            self.input_ids,
            turn_suffixes=turn_suffixes,
            label="dsv4_pp2_hicache_decode_hit",
            max_new_tokens=MAX_NEW_TOKENS,
            assert_decode_cached_tokens=_assert_dsv4_decode_cached_tokens,
            sampling_temperature=0,
        )

    def test_multiturn_prefill_cache_hit(self):
        # Seed with prefixes, then ask with longer inputs sharing them.
        prefixes = [p[: len(p) // 2] for p in self.input_ids]
        turn_suffixes = [[self.suffix] * NUM_SAMPLES]
        self._assert_history_exceeds_device_pool(turns=len(turn_suffixes) + 1)
        prefill_cache_hit_kl(
            self.base_url,
            MODEL,
            KL_THRESHOLD,
            prefix_input_ids=prefixes,
            full_input_ids=self.input_ids,
            turn_suffixes=turn_suffixes,
            label="dsv4_pp2_hicache_prefill_hit",
            max_new_tokens=MAX_NEW_TOKENS,
            assert_prefill_cached_tokens=_assert_dsv4_prefill_cached_tokens,
            assert_decode_cached_tokens=_assert_dsv4_decode_cached_tokens,
            sampling_temperature=0,
        )


if __name__ == "__main__":
    unittest.main()
