"""Full-size model configurations with random weights, for benchmarks and memory estimates (no download).

Each family lists its presets (``ModelFamily.presets``: the transformer's published config, the shapes of
its text conditioning, the video size it is usually trained at); :data:`PRESETS` gathers them by name.
``build_preset_pipeline`` makes a pipeline holding only the transformer (random weights, created directly
on the target device and dtype) and the scheduler: all that training needs once prompts are encoded.
"""

import dataclasses

import torch

from .families import Preset, all_presets, get_family

PRESETS = all_presets()

__all__ = ["PRESETS", "Preset", "build_preset_pipeline", "build_transformer", "pipeline_around", "random_conditioning"]


def build_transformer(preset: Preset, dtype=torch.bfloat16, device="cpu"):
    """The preset's transformer with random weights, allocated directly on ``device`` in ``dtype``."""
    family = get_family(preset.family)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = family.transformer_class()(**preset.transformer_config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def build_preset_pipeline(preset: Preset, dtype=torch.bfloat16, device="cpu", seed=0):
    """A pipeline with only a random-weight transformer and the family's scheduler (no text encoders, no VAE);
    a ``tiny`` preset is the family's whole tiny offline pipeline."""
    family = get_family(preset.family)
    if preset.tiny:
        pipe = family.build_tiny(seed=seed)
        pipe.transformer.to(device=device, dtype=dtype)
        return pipe
    torch.manual_seed(seed)
    return pipeline_around(family, build_transformer(preset, dtype, device))


def pipeline_around(family, transformer):
    """The family's pipeline holding only ``transformer`` and its default scheduler (see ``ModelFamily``)."""
    return family.pipeline_around(transformer)


def random_conditioning(preset: Preset, pipe, batch_size: int, device, dtype, seed=0) -> dict:
    """Text conditioning with the real shapes: what a prompt would give after encoding."""
    family = get_family(preset.family)
    if preset.tiny:  # the tiny model's own text shapes, read from one encoded prompt
        with torch.no_grad():
            emb = family.encode_prompts(pipe, [""], "cpu")["encoder_hidden_states"]
        preset = dataclasses.replace(preset, text_length=emb.shape[1], text_dim=emb.shape[2])
    cond = family.random_conditioning(preset, batch_size, torch.Generator().manual_seed(seed))
    return {k: v.to(device, dtype) for k, v in cond.items()}
