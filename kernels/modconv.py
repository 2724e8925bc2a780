"""StyleGAN2 modulated convolution (NVlabs `modulated_conv2d`, `fused_modconv=False`).

Per sample n: y = d[n,o] · conv(x[n] · s[n,i], W) with demodulation coefficients
d[n,o] = rsqrt(Σ_{i,k} (W[o,i,k]·s[n,i])² + 1e-8); up=2 is a transposed conv followed by the [1,3,3,1] blur.
`modulated_conv2d_ref` is the PyTorch reference; `modulated_conv2d` dispatches to Triton for CUDA tensors.
"""

import torch
import torch.nn.functional as F

from . import _dispatch
from ._dispatch import tl, triton
from .bias_act import ACT_CODES, act_gain_clamp, act_mask, bias_act_ref
from .bias_act import resolve as resolve_act
from .conv2d_resample import conv2d_resample
from .shapes import assert_shape
from .upfirdn2d import setup_filter

RESAMPLE_FILTER = [1, 3, 3, 1]


def _check(x, weight, styles, up, padding, noise, bias):
    """The checks of `modulated_conv2d`, once per call: its reference and Triton paths assume them."""
    assert_shape(x, [None, None, None, None], "modulated_conv2d: x")
    n, i = x.shape[:2]
    assert_shape(weight, [None, i, None, None], "modulated_conv2d: weight")
    assert_shape(styles, [n, i], "modulated_conv2d: styles")
    if up not in (1, 2):
        raise ValueError(f"modulated_conv2d: up must be 1 or 2, got {up!r}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"modulated_conv2d: padding must be an int >= 0, got {padding!r}")
    if bias is not None:
        assert_shape(bias, [weight.shape[0]], "modulated_conv2d: bias")
    if noise is not None:
        assert_shape(noise, [None, None, None, None], "modulated_conv2d: noise")
        torch.broadcast_shapes(noise.shape[:2], (n, weight.shape[0]))  # raises unless it broadcasts to [N, O]


def demod_coefficients(weight, styles):
    """d[n,o] = rsqrt(Σ_i s[n,i]² · Σ_k W[o,i,k]² + 1e-8), without forming the per-sample weights."""
    return (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()


def _prenormalise(weight, styles):
    # NVlabs: in float16, rescale weight and styles before use so that the products cannot overflow;
    # demodulation removes the scale again.
    in_channels, kh, kw = weight.shape[1:]
    weight = weight * (1 / (in_channels * kh * kw) ** 0.5 / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
    styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    return weight, styles


def modulated_conv2d_ref(
    x,
    weight,
    styles,
    demodulate=True,
    up=1,
    padding=0,
    *,
    noise=None,
    bias=None,
    act="linear",
    alpha=None,
    gain=None,
    clamp=None,
):
    """Reference: scale the input by the styles, plain (or transposed + blur) conv, scale by d, then add noise
    and apply `bias_act` (bias, activation·gain, clamp). Inputs as `modulated_conv2d` checks them."""
    if x.dtype == torch.float16 and demodulate:
        weight, styles = _prenormalise(weight, styles)
    x = x * styles.to(x.dtype)[:, :, None, None]
    f = setup_filter(RESAMPLE_FILTER, device=x.device) if up > 1 else None
    x = conv2d_resample(x, weight.to(x.dtype), f=f, up=up, padding=padding, flip_weight=(up == 1), impl="torch")
    if demodulate:
        x = x * demod_coefficients(weight, styles).to(x.dtype)[:, :, None, None]
    if noise is not None:
        x = x + noise.to(x.dtype)
    if bias is None and act == "linear" and gain in (None, 1) and clamp is None:
        return x
    return bias_act_ref(x, bias, act=act, alpha=alpha, gain=gain, clamp=clamp)


def modulated_conv2d(
    x,
    weight,
    styles,
    demodulate=True,
    up=1,
    padding=0,
    impl="auto",
    *,
    noise=None,
    bias=None,
    act="linear",
    alpha=None,
    gain=None,
    clamp=None,
):
    """Modulated convolution; the keyword epilogue equals `bias_act(y + noise, bias, act, alpha, gain, clamp)`
    (gain None = the activation's default, √2 for lrelu). x [N,I,H,W], weight [O,I,k,k], styles [N,I]."""
    _check(x, weight, styles, up, padding, noise, bias)
    kwargs = dict(noise=noise, bias=bias, act=act, alpha=alpha, gain=gain, clamp=clamp)
    if _dispatch.use_triton("modulated_conv2d", impl, x, weight, styles, noise, bias):
        reason = triton_unsupported(x, weight, up, padding)
        if reason is None:
            return _dispatch.run(
                "modulated_conv2d",
                lambda: modulated_conv2d_triton(x, weight, styles, demodulate, up, padding, **kwargs),
                lambda: modulated_conv2d_ref(x, weight, styles, demodulate, up, padding, **kwargs),
                key=(x.dtype, tuple(weight.shape[1:]), demodulate, up, padding, act),
            )
        _dispatch.fallback("modulated_conv2d", reason)
    return modulated_conv2d_ref(x, weight, styles, demodulate, up, padding, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Triton path.
#
# Both resolutions are one kernel: a stride-1 correlation of the style-scaled input with C_OUT "stacked"
# filters, whose results are written with a pixel shuffle of factor UP. For up=2 the transposed conv and the
# 4x4 blur compose into one 6x6 filter of stride 2, i.e. four 3x3 phase filters at input resolution (one per
# output pixel parity), stacked as 4·O output channels; `_phase_weights` builds them with differentiable
# torch ops, so the weight gradient reaches W through them. The input gradient is the same kernel run on the
# pixel-unshuffled output gradient with flipped, transposed filters and d applied on load.
# ----------------------------------------------------------------------------------------------------------


# fmt: off
def _modconv_kernel(
    x_ptr, s_ptr, w_ptr, d_ptr, noise_ptr, bias_ptr, y_ptr, c_ptr,
    C_IN, H, W, C_OUT, HQ, WQ, PAD,  # conv input [C_IN, H, W] -> stride-1 result [C_OUT, HQ, WQ]
    S_DIV,  # the style of input channel i is s[n, i // S_DIV]
    sn_n, sn_o, sn_y, sn_x,  # noise strides over the output [N, O, HQ·UP, WQ·UP] (0 = broadcast)
    params_ptr,  # [alpha, gain, clamp] in the accumulation dtype: scalar arguments would be float32
    K: tl.constexpr, UP: tl.constexpr, ACT: tl.constexpr,
    HAS_S: tl.constexpr, HAS_D: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_CLAMP: tl.constexpr, STORE_C: tl.constexpr, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
):
# fmt: on
    n = tl.program_id(2).to(tl.int64)  # 64-bit offsets: a batch of large images passes 2**31 elements
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # pixels of the stride-1 result
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)  # stacked output channels
    p_ok = offs_p < HQ * WQ
    o_ok = offs_o < C_OUT
    qy = offs_p // WQ
    qx = offs_p % WQ
    acc = _conv_tile(
        x_ptr + n * C_IN * H * W, s_ptr + n * (C_IN // S_DIV), w_ptr, qy, qx, p_ok, offs_o, o_ok,
        C_IN, H, W, C_OUT, PAD, S_DIV, K, HAS_S, ACC_DTYPE, PRECISION, BLOCK_P, BLOCK_O, BLOCK_I,
    )

    # Epilogue: pixel shuffle, demodulation, noise, bias, activation·gain, clamp.
    o = offs_o // (UP * UP)
    phase = offs_o % (UP * UP)
    oy = qy[:, None] * UP + (phase // UP)[None, :]
    ox = qx[:, None] * UP + (phase % UP)[None, :]
    out_off = ((n * (C_OUT // (UP * UP)) + o[None, :]) * (HQ * UP) + oy) * (WQ * UP) + ox
    mask = p_ok[:, None] & o_ok[None, :]
    if STORE_C:  # the conv result before demodulation, for the gradient of d
        tl.store(c_ptr + out_off, acc.to(c_ptr.dtype.element_ty), mask=mask)
    v = acc
    if HAS_D:
        v = v * tl.load(d_ptr + n * (C_OUT // (UP * UP)) + o, mask=o_ok, other=0.0).to(ACC_DTYPE)[None, :]
    if HAS_NOISE:
        v = v + tl.load(
            noise_ptr + n * sn_n + o[None, :] * sn_o + oy * sn_y + ox * sn_x, mask=mask, other=0.0
        ).to(ACC_DTYPE)
    if HAS_BIAS:
        v = v + tl.load(bias_ptr + o, mask=o_ok, other=0.0).to(ACC_DTYPE)[None, :]
    v = _act_of_params(v, params_ptr, ACT, HAS_CLAMP, ACC_DTYPE)
    tl.store(y_ptr + out_off, v.to(y_ptr.dtype.element_ty), mask=mask)


# fmt: off
@_dispatch.device_function
def _conv_tile(
    x_base, s_base, w_ptr, qy, qx, p_ok, offs_o, o_ok,  # one image's input and styles; the tile's pixels, channels
    C_IN, H, W, C_OUT, PAD, S_DIV,
    K: tl.constexpr, HAS_S: tl.constexpr, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
):
# fmt: on
    """The stride-1 convolution of a [BLOCK_P pixels, BLOCK_O channels] tile, the styles applied to x as its
    tiles are loaded; the stacked weight is [K, K, C_IN, C_OUT]."""
    # tl.full, not tl.zeros: a builtin also runs in the interpreter when Triton was imported without it
    acc = tl.full((BLOCK_P, BLOCK_O), 0, dtype=ACC_DTYPE)
    for ky in tl.static_range(K):
        iy = qy + ky - PAD
        for kx in tl.static_range(K):
            ix = qx + kx - PAD
            pix_ok = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            pix = iy * W + ix
            for i0 in range(0, C_IN, BLOCK_I):
                offs_i = i0 + tl.arange(0, BLOCK_I)
                i_ok = offs_i < C_IN
                xt = tl.load(
                    x_base + offs_i[None, :] * H * W + pix[:, None],
                    mask=pix_ok[:, None] & i_ok[None, :],
                    other=0.0,
                )
                wt = tl.load(
                    w_ptr + ((ky * K + kx) * C_IN + offs_i[:, None]) * C_OUT + offs_o[None, :],
                    mask=i_ok[:, None] & o_ok[None, :],
                    other=0.0,
                )
                if HAS_S:
                    st = tl.load(s_base + offs_i // S_DIV, mask=i_ok, other=0.0)
                    xt = xt * st[None, :]
                acc = tl.dot(xt.to(wt.dtype), wt, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    return acc


@_dispatch.device_function
def _act_of_params(v, params_ptr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """act_gain_clamp with its [alpha, gain, clamp] read from `params_ptr` in the accumulation dtype."""
    alpha = tl.load(params_ptr).to(ACC_DTYPE)
    gain = tl.load(params_ptr + 1).to(ACC_DTYPE)
    clamp = tl.load(params_ptr + 2).to(ACC_DTYPE)
    return act_gain_clamp(v, alpha, gain, clamp, ACT, HAS_CLAMP)


def _pow2(v, lo, hi):
    return max(lo, min(hi, 1 << max(int(v) - 1, 0).bit_length()))


# Tiles tried by the autotuner on a device: (BLOCK_P pixels, BLOCK_O stacked outputs, BLOCK_I inputs, warps).
# Small pixel tiles for the 4x4 and 8x8 layers (more programs), larger ones for 32-64 px at 512 channels;
# ToRGB (3 outputs) gets narrow output tiles.
TILES = ((16, 64, 32, 4), (16, 128, 32, 4), (32, 64, 32, 4), (64, 64, 32, 4), (64, 128, 32, 4), (128, 64, 32, 4),
         (128, 128, 32, 8), (64, 64, 64, 4), (64, 16, 32, 4), (128, 16, 64, 4))
TUNE_KEY = ("C_IN", "H", "W", "C_OUT", "K", "UP", "HAS_D", "HAS_NOISE", "STORE_C")


def _tile_configs():
    return tuple(triton.Config({"BLOCK_P": p, "BLOCK_O": o, "BLOCK_I": i}, num_warps=w) for p, o, i, w in TILES)


def _prune_tiles(configs, named_args, **kwargs):
    """Drop tiles far larger than the problem (they only add masked-off lanes); always keep the smallest."""
    pixels, c_out, c_in = named_args["HQ"] * named_args["WQ"], named_args["C_OUT"], named_args["C_IN"]
    fits = [c for c in configs
            if c.kwargs["BLOCK_P"] <= _pow2(pixels, 16, 128) and c.kwargs["BLOCK_O"] <= _pow2(c_out, 16, 128)
            and c.kwargs["BLOCK_I"] <= _pow2(c_in, 16, 64)]
    return fits or [min(configs, key=lambda c: c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_O"])]


def _kernel_grid_tiles(n: int, c_in: int, c_out: int, pixels: int):
    """(kernel, grid, tile arguments) of a launch over `pixels` stride-1 outputs: the autotuned kernel on a device,
    fixed tiles under the interpreter (tuning needs a device to time on)."""
    if _dispatch.interpreting():
        tiles = dict(BLOCK_P=_pow2(pixels, 16, 64), BLOCK_O=_pow2(c_out, 16, 64), BLOCK_I=_pow2(c_in, 16, 32))
        grid = (triton.cdiv(pixels, tiles["BLOCK_P"]), triton.cdiv(c_out, tiles["BLOCK_O"]), n)
        return _dispatch.jit(_modconv_kernel), grid, {**tiles, "num_warps": 4}

    def grid(meta):  # the tiles are the autotuner's choice
        return triton.cdiv(pixels, meta["BLOCK_P"]), triton.cdiv(c_out, meta["BLOCK_O"]), n

    return _dispatch.autotuned(_modconv_kernel, _tile_configs(), TUNE_KEY, _prune_tiles), grid, {}


def _launch(x, w, s, d, noise, bias, s_div, up, pad, act, alpha, gain, clamp, store_c):
    """y (and the pre-demodulation result c, or None) of the fused kernel; w: stacked [C_OUT, C_IN, K, K]."""
    n, c_in, h, w_in = x.shape
    c_out, _, k, _ = w.shape
    hq, wq = h + 2 * pad - k + 1, w_in + 2 * pad - k + 1
    o = c_out // (up * up)
    x = x.contiguous()
    wt = w.to(x.dtype).permute(2, 3, 1, 0).contiguous()  # [K, K, C_IN, C_OUT]: coalesced along C_OUT
    y = torch.empty(n, o, hq * up, wq * up, dtype=x.dtype, device=x.device)
    c = torch.empty_like(y) if store_c else None
    noise_strides = (0, 0, 0, 0)
    if noise is not None:
        noise = noise.to(x.dtype).expand(y.shape)
        noise_strides = noise.stride()
    tf32 = x.dtype == torch.float32 and x.is_cuda and torch.backends.cudnn.allow_tf32
    kernel, grid, tiles = _kernel_grid_tiles(n, c_in, c_out, hq * wq)
    dummy = y  # pointer for absent optional tensors (never read: their flags are off)
    kernel[grid](
        x,
        dummy if s is None else s.contiguous(),
        wt,
        dummy if d is None else d.contiguous(),
        dummy if noise is None else noise,
        dummy if bias is None else bias.contiguous(),
        y,
        dummy if c is None else c,
        c_in,
        h,
        w_in,
        c_out,
        hq,
        wq,
        pad,
        s_div,
        *noise_strides,
        torch.tensor(
            [alpha, gain, clamp],
            dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
            device=x.device,
        ),
        K=k,
        UP=up,
        ACT=ACT_CODES[act],
        HAS_S=s is not None,
        HAS_D=d is not None,
        HAS_NOISE=noise is not None,
        HAS_BIAS=bias is not None,
        HAS_CLAMP=clamp >= 0,
        STORE_C=store_c,
        ACC_DTYPE=tl.float64 if x.dtype == torch.float64 else tl.float32,
        PRECISION="tf32" if tf32 else "ieee",
        **tiles,
    )
    return y, c


class _ModConv(torch.autograd.Function):
    """y = act(d[n,o] · (conv(x · s, w) pixel-shuffled by `up`) + noise + bias)·gain, clamped.

    The backward pass is written with differentiable ops (this Function for the input gradient, aten's conv
    weight gradient, elementwise torch), so it can itself be differentiated (path-length regularisation)."""

    @staticmethod
    def forward(ctx, x, w, s, d, noise, bias, cfg):
        s_div, up, pad, act, alpha, gain, clamp = cfg
        store_c = d is not None and ctx.needs_input_grad[3]
        y, c = _launch(x, w, s, d, noise, bias, s_div, up, pad, act, alpha, gain, clamp, store_c)
        ctx.cfg = cfg
        ctx.noise_shape = None if noise is None else noise.shape
        ctx.save_for_backward(x, w, s, d, y, c)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, s, d, y, c = ctx.saved_tensors
        s_div, up, pad, act, alpha, gain, clamp = ctx.cfg
        need_x, need_w, need_s, need_d, need_noise, need_bias, _ = ctx.needs_input_grad
        n, c_in = x.shape[:2]
        gz = (
            gy
            if (act == "linear" and gain == 1 and clamp < 0)
            else gy * act_mask(y.detach(), act, alpha, gain, clamp)
        )
        grad_noise = gz.sum_to_size(ctx.noise_shape) if need_noise else None
        grad_bias = gz.sum([0, 2, 3]) if need_bias else None
        grad_d = None
        if need_d:
            if torch.is_grad_enabled():  # double backward: c must stay a function of x, w and s
                c = _ModConv.apply(x, w, s, None, None, None, (s_div, up, pad, "linear", 0.0, 1.0, -1.0))
            grad_d = (gz * c).sum([2, 3])
        g = F.pixel_unshuffle(gz, up) if up > 1 else gz  # [N, C_OUT, HQ, WQ]
        s_full = None if s is None else (s.repeat_interleave(s_div, 1) if s_div > 1 else s)[:, :, None, None]
        grad_x = grad_w = grad_s = None
        if need_x or need_s:
            k = w.shape[2]
            w_t = w.flip([2, 3]).transpose(0, 1)
            gxs = _ModConv.apply(
                g, w_t, d, None, None, None, (up * up, 1, k - 1 - pad, "linear", 0.0, 1.0, -1.0)
            )
            if need_x:
                grad_x = gxs if s_full is None else gxs * s_full
            if need_s:
                grad_s = (gxs * x).sum([2, 3])
                grad_s = grad_s.view(n, c_in // s_div, s_div).sum(2) if s_div > 1 else grad_s
        if need_w:
            xs = x if s_full is None else x * s_full
            gd = g if d is None else g * d.repeat_interleave(up * up, 1)[:, :, None, None]
            grad_w = torch.nn.grad.conv2d_weight(xs, w.shape, gd, padding=pad)
        return grad_x, grad_w, grad_s, grad_d, grad_noise, grad_bias, None


def _phase_taps(k, padding):
    """For up=2 with kernel k: (stacked kernel size kc, its padding pc, tap index [2, kc] into the composed
    6x6-like filter E of size k+3, where k+3 means a zero tap)."""
    p0 = padding + 3 - k  # padding of the full transposed-conv result before the blur
    taps = []
    for a in (0, 1):
        e_max = k + 2 if (a + 3 - p0) % 2 == (k + 2) % 2 else k + 1
        taps.append(((e_max - a + p0 - 3) // 2, list(range(e_max, -1, -2))))
    pc = max(pad_a for pad_a, _ in taps)
    kc = max(len(t) + pc - pad_a for pad_a, t in taps)
    index = torch.full((2, kc), k + 3, dtype=torch.long)
    for a, (pad_a, t) in enumerate(taps):
        for j, e in enumerate(t):
            index[a, j + pc - pad_a] = e
    return kc, pc, index


def _phase_weights(weight, padding):
    """[4·O, I, kc, kc] phase filters (channel o·4 + 2·ay + ax) equal to transposed conv + [1,3,3,1] blur."""
    o, i, k, _ = weight.shape
    f = setup_filter(RESAMPLE_FILTER, device=weight.device).to(weight.dtype) * 4  # gain up² as in NVlabs
    e = F.conv2d(F.pad(weight.reshape(o * i, 1, k, k), [3] * 4), f.flip([0, 1])[None, None]).reshape(
        o, i, k + 3, k + 3
    )
    e = F.pad(e, [0, 1, 0, 1])  # index k+3 reads zero
    kc, pc, index = _phase_taps(k, padding)
    index = index.reshape(-1).to(weight.device)
    e = e[:, :, index][..., index].reshape(o, i, 2, kc, 2, kc)
    return e.permute(0, 2, 4, 1, 3, 5).reshape(4 * o, i, kc, kc), pc


def triton_unsupported(x, weight, up, padding):
    """Why the Triton kernel cannot run this configuration, or None."""
    k = weight.shape[2]
    if weight.shape[3] != k:
        return f"non-square kernels ({tuple(weight.shape[2:])}) are not supported"
    h, w = x.shape[2:]
    if up == 1:
        return None if min(h, w) + 2 * padding - k + 1 >= 1 else "output would be empty"
    if k % 2 == 0:
        return "up=2 needs an odd kernel size"
    kc, pc, _ = _phase_taps(k, padding)
    if pc < 0 or (2 * h + 2 * padding + 1 - k) != 2 * (h + 2 * pc - kc + 1):
        return f"up=2 with kernel {k} and padding {padding} is not supported (use padding={k // 2})"
    return None


def modulated_conv2d_triton(
    x,
    weight,
    styles,
    demodulate=True,
    up=1,
    padding=0,
    *,
    noise=None,
    bias=None,
    act="linear",
    alpha=None,
    gain=None,
    clamp=None,
):
    """The Triton path of `modulated_conv2d` (same arguments and result as `modulated_conv2d_ref`)."""
    alpha, gain, clamp = resolve_act(act, alpha, gain, clamp)
    if gain < 0:  # the backward pass reads the activation's slope from the sign of the output
        raise ValueError(f"modulated_conv2d: the Triton path needs gain >= 0, got {gain}")
    if x.dtype == torch.float16 and demodulate:
        weight, styles = _prenormalise(weight, styles)
    d = demod_coefficients(weight, styles).to(x.dtype) if demodulate else None
    w, pad = (weight, padding) if up == 1 else _phase_weights(weight, padding)
    cfg = (1, up, pad, act, alpha, gain, clamp)
    return _ModConv.apply(x, w.to(x.dtype), styles.to(x.dtype), d, noise, bias, cfg)
