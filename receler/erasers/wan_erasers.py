"""Wan erasers, with the same helpers as ``cogvideo_erasers`` and ``hunyuan_erasers``."""

from ..checkpoint import load_erasers, save_eraser_folder
from ..erasers.wrapper import attach_erasers
from ..families.wan import LAYOUT, WanWithEraser

__all__ = ["WanWithEraser", "setup_wan_adapter_eraser", "inject_eraser", "save_wan_eraser_from_transformer"]


def setup_wan_adapter_eraser(model, eraser_rank, device=None, dtype=None):
    """Wrap every ``WanTransformerBlock.attn1`` with a fresh eraser (float32 whatever ``dtype`` says)."""
    return attach_erasers(model, LAYOUT, eraser_rank, device=device)


def inject_eraser(transformer, eraser_ckpt, eraser_rank=None, eraser_type="adapter", eraser_weight=1.0):
    """Load erasers (the published dict, an eraser folder or a weights file) onto a Wan transformer, validated
    first; ``eraser_weight`` sets the inference-time strength."""
    if eraser_type != "adapter":
        raise ValueError(f"eraser_type {eraser_type!r} is not supported (only 'adapter')")
    return load_erasers(transformer, LAYOUT, eraser_ckpt, eraser_rank=eraser_rank, eraser_weight=eraser_weight)


def save_wan_eraser_from_transformer(folder_path, transformer, extra_config=None):
    return save_eraser_folder(folder_path, transformer, LAYOUT, extra_config)
