"""Device strings as the commands accept them: checked once, early, with a one-line error."""

from __future__ import annotations

import re

import torch

from .errors import DeviceError

DEVICE_FORMS = "cpu, cuda, cuda:N, mps or auto"
_DEVICE = re.compile(r"(?P<kind>cpu|mps|auto|cuda)(?::(?P<index>[0-9]+))?")


def resolve_device(spec: object, what: str = "--device") -> str:
    """The device `spec` names, checked: cpu, cuda, cuda:N, mps, or auto (cuda when present, else cpu).

    `what` names the setting in the message (--device, train.device). Returns the resolved string
    ("auto" becomes "cuda" or "cpu"); raises DeviceError before any model or data is touched.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = spec.strip() if isinstance(spec, str) else None
    match = _DEVICE.fullmatch(text) if text else None
    if match is None or (match["index"] is not None and match["kind"] != "cuda"):
        raise DeviceError(f"{what} {spec!r} is not a device; use {DEVICE_FORMS}")
    kind = match["kind"]
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{what} is {text} but no CUDA device is available; use --device cpu")
        count = torch.cuda.device_count()
        if match["index"] is not None and int(match["index"]) >= count:
            raise DeviceError(f"{what} is {text} but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"{what} is mps but MPS is not available on this machine; use --device cpu")
    return text


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, as PyTorch reports them: oneDNN then runs bf16 matmuls on the
    tiles, about twice as fast as fp32 at GPT-2-small size (issue 31). With AVX512-BF16 alone bf16 ran
    at 0.6x fp32 on one CPU and up to 1.8x on another (BENCHMARKS.md sections 7 and 10)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_bf16() -> bool:
    """Whether the current CUDA device computes in bf16 natively (Ampere and later), not by emulation."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no including_emulation argument
        return bool(torch.cuda.is_bf16_supported())
    except (AssertionError, RuntimeError):
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX); without it bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
