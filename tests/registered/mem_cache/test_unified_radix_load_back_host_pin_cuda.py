"""HiCache load-back loads the KV it matched (upstream #27444), with the GPU's copies.

test_unified_radix_load_back_host_pin.py::TestLoadBackLoadsItsOwnKV on a GPU: device
pools on CUDA and pinned host pools that hold each token's id as its K and V, the
release's HybridCacheController copying on its own CUDA streams with its kernels.
Prefixes a and c went to host in that order and b fills the device; a request hits
a, and its load-back's eviction writes b back, which needs SWA host pages. Without
the host pin, host eviction frees a's pages and b's backup is copied into them
before a's load reads them: a's slots on the GPU get b's tokens (then committing the
load crashes). With the pin, c makes room and a's own tokens are loaded.
"""

import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.dirname(__file__))

import radix_fixtures as rf  # noqa: E402
from sglang.test.ci.ci_register import register_cuda_ci  # noqa: E402
from test_unified_radix_load_back_host_pin import LoadBackDataChecks  # noqa: E402

register_cuda_ci(est_time=30, suite="stage-b-test-small-1-gpu")

NEEDS_CUDA = "needs a CUDA device: the load-back's host->device copy runs on the GPU's load stream"


@unittest.skipUnless(torch.cuda.is_available(), NEEDS_CUDA)
class TestLoadBackHostPinCUDA(LoadBackDataChecks, rf.RadixTestCase):
    device = "cuda"


if __name__ == "__main__":
    unittest.main()
