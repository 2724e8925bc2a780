"""Bias add, activation, gain and clamp in one op (NVlabs `bias_act` semantics for linear, relu and lrelu).

`bias_act_ref` is the PyTorch reference; `bias_act` dispatches to the Triton kernel for CUDA tensors.
"""

import math

import torch
import torch.nn.functional as F

from . import _dispatch
from ._dispatch import tl, triton
from .shapes import assert_shape

# Activation name -> (default alpha, default gain). lrelu/relu default to gain sqrt(2), which keeps the
# signal's second moment (He et al.), as StyleGAN2 does.
ACTIVATIONS = {"linear": (0.0, 1.0), "relu": (0.0, math.sqrt(2)), "lrelu": (0.2, math.sqrt(2))}


def resolve(act, alpha=None, gain=None, clamp=None):
    """(alpha, gain, clamp) with the activation's defaults filled in; clamp None -> -1 (off)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    def_alpha, def_gain = ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)
    return alpha, gain, clamp


def _check(x, b, dim):
    """The checks of `bias_act`, once per call: its reference and Triton paths assume them."""
    if b is None:
        return
    if not 0 <= dim < x.ndim:
        raise ValueError(f"bias_act: dim must be in [0, {x.ndim}) for a {x.ndim}-D x, got {dim}")
    assert_shape(b, [x.shape[dim]], f"bias_act: b (dim {dim} of x {list(x.shape)})")


def bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Reference: x + b (broadcast along `dim`), activation, times gain, clamped to [-clamp, clamp]; inputs as
    `bias_act` checks them."""
    alpha, gain, clamp = resolve(act, alpha, gain, clamp)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    if act == "relu":
        x = F.relu(x)
    elif act == "lrelu":
        x = F.leaky_relu(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


ACT_CODES = {"linear": 0, "relu": 1, "lrelu": 2}  # the kernels' ACT switch


@_dispatch.device_function
def act_gain_clamp(v, alpha, gain, clamp, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """The epilogue every kernel ends with, as `bias_act_ref` after its bias: activation (ACT_CODES), times gain,
    clamped to [-clamp, clamp]."""
    if ACT == 1:
        v = tl.where(v > 0, v, 0.0)
    if ACT == 2:
        v = tl.where(v > 0, v, v * alpha)
    v = v * gain
    if HAS_CLAMP:
        v = tl.minimum(tl.maximum(v, -clamp), clamp)
    return v


# fmt: off
def _bias_act_kernel(
    x_ptr, b_ptr, y_ptr, numel,
    C, INNER,  # bias index of flat offset j: (j // INNER) % C
    params_ptr,  # [alpha, gain, clamp], float64 for float64 x: scalar arguments would be float32
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, BLOCK: tl.constexpr,
):
# fmt: on
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # 64-bit: large batches pass 2**31
    ok = offs < numel
    v = tl.load(x_ptr + offs, mask=ok, other=0.0).to(params_ptr.dtype.element_ty)
    alpha = tl.load(params_ptr)
    gain = tl.load(params_ptr + 1)
    clamp = tl.load(params_ptr + 2)
    if HAS_BIAS:  # x is contiguous: the bias index of a flat offset is (offset // INNER) % C
        v = v + tl.load(b_ptr + (offs // INNER) % C, mask=ok, other=0.0).to(v.dtype)
    v = act_gain_clamp(v, alpha, gain, clamp, ACT, HAS_CLAMP)
    tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=ok)


def act_mask(y, act, alpha, gain, clamp):
    """d(output)/d(input) read from the output y (gain >= 0 keeps the sign); piecewise constant, so the
    gradient `grad_y * mask` is exact to differentiate again."""
    m = torch.full_like(y, gain)
    if act == "relu":
        m = torch.where(y > 0, m, 0.0)
    elif act == "lrelu":
        m = torch.where(y > 0, m, m * alpha)
    if clamp >= 0:
        m = torch.where(y.abs() < clamp, m, 0.0)
    return m


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp):
        x = x.contiguous()
        y = torch.empty_like(x)
        inner = math.prod(x.shape[dim + 1 :])
        block = 1024
        _dispatch.jit(_bias_act_kernel)[(triton.cdiv(x.numel(), block),)](
            x,
            y if b is None else b.contiguous(),
            y,
            x.numel(),
            x.shape[dim],
            inner,
            torch.tensor(
                [alpha, gain, clamp],
                dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                device=x.device,
            ),
            ACT=ACT_CODES[act],
            HAS_BIAS=b is not None,
            HAS_CLAMP=clamp >= 0,
            BLOCK=block,
        )
        ctx.cfg = (dim, act, alpha, gain, clamp)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        dim, act, alpha, gain, clamp = ctx.cfg
        gx = gy * act_mask(y, act, alpha, gain, clamp)
        gb = gx.sum([i for i in range(gx.ndim) if i != dim]) if ctx.needs_input_grad[1] else None
        return gx, gb, None, None, None, None, None


def bias_act_triton(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """The Triton path of `bias_act` (same arguments and result as `bias_act_ref`)."""
    alpha, gain, clamp = resolve(act, alpha, gain, clamp)
    if gain < 0:  # the backward pass reads the activation's slope from the sign of the output
        raise ValueError(f"bias_act: the Triton path needs gain >= 0, got {gain}")
    return _BiasAct.apply(x, b, dim, act, alpha, gain, clamp)


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="auto"):
    """Fused bias + activation·gain + clamp; `impl` in auto|torch|triton."""
    _check(x, b, dim)
    if _dispatch.use_triton("bias_act", impl, x, b):
        return _dispatch.run(
            "bias_act",
            lambda: bias_act_triton(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp),
            lambda: bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp),
            key=(x.dtype, x.ndim, dim, act),
        )
    return bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
