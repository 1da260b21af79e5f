"""The T2VUnlearning losses (docs/method.md, "One update"), as pure tensor functions.

Notation: ``o(.)`` is what the losses compare (by default the final block's feed-forward output on
the video rows); unprimed = erasers off (frozen, no grad), primed = erasers on.

- negatively guided target:  ``v_neg = o_0 - eta * (o_c - o_0)``
- unlearning:                ``L_unlearn = mean((o'_c - v_neg)^2)``
- preservation:              ``L_pre = mean((o'_pre - o_pre)^2)``
- localization:              ``L_loc = mean_l( sum_{tokens outside M_l} mean_d(e_l^2) / #tokens outside M_l )``
                             (per prompt; a batch averages over its prompts)
- total:                     ``L = L_unlearn + alpha * L_loc + beta * L_pre``

The ``nn.Module`` classes at the end keep the names of the seed implementation.
"""

import torch
from torch import nn


def negative_guidance_target(o_concept: torch.Tensor, o_empty: torch.Tensor, eta: float) -> torch.Tensor:
    """Push away from the concept: the unconditional output moved by ``eta`` against the concept direction.

    With an anchor, ``o_empty`` is the base of :func:`anchored_base` instead: the anchor's output moved away from
    the concept (``eta = 0``: the anchor's output itself, concept ablation)."""
    return o_empty - eta * (o_concept - o_empty)


def anchored_base(o_anchor: torch.Tensor, o_empty: torch.Tensor, weight: float) -> torch.Tensor:
    """The base of the unlearning target with an anchor prompt: ``w o_anchor + (1 - w) o_empty``."""
    return weight * o_anchor + (1.0 - weight) * o_empty


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


def unlearn_loss(o_erased_concept: torch.Tensor, v_neg: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``mean((o'_c - v_neg)^2)``; ``reduction="none"`` gives one value per sample (every sample has as many
    elements, so the mean of those is the full mean)."""
    return _reduce(_per_sample_mse(o_erased_concept, v_neg), reduction)


def preserve_loss(o_erased_preserve: torch.Tensor, o_preserve: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return _reduce(_per_sample_mse(o_erased_preserve, o_preserve), reduction)


def localization_loss(eraser_outputs: list, masks: list, valid: torch.Tensor | None = None,
                      reduction: str = "mean") -> torch.Tensor:
    """Per prompt, the mean over layers of each eraser's average energy ``mean_d(e^2)`` on the tokens outside
    its mask; then the mean over the prompts whose concept tokens were found.

    ``eraser_outputs[l]`` is ``[B, N, D]``; ``masks[l]`` is ``[B, N]`` bool (True where the concept is);
    ``valid`` ``[B]`` bool marks prompts whose concept tokens were found (the others train without
    ``L_loc``: with ``reduction="none"`` their entry is 0; the mean skips them). A prompt whose mask covers
    every token contributes 0 for that layer.
    """
    per_layer = []
    for e, mask in zip(eraser_outputs, masks):
        energy = e.float().pow(2).mean(dim=-1)  # [B, N]
        outside = ~mask.to(energy.device).bool()
        per_layer.append((energy * outside).sum(dim=1) / outside.sum(dim=1).clamp_min(1))
    per_sample = torch.stack(per_layer).mean(dim=0)  # [B]
    if valid is None:
        return _reduce(per_sample, reduction)
    valid = valid.to(per_sample.device).bool()
    if reduction == "none":
        return per_sample * valid
    return (per_sample * valid).sum() / valid.sum().clamp_min(1)


def total_loss(l_unlearn, l_loc=None, l_pre=None, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    loss = l_unlearn
    if l_loc is not None and alpha:
        loss = loss + alpha * l_loc
    if l_pre is not None and beta:
        loss = loss + beta * l_pre
    return loss


class NegativelyGuidedVelocityLoss(nn.Module):
    """``L_unlearn`` from the erased output on the concept and the frozen outputs on the concept and on ""."""

    def __init__(self, eta: float = 7.0):
        super().__init__()
        self.eta = eta

    def forward(self, o_erased_concept, o_concept, o_empty):
        return unlearn_loss(o_erased_concept, negative_guidance_target(o_concept, o_empty, self.eta))


class ConceptPreservationLoss(nn.Module):
    """``L_pre``: the erased model must match the frozen one on preserve prompts."""

    def forward(self, o_erased_preserve, o_preserve):
        return preserve_loss(o_erased_preserve, o_preserve)


class MaskLocalizationLoss(nn.Module):
    """``L_loc``: eraser outputs must vanish outside the concept's attention mask."""

    def forward(self, eraser_outputs, masks, valid=None):
        return localization_loss(eraser_outputs, masks, valid)


class T2VUnlearningLoss(nn.Module):
    """``L = L_unlearn + alpha * L_loc + beta * L_pre``; returns the total and its parts."""

    def __init__(self, eta: float = 7.0, alpha: float = 1.0, beta: float = 0.0):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.unlearn = NegativelyGuidedVelocityLoss(eta)
        self.preserve = ConceptPreservationLoss()
        self.localize = MaskLocalizationLoss()

    def forward(self, o_erased_concept, o_concept, o_empty, o_erased_preserve=None, o_preserve=None,
                eraser_outputs=None, masks=None, valid=None):
        parts = {"loss_unlearn": self.unlearn(o_erased_concept, o_concept, o_empty)}
        if o_erased_preserve is not None and o_preserve is not None:
            parts["loss_preserve"] = self.preserve(o_erased_preserve, o_preserve)
        if eraser_outputs is not None and masks is not None:
            parts["loss_loc"] = self.localize(eraser_outputs, masks, valid)
        loss = total_loss(parts["loss_unlearn"], parts.get("loss_loc"), parts.get("loss_preserve"), self.alpha, self.beta)
        return loss, parts
