"""The PyTorch reference ops of `kernels/` against NVlabs' stored results and against first principles."""

import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.bias_act import bias_act_ref
from kernels.modconv import modulated_conv2d_ref
from kernels.upfirdn2d import upfirdn2d_ref

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NV_REF = SHARED / "reference" / "nv_ref.pt"


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def nv_cases():
    if not NV_REF.is_file():
        pytest.skip(f"{NV_REF} is absent (the shared reference tensors are not checked out)")
    return torch.load(NV_REF, weights_only=False)["modconv"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_modconv_matches_nvlabs(nv_cases, index):
    case = nv_cases[index]
    x, w, s = (case[k].clone().requires_grad_(True) for k in ("x", "weight", "styles"))
    y = kernels.modulated_conv2d(
        x, w, s, demodulate=case["demodulate"], up=case["up"], padding=case["padding"], impl="torch"
    )
    assert _rel(y, case["y"]) <= 1e-10
    y.backward(case["grad_y"])
    for t, key in ((x, "grad_x"), (w, "grad_weight"), (s, "grad_styles")):
        assert _rel(t.grad, case[key]) <= 1e-10, key


def test_modconv_equals_grouped_conv_of_modulated_weights():
    # The definition: per-sample weights W·s, demodulated, as one grouped conv (NVlabs' fused path).
    torch.manual_seed(0)
    x, w, s = (
        torch.randn(3, 5, 6, 6, dtype=torch.float64),
        torch.randn(4, 5, 3, 3, dtype=torch.float64),
        torch.randn(3, 5, dtype=torch.float64),
    )
    wn = w[None] * s[:, None, :, None, None]
    wn = wn * (wn.square().sum([2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    expect = F.conv2d(x.reshape(1, 15, 6, 6), wn.reshape(12, 5, 3, 3), padding=1, groups=3).reshape(3, 4, 6, 6)
    assert _rel(modulated_conv2d_ref(x, w, s, padding=1), expect) <= 1e-12


def test_modconv_epilogue_equals_bias_act_after():
    torch.manual_seed(1)
    x, w, s = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(2, 3)
    noise, b = torch.randn(2, 1, 5, 5), torch.randn(4)
    y = kernels.modulated_conv2d(x, w, s, padding=1, impl="torch", noise=noise, bias=b, act="lrelu", clamp=0.5)
    expect = bias_act_ref(modulated_conv2d_ref(x, w, s, padding=1) + noise, b, act="lrelu", clamp=0.5)
    torch.testing.assert_close(y, expect)
    assert y.abs().max() <= 0.5


def test_bias_act_definitions():
    x, b = torch.randn(2, 3, 4), torch.randn(3)
    torch.testing.assert_close(bias_act_ref(x, b, act="lrelu"), F.leaky_relu(x + b[:, None], 0.2) * 2**0.5)
    torch.testing.assert_close(bias_act_ref(x, b, act="relu", gain=3.0), F.relu(x + b[:, None]) * 3)
    torch.testing.assert_close(bias_act_ref(x, None, act="linear", clamp=0.1), x.clamp(-0.1, 0.1))
    with pytest.raises(ValueError, match="act must be"):
        bias_act_ref(x, act="gelu")
    with pytest.raises(ValueError, match=r"bias_act: b \(dim 1 of x \[2, 3, 4\]\) must be \[3\], got \[4\]"):
        kernels.bias_act(x, torch.randn(4), impl="torch")  # checked once, by the op (its paths assume checked inputs)


def test_upfirdn2d_resampling_sizes_and_gain():
    f = kernels.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and abs(f.sum().item() - 1) < 1e-6
    x = torch.ones(1, 2, 8, 8)
    up, down = kernels.upsample2d(x, f), kernels.downsample2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    # A constant image stays constant away from the borders (the filter's DC gain is 1 per output pixel).
    torch.testing.assert_close(up[..., 3:-3, 3:-3], torch.ones_like(up[..., 3:-3, 3:-3]))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))


def test_upfirdn2d_identity_and_crop():
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(upfirdn2d_ref(x, None), x)
    torch.testing.assert_close(upfirdn2d_ref(x, None, padding=[-1, -2, 0, -1]), x[:, :, :-1, 1:-2])


def test_bad_impl_and_shapes_raise():
    x, w, s = torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3), torch.randn(1, 3)
    with pytest.raises(ValueError, match="impl must be"):
        kernels.modulated_conv2d(x, w, s, impl="cuda")
    with pytest.raises(ValueError, match=r"modulated_conv2d: styles must be \[1, 3\], got \[1, 4\]"):
        kernels.modulated_conv2d(x, w, torch.randn(1, 4))
    with pytest.raises(ValueError, match="up must be"):
        kernels.modulated_conv2d(x, w, s, up=4)


def test_shape_errors_name_the_op_and_argument_with_rank_and_sizes():
    f = kernels.setup_filter([1, 3, 3, 1])
    with pytest.raises(ValueError, match=r"^upsample2d: x must be 4-D \[\*, \*, \*, \*\], got 3-D \[2, 8, 8\]$"):
        kernels.upsample2d(torch.ones(2, 8, 8), f)
    with pytest.raises(ValueError, match=r"^conv2d_resample: w must be \[\*, 3, \*, \*\], got \[4, 2, 3, 3\]$"):
        kernels.conv2d_resample(torch.ones(1, 3, 8, 8), torch.ones(4, 2, 3, 3), f, down=2)
    with pytest.raises(ValueError, match=r"^modulated_conv2d: bias must be \[2\], got \[3\]$"):
        kernels.modulated_conv2d(torch.ones(1, 3, 4, 4), torch.ones(2, 3, 3, 3), torch.ones(1, 3), bias=torch.ones(3))


def shape_checks(monkeypatch):
    """The `what` of every shape check the ops make from now on (a list that fills as they run)."""
    seen = []
    for name in ("bias_act", "conv2d_resample", "modconv", "upfirdn2d"):
        module = importlib.import_module(f"kernels.{name}")  # `kernels.conv2d_resample` is the function

        def recording(tensor, shape, what, check=module.assert_shape):
            seen.append(what)
            check(tensor, shape, what)

        monkeypatch.setattr(module, "assert_shape", recording)
    return seen


@pytest.mark.parametrize("up", [1, 2])
def test_each_argument_is_checked_once_per_call(monkeypatch, up):
    # The public op checks its inputs; the reference it dispatches to assumes them (an op it builds on, such as
    # conv2d_resample, checks its own, intermediate, arguments).
    seen = shape_checks(monkeypatch)
    x, w, s = torch.randn(2, 3, 4, 4), torch.randn(5, 3, 3, 3), torch.randn(2, 3)
    kernels.modulated_conv2d(
        x, w, s, up=up, padding=1, impl="torch", noise=torch.randn(2, 1, 1, 1), bias=torch.zeros(5), act="lrelu"
    )
    assert seen[:5] == [f"modulated_conv2d: {a}" for a in ("x", "weight", "styles", "bias", "noise")]
    kernels.bias_act(x, torch.zeros(3), impl="torch")
    kernels.upsample2d(x, kernels.setup_filter([1, 3, 3, 1]), impl="torch")
    assert len(seen) == len(set(seen)), seen


def test_conv2d_resample_down2_equals_conv_then_filter():
    # Filtering and convolving commute: NVlabs' "blur, then strided conv" = "conv, then blur and decimate".
    torch.manual_seed(2)
    f = kernels.setup_filter([1, 3, 3, 1], device="cpu").double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w3, w1 = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, 3, 1, 1, dtype=torch.float64)
    y3 = kernels.conv2d_resample(x, w3, f, down=2, padding=1, impl="torch")
    assert _rel(y3, upfirdn2d_ref(F.conv2d(x, w3, padding=2), f, down=2)) <= 1e-12
    y1 = kernels.conv2d_resample(x, w1, f, down=2, impl="torch")
    assert _rel(y1, kernels.downsample2d(F.conv2d(x, w1), f, impl="torch")) <= 1e-12
    assert y3.shape == y1.shape == (2, 4, 4, 4)
