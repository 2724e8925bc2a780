"""kernels._dispatch.run: the reference replaces a Triton path only when Triton cannot run it, decided once per
op and configuration; a bug in a Triton wrapper raises instead of becoming a silent slow path."""

from __future__ import annotations

import ast

import pytest

from kernels import _dispatch


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(_dispatch, "_warned", set())
    monkeypatch.setattr(_dispatch, "_broken", set())


def failing(error, calls):
    def triton_fn():
        calls.append("triton")
        raise error

    return triton_fn


def test_a_bug_in_the_triton_path_raises():
    with pytest.raises(ValueError, match="wrong index"):
        _dispatch.run("op", failing(ValueError("wrong index"), []), lambda: "ref")


def test_an_unsupported_configuration_falls_back_once_per_configuration():
    calls = []
    with pytest.warns(RuntimeWarning, match="kernels.op: using the PyTorch reference .* NotImplementedError"):
        assert _dispatch.run("op", failing(NotImplementedError("k=5"), calls), lambda: "ref", key=5) == "ref"
    assert _dispatch.run("op", failing(NotImplementedError("k=5"), calls), lambda: "ref", key=5) == "ref"
    assert calls == ["triton"]  # decided once: the second call does not try Triton again
    assert _dispatch.run("op", lambda: "triton", lambda: "ref", key=3) == "triton"  # other configurations do


def test_launch_and_compile_errors_fall_back():
    with pytest.warns(RuntimeWarning):
        assert (
            _dispatch.run("op", failing(RuntimeError("Triton Error [CUDA]: invalid argument"), []), lambda: "ref")
            == "ref"
        )
    if _dispatch.triton is not None:
        from triton.compiler.errors import CompilationError

        error = CompilationError("x = 1", ast.parse("x = 1").body[0], "cannot compile")
        with pytest.warns(RuntimeWarning, match="CompilationError"):
            assert _dispatch.run("op2", failing(error, []), lambda: "ref") == "ref"
    with pytest.raises(RuntimeError, match="shape mismatch"):  # a RuntimeError of ours is a bug
        _dispatch.run("op3", failing(RuntimeError("shape mismatch"), []), lambda: "ref")


def test_report_says_which_path_each_op_took_and_strict_mode_raises(monkeypatch):
    import torch

    import kernels

    monkeypatch.setattr(_dispatch, "_paths", {})
    kernels.bias_act(torch.randn(2, 3), torch.zeros(3), impl="torch")
    kernels.upfirdn2d(torch.randn(1, 1, 4, 4), kernels.setup_filter([1, 1]))  # auto on a CPU tensor
    assert kernels.report() == {
        "bias_act": ("reference", "impl=torch"),
        "upfirdn2d": ("reference", "impl=auto: not on CUDA"),
    }
    monkeypatch.setenv("VOICE2FACE_STRICT_KERNELS", "1")
    strict = r"kernels.op: the Triton path cannot run \(NotImplementedError: k=5\) and VOICE2FACE_STRICT_KERNELS=1"
    with pytest.raises(RuntimeError, match=strict):
        _dispatch.run("op", failing(NotImplementedError("k=5"), []), lambda: "ref")
