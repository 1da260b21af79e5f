"""Model families: one file each (``cogvideox.py``, ...), all behind the interface in ``base.py``.

This registry is the one list of families: the CLIs' ``--model_family`` choices, folder detection, the
presets, the tiny test models and the tests' parametrisations all come from it. Adding a family is adding
its file and one line here.
"""

import importlib

from ..errors import UserError
from .base import ModelFamily, Preset, check_model_folder  # noqa: F401  (Preset: part of the interface)

# family name -> module defining FAMILY; the order is the order of --model_family's choices.
_MODULES = {
    "cogvideox": "receler.families.cogvideox",
    "hunyuan_video": "receler.families.hunyuan_video",
    "wan": "receler.families.wan",
    "ltx_video": "receler.families.ltx_video",
}

FAMILY_NAMES = tuple(_MODULES)


def get_family(name: str) -> ModelFamily:
    if name not in _MODULES:
        raise UserError(f"unknown model family {name!r}; choose one of: {', '.join(_MODULES)} (or auto)")
    return importlib.import_module(_MODULES[name]).FAMILY


def all_families() -> list:
    return [get_family(name) for name in _MODULES]


def all_layouts() -> list:
    return [family.layout for family in all_families()]


def all_presets() -> dict:
    """``{name: Preset}`` of every family's full-size configurations, in registry order."""
    return {preset.name: preset for family in all_families() for preset in family.presets}


def family_of_pipeline_class(pipeline_class: str, exact: bool = False) -> ModelFamily | None:
    """The family a pipeline class name belongs to: one it lists, else (unless ``exact``) one whose other
    pipelines start with the same prefix (e.g. a CogVideoX image-to-video variant); ``None`` if none."""
    families = all_families()
    found = next((f for f in families if pipeline_class in f.pipeline_classes), None)
    if found is None and not exact and pipeline_class:
        found = next((f for f in families if f.pipeline_prefix and pipeline_class.startswith(f.pipeline_prefix)), None)
    return found


def detect_family(model_path) -> ModelFamily:
    """The family of a diffusers folder, from its ``model_index.json`` pipeline class."""
    index = check_model_folder(model_path)
    pipeline_class = index.get("_class_name", "")
    family = family_of_pipeline_class(pipeline_class, exact=True)
    if family is not None:
        return family
    raise UserError(
        f"{model_path} holds a {pipeline_class or 'unknown'} pipeline, which no model family supports "
        f"(supported: {', '.join(c for f in all_families() for c in f.pipeline_classes)}). "
        f"Pass --model_family explicitly if the folder is a renamed pipeline of a supported family."
    )


def family_of_pipeline(pipe) -> ModelFamily:
    """The family of an already loaded pipeline, from its class."""
    family = family_of_pipeline_class(type(pipe).__name__, exact=True)
    if family is None:
        raise UserError(f"a {type(pipe).__name__} is not a pipeline of any supported model family "
                        f"({', '.join(f.display_name for f in all_families())})")
    return family


def resolve_family(name: str, model_path) -> ModelFamily:
    """``--model_family auto`` reads the folder; an explicit name is taken as given."""
    return detect_family(model_path) if name == "auto" else get_family(name)
