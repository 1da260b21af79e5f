"""The eraser itself: a zero-initialised residual bottleneck adapter, and the switch that turns erasers off.

Import paths and names here match the original T2VUnlearning release (``AdapterEraser``,
``EraserControlMixin``, ``DisableEraser``, ``zero_module``) so existing user scripts keep working.
"""

from contextlib import contextmanager

import torch
from torch import nn


class EraserControlMixin:
    """Adds the ``use_eraser`` on/off flag that every eraser carries."""

    _use_eraser = True

    @property
    def use_eraser(self) -> bool:
        return self._use_eraser

    @use_eraser.setter
    def use_eraser(self, state: bool) -> None:
        if not isinstance(state, bool):
            raise TypeError(f"use_eraser must be a bool, got {type(state).__name__}")
        self._use_eraser = state


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (in place) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class AdapterEraser(nn.Module, EraserControlMixin):
    """``Linear(dim, rank) -> GELU -> Linear(rank, dim)``; the up projection starts at zero.

    A fresh eraser therefore outputs exactly zero and changes nothing. Its parameters stay float32
    whatever dtype the surrounding model is cast to (fp16 AdamW updates on the adapter were the cause
    of the NaNs in the first reproductions); it computes in float32 and casts its output back to the
    input's dtype.
    """

    def __init__(self, dim: int, mid_dim: int):
        super().__init__()
        self.down = nn.Linear(dim, mid_dim, dtype=torch.float32)
        self.act = nn.GELU()
        self.up = zero_module(nn.Linear(mid_dim, dim, dtype=torch.float32))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.up(self.act(self.down(hidden_states.to(self.down.weight.dtype))))
        return out.to(hidden_states.dtype)

    def _apply(self, fn, recurse=True):
        # ``model.to(torch.bfloat16)`` / ``.half()`` must move the eraser but not round its weights:
        # find where ``fn`` sends a float32 probe and follow only its device.
        def move_keep_dtype(t: torch.Tensor) -> torch.Tensor:
            if not t.is_floating_point():
                return fn(t)
            target = fn(torch.empty(0, dtype=t.dtype, device=t.device))
            return t.to(device=target.device)

        return super()._apply(move_keep_dtype, recurse)


def iter_erasers(model: nn.Module):
    """Yield ``(name, eraser)`` for every eraser inside ``model`` (any family), in module order."""
    for name, module in model.named_modules():
        if isinstance(module, EraserControlMixin):
            yield name, module


@contextmanager
def erasers_disabled(model: nn.Module):
    """Turn every eraser of ``model`` off for the duration of the block, then restore each one's flag."""
    erasers = [m for _, m in iter_erasers(model)]
    previous = [m.use_eraser for m in erasers]
    try:
        for m in erasers:
            m.use_eraser = False
        yield model
    finally:
        for m, state in zip(erasers, previous):
            m.use_eraser = state


class DisableEraser:
    """``with DisableEraser(transformer): ...`` renders with every eraser off (the frozen model).

    Kept as a class for compatibility with the original release; ``erasers_disabled`` is the same thing
    as a function.
    """

    def __init__(self, model: nn.Module):
        self._ctx = erasers_disabled(model)

    def __enter__(self):
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
