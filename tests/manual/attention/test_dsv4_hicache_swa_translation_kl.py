"""End-to-end: DSV4 with HiCache, multi-turn, decode logprobs vs prefill replay.

The server runs with a small device KV pool and HiCache on, so the turns'
prefixes are evicted to host memory and loaded back between turns (each
load-back rewrites the full -> SWA mapping). If an SWA KV write used a
translation made for another batch or an old mapping, decode-time logprobs
drift from a clean prefill replay of the same tokens; the mean per-token
KL estimate must stay below 0.005 (upstream's threshold for DSV4-Flash-FP8).
The MTP variants add speculative decoding (target-verify and multi-step draft
stores), with CUDA graphs and eager (--disable-cuda-graph).

Environment:
  SGLANG_SERIES_DSV4_MODEL  model path or id of a DeepSeek-V4 checkpoint
  SGLANG_SERIES_GPUS        GPUs to use (tensor parallel size), default 8
"""

import os
import random
import unittest

from sglang.srt.utils import kill_process_tree
# Module import: its test_* helpers must not be collected as tests here.
from sglang.test import kl_multiturn_utils
from sglang.test.test_utils import (
    DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
    DEFAULT_URL_FOR_TEST,
    CustomTestCase,
    popen_launch_server,
)

MODEL = os.environ.get("SGLANG_SERIES_DSV4_MODEL")
GPUS = int(os.environ.get("SGLANG_SERIES_GPUS", "8"))
KL_THRESHOLD = 0.005

NUM_SAMPLES = 16
PROMPT_TOKENS = 3000
SUFFIX_TOKENS = 64
NUM_EXTRA_TURNS = 3
MAX_NEW_TOKENS = 128


def _prompts(tokenizer, rng):
    """Distinct long prompts from the text shipped with sglang.test, so the
    test needs no dataset download."""
    import sglang.test

    path = os.path.join(os.path.dirname(sglang.test.__file__), "long_prompt.txt")
    with open(path) as f:
        tokens = tokenizer.encode(f.read(), add_special_tokens=False)
    assert len(tokens) > PROMPT_TOKENS + NUM_SAMPLES, "long_prompt.txt too short"
    prompts = []
    for i in range(NUM_SAMPLES):
        start = rng.randrange(0, len(tokens) - PROMPT_TOKENS)
        length = rng.randrange(PROMPT_TOKENS // 2, PROMPT_TOKENS)
        # A distinct lead token per sample keeps the radix prefixes apart.
        prompts.append([tokens[i]] + tokens[start : start + length])
    return prompts


@unittest.skipUnless(MODEL, "set SGLANG_SERIES_DSV4_MODEL to a DeepSeek-V4 model")
class TestDSV4HiCacheSWATranslationKL(CustomTestCase):
    # Extra server flags of a variant (MTP, eager).
    extra_args: list = []

    @classmethod
    def setUpClass(cls):
        import torch
        from transformers import AutoTokenizer

        if torch.cuda.device_count() < GPUS:
            raise unittest.SkipTest(
                f"needs {GPUS} GPUs (SGLANG_SERIES_GPUS), "
                f"found {torch.cuda.device_count()}"
            )
        cls.model = MODEL
        cls.base_url = DEFAULT_URL_FOR_TEST
        cls.tokenizer = AutoTokenizer.from_pretrained(MODEL, trust_remote_code=True)
        rng = random.Random(0)
        cls.input_ids = _prompts(cls.tokenizer, rng)
        vocab = cls.tokenizer.vocab_size
        cls.turn_suffixes = [
            [
                [rng.randrange(1000, vocab - 1) for _ in range(SUFFIX_TOKENS)]
                for _ in range(NUM_SAMPLES)
            ]
            for _ in range(NUM_EXTRA_TURNS)
        ]
        cls.process = popen_launch_server(
            cls.model,
            cls.base_url,
            timeout=DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
            other_args=[
                "--trust-remote-code",
                "--tp",
                str(GPUS),
                "--enable-hierarchical-cache",
                "--hicache-ratio",
                "4",
                "--hicache-write-policy",
                "write_through",
                # Small device pool: turns evict to host and load back.
                "--max-total-tokens",
                str(NUM_SAMPLES * PROMPT_TOKENS // 2),
                "--max-running-requests",
                str(NUM_SAMPLES // 2),
                *cls.extra_args,
            ],
        )

    @classmethod
    def tearDownClass(cls):
        kill_process_tree(cls.process.pid)

    def test_multiturn_logprobs_match(self):
        kl_multiturn_utils.test_input_output_logprobs_match_helper(
            self.base_url,
            self.model,
            KL_THRESHOLD,
            self.input_ids,
            label="dsv4_hicache_multiturn",
            max_new_tokens=MAX_NEW_TOKENS,
            turn_suffixes=self.turn_suffixes,
            replay_batch_size=4,
        )

    def test_prefill_cache_hit_multiturn_logprobs_match(self):
        kl_multiturn_utils.test_input_output_logprobs_match_prefill_cache_hit_helper(
            self.base_url,
            self.model,
            KL_THRESHOLD,
            self.input_ids,
            label="dsv4_hicache_prefill_hit",
            max_new_tokens=MAX_NEW_TOKENS,
            turn_suffixes=self.turn_suffixes[:2],
            replay_batch_size=4,
        )


# MTP (the checkpoint's NextN layer as EAGLE draft): target-verify and the
# multi-step draft decode write SWA KV too, each through its own translation.
MTP_ARGS = [
    "--speculative-algorithm",
    "EAGLE",
    "--speculative-num-steps",
    "3",
    "--speculative-eagle-topk",
    "1",
    "--speculative-num-draft-tokens",
    "4",
]


class TestDSV4HiCacheSWATranslationKLMTP(TestDSV4HiCacheSWATranslationKL):
    extra_args = MTP_ARGS


class TestDSV4HiCacheSWATranslationKLMTPEager(TestDSV4HiCacheSWATranslationKL):
    # Without CUDA graphs every draft decode is the eager multi-step path
    # (#26239: it crashed in metadata init on 0.5.12).
    extra_args = MTP_ARGS + ["--disable-cuda-graph"]


if __name__ == "__main__":
    unittest.main()
