"""The Triton paths of `kernels/` against their PyTorch references, run on the CPU by Triton's interpreter.

`TRITON_INTERPRET=1` is set for these tests only (the `interpret` fixture): kernels are compiled at first use
for the current setting (`kernels._dispatch.jit`), so the rest of the suite is unaffected.
"""

import importlib
import inspect
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

pytest.importorskip("triton", reason="Triton is not installed")

import kernels  # noqa: E402
from kernels import _dispatch  # noqa: E402
from kernels.bias_act import bias_act_ref, bias_act_triton  # noqa: E402
from kernels.modconv import modulated_conv2d_ref, modulated_conv2d_triton  # noqa: E402
from kernels.upfirdn2d import setup_filter, upfirdn2d_ref, upfirdn2d_triton  # noqa: E402

NV_REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "nv_ref.pt"
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "_warned", set())
    monkeypatch.setattr(_dispatch, "_broken", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent fallback to the reference would pass unnoticed
        yield


@pytest.fixture
def nan_outputs(monkeypatch):
    """Outputs allocated by the kernel wrappers start as NaN, so an element the kernel never writes fails."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(empty_like(*a, **k)))


def _rel(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).norm() / b.norm()).item()


def _inputs(n, i, o, h, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, i, h, h, generator=g, dtype=dtype),
        torch.randn(o, i, k, k, generator=g, dtype=dtype),
        torch.randn(n, i, generator=g, dtype=dtype) + 1,
    )


MODCONV_CASES = {  # name: (N, I, O, H, k, up, padding, demodulate)
    "3x3": (2, 5, 7, 6, 3, 1, 1, True),
    "3x3_up2": (2, 6, 4, 5, 3, 2, 1, True),
    "torgb_1x1_no_demod": (2, 8, 3, 6, 1, 1, 0, False),
    "batch1_odd_channels": (1, 3, 5, 7, 3, 1, 1, True),
    "5x5_up2": (1, 3, 3, 4, 5, 2, 2, True),
    "1x1_up2": (2, 3, 2, 4, 1, 2, 0, False),
    "valid_padding": (2, 4, 3, 6, 3, 1, 0, True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(MODCONV_CASES))
def test_modconv_equals_reference(case, dtype, nan_outputs):
    n, i, o, h, k, up, padding, demod = MODCONV_CASES[case]
    x, w, s = _inputs(n, i, o, h, k, dtype)
    y = modulated_conv2d_triton(x, w, s, demodulate=demod, up=up, padding=padding)
    assert _rel(y, modulated_conv2d_ref(x, w, s, demodulate=demod, up=up, padding=padding)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("up", [1, 2])
def test_modconv_fused_epilogue_equals_reference(up, dtype, nan_outputs):
    x, w, s = _inputs(2, 3, 5, 5, 3, dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    kw = dict(
        noise=torch.randn(2, 1, 5 * up, 5 * up, generator=g, dtype=dtype),
        bias=torch.randn(5, generator=g, dtype=dtype),
        act="lrelu",
        clamp=0.6,
    )
    y = modulated_conv2d_triton(x, w, s, up=up, padding=1, **kw)
    assert _rel(y, modulated_conv2d_ref(x, w, s, up=up, padding=1, **kw)) <= TOL[dtype]
    assert y.abs().max() <= 0.6


@pytest.mark.parametrize("case", ["3x3_up2", "torgb_1x1_no_demod", "batch1_odd_channels", "5x5_up2"])
def test_modconv_gradients_equal_reference(case):
    n, i, o, h, k, up, padding, demod = MODCONV_CASES[case]
    noise_shape = (n, o, h * up, h * up) if demod else (1, 1, h * up, h * up)
    grads = []
    for fn in (modulated_conv2d_triton, modulated_conv2d_ref):
        x, w, s = (t.requires_grad_(True) for t in _inputs(n, i, o, h, k, torch.float64, seed=12))
        noise = torch.randn(noise_shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
        bias = torch.randn(o, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
        leaves = [x, w, s, noise.requires_grad_(True), bias.requires_grad_(True)]
        y = fn(x, w, s, demodulate=demod, up=up, padding=padding, noise=noise, bias=bias, act="relu", gain=1.5)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
        grads.append(torch.autograd.grad(y, leaves, gy))
    for name, a, b in zip(("x", "weight", "styles", "noise", "bias"), *grads):
        assert _rel(a, b) <= 1e-12, name


@pytest.mark.parametrize("index", [0, 1, 2])
def test_modconv_matches_nvlabs(index):
    if not NV_REF.is_file():
        pytest.skip(f"{NV_REF} is absent (the shared reference tensors are not checked out)")
    case = torch.load(NV_REF, weights_only=False)["modconv"][index]
    x, w, s = (case[k].clone().requires_grad_(True) for k in ("x", "weight", "styles"))
    y = kernels.modulated_conv2d(
        x, w, s, demodulate=case["demodulate"], up=case["up"], padding=case["padding"], impl="triton"
    )
    assert type(y.grad_fn).__name__ == "_ModConvBackward"  # the Triton path ran
    assert _rel(y, case["y"]) <= 1e-10
    y.backward(case["grad_y"])
    for t, key in ((x, "grad_x"), (w, "grad_weight"), (s, "grad_styles")):
        assert _rel(t.grad, case[key]) <= 1e-10, key


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.integration
def test_modconv_gradcheck_and_gradgradcheck(up):
    x, w, s = (t.requires_grad_(True) for t in _inputs(2, 2, 2, 3, 3, torch.float64, seed=3))
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(2, 1, 3 * up, 3 * up, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, w, s, noise, bias):
        return modulated_conv2d_triton(x, w, s, up=up, padding=1, noise=noise, bias=bias, act="lrelu")

    assert gradcheck(f, (x, w, s, noise, bias), fast_mode=True)
    assert gradgradcheck(f, (x, w, s, noise, bias), fast_mode=True)


def test_modconv_path_length_double_backward_equals_reference():
    # The path-length penalty's pattern: grad of (y · noise).sum w.r.t. the styles, create_graph, backward.
    results = []
    for fn in (modulated_conv2d_triton, modulated_conv2d_ref):
        x, w, s = (t.requires_grad_(True) for t in _inputs(2, 3, 4, 4, 3, torch.float64, seed=5))
        y = fn(x, w, s, up=2, padding=1, act="lrelu")
        (gs,) = torch.autograd.grad((y * torch.ones_like(y).cumsum(-1)).sum(), [s], create_graph=True)
        gs.square().sum().backward()
        results.append((w.grad, x.grad))
    for a, b in zip(*results):
        assert _rel(a, b) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_act_equals_reference(dtype, nan_outputs):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 5, 4, 7, generator=g, dtype=dtype)
    for act in ("linear", "relu", "lrelu"):
        for dim, clamp, gain in ((1, None, None), (2, 0.5, 3.0), (3, None, 1.0)):
            b = torch.randn(x.shape[dim], generator=g, dtype=dtype)
            y = bias_act_triton(x, b, dim=dim, act=act, gain=gain, clamp=clamp)
            assert _rel(y, bias_act_ref(x, b, dim=dim, act=act, gain=gain, clamp=clamp)) <= TOL[dtype], (
                act,
                dim,
            )
    assert (
        _rel(bias_act_triton(x, None, act="lrelu", alpha=0.1), bias_act_ref(x, None, act="lrelu", alpha=0.1))
        <= TOL[dtype]
    )


def test_bias_act_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda x, b: bias_act_triton(x, b, act="lrelu", clamp=0.9)  # noqa: E731
    assert gradcheck(f, (x, b), fast_mode=True)
    assert gradgradcheck(f, (x, b), fast_mode=True)


UPFIRDN_CASES = [
    dict(up=2, padding=[2, 1, 2, 1]),
    dict(down=2, padding=1),
    dict(up=[2, 1], down=[1, 3], padding=[-1, 2, 0, 3], flip_filter=True, gain=3),
    dict(),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("filt", ["blur4", "separable8", "random3x2", "none"])
@pytest.mark.integration
def test_upfirdn2d_equals_reference(filt, dtype, nan_outputs):
    f = {
        "blur4": setup_filter([1, 3, 3, 1]),
        "separable8": setup_filter([1, 2, 3, 4, 5, 6, 7, 8]),
        "random3x2": torch.randn(3, 2, generator=torch.Generator().manual_seed(8)),
        "none": None,
    }[filt]
    x = torch.randn(1, 2, 9, 10, generator=torch.Generator().manual_seed(9), dtype=dtype)
    for kw in UPFIRDN_CASES:
        assert _rel(upfirdn2d_triton(x, f, **kw), upfirdn2d_ref(x, f, **kw)) <= TOL[dtype], kw


@pytest.mark.parametrize("kw", UPFIRDN_CASES[:3])
@pytest.mark.integration
def test_upfirdn2d_gradcheck_and_gradgradcheck(kw):
    x = torch.randn(1, 2, 4, 5, generator=torch.Generator().manual_seed(10), dtype=torch.float64, requires_grad=True)
    f = setup_filter([1, 3, 3, 1])
    assert gradcheck(lambda x: upfirdn2d_triton(x, f, **kw), (x,), fast_mode=True)
    assert gradgradcheck(lambda x: upfirdn2d_triton(x, f, **kw), (x,), fast_mode=True)


def test_dispatch_picks_paths():
    x, w, s = _inputs(1, 2, 2, 4, 3, torch.float32)
    w.requires_grad_(True)
    assert type(kernels.modulated_conv2d(x, w, s, padding=1, impl="auto").grad_fn).__name__ != "_ModConvBackward"  # CPU
    assert type(kernels.modulated_conv2d(x, w, s, padding=1, impl="triton").grad_fn).__name__ == "_ModConvBackward"
    assert type(kernels.bias_act(w, impl="triton").grad_fn).__name__ == "_BiasActBackward"
    assert (
        type(kernels.upsample2d(w, setup_filter([1, 3, 3, 1]), impl="triton").grad_fn).__name__ == "_UpFirDn2dBackward"
    )


def test_the_triton_paths_check_nothing_again(monkeypatch):
    # The public op checks its inputs once; the Triton path it dispatches to assumes them.
    seen = []
    for name in ("bias_act", "modconv", "upfirdn2d"):
        module = importlib.import_module(f"kernels.{name}")

        def recording(tensor, shape, what, check=module.assert_shape):
            seen.append(what)
            check(tensor, shape, what)

        monkeypatch.setattr(module, "assert_shape", recording)
    x, w, s = _inputs(1, 2, 2, 4, 3, torch.float32)
    for up in (1, 2):
        seen.clear()
        kernels.modulated_conv2d(x, w, s, up=up, padding=1, impl="triton", bias=torch.zeros(2), act="lrelu")
        kernels.bias_act(x, torch.zeros(2), impl="triton")
        kernels.upsample2d(x, setup_filter([1, 3, 3, 1]), impl="triton")
        assert seen == [
            *(f"modulated_conv2d: {a}" for a in ("x", "weight", "styles", "bias")),
            "bias_act: b (dim 1 of x [1, 2, 4, 4])",
            "upsample2d: x",
        ]


def test_triton_failure_falls_back_with_one_warning(monkeypatch):
    import ast

    from triton.compiler.errors import CompilationError

    import kernels.modconv as modconv

    def broken(*args, **kwargs):
        raise CompilationError("x = 1", ast.parse("x = 1").body[0], "simulated compile error\nmore detail")

    monkeypatch.setattr(modconv, "_launch", broken)
    x, w, s = _inputs(1, 2, 3, 4, 3, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = kernels.modulated_conv2d(x, w, s, padding=1, impl="triton")
        y2 = kernels.modulated_conv2d(x, w, s, padding=1, impl="triton")
    messages = [str(c.message) for c in caught]
    assert len(messages) == 1 and "CompilationError" in messages[0], messages
    expect = modulated_conv2d_ref(x, w, s, padding=1)
    assert torch.equal(y1, expect) and torch.equal(y2, expect)


def test_a_bug_in_a_triton_wrapper_raises(monkeypatch):
    import kernels.modconv as modconv

    def buggy(*args, **kwargs):
        raise IndexError("tile index out of range")

    monkeypatch.setattr(modconv, "_launch", buggy)
    x, w, s = _inputs(1, 2, 3, 4, 3, torch.float32)
    with pytest.raises(IndexError, match="tile index"):
        kernels.modulated_conv2d(x, w, s, padding=1, impl="triton")


def test_forced_triton_without_cuda_or_interpreter_warns(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(1, 2, 3, 3)
    with pytest.warns(RuntimeWarning, match="needs CUDA tensors"):
        y = kernels.bias_act(x, act="relu", impl="triton")
    torch.testing.assert_close(y, torch.relu(x) * math.sqrt(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_equal_reference(dtype, monkeypatch):
    # Compiled (not interpreted) kernels on the GPU, at a generator layer's shape; TF32 off for float32.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    x, w, s = (t.cuda() for t in _inputs(4, 64, 48, 16, 3, torch.float32, seed=15))
    x = x.to(dtype).requires_grad_(True)
    noise, bias = torch.randn(4, 1, 32, 32, device="cuda", dtype=dtype), torch.randn(48, device="cuda")
    for up in (1, 2):
        kw = dict(up=up, padding=1, noise=noise if up == 2 else None, bias=bias.to(dtype), act="lrelu")
        y = kernels.modulated_conv2d(x, w, s, impl="auto", **kw)
        assert type(y.grad_fn).__name__ == "_ModConvBackward"
        ref = modulated_conv2d_ref(x, w, s, **kw)
        assert _rel(y.float(), ref.float()) <= tol
        (gx,) = torch.autograd.grad(y.float().square().sum(), [x])
        (gx_ref,) = torch.autograd.grad(ref.float().square().sum(), [x])
        assert _rel(gx.float(), gx_ref.float()) <= 5 * tol
    f = setup_filter([1, 3, 3, 1], device="cuda")
    assert _rel(kernels.upsample2d(x, f).float(), kernels.upsample2d(x, f, impl="torch").float()) <= tol
    assert _rel(kernels.bias_act(x, None, act="lrelu").float(), bias_act_ref(x, None, act="lrelu").float()) <= tol


def test_autotune_key_and_tiles_fit_the_kernel():
    import kernels.modconv as modconv

    params = inspect.signature(modconv._modconv_kernel).parameters
    assert set(modconv.TUNE_KEY) <= set(params), "the autotune key names arguments the kernel does not have"
    configs = modconv._tile_configs()
    assert all(set(c.kwargs) == {"BLOCK_P", "BLOCK_O", "BLOCK_I"} for c in configs)
    # dot tiles need >= 16 on every side; powers of two for tl.arange
    assert all(v >= 16 and v & (v - 1) == 0 for c in configs for v in c.kwargs.values())

    def kept(hq, c_out, c_in):
        shape = {"HQ": hq, "WQ": hq, "C_OUT": c_out, "C_IN": c_in}
        return {(c.kwargs["BLOCK_P"], c.kwargs["BLOCK_O"]) for c in modconv._prune_tiles(configs, shape)}

    assert kept(4, 3, 512) == {(16, 64)}  # nothing fits a 4x4 ToRGB: the smallest tile stays
    assert all(p <= 16 for p, _ in kept(4, 512, 512))  # 16 pixels: no 64-pixel tile
    assert {o for _, o in kept(64, 3, 512)} == {16}  # 3 outputs: only the narrow output tiles
    assert len(kept(32, 1024, 512)) == len({(c.kwargs["BLOCK_P"], c.kwargs["BLOCK_O"]) for c in configs})
