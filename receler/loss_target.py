"""What the losses compare, ``o(.)``: read from a forward pass of the transformer.

By default the family's loss module (CogVideoX: the final block's feed-forward, video rows) is read
through a forward hook; ``velocity`` compares the transformer's prediction itself. The trainer, the
adversarial inner loop and the attack all read ``o`` the same way, through :class:`LossTarget`.

The hooks live exactly as long as their owner: ``with LossTarget(...) as outputs:`` (or ``open()`` /
``close()``) puts them on the model and takes them off again. A hook only keeps an output while
:meth:`LossTarget.forward` is running, and hands it over at once, so no output (and no autograd graph
hanging from it) outlives the call that asked for it.
"""

import torch


class _OneOutput:
    """Keeps a module's output from one forward pass, while armed (first call only: gradient checkpointing
    calls forward hooks again while recomputing during backward, and those outputs must not replace it)."""

    def __init__(self):
        self.armed = False
        self.value = None

    def hook(self, module, args, output):
        if self.armed and self.value is None:
            self.value = output[0] if isinstance(output, tuple) else output

    def take(self):
        value, self.value, self.armed = self.value, None, False
        return value


class LossTarget:
    """``o`` for one or more models of one family (the trainer's erased model and, in comparisons, a
    separate frozen copy). A context manager: the hooks exist only between ``open()`` and ``close()``."""

    def __init__(self, family, target: str | None, models: list):
        self.family = family
        self.target = target or family.default_loss_target
        self._models = {id(m): m for m in models}
        self._captures = {}
        self._handles = []

    def open(self) -> "LossTarget":
        if self.target != "velocity" and not self._handles:
            for key, model in self._models.items():
                self._captures[key] = capture = _OneOutput()
                self._handles.append(self.family.loss_module(model).register_forward_hook(capture.hook))
        return self

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._captures = [], {}

    def __enter__(self) -> "LossTarget":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def forward(self, model, sampler, x: torch.Tensor, index: int, cond: dict) -> tuple:
        """``(prediction, o)``: the model's prediction at step ``index`` and what the losses compare."""
        if self.target == "velocity":
            pred = sampler.predict(model, x, index, cond)
            return pred, pred
        capture = self._captures.get(id(model))
        if capture is None:
            raise RuntimeError("LossTarget.forward outside its `with` block (or on a model it was not made for)")
        capture.value, capture.armed = None, True
        try:
            pred = sampler.predict(model, x, index, cond)
        finally:
            value = capture.take()
        return pred, self.family.loss_rows(value, cond, self.target)
