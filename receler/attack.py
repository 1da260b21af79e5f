"""A learned soft-prompt attack on an erased model, and the pieces adversarial training reuses.

The attacker learns a few vectors in the text encoder's output space, written into the first padding
positions after each prompt (so the prompt keeps its length, which CogVideoX-2b's position embeddings
require), such that the *erased* model's output on the attacked prompt matches what the *frozen* model
makes of the concept prompt: the unlearning objective with its sign reversed,

    L_attack = mean( (o'(x_t, c + soft) - (o_0 + eta * (o_c - o_0)))^2 ),    eta = 1 -> target o_c,

over timesteps sampled along the frozen model's trajectory on ``c``. If the concept comes back under
a budget of a few hundred steps, the eraser only hid it.
"""

import logging

import torch
from torch import nn

from .erasers.utils import erasers_disabled
from .errors import UserError
from .learning_checks import check_prompts_reach_model

logger = logging.getLogger(__name__)


class SoftPrompt(nn.Module):
    """``num_tokens`` learnable float32 vectors of the text conditioning's width."""

    def __init__(self, num_tokens: int, dim: int, init_std: float = 1.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vectors = nn.Parameter(torch.randn(num_tokens, dim, generator=g) * init_std)

    @property
    def num_tokens(self) -> int:
        return self.vectors.shape[0]

    def insert(self, family, cond: dict, positions: torch.Tensor) -> dict:
        """A copy of ``cond`` with the vectors written at ``positions`` ``[B, K]`` (differentiable)."""
        return family.with_soft_tokens(cond, positions.to(self.vectors.device), self.vectors)


def padding_positions(family, pipe, prompts: list, num_tokens: int) -> torch.Tensor:
    """``[B, num_tokens]``: the first padding positions after each prompt's own tokens."""
    pad = pipe.tokenizer.pad_token_id
    rows = []
    for prompt in prompts:
        ids = family.prompt_token_ids(pipe, prompt)
        free = [i for i, t in enumerate(ids) if t == pad]
        if len(free) < num_tokens:
            raise UserError(
                f"prompt {prompt[:60]!r} fills {len(ids) - len(free)} of the {len(ids)} text positions: there is no "
                f"room for {num_tokens} soft tokens. Shorten the prompt or pass fewer --num_tokens."
            )
        rows.append(free[:num_tokens])
    return torch.tensor(rows, dtype=torch.long)


def attack_target(o_concept: torch.Tensor, o_empty: torch.Tensor | None = None, eta: float = 1.0) -> torch.Tensor:
    """What the attacked erased model should produce: the frozen model pushed *towards* the concept."""
    if o_empty is None or eta == 1.0:
        return o_concept
    return o_empty + eta * (o_concept - o_empty)


def attack_loss(o_attacked: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    per_sample = (o_attacked.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return per_sample if reduction == "none" else per_sample.mean()


class Adversary:
    """Adversarial eraser training's attacker (``--adversarial``): one soft prompt shared by all training
    prompts, refreshed by a few attack steps against the current eraser at every update, so the eraser is
    also trained on the concept prompt *as attacked* (Receler's adversarial prompt learning)."""

    def __init__(self, num_tokens: int, dim: int, steps: int, lr: float, init_std: float, seed: int, device):
        self.soft = SoftPrompt(num_tokens, dim, init_std=init_std, seed=seed).to(device)
        self.optimizer = torch.optim.Adam(self.soft.parameters(), lr=lr)
        self.steps = steps

    def refresh(self, family, transformer, sampler, x, index, batch, pred_concept, dist) -> float:
        """``steps`` Adam steps pulling the erased model's prediction on the attacked prompt towards the frozen
        model's prediction on the concept prompt ``pred_concept`` (what steers sampling, so what an attacker
        targets); returns this process's share of the last attack loss."""
        loss = torch.zeros(())
        for _ in range(self.steps):
            cond = self.soft.insert(family, batch["cond"], batch["soft_positions"])
            pred_att = sampler.predict(transformer, x, index, cond)
            loss = (attack_loss(pred_att, pred_concept, reduction="none") * batch["weight"]).sum()
            (self.soft.vectors.grad,) = torch.autograd.grad(loss, [self.soft.vectors])
            dist.sum_gradients([self.soft.vectors])
            self.optimizer.step()
            loss = loss.detach()
        return float(loss)

    def attacked(self, family, cond: dict, positions) -> dict:
        """The concept prompt with the current soft prompt (no gradient to it)."""
        return family.with_soft_tokens(cond, positions.to(self.soft.vectors.device), self.soft.vectors.detach())

    def state_dict(self) -> dict:
        return {"soft": self.soft.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.soft.load_state_dict(state["soft"])
        self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def frozen_trajectory(family, pipe, cond: dict, sampler) -> list:
    """The latents at every step of the frozen model's denoising of ``cond`` (CPU copies)."""
    transformer = pipe.transformer
    x = sampler.initial_latents(next(iter(cond.values())).shape[0])
    states = []
    with erasers_disabled(transformer):
        for i in range(sampler.num_steps):
            states.append(x.detach().cpu())
            x = sampler.step(sampler.predict(transformer, x, i, cond), i, x)
    return states


def learn_soft_prompt(family, pipe, outputs, conds: list, positions: torch.Tensor, trajectories: list, samplers: list,
                      steps: int, lr: float, num_tokens: int, seed: int = 0, eta: float = 1.0, cond_empty=None,
                      progress=None) -> tuple:
    """Optimise one soft prompt shared by all prompts; returns ``(SoftPrompt, losses per step)``.

    ``conds[p]`` / ``trajectories[p]`` / ``samplers[p]``: prompt ``p``'s conditioning, its frozen trajectory
    and a sampler with its timesteps; ``outputs`` is a :class:`receler.loss_target.LossTarget`;
    ``cond_empty`` (the empty prompt's conditioning) is needed when ``eta != 1``. Step ``s`` attacks prompt
    ``s mod P`` at a timestep drawn from a seeded generator. Only the soft prompt receives gradient.
    ``progress(step, loss, soft)`` is called after every step (e.g. to snapshot smaller budgets of one run).
    """
    transformer = pipe.transformer
    device = next(transformer.parameters()).device
    dim = conds[0]["encoder_hidden_states"].shape[-1]
    scale = float(conds[0]["encoder_hidden_states"].detach().float().std())
    soft = SoftPrompt(num_tokens, dim, init_std=scale, seed=seed).to(device)
    optimizer = torch.optim.Adam(soft.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    losses = []
    for step in range(steps):
        p = step % len(conds)
        i = int(torch.randint(samplers[p].num_steps, (1,), generator=g))
        x = trajectories[p][i].to(device)
        with torch.no_grad(), erasers_disabled(transformer):
            _, o_c = outputs.forward(transformer, samplers[p], x, i, conds[p])
            o_0 = None
            if eta != 1.0:
                _, o_0 = outputs.forward(transformer, samplers[p], x, i, cond_empty)
        _, o_att = outputs.forward(transformer, samplers[p], x, i, soft.insert(family, conds[p], positions[p : p + 1]))
        loss = attack_loss(o_att, attack_target(o_c, o_0, eta))
        optimizer.zero_grad(set_to_none=True)
        (soft.vectors.grad,) = torch.autograd.grad(loss, [soft.vectors])
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1], soft)
    return soft, losses


def attack_prompts(family, pipe, prompts: list, num_tokens: int, steps: int, lr: float, num_frames: int, height: int,
                   width: int, num_inference_steps: int, seed: int = 0, loss_target=None, eta: float = 1.0,
                   progress=None) -> tuple:
    """The attack on an erased pipeline (erasers loaded on ``pipe.transformer``) for ``prompts``.

    Returns ``(soft_prompt, positions [P, K], conds, losses)``; ``conds`` are the prompts' conditioning, so
    the attacked conditioning of prompt ``p`` is ``soft_prompt.insert(family, conds[p], positions[p:p+1])``.
    """
    from .loss_target import LossTarget

    transformer = pipe.transformer
    transformer.requires_grad_(False)
    device = next(transformer.parameters()).device
    with torch.no_grad():
        conds = [{k: v.detach() for k, v in family.encode_prompts(pipe, [p], device).items()} for p in prompts]
        cond_empty = {k: v.detach() for k, v in family.encode_prompts(pipe, [""], device).items()}
    check_prompts_reach_model(family, pipe, prompts, conds, cond_empty, "attack")
    positions = padding_positions(family, pipe, prompts, num_tokens)
    samplers, trajectories = [], []
    for p, cond in enumerate(conds):
        sampler = family.make_sampler(pipe, num_inference_steps, num_frames, height, width, device,
                                      torch.Generator().manual_seed(seed + p))
        trajectories.append(frozen_trajectory(family, pipe, cond, sampler))
        samplers.append(family.make_sampler(pipe, num_inference_steps, num_frames, height, width, device))
    with LossTarget(family, loss_target, [transformer]) as outputs:  # its hooks leave with the attack
        soft, losses = learn_soft_prompt(family, pipe, outputs, conds, positions, trajectories, samplers, steps, lr,
                                         num_tokens, seed=seed, eta=eta, cond_empty=cond_empty, progress=progress)
    return soft, positions, conds, losses

