"""The seed toolkit's import path for concept localization (``from receler.concept_reg_cogvideo import ...``).

The seed's names, bound to this project's implementation in :mod:`receler.localization` (for every model
family, not only CogVideoX):

- ``AttnMapsCapture`` is :class:`~receler.localization.ConceptAttentionProbe`: the attention of the video
  tokens over the concept's text tokens, read from the model's own attention call, in query chunks;
- ``get_mask`` is :func:`~receler.localization.masks_from_attention`: min-max normalise and threshold;
- ``EraserOutputsCapture`` is :class:`~receler.localization.EraserOutputCapture`: each eraser's output, for
  the localization loss.
"""

from .localization import ConceptAttentionProbe, EraserOutputCapture, concept_positions_mask, layer_masks, masks_from_attention

AttnMapsCapture = ConceptAttentionProbe
get_mask = masks_from_attention
EraserOutputsCapture = EraserOutputCapture

__all__ = [
    "AttnMapsCapture",
    "ConceptAttentionProbe",
    "EraserOutputCapture",
    "EraserOutputsCapture",
    "concept_positions_mask",
    "get_mask",
    "layer_masks",
    "masks_from_attention",
]
