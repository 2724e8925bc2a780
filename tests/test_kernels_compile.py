"""The Triton kernels compiled ahead of time for a GPU on a machine without one.

The interpreter tests (test_kernels_triton.py) run the kernels' Python, not Triton's compiler: a kernel that
the interpreter runs can still fail to compile (a device function called in the wrong mode, a type the code
generator rejects). Triton ships its NVIDIA backend with ptxas, so the whole pipeline (TTIR, TTGIR, LLVM IR,
PTX, cubin) runs here for an sm_90 target, as it would at a kernel's first launch on an H100/H200.
"""

import pytest

pytest.importorskip("triton", reason="Triton is not installed")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kernels import _dispatch  # noqa: E402
from kernels.bias_act import ACT_CODES, _bias_act_kernel, act_gain_clamp  # noqa: E402
from kernels.modconv import _modconv_kernel  # noqa: E402

POINTERS = {
    "bias_act": ("x_ptr", "b_ptr", "y_ptr", "params_ptr"),
    "modconv": ("x_ptr", "s_ptr", "w_ptr", "d_ptr", "noise_ptr", "bias_ptr", "y_ptr", "c_ptr", "params_ptr"),
}


@pytest.fixture
def compiled_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compile now, not from an earlier run's cache
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as err:
        pytest.skip(f"this Triton has no ahead-of-time compile API: {err}")
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("this Triton has no NVIDIA backend")
    return ASTSource, GPUTarget("cuda", 90, 32)


def _compile(compiled_mode, fn, pointers, constexprs, dtype="fp32"):
    """The cubin of `fn` for sm_90 with these constexprs; tensors of `dtype` (params float32), the rest int32."""
    ast_source, target = compiled_mode
    kernel = _dispatch.jit(fn)
    assert isinstance(kernel, triton.runtime.JITFunction), type(kernel)

    def arg_type(name):
        if name in constexprs:
            return "constexpr"
        if name == "params_ptr":
            return "*fp32"
        return f"*{dtype}" if name in pointers else "i32"

    signature = {name: arg_type(name) for name in kernel.arg_names}
    return triton.compile(ast_source(kernel, signature, constexprs), target=target)


def test_a_device_function_stays_plain_and_is_jitted_per_mode():
    """Kernels call `act_gain_clamp` by name; in compiled mode it must be a JITFunction, in the interpreter a
    plain function, so the module keeps the plain one and each jitted kernel gets its own."""
    assert not isinstance(act_gain_clamp, triton.runtime.JITFunction)
    compiled = _dispatch._jit_cached(_bias_act_kernel, interpret=False)
    assert isinstance(compiled.fn.__globals__["act_gain_clamp"], triton.runtime.JITFunction)
    assert compiled.fn.__globals__ is not _bias_act_kernel.__globals__


@pytest.mark.parametrize("act", ["linear", "lrelu"])
def test_bias_act_compiles_for_sm90(compiled_mode, act):
    constexprs = dict(ACT=ACT_CODES[act], HAS_BIAS=True, HAS_CLAMP=act == "lrelu", BLOCK=1024)
    compiled = _compile(compiled_mode, _bias_act_kernel, POINTERS["bias_act"], constexprs)
    assert compiled.asm["cubin"] and ".entry _bias_act_kernel" in compiled.asm["ptx"]


@pytest.mark.parametrize("up, dtype", [(1, "fp32"), (2, "bf16")])
@pytest.mark.integration
def test_modconv_compiles_for_sm90(compiled_mode, up, dtype):
    """Every optional part of the fused kernel on: style, demodulation, noise, bias, lrelu, clamp, stored c."""
    constexprs = dict(
        K=3,
        UP=up,
        ACT=ACT_CODES["lrelu"],
        HAS_S=True,
        HAS_D=True,
        HAS_NOISE=True,
        HAS_BIAS=True,
        HAS_CLAMP=True,
        STORE_C=True,
        ACC_DTYPE=tl.float32,
        PRECISION="tf32" if dtype == "fp32" else "ieee",
        BLOCK_P=32,
        BLOCK_O=64,
        BLOCK_I=32,
    )
    compiled = _compile(compiled_mode, _modconv_kernel, POINTERS["modconv"], constexprs, dtype)
    ptx = compiled.asm["ptx"]
    assert compiled.asm["cubin"] and ".entry _modconv_kernel" in ptx
    assert "mma" in ptx  # tl.dot became tensor-core instructions, not a scalar loop
