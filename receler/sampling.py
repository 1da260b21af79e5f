"""The hand-written denoising loop: one conditional transformer pass per step, no classifier-free guidance.

A :class:`Sampler` is one trajectory of one model family: its timesteps, its scheduler's state, how
to start the latents and how to call the transformer. The trainer walks the same sampler step by step
(training at some of the steps); :func:`sample` just walks it to the end. With no training it
reproduces the family's diffusers pipeline at guidance 1 for the same seed.
"""

import copy

import torch
from tqdm.auto import tqdm


def _plain(value) -> bool:
    """Values a ``weights_only`` checkpoint can hold: tensors, numbers, strings, None and lists of them."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return False


class Sampler:
    """Base trajectory: a private copy of the pipeline's scheduler, set to ``num_inference_steps``.

    Families subclass it and fill in :meth:`predict`, :meth:`latent_shape` where the latents are not
    channels-first and, where the scheduler needs more than ``step(pred, t, x)``, :meth:`step`.
    """

    def __init__(self, pipe, num_inference_steps: int, num_frames: int, height: int, width: int, device, generator=None):
        self.pipe = pipe
        self.num_frames, self.height, self.width = num_frames, height, width
        self.device = torch.device(device)
        self.generator = generator
        # A fresh scheduler per trajectory: multistep solvers keep state between steps.
        self.scheduler = copy.deepcopy(pipe.scheduler)
        self.set_timesteps(num_inference_steps)

    # -- to be provided by each family -------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int) -> None:
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        self.timesteps = self.scheduler.timesteps

    def latent_shape(self, batch_size: int) -> tuple:
        """``[B, C, F', H/s, W/s]``, the channels-first layout of HunyuanVideo and Wan (CogVideoX overrides it)."""
        pipe, s = self.pipe, self.pipe.vae_scale_factor_spatial
        frames = (self.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        return (batch_size, pipe.transformer.config.in_channels, frames, self.height // s, self.width // s)

    def predict(self, transformer, latents: torch.Tensor, index: int, cond: dict) -> torch.Tensor:
        """The transformer's prediction (float32) at step ``index`` for conditioning ``cond``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------
    def initial_latents(self, batch_size: int) -> torch.Tensor:
        """Gaussian latents drawn from the (CPU) generator, as the pipelines draw them, in float32."""
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(self.latent_shape(batch_size), generator=self.generator, device=self.device, dtype=torch.float32)
        return noise * getattr(self.scheduler, "init_noise_sigma", 1.0)  # flow matching has none

    def step(self, pred: torch.Tensor, index: int, latents: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(pred, self.timesteps[index], latents, return_dict=False)[0]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def state_dict(self) -> dict:
        """Everything a multistep scheduler carries between steps, as plain values (for resuming mid-trajectory)."""
        state = {"scheduler": {k: v for k, v in vars(self.scheduler).items() if _plain(v)}}
        state["sampler"] = {k: v for k, v in vars(self).items() if k not in ("pipe", "scheduler") and _plain(v)}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["scheduler"].items():
            setattr(self.scheduler, k, v)
        for k, v in state["sampler"].items():
            setattr(self, k, v)
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])


@torch.no_grad()
def sample(family, pipe, cond: dict, num_frames: int, height: int, width: int, num_inference_steps: int,
           generator=None, latents=None, device=None, progress: bool = True) -> torch.Tensor:
    """Denoise from Gaussian latents to the final latents with one conditional pass per step (no CFG)."""
    transformer = pipe.transformer
    device = device or next(transformer.parameters()).device
    sampler = family.make_sampler(pipe, num_inference_steps, num_frames, height, width, device, generator)
    batch_size = next(iter(cond.values())).shape[0]
    x = sampler.initial_latents(batch_size) if latents is None else latents.to(device, torch.float32)
    for i in tqdm(range(sampler.num_steps), desc="denoising", disable=not progress, leave=False):
        x = sampler.step(sampler.predict(transformer, x, i, cond), i, x)
    return x
