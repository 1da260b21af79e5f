"""Wrapping a transformer's attention modules with erasers, for any model family.

A model family says where its erasers sit with an :class:`EraserLayout` (which block list, which
attention attribute). Everything else here is family-agnostic: wrap, collect, read and write the
published ``{module_name: adapter_state_dict}`` layout, and validate a checkpoint before loading any
of it.
"""

import re
from dataclasses import dataclass

import torch
from torch import nn

from .utils import AdapterEraser, EraserControlMixin

ADAPTER_KEYS = ("down.weight", "down.bias", "up.weight", "up.bias")


class AttentionWithEraser(nn.Module):
    """An attention module followed by an eraser on its first (video) output: ``h + w * eraser(h)``.

    Works for attentions that return ``(video, text)`` (CogVideoX, HunyuanVideo single blocks) and for
    those that return one tensor (Wan self-attention); the text stream passes untouched. Attribute
    lookups are deliberately not forwarded to the inner attention, so diffusers does not see it twice.
    """

    def __init__(self, attn: nn.Module, eraser_rank: int, eraser_weight: float = 1.0):
        super().__init__()
        self.attn = attn
        self.eraser_weight = eraser_weight
        self.adapter = AdapterEraser(attention_width(attn), eraser_rank)
        device = next(attn.parameters()).device
        if device.type != "meta":
            self.adapter.to(device)

    def forward(self, *args, **kwargs):
        out = self.attn(*args, **kwargs)
        if not self.adapter.use_eraser:
            return out
        if isinstance(out, tuple):
            return (self._erase(out[0]),) + tuple(out[1:])
        return self._erase(out)

    def _erase(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.eraser_weight * self.adapter(hidden_states)


class EraserStack(nn.Module, EraserControlMixin):
    """Several erasers on one attention, each with its weight: ``sum_i w_i eraser_i(h)``.

    Every eraser sees the same input ``h`` (the attention's output), and their outputs add up before the
    residual: stacking erasers trained apart is summing their corrections, not chaining them. Ranks may differ.
    """

    def __init__(self, erasers: list, weights: list):
        super().__init__()
        if len(erasers) != len(weights):
            raise ValueError(f"{len(erasers)} erasers but {len(weights)} weights")
        self.members = nn.ModuleList(erasers)
        self.weights = [float(w) for w in weights]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return sum(w * eraser(hidden_states) for w, eraser in zip(self.weights, self.members))


def attention_width(attn: nn.Module) -> int:
    """The width of the video stream an attention module returns (its value projection's input)."""
    return attn.to_v.weight.shape[-1]


@dataclass(frozen=True)
class EraserLayout:
    """Where a model family's erasers sit: ``{blocks_attr}.{i}.{attn_attr}`` is wrapped by ``wrapper_class``."""

    family: str
    display_name: str
    blocks_attr: str
    attn_attr: str
    wrapper_class: type = AttentionWithEraser

    def module_name(self, index: int) -> str:
        """The published checkpoint key of eraser ``index``, e.g. ``transformer_blocks.3.attn1.adapter``."""
        return f"{self.blocks_attr}.{index}.{self.attn_attr}.adapter"

    @property
    def key_pattern(self) -> "re.Pattern":
        return re.compile(rf"^{re.escape(self.blocks_attr)}\.(\d+)\.{re.escape(self.attn_attr)}\.adapter$")

    def blocks(self, transformer: nn.Module):
        blocks = getattr(transformer, self.blocks_attr, None)
        if blocks is None:
            raise ValueError(
                f"{type(transformer).__name__} has no '{self.blocks_attr}': it is not a {self.display_name} transformer"
            )
        return blocks

    def attention(self, block: nn.Module) -> nn.Module:
        """The block's attention, unwrapped if an eraser already sits on it."""
        attn = getattr(block, self.attn_attr)
        return attn.attn if isinstance(attn, AttentionWithEraser) else attn

    def expected_shapes(self, transformer: nn.Module) -> list:
        """``(module_name, width)`` for every eraser this transformer carries (or would carry)."""
        return [
            (self.module_name(i), attention_width(self.attention(block)))
            for i, block in enumerate(self.blocks(transformer))
        ]


def attach_erasers(transformer: nn.Module, layout: EraserLayout, eraser_rank: int, eraser_weight: float = 1.0,
                   device=None, fresh: bool = False) -> dict:
    """Wrap every block's attention with a fresh (zero) eraser; returns ``{module_name: AdapterEraser}``.

    Blocks that already carry an eraser keep it (only ``eraser_weight`` is updated), so calling this
    twice is harmless; ``fresh=True`` replaces those erasers by new ones instead (a new training run on a
    model that carries erasers starts exactly as on one that does not). ``device`` moves the erasers
    (they stay float32).
    """
    erasers = {}
    for i, block in enumerate(layout.blocks(transformer)):
        attn = getattr(block, layout.attn_attr)
        if not isinstance(attn, AttentionWithEraser):
            attn = layout.wrapper_class(attn, eraser_rank, eraser_weight)
            setattr(block, layout.attn_attr, attn)
        elif fresh:
            old_device = next(attn.adapter.parameters()).device
            attn.adapter = AdapterEraser(attention_width(attn.attn), eraser_rank).to(old_device)
        attn.eraser_weight = eraser_weight
        if device is not None:
            attn.adapter.to(device)
        erasers[layout.module_name(i)] = attn.adapter
    return erasers


def collect_erasers(transformer: nn.Module, layout: EraserLayout) -> dict:
    """``{module_name: AdapterEraser}`` of a transformer that already carries erasers."""
    erasers = {}
    for i, block in enumerate(layout.blocks(transformer)):
        attn = getattr(block, layout.attn_attr)
        if isinstance(attn, AttentionWithEraser):
            erasers[layout.module_name(i)] = attn.adapter
    return erasers


def eraser_state(transformer: nn.Module, layout: EraserLayout) -> dict:
    """The published layout: ``{module_name: {down.weight, down.bias, up.weight, up.bias}}`` (CPU copies)."""
    erasers = collect_erasers(transformer, layout)
    if not erasers:
        raise ValueError(f"this {layout.display_name} transformer carries no erasers to save")
    if any(isinstance(e, EraserStack) for e in erasers.values()):
        raise ValueError("this transformer carries a stack of erasers, which has no single-eraser layout to save; "
                         "save each eraser of the stack from its own training run")
    return {
        name: {k: v.detach().to("cpu", copy=True).contiguous() for k, v in eraser.state_dict().items()}
        for name, eraser in erasers.items()
    }


def eraser_rank_of(state: dict) -> int:
    """The rank of a published-layout state (from the first eraser's down projection)."""
    first = next(iter(state.values()))
    return int(first["down.weight"].shape[0])
