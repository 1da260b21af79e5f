"""Devices and dtypes by name, as every CLI spells them (``--device``, ``--dtype auto|float32|...``)."""

import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str | None) -> torch.device:
    """``None``: the GPU if there is one, else the CPU; otherwise the named device, checked."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return device


def resolve_dtype(name: str, device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU, float32 on a CPU (half precision on a CPU is slow and often unsupported)."""
    if name == "auto":
        name = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16`` (the name ``--dtype`` uses)."""
    return str(dtype).removeprefix("torch.")
