"""What the losses compare, ``o(.)``: read from a forward pass of the transformer.

By default the family's loss module (CogVideoX: the final block's feed-forward, video rows) is read
through a forward hook; ``velocity`` compares the transformer's prediction itself. The trainer, the
adversarial inner loop and the attack all read ``o`` the same way, through :class:`LossTarget`.
"""

import torch


class _FirstOutput:
    """Keeps a module's output from one forward pass (first call only: gradient checkpointing calls forward
    hooks again while recomputing during backward, and those outputs must not replace it)."""

    def __init__(self):
        self.value = None

    def hook(self, module, args, output):
        if self.value is None:
            self.value = output[0] if isinstance(output, tuple) else output


class LossTarget:
    def __init__(self, family, target: str | None, models: list):
        self.family = family
        self.target = target or family.default_loss_target
        self._captures = {}
        if self.target != "velocity":
            for model in models:
                if id(model) not in self._captures:
                    self._captures[id(model)] = capture = _FirstOutput()
                    family.loss_module(model).register_forward_hook(capture.hook)

    def forward(self, model, sampler, x: torch.Tensor, index: int, cond: dict) -> tuple:
        """``(prediction, o)``: the model's prediction at step ``index`` and what the losses compare."""
        capture = self._captures.get(id(model))
        if capture is not None:
            capture.value = None
        pred = sampler.predict(model, x, index, cond)
        if capture is None:
            return pred, pred
        value, capture.value = capture.value, None
        return pred, self.family.loss_rows(value, cond, self.target)
