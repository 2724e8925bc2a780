"""Convolution with FIR up/down-sampling (NVlabs `conv2d_resample`, groups=1).

The discriminator's down=2 convs use it, and `modulated_conv2d_ref` builds on it.
"""

import torch.nn.functional as F

from .shapes import assert_shape
from .upfirdn2d import filter_size, parse_padding, parse_scaling, upfirdn2d


def _conv(x, w, stride=1, padding=0, transpose=False, flip_weight=True):
    """conv2d is a correlation: flip_weight=False flips w to make it a true convolution."""
    if not flip_weight:
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding)
    return F.conv2d(x, w, stride=stride, padding=padding)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, flip_weight=True, flip_filter=False, impl="auto"):
    """NVlabs `conv2d_resample` (groups=1): conv2d with FIR up/down-sampling by f; padding in input pixels."""
    assert_shape(x, [None, None, None, None], "conv2d_resample: x")
    assert_shape(w, [None, x.shape[1], None, None], "conv2d_resample: w")
    _, _, kh, kw = w.shape
    fw, fh = filter_size(f, "conv2d_resample: f")
    up, _ = parse_scaling(up, "conv2d_resample: up")  # NVlabs: the same factor on both axes
    down, _ = parse_scaling(down, "conv2d_resample: down")
    px0, px1, py0, py1 = parse_padding(padding, "conv2d_resample: padding")

    # Move the padding to where the filter keeps the image centred.
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2

    if kw == 1 and kh == 1 and down > 1 and up == 1:  # 1x1 downsampling: downsample first, then convolve
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter, impl=impl)
        return _conv(x, w, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:  # 1x1 upsampling: convolve first, then upsample
        x = _conv(x, w, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up**2, flip_filter=flip_filter, impl=impl)
    if down > 1 and up == 1:  # downsampling only: filter, then strided conv
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter, impl=impl)
        return _conv(x, w, stride=down, flip_weight=flip_weight)
    if up > 1:  # upsampling: transposed strided conv, then filter
        w = w.transpose(0, 1)
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(
            x,
            f,
            padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt],
            gain=up**2,
            flip_filter=flip_filter,
            impl=impl,
        )
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl=impl)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:  # plain conv
        return _conv(x, w, padding=[py0, px0], flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1], impl=impl)  # asymmetric or negative padding
    x = _conv(x, w, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl=impl)
    return x
