"""Guards against an eraser that has nothing to learn, for every model family.

The unlearning target is the empty prompt's output pushed away from the concept prompt's. When the concept
prompt conditions the transformer exactly as the empty prompt does (a template crop or a truncation that
removes the prompt, an attention mask that hides every text token, a text encoder that ignores its input),
the two outputs are equal, the loss and every gradient are exactly zero and the eraser keeps its zero
initialisation: training would run to the end and save an eraser that does nothing.

- :func:`check_prompts_reach_model` refuses such prompts before any update (training and the attack).
- :class:`ZeroLossWatch` catches what the conditioning cannot show (e.g. a transformer that ignores its
  text): it warns at a first update whose unlearning loss is exactly zero, and stops the run if the loss
  stays zero for the whole first trajectory, before an eraser is saved.
"""

import logging

import torch

from .errors import UserError

logger = logging.getLogger(__name__)

# Two encodings count as equal within this fraction of their scale: batching the same text differently
# changes float32 results in the last bits only, while a prompt the model reads changes them at full scale.
RELATIVE_TOLERANCE = 1e-5


class PromptNotSeen(UserError):
    """A concept prompt conditions the transformer exactly as the empty prompt does."""


class NothingLearned(UserError):
    """The unlearning loss stayed exactly zero for the whole first trajectory."""


def visible_text(family, cond: dict) -> torch.Tensor:
    """The text states the transformer reads: ``encoder_hidden_states`` with the positions its mask hides zeroed."""
    states = cond["encoder_hidden_states"].float()
    mask = family.text_attention_mask(cond)
    return states if mask is None else states * mask.to(states.device)[..., None]


def why_prompt_not_seen(family, cond: dict, cond_empty: dict) -> str | None:
    """Why one prompt's conditioning (batch of 1) carries nothing of the prompt, or None when it does."""
    mask = family.text_attention_mask(cond)
    if mask is not None and not mask.any():
        return "its attention mask hides every text token"
    seen, empty = visible_text(family, cond), visible_text(family, cond_empty)
    if seen.shape != empty.shape:
        return None
    scale = max(float(seen.abs().max()), float(empty.abs().max()), 1e-30)
    if float((seen - empty).abs().max()) <= RELATIVE_TOLERANCE * scale:
        return "its text conditioning equals the empty prompt's"
    return None


def check_prompts_reach_model(family, pipe, prompts: list, conds: list, cond_empty: dict, purpose: str) -> None:
    """Raise :class:`PromptNotSeen` naming every concept prompt the transformer cannot see.

    ``conds[i]`` is prompt ``i``'s conditioning (batch of 1), ``cond_empty`` the empty prompt's; ``purpose``
    says what is refused ("train", "attack").
    """
    unseen = []
    for prompt, cond in zip(prompts, conds):
        reason = why_prompt_not_seen(family, cond, cond_empty)
        if reason is not None:
            unseen.append(f"{prompt!r} ({reason})")
    if unseen:
        raise PromptNotSeen(
            f"refusing to {purpose}: the {family.display_name} transformer cannot see {len(unseen)} of "
            f"{len(prompts)} concept prompts: {'; '.join(unseen[:3])}{' ...' if len(unseen) > 3 else ''}. The model "
            f"would treat them as the empty prompt, so the eraser would learn nothing. Likely cause: "
            f"{family.ignored_prompt_cause(pipe)}."
        )


class ZeroLossWatch:
    """Follows the unlearning loss of the first trajectory of a run.

    Call :meth:`observe` after every update and :meth:`finish` when the first trajectory ends or training
    stops, whichever comes first; ``finish`` raises :class:`NothingLearned` if every update so far had an
    unlearning loss of exactly zero. Once a non-zero loss is seen the watch ends.
    """

    def __init__(self):
        self.active = True
        self.zero_updates = 0

    @property
    def nothing_learned(self) -> bool:
        """Every update so far had an exactly zero unlearning loss (so every eraser is still at its start)."""
        return self.active and self.zero_updates > 0

    def observe(self, loss_unlearn: float, step: int) -> None:
        if not self.active:
            return
        if loss_unlearn != 0.0:
            self.active = False
            return
        self.zero_updates += 1
        if self.zero_updates == 1:
            logger.warning(
                "the unlearning loss of update %d is exactly 0 for every prompt of the batch: the model's output on "
                "the concept prompt equals its output on the empty prompt, so the eraser gets no gradient. Training "
                "stops at the end of this trajectory if the loss stays 0.", step,
            )

    def finish(self, family, prompts: list) -> None:
        """End the watch; raise if nothing was learned."""
        if self.nothing_learned:
            raise NothingLearned(
                f"the unlearning loss was exactly 0 for all {self.zero_updates} updates of the first trajectory "
                f"(prompts {', '.join(repr(p) for p in prompts)}): the {family.display_name} model's output on the "
                f"concept prompt equals its output on the empty prompt although their text conditioning differs, so "
                f"the eraser learned nothing, and no eraser was saved. The transformer does not read its text "
                f"conditioning: check that the folder's transformer weights (its text projection and attention) loaded."
            )
        self.active = False
