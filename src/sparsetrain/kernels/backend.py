"""Which implementation serves a kernel call: our C++ (CPU) / Triton (CUDA) kernels or stock torch.

``SPARSETRAIN_KERNELS`` (read on every call, so a test or a user can switch it at run time):
- ``auto`` (default): our kernels where they are available for the device and dtype; if they cannot be
  built or imported, warn once (with the reason and the fix) and use the stock-torch formulation.
- ``cpp``: our kernels are required (C++ on CPU, Triton on CUDA); unavailable -> KernelUnavailableError.
- ``torch``: the stock-torch formulation everywhere.
Every implementation is always-sparse: the fallback changes speed, never what is allocated.
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType

import torch

from ..errors import check_choice
from . import torch_ops

ENV_VAR = "SPARSETRAIN_KERNELS"
CHOICES = ("auto", "cpp", "torch")
CPP_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class KernelUnavailableError(RuntimeError):
    """Our kernels were required (SPARSETRAIN_KERNELS=cpp) but cannot serve this call."""


class KernelFallbackWarning(RuntimeWarning):
    """Our kernels could not be loaded; the (slower, still always-sparse) torch formulation serves."""


_warned: set[str] = set()
_triton: ModuleType | None = None
_triton_error: str | None = None


def requested() -> str:
    """The validated value of SPARSETRAIN_KERNELS."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    return check_choice(value, ENV_VAR, CHOICES)


def _load_cpp() -> tuple[ModuleType | None, str | None]:
    from . import cpp_ext

    try:
        cpp_ext.load()
    except RuntimeError as exc:
        return None, str(exc)
    return cpp_ext, None


def _load_triton() -> tuple[ModuleType | None, str | None]:
    global _triton, _triton_error
    if _triton is None and _triton_error is None:
        try:
            from . import triton_ops
            _triton = triton_ops
        except Exception as exc:  # ImportError, or triton failing its own start-up checks
            _triton_error = f"cannot import triton ({type(exc).__name__}: {exc})"
    return _triton, _triton_error


_FIX = {
    "cpu": "install g++ and ninja (`pip install ninja`), then run `python -m sparsetrain.kernels.build` to see "
           "the compiler output",
    "cuda": "install triton (`pip install triton`) matching your torch",
}


def _fallback(device: str, reason: str) -> ModuleType:
    if requested() == "cpp":
        raise KernelUnavailableError(
            f"{ENV_VAR}=cpp requires our {device} kernels, but they are unavailable: {reason}. "
            f"Fix: {_FIX.get(device, 'use a CPU or CUDA device')}, or set {ENV_VAR}=auto or torch.")
    if device not in _warned:
        _warned.add(device)
        warnings.warn(f"sparsetrain: our {device} sparse kernels are unavailable ({reason}); using the stock-torch "
                      f"sparse formulation, which is slower but still always-sparse. Fix: {_FIX.get(device, '')}. "
                      f"Silence by setting {ENV_VAR}=torch.", KernelFallbackWarning, stacklevel=4)
    return torch_ops


def implementation(device: torch.device, dtype: torch.dtype) -> ModuleType:
    """The module (cpp_ext, triton_ops or torch_ops) that serves a call on this device and dtype."""
    if requested() == "torch":
        return torch_ops
    if device.type == "cpu":
        if dtype not in CPP_DTYPES:
            return _fallback_dtype("cpu", dtype, CPP_DTYPES)
        module, error = _load_cpp()
        return module if module is not None else _fallback("cpu", error or "unknown error")
    if device.type == "cuda":
        if dtype not in TRITON_DTYPES:
            return _fallback_dtype("cuda", dtype, TRITON_DTYPES)
        module, error = _load_triton()
        return module if module is not None else _fallback("cuda", error or "unknown error")
    return _fallback(device.type, f"no kernels of ours for device type {device.type!r}")


def _fallback_dtype(device: str, dtype: torch.dtype, allowed: tuple[torch.dtype, ...]) -> ModuleType:
    """Our kernels do not cover this dtype: an error when they are required, else the torch formulation."""
    if requested() == "cpp":
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise KernelUnavailableError(f"{ENV_VAR}=cpp: our {device} kernels support dtypes {names}; got "
                                     f"{str(dtype).replace('torch.', '')}. Set {ENV_VAR}=auto to use torch for it.")
    return torch_ops


def active_backends() -> dict[str, str]:
    """Which implementation serves float32 calls on each device type (may build the CPU kernels once)."""
    if requested() == "torch":
        out = {device: f"torch-sparse ({ENV_VAR}=torch)" for device in ("cpu", "cuda")}
    else:
        out = {}
        for device, ours, load in (("cpu", "cpp", _load_cpp), ("cuda", "triton", _load_triton)):
            error = load()[1]
            out[device] = ours if error is None else f"torch-sparse (ours unavailable: {error})"
    if not torch.cuda.is_available():
        out["cuda"] += " [no CUDA device present]"
    return out
