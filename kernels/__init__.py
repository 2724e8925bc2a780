"""Ops with a PyTorch reference and a Triton fast path; `impl="auto"|"torch"|"triton"` picks one."""

from ._dispatch import report
from .bias_act import bias_act
from .conv2d_resample import conv2d_resample
from .modconv import modulated_conv2d
from .upfirdn2d import downsample2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "bias_act",
    "conv2d_resample",
    "downsample2d",
    "modulated_conv2d",
    "report",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]
