"""DeepSeek-V4 HiCache stack of one pipeline stage, on CPU pools.

Stage k of N: the transfer layers are stage-local, while the DSV4 pool keeps
its compress-state pools by global layer id and only for its own layers.
"""

import os
import sys
import unittest

from sglang.test.test_utils import maybe_stub_sgl_kernel

maybe_stub_sgl_kernel()

from sglang.test.ci.ci_register import register_cpu_ci
from sglang.test.test_utils import CustomTestCase

sys.path.insert(0, os.path.dirname(__file__))
from dsv4_pp_fixtures import LayerCountChecks, RoundTripChecks, StatePoolChecks

register_cpu_ci(est_time=60, suite="stage-a-test-cpu")


class TestDSV4HiCachePPLayerCount(LayerCountChecks, CustomTestCase):
    device = "cpu"


class TestDSV4HiCachePPStatePools(StatePoolChecks, CustomTestCase):
    device = "cpu"


class TestDSV4HiCachePPRoundTrip(RoundTripChecks, CustomTestCase):
    device = "cpu"


if __name__ == "__main__":
    unittest.main()
