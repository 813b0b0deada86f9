"""DeepSeek-V4 HiCache stack of one pipeline stage, on CUDA pools.

The same checks as test_dsv4_hicache_pp_stack.py, with the device pools on
the GPU, pinned host pools and sgl_kernel's real transfer_kv_direct.
"""

import os
import sys
import unittest

import torch

from sglang.test.test_utils import maybe_stub_sgl_kernel

maybe_stub_sgl_kernel()

from sglang.test.ci.ci_register import register_cuda_ci
from sglang.test.test_utils import CustomTestCase

sys.path.insert(0, os.path.dirname(__file__))
from dsv4_pp_fixtures import LayerCountChecks, RoundTripChecks, StatePoolChecks

register_cuda_ci(est_time=60, suite="stage-b-test-small-1-gpu")

NEEDS_CUDA = "needs a CUDA device: the pools and host copies run on the GPU"


@unittest.skipUnless(torch.cuda.is_available(), NEEDS_CUDA)
class TestDSV4HiCachePPLayerCountCUDA(LayerCountChecks, CustomTestCase):
    device = "cuda"


@unittest.skipUnless(torch.cuda.is_available(), NEEDS_CUDA)
class TestDSV4HiCachePPStatePoolsCUDA(StatePoolChecks, CustomTestCase):
    device = "cuda"


@unittest.skipUnless(torch.cuda.is_available(), NEEDS_CUDA)
class TestDSV4HiCachePPRoundTripCUDA(RoundTripChecks, CustomTestCase):
    device = "cuda"


if __name__ == "__main__":
    unittest.main()
