"""Tiny pipelines with random weights, built entirely offline, standing in for real models in tests and demos.

``python -m receler.tiny --family cogvideox --output_dir models/tiny-cogvideox`` writes a diffusers
folder that the family's pipeline class loads; likewise for every other registered family. Each family
names its builder (``ModelFamily.tiny_builder``, a module here), imported only when used.
"""

from pathlib import Path

from ..families import FAMILY_NAMES, get_family

TINY_FAMILIES = FAMILY_NAMES


def build_tiny_pipeline(family: str, **kwargs):
    """Build (in memory) the tiny pipeline of ``family``; ``kwargs`` go to that family's builder."""
    if family not in FAMILY_NAMES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILY_NAMES)}")
    return get_family(family).build_tiny(**kwargs)


def save_tiny_pipeline(family: str, folder, **kwargs) -> Path:
    """Build the tiny pipeline of ``family`` and save it as a diffusers folder the family loads back the same."""
    return get_family(family).save_pipeline(build_tiny_pipeline(family, **kwargs), Path(folder))
