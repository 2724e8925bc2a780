"""FIR resampling: upsample by zero insertion, pad, filter, downsample (NVlabs `upfirdn2d` semantics).

`upfirdn2d_ref` is the PyTorch reference; `upfirdn2d` dispatches to the Triton kernel for CUDA tensors.
"""

import torch
import torch.nn.functional as F

from . import _dispatch
from ._dispatch import tl, triton
from .shapes import assert_shape


def parse_scaling(scaling, what):
    """[sx, sy] from an int or a pair of factors >= 1; `what` names the op and argument for the error."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = (int(v) for v in scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f"{what} must be >= 1, got {scaling}")
    return sx, sy


def parse_padding(padding, what):
    """[x0, x1, y0, y1] from an int p, [px, py] or [x0, x1, y0, y1]; `what` names the op and argument."""
    if isinstance(padding, int):
        padding = [padding, padding]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f"{what} must be an int, [px, py] or [x0, x1, y0, y1], got {padding}")
    return padding


def filter_size(f, what):
    """(width, height) of a filter: None (identity), 1-D (separable) or 2-D; `what` names the op and argument."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"{what} must be 1-D (separable) or 2-D, got {f.ndim}-D {list(f.shape)}")
    return f.shape[-1], f.shape[0]


def setup_filter(f, device="cpu", normalize=True, flip_filter=False, gain=1, separable=None):
    """A filter tensor from a list: 1-D lists become the 2-D outer product unless separable (>= 8 taps)."""
    f = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    if f.ndim > 2 or f.numel() == 0:
        raise ValueError(f"setup_filter: f must be a non-empty scalar, 1-D or 2-D, got {list(f.shape)}")
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Reference: x [N,C,H,W]; f 2-D [fh,fw] or 1-D separable [fw] (None = identity); inputs as `upfirdn2d`
    checks them."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    upx, upy = parse_scaling(up, "upfirdn2d: up")  # ints as well as the pairs `upfirdn2d` passes
    downx, downy = parse_scaling(down, "upfirdn2d: down")
    px0, px1, py0, py1 = parse_padding(padding, "upfirdn2d: padding")

    # Upsample by inserting zeros after every pixel.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)
    # Pad (positive) or crop (negative).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    # Convolve (not correlate, unless flip_filter) with the filter, one channel at a time.
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f[None, None].repeat([c, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = F.conv2d(x, f, groups=c)
    else:
        x = F.conv2d(x, f.unsqueeze(2), groups=c)
        x = F.conv2d(x, f.unsqueeze(3), groups=c)
    # Downsample by keeping every down-th pixel.
    return x[:, :, ::downy, ::downx]


# fmt: off
def _upfirdn2d_kernel(
    x_ptr, f_ptr, y_ptr,  # x [N·C, H, W], correlation taps f [FH, FW], y [N·C, HO, WO]
    H, W, HO, WO, FH, FW, UPX, UPY, DOWNX, DOWNY, PX0, PY0,
    ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
):
# fmt: on
    nc = tl.program_id(0).to(tl.int64)  # image channel on grid axis 0, which allows 2**31 - 1 programs
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < HO * WO
    oy = offs // WO
    ox = offs % WO
    acc = tl.full((BLOCK,), 0, dtype=ACC_DTYPE)  # tl.full, not tl.zeros (see _modconv_kernel)
    for fy in range(FH):
        uy = oy * DOWNY + fy - PY0  # row in the zero-upsampled image
        row_ok = (uy >= 0) & (uy % UPY == 0) & (uy < H * UPY)
        for fx in range(FW):
            ux = ox * DOWNX + fx - PX0
            m = ok & row_ok & (ux >= 0) & (ux % UPX == 0) & (ux < W * UPX)
            v = tl.load(x_ptr + (nc * H + uy // UPY) * W + ux // UPX, mask=m, other=0.0)
            acc += v.to(acc.dtype) * tl.load(f_ptr + fy * FW + fx).to(acc.dtype)
    tl.store(y_ptr + nc * HO * WO + offs, acc.to(y_ptr.dtype.element_ty), mask=ok)


class _UpFirDn2d(torch.autograd.Function):
    """Linear in x, so its gradient is the same op with up/down swapped and the filter flipped."""

    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip_filter):
        n, c, h, w = x.shape
        upx, upy = up
        downx, downy = down
        px0, px1, py0, py1 = padding
        fh, fw = f.shape
        ho = (h * upy + py0 + py1 - fh) // downy + 1
        wo = (w * upx + px0 + px1 - fw) // downx + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"upfirdn2d: output would be empty for x {list(x.shape)}, padding {list(padding)}")
        # The kernel correlates: a convolution (flip_filter=False) reads the flipped filter.
        taps = f if flip_filter else f.flip([0, 1])
        y = torch.empty(n, c, ho, wo, dtype=x.dtype, device=x.device)
        block = 256
        _dispatch.jit(_upfirdn2d_kernel)[(n * c, triton.cdiv(ho * wo, block))](
            x.contiguous(),
            taps.to(x.dtype).contiguous(),
            y,
            h,
            w,
            ho,
            wo,
            fh,
            fw,
            upx,
            upy,
            downx,
            downy,
            px0,
            py0,
            ACC_DTYPE=tl.float64 if x.dtype == torch.float64 else tl.float32,
            BLOCK=block,
        )
        ctx.save_for_backward(f)
        ctx.cfg = (x.shape, up, down, padding, flip_filter)
        return y

    @staticmethod
    def backward(ctx, gy):
        (f,) = ctx.saved_tensors
        (_, _, h, w), (upx, upy), (downx, downy), (px0, px1, py0, py1), flip_filter = ctx.cfg
        fh, fw = f.shape
        ho, wo = gy.shape[2:]
        p = [
            fw - px0 - 1,
            w * upx - wo * downx + px0 - upx + 1,
            fh - py0 - 1,
            h * upy - ho * downy + py0 - upy + 1,
        ]
        gx = _UpFirDn2d.apply(gy, f, (downx, downy), (upx, upy), p, not flip_filter)
        return gx, None, None, None, None, None


def upfirdn2d_triton(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """The Triton path of `upfirdn2d` (same arguments and result as `upfirdn2d_ref`)."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    f = (f * (gain ** (f.ndim / 2))).to(device=x.device, dtype=x.dtype)  # rounded as the reference rounds it
    if f.ndim == 1:  # separable: the kernel takes the 2-D outer product
        f = torch.outer(f, f)
    return _UpFirDn2d.apply(
        x,
        f,
        parse_scaling(up, "upfirdn2d: up"),
        parse_scaling(down, "upfirdn2d: down"),
        parse_padding(padding, "upfirdn2d: padding"),
        bool(flip_filter),
    )


def _check(x, f, op):
    """The checks of the upfirdn2d ops, once per call (their two paths assume them); f's (width, height)."""
    assert_shape(x, [None, None, None, None], f"{op}: x")
    return filter_size(f, f"{op}: f")


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Pad, up/down-sample and FIR-filter a batch of images; `impl` in auto|torch|triton."""
    _check(x, f, "upfirdn2d")
    up, down = parse_scaling(up, "upfirdn2d: up"), parse_scaling(down, "upfirdn2d: down")
    padding = parse_padding(padding, "upfirdn2d: padding")
    return _upfirdn2d(x, f, up, down, padding, flip_filter, gain, impl)


def _upfirdn2d(x, f, up, down, padding, flip_filter, gain, impl):
    """`upfirdn2d` on checked arguments: up and down [sx, sy], padding [x0, x1, y0, y1]."""
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    if _dispatch.use_triton("upfirdn2d", impl, x):
        return _dispatch.run(
            "upfirdn2d",
            lambda: upfirdn2d_triton(x, f, **kwargs),
            lambda: upfirdn2d_ref(x, f, **kwargs),
            key=(x.dtype, None if f is None else tuple(f.shape), up, down, tuple(padding)),
        )
    return upfirdn2d_ref(x, f, **kwargs)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample by `up` with filter f, keeping the image centred (output size up·H + padding)."""
    fw, fh = _check(x, f, "upsample2d")
    upx, upy = parse_scaling(up, "upsample2d: up")
    px0, px1, py0, py1 = parse_padding(padding, "upsample2d: padding")
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return _upfirdn2d(x, f, (upx, upy), (1, 1), p, flip_filter, gain * upx * upy, impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Downsample by `down` with filter f, keeping the image centred (output size H/down + padding)."""
    fw, fh = _check(x, f, "downsample2d")
    downx, downy = parse_scaling(down, "downsample2d: down")
    px0, px1, py0, py1 = parse_padding(padding, "downsample2d: padding")
    p = [
        px0 + (fw - downx + 1) // 2,
        px1 + (fw - downx) // 2,
        py0 + (fh - downy + 1) // 2,
        py1 + (fh - downy) // 2,
    ]
    return _upfirdn2d(x, f, (1, 1), (downx, downy), p, flip_filter, gain, impl)
