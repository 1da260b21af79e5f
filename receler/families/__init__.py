"""Model families: one file each (``cogvideox.py``, ...), all behind the interface in ``base.py``."""

import importlib

from ..errors import UserError
from .base import ModelFamily, check_model_folder

# family name -> module defining FAMILY; the order is the order of --model_family's choices.
_MODULES = {
    "cogvideox": "receler.families.cogvideox",
    "hunyuan_video": "receler.families.hunyuan_video",
    "wan": "receler.families.wan",
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


def detect_family(model_path) -> ModelFamily:
    """The family of a diffusers folder, from its ``model_index.json`` pipeline class."""
    index = check_model_folder(model_path)
    pipeline_class = index.get("_class_name", "")
    for family in all_families():
        if pipeline_class in family.pipeline_classes:
            return family
    raise UserError(
        f"{model_path} holds a {pipeline_class or 'unknown'} pipeline, which no model family supports "
        f"(supported: {', '.join(c for f in all_families() for c in f.pipeline_classes)}). "
        f"Pass --model_family explicitly if the folder is a renamed pipeline of a supported family."
    )


def family_of_pipeline(pipe) -> ModelFamily:
    """The family of an already loaded pipeline, from its class."""
    pipeline_class = type(pipe).__name__
    for family in all_families():
        if pipeline_class in family.pipeline_classes:
            return family
    raise UserError(f"a {pipeline_class} is not a pipeline of any supported model family "
                    f"({', '.join(f.display_name for f in all_families())})")


def resolve_family(name: str, model_path) -> ModelFamily:
    """``--model_family auto`` reads the folder; an explicit name is taken as given."""
    return detect_family(model_path) if name == "auto" else get_family(name)
