"""CogVideoX erasers under the original release's import path and signatures.

``setup_cogvideo_adapter_eraser``, ``inject_eraser`` and ``save_cogvideo_eraser_from_transformer``
keep the names and arguments of the published code, so existing user scripts run unchanged; they
delegate to the family-agnostic code in ``receler.erasers.wrapper`` and ``receler.checkpoint``.
"""

from ..checkpoint import load_erasers, save_eraser_folder
from ..erasers.wrapper import attach_erasers
from ..families.cogvideox import LAYOUT, CogVideoXWithEraser

__all__ = [
    "CogVideoXWithEraser",
    "setup_cogvideo_adapter_eraser",
    "inject_eraser",
    "save_cogvideo_eraser_from_transformer",
]


def setup_cogvideo_adapter_eraser(model, eraser_rank, device=None, dtype=None):
    """Wrap every ``CogVideoXBlock.attn1`` with a fresh eraser; returns ``{module_name: AdapterEraser}``.

    ``dtype`` is accepted for compatibility and ignored: erasers always keep float32 parameters (they
    compute in float32 and cast their output to the backbone's dtype). ``device`` moves the erasers.
    """
    return attach_erasers(model, LAYOUT, eraser_rank, device=device)


def inject_eraser(transformer, eraser_ckpt, eraser_rank=None, eraser_type="adapter", eraser_weight=1.0):
    """Load erasers onto ``transformer``: ``eraser_ckpt`` is the published dict (``torch.load`` of
    ``eraser_weights.pt``), an eraser folder, or a weights file. The whole checkpoint is validated
    first; a mismatch of family, block count, width or rank raises and loads nothing. ``eraser_weight`` scales
    the erasers' output at inference (0: the clean model, 1: as trained)."""
    if eraser_type != "adapter":
        raise ValueError(f"eraser_type {eraser_type!r} is not supported (only 'adapter')")
    return load_erasers(transformer, LAYOUT, eraser_ckpt, eraser_rank=eraser_rank, eraser_weight=eraser_weight)


def save_cogvideo_eraser_from_transformer(folder_path, transformer, extra_config=None):
    """Write ``eraser_weights.pt``, ``eraser_weights.safetensors`` and ``eraser_config.json`` atomically."""
    return save_eraser_folder(folder_path, transformer, LAYOUT, extra_config)
