"""The seed toolkit's import path for the losses (``from receler.unlearning_losses import ...``).

Everything here is :mod:`receler.losses`, re-exported unchanged: ``NegativelyGuidedVelocityLoss``
(``L_unlearn``), ``ConceptPreservationLoss`` (``L_pre``), ``MaskLocalizationLoss`` (``L_loc``),
``T2VUnlearningLoss`` (all three, weighted) and the pure tensor functions they call.
"""

from .losses import (  # noqa: F401
    ConceptPreservationLoss,
    MaskLocalizationLoss,
    NegativelyGuidedVelocityLoss,
    T2VUnlearningLoss,
    anchored_base,
    localization_loss,
    negative_guidance_target,
    preserve_loss,
    total_loss,
    unlearn_loss,
)

__all__ = [
    "ConceptPreservationLoss",
    "MaskLocalizationLoss",
    "NegativelyGuidedVelocityLoss",
    "T2VUnlearningLoss",
    "anchored_base",
    "localization_loss",
    "negative_guidance_target",
    "preserve_loss",
    "total_loss",
    "unlearn_loss",
]
