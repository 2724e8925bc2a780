"""Choice between the PyTorch reference and the Triton path of each op in `kernels/`.

`impl="auto"` takes Triton for CUDA tensors and the reference elsewhere; "torch" and "triton" force one.
Triton kernels are compiled at first use (`jit` below), so the `TRITON_INTERPRET` switch is read at that
moment: tests set it for themselves only and run the Triton path on CPU tensors through Triton's interpreter.
Device functions that kernels share (`device_function`) are jitted with the kernel that calls them, in the same
mode, for the same reason.
When the Triton path cannot run (no Triton, a compile, resource or launch error, an unsupported configuration)
the reference is used and one warning per op names the reason; that decision is made once per op and
configuration (the key a caller passes), so a failing compile is not retried on every call. Any other exception
of a Triton path is a bug and raises: a silent slow path would hide it.
"""

import functools
import os
import types
import warnings

import torch

try:  # the reference ops work without Triton; kernels are compiled only when a Triton path runs
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = types.SimpleNamespace(constexpr=None)  # lets the kernel signatures be defined; they never run

IMPLS = ("auto", "torch", "triton")
_warned = set()  # ops that have already warned about falling back
_paths: dict[str, tuple[str, str]] = {}  # op -> (path of its last call, why), for report()
_broken = set()  # (op, key): configurations whose Triton path failed to compile or launch


def _cannot_run_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "Triton cannot run this here" rather than "the kernel is wrong"."""
    found = [NotImplementedError]  # a configuration a wrapper does not support
    if triton is not None:
        from triton.compiler import errors as compile_errors
        from triton.runtime import errors as runtime_errors

        names = [
            (compile_errors, "CompilationError"),
            (runtime_errors, "OutOfResources"),
            (runtime_errors, "PTXASError"),
            (runtime_errors, "AutotunerError"),
        ]
        found += [getattr(module, name) for module, name in names if hasattr(module, name)]
    return tuple(found)


def _is_launch_error(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and str(err).lstrip().startswith("Triton Error")  # driver launch


def interpreting() -> bool:
    """True when Triton's CPU interpreter is switched on (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_function(fn):
    """Marks `fn` as a Triton device function that kernels call by its module-level name. It stays a plain
    function there: `jit` compiles it in the mode of the kernel that calls it, since a `triton.jit` made at
    import would be a compiled-mode function, which the interpreter switched on later cannot call."""
    fn.triton_device_function = True
    return fn


def _with_device_functions(fn, interpret: bool):
    """`fn`, or a copy of it whose globals hold the device functions it names jitted for this mode (the
    module's own globals are left as they are)."""
    called = {
        name: fn.__globals__[name]
        for name in fn.__code__.co_names
        if getattr(fn.__globals__.get(name), "triton_device_function", False)
    }
    if not called:
        return fn
    scope = dict(fn.__globals__, **{name: _jit_cached(helper, interpret) for name, helper in called.items()})
    copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__module__, copy.__qualname__, copy.__kwdefaults__ = fn.__module__, fn.__qualname__, fn.__kwdefaults__
    return copy


@functools.cache
def _jit_cached(fn, interpret: bool):
    # interpret is part of the cache key: triton.jit reads TRITON_INTERPRET itself
    return triton.jit(_with_device_functions(fn, interpret))


def jit(fn):
    """`triton.jit(fn)`, made at first use and again whenever `TRITON_INTERPRET` changes."""
    return _jit_cached(fn, interpreting())


@functools.cache
def autotuned(fn, configs: tuple, key: tuple, prune=None):
    """`triton.autotune` over `configs` (triton.Config) of `triton.jit(fn)`, re-tuned for each new value of the
    `key` arguments (and dtypes). Only on a device: tuning times each configuration with CUDA events, which the
    interpreter has not; callers pass fixed tiles there. Results are cached on disk (Triton's cache folder), so
    later processes of the same machine skip the tuning."""
    return triton.autotune(
        configs=list(configs),
        key=list(key),
        prune_configs_by=None if prune is None else {"early_config_prune": prune},
        warmup=5,  # ms per configuration (Triton's default 25 + 100): a few tenths of a second per new shape
        rep=20,
        cache_results=True,
    )(triton.jit(_with_device_functions(fn, interpret=False)))


def use_triton(op: str, impl: str, *tensors) -> bool:
    """Whether `op` should take its Triton path for these tensors (None entries are ignored)."""
    if impl not in IMPLS:
        raise ValueError(f"kernels.{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        note(op, "reference", "impl=torch")
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if impl == "auto":
        chosen = on_cuda and _triton_importable()
        note(
            op,
            "triton" if chosen else "reference",
            "impl=auto on CUDA" if chosen else "impl=auto: " + ("no Triton" if on_cuda else "not on CUDA"),
        )
        return chosen
    if not _triton_importable():
        fallback(op, "Triton is not installed")
        return False
    if not on_cuda and not interpreting():
        fallback(op, "Triton needs CUDA tensors (or TRITON_INTERPRET=1 for its CPU interpreter)")
        return False
    return True


def _triton_importable() -> bool:
    return triton is not None


def strict() -> bool:
    """VOICE2FACE_STRICT_KERNELS=1: a fallback is an error (the GPU check sets it, so a broken kernel fails)."""
    return os.environ.get("VOICE2FACE_STRICT_KERNELS", "0") == "1"


def note(op: str, path: str, why: str) -> None:
    _paths[op] = (path, why)


def report() -> dict[str, tuple[str, str]]:
    """{op: (path its last call took, why)} for the ops called so far in this process."""
    return dict(_paths)


def fallback(op: str, reason: str) -> None:
    """Warn once per op that the PyTorch reference replaces its Triton path, and why (raise when strict)."""
    note(op, "reference", f"fallback: {reason}")
    if strict():
        raise RuntimeError(f"kernels.{op}: the Triton path cannot run ({reason}) and VOICE2FACE_STRICT_KERNELS=1")
    if op not in _warned:
        warnings.warn(
            f"kernels.{op}: using the PyTorch reference instead of Triton: {reason}",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned.add(op)  # after the warning, so that a warnings-as-errors filter sees every failure


def run(op: str, triton_fn, ref_fn, key=None):
    """Call `triton_fn()`; if Triton cannot run it (compile, resource or launch error, unsupported
    configuration), warn once, remember `(op, key)` and return `ref_fn()` now and on later calls of that
    configuration. Any other exception propagates."""
    if (op, key) in _broken:
        note(op, "reference", "this configuration failed in Triton earlier")
        return ref_fn()
    try:
        out = triton_fn()
        note(op, "triton", "Triton ran")
        return out
    except torch.OutOfMemoryError:
        raise
    except Exception as err:
        if not (isinstance(err, _cannot_run_errors()) or _is_launch_error(err)):
            raise
        _broken.add((op, key))
        fallback(op, f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
        return ref_fn()
