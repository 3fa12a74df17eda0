"""Each linear candidate's kernel reproduces the op module itself."""

import pytest
import torch
import torch.nn.functional as F

from naslora_deploy.core.adapters.config import OP_NAMES
from naslora_deploy.core.adapters.ops import OP_SPECS, build_op, common_span, linear_op_kernel


@pytest.mark.parametrize("name", [n for n in OP_NAMES if OP_SPECS[n].linear])
def test_kernel_equals_op(name):
    torch.manual_seed(0)
    channels = 3
    op = build_op(name, channels).double()
    code = torch.randn(2, channels, 11, 13, dtype=torch.float64)
    span = common_span(OP_NAMES)
    kernel = linear_op_kernel(name, op, channels, span, code)
    assert kernel.shape == (channels, channels, span, span)
    expected = op(code)
    got = F.conv2d(code, kernel, padding=span // 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_spans():
    assert common_span(OP_NAMES) == 9  # 5x5 at dilation 2
    assert common_span(["sep_conv_3x3", "skip_connect"]) == 3
    assert common_span(["skip_connect", "none", "max_pool_3x3"]) == 1
    assert OP_SPECS["dil_conv_3x3"].span == 5
