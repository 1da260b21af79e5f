"""Tiny pipelines with random weights, built entirely offline, standing in for real models in tests and demos.

``python -m receler.tiny --family cogvideox --output_dir models/tiny-cogvideox`` writes a diffusers
folder that ``CogVideoXPipeline.from_pretrained`` loads; likewise ``hunyuan_video`` and ``wan``.
"""

import importlib
from pathlib import Path

# family -> (module, builder function); imported lazily so building one family never imports the others.
_BUILDERS = {
    "cogvideox": ("receler.tiny.cogvideox", "build_tiny_cogvideox"),
    "hunyuan_video": ("receler.tiny.hunyuan_video", "build_tiny_hunyuan_video"),
    "wan": ("receler.tiny.wan", "build_tiny_wan"),
}

TINY_FAMILIES = tuple(_BUILDERS)


def build_tiny_pipeline(family: str, **kwargs):
    """Build (in memory) the tiny pipeline of ``family``; ``kwargs`` go to that family's builder."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(_BUILDERS)}")
    module, name = _BUILDERS[family]
    return getattr(importlib.import_module(module), name)(**kwargs)


def save_tiny_pipeline(family: str, folder, **kwargs) -> Path:
    """Build the tiny pipeline of ``family`` and save it as a diffusers folder (plus any extra files it needs)."""
    folder = Path(folder)
    pipe = build_tiny_pipeline(family, **kwargs)
    pipe.save_pretrained(folder)
    extra = getattr(pipe, "_tiny_extra_files", {})  # e.g. HunyuanVideo's prompt template for the tiny tokenizer
    for name, text in extra.items():
        (folder / name).write_text(text)
    return folder
