"""Training-free baselines the erasers are compared with.

- :mod:`receler.baselines.safree`: SAFREE's concept-orthogonal token projection (Yoon et al., ICLR 2025), as
  its authors run it (``variant="official"``) or as this project first adapted it (``"adapted"``); see
  ``docs/safree.md``.
- The negative-prompt baseline needs no code of its own: it is a pipeline argument (see
  :mod:`receler.inference`).
"""

from .safree import (
    DEFAULT_NUDITY_KEYWORDS,
    OFFICIAL_NUDITY_KEYWORDS,
    VARIANTS,
    Safree,
    SafreeFilter,
    default_keywords,
    detect_trigger_tokens,
    official_self_validated_steps,
    orthonormal_basis,
    project_tokens,
    self_validated_steps,
)

__all__ = [
    "DEFAULT_NUDITY_KEYWORDS",
    "OFFICIAL_NUDITY_KEYWORDS",
    "VARIANTS",
    "Safree",
    "SafreeFilter",
    "default_keywords",
    "detect_trigger_tokens",
    "official_self_validated_steps",
    "orthonormal_basis",
    "project_tokens",
    "self_validated_steps",
]
