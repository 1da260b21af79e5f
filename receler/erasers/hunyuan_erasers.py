"""HunyuanVideo erasers under the original release's import path and signatures.

Erasers sit on every ``HunyuanVideoSingleTransformerBlock.attn``; ``eraser_weight`` scales their
output at inference (``h + eraser_weight * eraser(h)``).
"""

from ..checkpoint import load_erasers, save_eraser_folder
from ..erasers.wrapper import attach_erasers
from ..families.hunyuan_video import LAYOUT, HunyuanWithEraser

__all__ = [
    "HunyuanWithEraser",
    "setup_hunyuan_adapter_eraser",
    "inject_eraser",
    "save_hunyuan_eraser_from_transformer",
]


def setup_hunyuan_adapter_eraser(model, eraser_rank, device=None, dtype=None, eraser_weight=1.0):
    """Wrap every single-stream block's attention with a fresh eraser; returns ``{module_name: AdapterEraser}``.

    ``dtype`` is accepted for compatibility and ignored: erasers keep float32 parameters.
    """
    return attach_erasers(model, LAYOUT, eraser_rank, eraser_weight, device=device)


def inject_eraser(transformer, eraser_ckpt, eraser_rank=None, eraser_type="adapter", eraser_weight=1.0):
    """Load erasers (the published dict, an eraser folder or a weights file) onto a HunyuanVideo
    transformer, validated first; ``eraser_weight`` sets the inference-time strength."""
    if eraser_type != "adapter":
        raise ValueError(f"eraser_type {eraser_type!r} is not supported (only 'adapter')")
    return load_erasers(transformer, LAYOUT, eraser_ckpt, eraser_rank=eraser_rank, eraser_weight=eraser_weight)


def save_hunyuan_eraser_from_transformer(folder_path, transformer, extra_config=None):
    """Write ``eraser_weights.pt``, ``eraser_weights.safetensors`` and ``eraser_config.json`` atomically."""
    return save_eraser_folder(folder_path, transformer, LAYOUT, extra_config)
