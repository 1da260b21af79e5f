"""Training-free baselines the erasers are compared with.

- :mod:`receler.baselines.safree`: SAFREE's concept-orthogonal token projection (Yoon et al., ICLR 2025).
- The negative-prompt baseline needs no code of its own: it is a pipeline argument (see
  :mod:`receler.inference`).
"""

from .safree import (
    DEFAULT_NUDITY_KEYWORDS,
    Safree,
    SafreeFilter,
    default_keywords,
    detect_trigger_tokens,
    orthonormal_basis,
    project_tokens,
    self_validated_steps,
)

__all__ = [
    "DEFAULT_NUDITY_KEYWORDS",
    "Safree",
    "SafreeFilter",
    "default_keywords",
    "detect_trigger_tokens",
    "orthonormal_basis",
    "project_tokens",
    "self_validated_steps",
]
