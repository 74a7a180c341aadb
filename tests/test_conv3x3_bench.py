"""benchmarks/conv3x3.py: both sides compute the same convolution and gradients (a twin with
another padding, stride or weight layout would be timed against different work)."""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import conv3x3  # noqa: E402


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy() if t.dim() == 4 else t.numpy()


@pytest.mark.parametrize("stride", [1, 2])
def test_xla_and_torch_sides_agree(stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)   # odd size: stride-2 padding
    w = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
    for part in ("fwd", "dx", "dw", "all"):
        ours = conv3x3.xla_side(x, w, stride, {}, part)()
        theirs = conv3x3.torch_side(x, w, stride, part)()
        if part == "all":
            np.testing.assert_allclose(ours[0], _nhwc(theirs[0]), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ours[1], theirs[1].permute(2, 3, 1, 0).numpy(),
                                       rtol=1e-4, atol=1e-5)
        elif part == "dw":
            np.testing.assert_allclose(ours, theirs.permute(2, 3, 1, 0).numpy(), rtol=1e-4,
                                       atol=1e-5, err_msg=part)
        else:
            np.testing.assert_allclose(ours, _nhwc(theirs), rtol=1e-4, atol=1e-5, err_msg=part)
    assert conv3x3.flops(56, 64, 64, 1, 16, "fwd") == 2.0 * 16 * 56 * 56 * 9 * 64 * 64
    assert conv3x3.flops(56, 128, 128, 2, 16, "all") == 3 * 2.0 * 16 * 28 * 28 * 9 * 128 * 128
