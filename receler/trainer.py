"""Training an eraser from prompts alone (docs/method.md, "One update"). The update is :meth:`EraserTrainer.update`.

One trajectory per prompt batch: Gaussian latents are denoised with the hand-written loop; at each
trained timestep the frozen model (erasers off) gives the targets, the erased model (erasers on) is
pulled towards the negatively guided target on the concept prompt and towards the frozen output on the
preserve prompt, its eraser outputs are kept silent outside the concept's attention mask, and AdamW
steps on the float32 eraser weights. The latents then advance with the erased model's prediction.

Memory and speed (docs/design.md): one backbone copy (the frozen model is the same network with its
erasers off), prompts encoded once before training, no VAE, half-precision backbone with float32
erasers, optional gradient checkpointing of some or all blocks, fp8 weight storage and compiled blocks.
"""

import json
import logging
import math
import pickle
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from .attack import Adversary, padding_positions
from .block_swap import enable_block_swap
from .checkpoint import load_erasers, read_eraser_folder, save_eraser_folder, verify_file
from .distributed import Distributed
from .erasers.utils import erasers_disabled
from .erasers.wrapper import attach_erasers, eraser_rank_of
from .errors import UserError
from .io_utils import atomic_write_bytes, atomic_write_text, torch_save_bytes, writing
from .learning_checks import ZeroLossWatch, check_prompts_reach_model
from .loss_target import LossTarget
from .localization import ConceptAttentionProbe, EraserOutputCapture, concept_positions_mask
from .losses import anchored_base, localization_loss, negative_guidance_target, preserve_loss, unlearn_loss
from .lr_schedule import set_learning_rate
from .model_card import write_model_card
from .plots import plot_train_log, read_train_log
from .run_folder import PARTIAL_SUFFIX
from .run_checkpoints import STATE_NAME, checkpoint_folder, resolve_resume, rotate_checkpoints
from .stop_request import StopRequest
from .tracking import open_tracker
from .train_report import TrainingReport

logger = logging.getLogger(__name__)

class TrainingDiverged(UserError):
    """The loss or the gradient stopped being finite; nothing from that update was applied or saved."""


# ------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Concept:
    """A concept to erase: its name (also its bare prompt, for ``--mask_fallback concept``) and the words whose
    tokens mark it in a prompt."""

    name: str
    words: tuple

    @classmethod
    def of(cls, words) -> "Concept":
        """From a word or a list of words (the first names the concept)."""
        words = (words,) if isinstance(words, str) else tuple(words)
        return cls(words[0], words)


@dataclass
class PromptSet:
    """Every training prompt, encoded once (then the text encoder can leave the GPU)."""

    prompts: list            # concept prompts c
    preserve_prompts: list   # c_pre per prompt, or None when preservation is off
    cond: list               # per prompt: {kwarg: tensor [1, ...]} on CPU
    cond_preserve: list      # per prompt, or None
    cond_empty: dict         # conditioning of "" [1, ...]
    positions: torch.Tensor  # [P, T] bool: the concept's text positions in each prompt
    found: torch.Tensor      # [P] bool: whether the concept's tokens occur in the prompt
    soft_positions: torch.Tensor | None = None  # [P, K]: where adversarial soft tokens go (--adversarial)
    cond_anchor: list | None = None             # per prompt: the anchor's conditioning (--anchor_prompt)
    # --mask_fallback concept: per prompt, its concept's bare prompt (None where it cannot serve), the concept's
    # text positions in it, and whether the prompt borrows that prompt's attention for its mask.
    cond_concept: list | None = None
    concept_positions: torch.Tensor | None = None  # [P, T]
    fallback: torch.Tensor | None = None           # [P] bool
    concepts: list | None = None                   # per prompt: its concept's name
    cond_validation: list | None = None         # per --validation_prompts row: its conditioning, rendered, not trained

    @property
    def localizable(self) -> torch.Tensor:
        """[P] bool: prompts that train with the localization loss (own tokens, or the concept prompt's mask)."""
        return self.found if self.fallback is None else self.found | self.fallback


def stack_cond(conds: list, device) -> dict:
    return {k: torch.cat([c[k] for c in conds]).to(device) for k in conds[0]}


def encode_prompt_set(family, pipe, prompts, preserve_prompts, concepts, device, batch_size=8,
                      soft_tokens: int = 0, anchor_prompts=None, mask_fallback: bool = False) -> PromptSet:
    """Encode the concept prompts, the preserve prompts, the anchors and "" once, on ``device``, and keep them on
    CPU.

    ``concepts``: what each prompt erases, whose tokens its localization mask follows: a word or a list of words
    marking one concept for every prompt (e.g. ``["naked", "nude"]``), a :class:`Concept`, or one
    :class:`Concept` per prompt (several concepts in one eraser). With ``mask_fallback``, a prompt that lacks its
    concept's tokens takes its mask from the attention on the concept's bare prompt (its name), encoded here too.
    """
    per_prompt = concepts if isinstance(concepts, list) and concepts and isinstance(concepts[0], Concept) else None
    per_prompt = per_prompt or [concepts if isinstance(concepts, Concept) else Concept.of(concepts)] * len(prompts)

    def encode(texts):
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = family.encode_prompts(pipe, texts[start : start + batch_size], device)
            for j in range(len(texts[start : start + batch_size])):
                out.append({k: v[j : j + 1].detach().cpu() for k, v in chunk.items()})
        return out

    with torch.no_grad():
        cond = encode(prompts)
        cond_pre = encode(preserve_prompts) if preserve_prompts else None
        cond_empty = encode([""])[0]
        cond_anchor = encode(list(anchor_prompts)) if anchor_prompts else None
    check_prompts_reach_model(family, pipe, prompts, cond, cond_empty, "train")

    def locate(texts, concept):
        masks = [concept_positions_mask(family, pipe, texts, w) for w in concept.words]
        return torch.stack([m[0] for m in masks]).any(dim=0), torch.stack([m[1] for m in masks]).any(dim=0)

    located = {c: locate([p for p, pc in zip(prompts, per_prompt) if pc == c], c) for c in dict.fromkeys(per_prompt)}
    rows = {c: iter(range(len(prompts))) for c in located}
    positions, found = [], []
    for concept in per_prompt:
        k = next(rows[concept])
        positions.append(located[concept][0][k])
        found.append(located[concept][1][k])
    positions, found = torch.stack(positions), torch.stack(found)
    soft = padding_positions(family, pipe, prompts, soft_tokens) if soft_tokens else None
    data = PromptSet(list(prompts), preserve_prompts, cond, cond_pre, cond_empty, positions, found, soft, cond_anchor,
                     concepts=[c.name for c in per_prompt])
    if mask_fallback and not found.all():
        _encode_bare_concepts(data, per_prompt, encode, locate)
    return data


def _encode_bare_concepts(data: PromptSet, per_prompt: list, encode, locate) -> None:
    """``--mask_fallback concept``: each concept's bare prompt, for the prompts that lack the concept's tokens."""
    bare = {}
    for concept in dict.fromkeys(per_prompt):
        where, hit = locate([concept.name], concept)
        if not hit.all():
            logger.warning("the concept prompt %r holds none of its words %s: prompts without them train without "
                           "L_loc", concept.name, list(concept.words))
            continue
        with torch.no_grad():
            bare[concept] = (encode([concept.name])[0], where[0])
    data.cond_concept = [bare[c][0] if c in bare else None for c in per_prompt]
    data.concept_positions = torch.stack([bare[c][1] if c in bare else data.positions[i]
                                          for i, c in enumerate(per_prompt)])
    data.fallback = torch.tensor([c in bare for c in per_prompt]) & ~data.found
    if data.fallback.any():
        logger.info("%d of %d prompts lack their concept's tokens: their localization masks come from the attention "
                    "on the bare concept prompt", int(data.fallback.sum()), len(per_prompt))


def make_batch(data: PromptSet, idx: list, device, grid, global_idx: list | None = None) -> dict:
    """The tensors of one (per-process) batch, with per-prompt loss weights normalised by the global batch."""
    global_idx = idx if global_idx is None else global_idx
    localizable = data.localizable
    borrow = data.fallback is not None and bool(data.fallback[idx].any())
    localizable_global = localizable[global_idx]
    n = len(idx)
    return {
        "cond": stack_cond([data.cond[i] for i in idx], device),
        "cond_preserve": stack_cond([data.cond_preserve[i] for i in idx], device) if data.cond_preserve else None,
        "cond_empty": stack_cond([data.cond_empty] * n, device),
        "cond_anchor": stack_cond([data.cond_anchor[i] for i in idx], device) if data.cond_anchor else None,
        # rows that borrow the bare concept prompt's mask (the others' entries are placeholders, never used)
        "cond_concept": stack_cond([data.cond_concept[i] or data.cond[i] for i in idx], device) if borrow else None,
        "concept_positions": data.concept_positions[idx] if borrow else None,
        "positions": data.positions[idx],
        "found": data.found[idx],
        "localizable": localizable[idx],
        "localize": bool(localizable_global.any()),
        "soft_positions": None if data.soft_positions is None else data.soft_positions[idx],
        # sum over the global batch of (weight x per-prompt loss) is the batch mean
        "weight": torch.full((n,), 1.0 / len(global_idx), device=device),
        "loc_weight": localizable[idx].float().to(device) / max(1, int(localizable_global.sum())),
        "grid": grid,
    }


# ----------------------------------------------------------------------------- memory and speed


def enable_block_checkpointing(transformer, blocks: list, count: int | None = None, offload: bool = False) -> int:
    """Recompute activations in backward for the first ``count`` blocks (all when None); returns how many.

    Uses diffusers' own hook (the transformer calls ``_gradient_checkpointing_func(block, *args)`` for
    every block), so only the chosen blocks pay the recomputation. ``offload`` keeps the inputs each
    checkpointed block must remember in CPU memory instead of on the GPU (one copy out per forward, one
    back per recomputation): the largest activation term left once every block is checkpointed.
    """
    count = len(blocks) if count is None else max(0, min(count, len(blocks)))
    if count == 0:
        return 0
    chosen = {id(b) for b in blocks[:count]}

    def checkpoint_some(block, *args):
        if id(block) not in chosen:
            return block(*args)
        if not offload:
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)
        devices = [a.device if torch.is_tensor(a) else None for a in args]
        host_args = [a.to("cpu") if torch.is_tensor(a) else a for a in args]

        def run_on_device(*saved):
            return block(*[a.to(d) if d is not None else a for a, d in zip(saved, devices)])

        return torch.utils.checkpoint.checkpoint(run_on_device, *host_args, use_reentrant=False)

    transformer.enable_gradient_checkpointing(checkpoint_some)
    return count


def enable_fp8_storage(transformer, compute_dtype) -> None:
    """Store the backbone's linear/conv weights in float8 and cast each layer to ``compute_dtype`` for its
    forward (diffusers' layerwise casting). Erasers are attached afterwards, so they stay float32."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    transformer.enable_layerwise_casting(
        storage_dtype=torch.float8_e4m3fn,
        compute_dtype=compute_dtype,
        skip_modules_pattern=tuple(DEFAULT_SKIP_MODULES_PATTERN) + ("adapter",),
    )


# ------------------------------------------------------------------------------------- trainer


class EraserTrainer:
    """Holds the one backbone (frozen), its erasers (trainable, float32), the optimizer and the loss hooks.

    ``config`` is the run's :class:`~receler.config.TrainConfig` and ``resolved`` what was derived from it
    (:func:`receler.training.resolve_training`, worked out here when not given). Use it as a context
    manager: on exit the hooks it put on the model are removed and gradient checkpointing is switched off
    again, so the model is left as found (plus its trained erasers).

    ``frozen_transformer`` is only for comparisons (the benchmark's naive two-copy setup): by default the
    frozen model is the same network with its erasers switched off.
    """

    def __init__(self, family, pipe, config, device, dist: Distributed | None = None, frozen_transformer=None,
                 resolved=None):
        if resolved is None:
            from .training import resolve_training

            resolved = resolve_training(config, family, pipe, device)
        self.family, self.pipe, self.config, self.resolved = family, pipe, config, resolved
        self.device = torch.device(device)
        self.dist = dist or Distributed(self.device)
        self.transformer = pipe.transformer
        self.frozen = frozen_transformer if frozen_transformer is not None else self.transformer
        for model in {id(self.transformer): self.transformer, id(self.frozen): self.frozen}.values():
            model.requires_grad_(False)
            model.eval()
        if config.fp8_weights:
            enable_fp8_storage(self.transformer, compute_dtype=self.transformer.dtype)

        torch.manual_seed(config.seed)  # the erasers' down projections start random: make that reproducible
        erasers = attach_erasers(self.transformer, family.layout, config.eraser_rank, fresh=True)
        self.eraser_names = list(erasers)
        self.erasers = list(erasers.values())
        for eraser in self.erasers:
            eraser.to(self.device)
            eraser.requires_grad_(True)
        self.params = [p for e in self.erasers for p in e.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)

        self.outputs = LossTarget(family, resolved.loss_target, [self.transformer, self.frozen]).open()
        self.loss_target = self.outputs.target
        self.probe = ConceptAttentionProbe(family, self.frozen, config.mask_chunk_size) if config.alpha > 0 else None

        blocks = family.block_modules(self.transformer)
        self.checkpointed_blocks = enable_block_checkpointing(
            self.transformer, blocks, resolved.checkpoint_blocks, config.offload_activations
        ) if resolved.checkpoint_blocks else 0
        # --blocks_to_swap: the last blocks' frozen weights stay in CPU memory (the rest goes to the device here)
        self.block_swap = enable_block_swap(self.transformer, blocks, resolved.blocks_to_swap, self.device,
                                            compiled=config.compile)
        if config.compile:
            for block in blocks:
                block.compile()
        self.adversary = None  # --adversarial: created by start_adversary once the prompts are encoded

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Remove the loss hooks and switch gradient checkpointing off again (the erasers stay)."""
        self.outputs.close()
        if self.block_swap is not None:
            self.block_swap.close()
            self.block_swap = None
        if self.checkpointed_blocks:
            self.transformer.disable_gradient_checkpointing()
            self.checkpointed_blocks = 0

    def start_adversary(self, data: "PromptSet") -> None:
        """``--adversarial``: a soft prompt of the text conditioning's width, starting at its scale."""
        config = self.config
        emb = torch.cat([c["encoder_hidden_states"] for c in data.cond]).float()
        self.adversary = Adversary(config.adv_num_tokens, emb.shape[-1], config.adv_steps, config.adv_lr,
                                   float(emb.std()), config.seed, self.device)

    # ------------------------------------------------------------------------------ one forward
    def forward(self, model, sampler, x, index, cond):
        """``(prediction, o)``: the model's prediction and what the losses compare."""
        return self.outputs.forward(model, sampler, x, index, cond)

    # ------------------------------------------------------------------------------- one update
    def update(self, sampler, x, index, batch) -> tuple:
        """One training update at step ``index`` of the trajectory; returns ``(metrics, prediction)``.

        ``batch`` comes from :func:`make_batch`, or is a list of them (``--gradient_accumulation_steps``: each
        is one forward batch; their gradients add up, weighted by the whole update's prompts, before the one
        optimizer step, so the update equals one batch of all of them). With several processes it is this
        process's share and the gradients are summed across processes before the step. ``prediction``
        advances the latents ``x`` (all the batches' rows, in order): the erased model's prediction on the
        concept prompt (detached), or the frozen model's (``--trajectory frozen``).
        """
        batches = batch if isinstance(batch, (list, tuple)) else [batch]
        totals, advances = {}, []
        for part, rows in zip(batches, torch.split(x, [len(b["weight"]) for b in batches])):
            metrics, advance = self._accumulate(sampler, rows, index, part)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            advances.append(advance)

        # Sum gradients over processes, clip, check, step: every process takes the same step.
        config, beta = self.config, self.resolved.beta
        self.dist.sum_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, config.max_grad_norm)
        self._check_finite(grad_norm, "gradient norm")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        metrics = self.dist.sum_scalars(totals)
        metrics["loss"] = (metrics["loss_unlearn"] + config.alpha * metrics.get("loss_loc", 0.0)
                           + beta * metrics.get("loss_preserve", 0.0)
                           + config.adv_weight * metrics.get("loss_adversarial", 0.0))
        metrics.update(grad_norm=float(grad_norm), lr=self.optimizer.param_groups[0]["lr"])
        return metrics, torch.cat(advances)

    def set_learning_rate(self, update: int, total: int) -> float:
        """The rate of update ``update`` (1-based) of ``total`` under ``--lr_scheduler`` / ``--lr_warmup_steps``."""
        config = self.config
        return set_learning_rate(self.optimizer, config.learning_rate, config.lr_scheduler, update, total,
                                 config.lr_warmup_steps)

    def _accumulate(self, sampler, x, index, batch) -> tuple:
        """The losses of one forward batch, backpropagated (gradients accumulate in ``.grad``); returns
        ``(metrics, the prediction that advances these rows)``. No optimizer step."""
        config, beta = self.config, self.resolved.beta
        localize = self.probe is not None and batch["localize"]
        local_loc = localize and bool(batch["localizable"].any())
        own_masks = local_loc and bool(batch["found"].any())  # some prompts hold the concept's tokens
        borrowed_masks = local_loc and batch["cond_concept"] is not None
        anchored = batch["cond_anchor"] is not None and config.anchor_weight > 0
        guided = config.start_guidance != 1.0
        metrics = {"loss_unlearn": 0.0}
        if localize:
            metrics["loss_loc"] = 0.0
        if batch["cond_preserve"] is not None and beta > 0:
            metrics["loss_preserve"] = 0.0
        if self.adversary is not None:
            metrics["loss_adversarial"] = 0.0

        # 1. Targets from the frozen model (erasers off, no graph). Run first: with gradient checkpointing
        #    the erasers must be in the same state during backward as in the forward being recomputed.
        with torch.no_grad(), erasers_disabled(self.frozen):
            with self.probe.capture(batch["positions"]) if own_masks else nullcontext():
                pred_frozen, o_c = self.forward(self.frozen, sampler, x, index, batch["cond"])
            masks = self._masks(batch) if own_masks else None
            if borrowed_masks:  # prompts without the concept's tokens: the bare concept prompt's attention
                with self.probe.capture(batch["concept_positions"]):
                    self.forward(self.frozen, sampler, x, index, batch["cond_concept"])
                found = batch["found"].to(self.device)[:, None]
                borrowed = self._masks(batch)
                masks = borrowed if masks is None else [torch.where(found, m, b) for m, b in zip(masks, borrowed)]
            o_0 = pred_frozen_empty = None
            if not anchored or config.anchor_weight < 1 or (guided and config.trajectory == "frozen"):
                pred_frozen_empty, o_0 = self.forward(self.frozen, sampler, x, index, batch["cond_empty"])
            base = o_0
            if anchored:  # the base of the target moves from the empty prompt to the anchor
                o_a = self.forward(self.frozen, sampler, x, index, batch["cond_anchor"])[1]
                base = o_a if config.anchor_weight == 1 else anchored_base(o_a.float(), o_0.float(), config.anchor_weight)
            o_pre = None
            if "loss_preserve" in metrics:
                o_pre = self.forward(self.frozen, sampler, x, index, batch["cond_preserve"])[1]
            v_neg = negative_guidance_target(o_c.float(), base.float(), config.eta)
        del o_0, base
        pred_erased_empty = None
        if guided and config.trajectory == "erased":  # the trajectory's unconditional half, before the erasers move
            pred_erased_empty = self._erased_empty(sampler, x, index, batch)

        # 1b. --adversarial: refresh the soft prompt against the current eraser (it pulls the erased model's
        #     prediction on the attacked prompt back to the frozen model's prediction on the concept prompt).
        if self.adversary is not None:
            metrics["loss_attack"] = self.adversary.refresh(self.family, self.transformer, sampler, x, index, batch,
                                                            pred_frozen, self.dist)
        del o_c

        # 2. The erased model on the concept prompt: unlearning (+ localization), first backward.
        with EraserOutputCapture(self.erasers) as captured:
            pred, o_erased = self.forward(self.transformer, sampler, x, index, batch["cond"])
        loss = (unlearn_loss(o_erased, v_neg, reduction="none") * batch["weight"]).sum()
        metrics["loss_unlearn"] = loss.detach()
        if local_loc:
            per_prompt = localization_loss(captured.ordered(), masks, batch["localizable"], reduction="none")
            loss_loc = (per_prompt * batch["loc_weight"]).sum()
            metrics["loss_loc"] = loss_loc.detach()
            loss = loss + config.alpha * loss_loc
        del captured, o_erased
        self._check_finite(loss, "loss")
        loss.backward()

        # 2b. --adversarial: the eraser must also erase the concept prompt as attacked.
        if self.adversary is not None:
            attacked = self.adversary.attacked(self.family, batch["cond"], batch["soft_positions"])
            _, o_erased_att = self.forward(self.transformer, sampler, x, index, attacked)
            loss_adv = (unlearn_loss(o_erased_att, v_neg, reduction="none") * batch["weight"]).sum()
            metrics["loss_adversarial"] = loss_adv.detach()
            self._check_finite(loss_adv, "adversarial loss")
            (config.adv_weight * loss_adv).backward()
            del o_erased_att
        del v_neg

        # 3. The erased model on the preserve prompt: preservation, second backward (gradients add up).
        if o_pre is not None:
            _, o_erased_pre = self.forward(self.transformer, sampler, x, index, batch["cond_preserve"])
            loss_pre = (preserve_loss(o_erased_pre, o_pre, reduction="none") * batch["weight"]).sum()
            metrics["loss_preserve"] = loss_pre.detach()
            self._check_finite(loss_pre, "preservation loss")
            (beta * loss_pre).backward()

        if config.trajectory == "frozen":
            advance = self._guided(pred_frozen, pred_frozen_empty)
        else:
            advance = self._guided(pred.detach(), pred_erased_empty)
        return metrics, advance

    def _masks(self, batch) -> list:
        return self.probe.masks(batch["grid"], self.config.mask_threshold, self.config.mask_mode,
                                self.config.mask_normalize)

    def _guided(self, pred_cond, pred_uncond):
        """The trajectory's prediction at ``--start_guidance`` G: uncond + G (cond - uncond) (G = 1: cond)."""
        if self.config.start_guidance == 1.0:
            return pred_cond
        return pred_uncond + self.config.start_guidance * (pred_cond - pred_uncond)

    @torch.no_grad()
    def _erased_empty(self, sampler, x, index, batch):
        return self.forward(self.transformer, sampler, x, index, batch["cond_empty"])[0]

    def _check_finite(self, value, what):
        # With several processes only the gradient norm (identical everywhere after the sum) is checked: a
        # process stopping alone would leave the others waiting in the gradient sum. A non-finite loss makes
        # the summed gradient non-finite too.
        if self.dist.enabled and what != "gradient norm":
            return
        if not torch.isfinite(value).all():
            raise TrainingDiverged(
                f"the {what} is not finite ({float(value.detach())}); the update was not applied and nothing was "
                f"saved. Lower --learning_rate or --eta, keep --max_grad_norm on, or train with --dtype "
                f"bfloat16/float32 instead of float16. The last good checkpoint (if any) is intact under checkpoints/."
            )

    @torch.no_grad()
    def prediction_without_update(self, sampler, x, index, batch):
        """Advance through a step that is not trained, with the model the trajectory follows (and its guidance).
        ``batch``: one batch or the list of an update's batches (as :meth:`update`)."""
        batches = batch if isinstance(batch, (list, tuple)) else [batch]
        model = self.frozen if self.config.trajectory == "frozen" else self.transformer
        out = []
        for part, rows in zip(batches, torch.split(x, [len(b["weight"]) for b in batches])):
            with erasers_disabled(self.frozen) if model is self.frozen else nullcontext():
                cond = sampler.predict(model, rows, index, part["cond"])
                uncond = (sampler.predict(model, rows, index, part["cond_empty"])
                          if self.config.start_guidance != 1 else None)
            out.append(self._guided(cond, uncond))
        return torch.cat(out)

    # --------------------------------------------------------------------------- saving / state
    def eraser_config(self) -> dict:
        config, resolved = self.config, self.resolved
        training = {**config.to_dict(), **resolved.to_dict()}
        return {
            "base_model": {
                "pipeline_class": type(self.pipe).__name__,
                "model_path": str(config.model_path),
                "transformer_config": {k: v for k, v in dict(self.transformer.config).items() if not k.startswith("_")},
            },
            "target_concept": config.target_concept,
            "concepts": config.concepts,
            "training": {k: training[k] for k in ("eta", "alpha", "beta", "learning_rate", "num_frames", "height",
                                                  "width", "num_inference_steps", "loss_target", "trajectory",
                                                  "mask_threshold", "seed")},
            "train_config": config.to_dict(),
            "resolved": resolved.to_dict(),
        }

    def save_erasers(self, folder, progress: dict | None = None) -> None:
        """The eraser folder and its model card (``progress``: ``{"updates": N, "stopped": why}``)."""
        if self.dist.is_main:
            save_eraser_folder(folder, self.transformer, self.family.layout, self.eraser_config())
            write_model_card(folder, progress=progress)  # reads the eraser_config.json just written

    def save_checkpoint(self, folder, position: dict, x, sampler) -> None:
        """A resumable checkpoint: the eraser folder, the optimizer and the position (main process), and each
        process's own mid-trajectory state (its latents and sampler).

        Everything is written into ``.step_N.partial`` beside it and renamed to ``step_N`` when complete, so a
        ``step_N`` folder is always whole; a run killed while saving leaves only the ``.partial`` folder,
        which nothing loads and the next run removes."""
        folder = Path(folder)
        partial = folder.with_name(f".{folder.name}{PARTIAL_SUFFIX}")
        trajectory = {
            "latents": None if x is None else x.detach().cpu(),
            "sampler": None if sampler is None else sampler.state_dict(),
        }
        if self.dist.is_main:
            if partial.exists():
                shutil.rmtree(partial)
            state = {"position": position, "optimizer": self.optimizer.state_dict(),
                     "world_size": self.dist.world_size, **trajectory}
            if self.adversary is not None:
                state["adversary"] = self.adversary.state_dict()
            save_eraser_folder(partial, self.transformer, self.family.layout, self.eraser_config(),
                               extra_files={STATE_NAME: torch_save_bytes(state)})
            write_model_card(partial, progress={"updates": position["global_step"]})
        self.dist.barrier()
        if not self.dist.is_main:
            atomic_write_bytes(partial / f"trajectory_rank{self.dist.rank}.pt", torch_save_bytes(trajectory))
        self.dist.barrier()
        if self.dist.is_main:
            _rename_into_place(partial, folder)
        self.dist.barrier()

    def load_checkpoint(self, folder) -> dict:
        folder = Path(folder)
        _check_checkpoint_files(folder)
        load_erasers(self.transformer, self.family.layout, folder, eraser_rank=self.config.eraser_rank)
        state = read_training_state(folder / STATE_NAME)
        if state.get("world_size", 1) != self.dist.world_size:
            raise UserError(
                f"--resume_from {folder} was written by {state.get('world_size', 1)} processes but this run has "
                f"{self.dist.world_size}; resume with the same number of processes."
            )
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"--resume_from {folder}: its optimizer state does not fit these erasers ({err}); resume "
                            f"from a checkpoint of this run.") from None
        for group in self.optimizer.param_groups:  # the run's own values (the same unless --allow_changed_args)
            group["lr"], group["weight_decay"] = self.config.learning_rate, self.config.weight_decay
        if self.adversary is not None and "adversary" in state:
            self.adversary.load_state_dict(state["adversary"])
        if not self.dist.is_main:
            state.update(read_training_state(folder / f"trajectory_rank{self.dist.rank}.pt", keys=()))
        return state


def _rename_into_place(partial: Path, folder: Path) -> None:
    """Make the finished ``partial`` folder ``folder``; an older folder of that name is replaced."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.replaced{PARTIAL_SUFFIX}")
        if old.exists():
            shutil.rmtree(old)
        with writing(folder):
            folder.rename(old)
    with writing(folder):
        partial.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_checkpoint_folder(folder, eraser_rank: int | None = None) -> None:
    """Fail clearly unless ``folder`` is a complete training checkpoint whose files all read back (before the
    model loads, and before anything in the output folder is moved for the resume)."""
    folder = Path(folder)
    _check_checkpoint_files(folder)
    read_training_state(folder / STATE_NAME)
    _, state, _ = read_eraser_folder(folder)
    rank = eraser_rank_of(state)
    if eraser_rank is not None and rank != eraser_rank:
        raise UserError(f"--resume_from {folder} holds erasers of rank {rank} but --eraser_rank is {eraser_rank}; "
                        f"resume with --eraser_rank {rank}.")


def _check_checkpoint_files(folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"--resume_from {folder} does not exist{' (it is a file)' if folder.exists() else ''}; pass "
                        f"a checkpoint folder such as <output_dir>/checkpoints/step_100.")
    if not (folder / STATE_NAME).is_file():
        raise UserError(
            f"--resume_from {folder} is not a training checkpoint (no {STATE_NAME}); pass a folder such as "
            f"<output_dir>/checkpoints/step_100."
        )
    verify_file(folder, STATE_NAME)


def read_training_state(path, keys=("position", "optimizer")) -> dict:
    """A checkpoint's ``training_state.pt`` (tensors and plain values only: a pickled object is refused, never
    run), with the ``keys`` a resume needs."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refused to load {path}: it holds pickled objects other than tensors and plain values, which could "
            f"run code when loaded; this is not a checkpoint this trainer wrote. Resume from another checkpoint. "
            f"(torch said: {str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"could not read {path} ({err}); is the file complete? Resume from another checkpoint.") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{path} is not a training state this trainer wrote (it lacks {', '.join(missing)}); resume "
                        f"from another checkpoint.")
    return state


# ------------------------------------------------------------------------------------ the loop


def _generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator seeded from the run seed and a position, so every trajectory is reproducible alone."""
    mixed = seed
    for p in parts:
        mixed = (mixed * 1_000_003 + p + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def trained_step_indices(num_steps: int, train_timesteps, seed: int, epoch: int, batch_index: int) -> list:
    """All denoising steps, or ``K`` of them sampled (sorted) for this trajectory."""
    if train_timesteps in (None, "all") or int(train_timesteps) >= num_steps:
        return list(range(num_steps))
    order = torch.randperm(num_steps, generator=_generator(seed, epoch, batch_index, 7))
    return sorted(order[: int(train_timesteps)].tolist())


def run_training(trainer: EraserTrainer, data: PromptSet, output_dir, resume_from=None, validator_factory=None) -> dict:
    """The training loop: epochs -> prompt batches (one trajectory each) -> timesteps (one update each).

    ``resume_from``: the checkpoint folder to continue from (default: ``config.resume_from``, ``latest`` resolved).
    ``validator_factory(tracker)`` makes the :class:`~receler.validation.Validator` of ``--validation_prompts``
    (main process only); ``None`` runs no validation.
    """
    config, dist = trainer.config, trainer.dist
    output_dir = Path(output_dir)
    log_path = output_dir / "train_log.jsonl"
    resume, global_step = None, 0
    if config.adversarial:
        trainer.start_adversary(data)
    resume_dir = resume_from if resume_from is not None else resolve_resume(config.resume_from, output_dir)
    if resume_dir is not None:
        resume = trainer.load_checkpoint(resume_dir)
        global_step = resume["position"]["global_step"]
        if dist.is_main:
            _truncate_log(log_path, global_step)
        logger.info("resumed from %s at update %d", resume_dir, global_step)
    elif dist.is_main and log_path.exists():
        log_path.unlink()
    total = planned_updates(trainer, data)
    tracker = open_tracker(config.report_to, output_dir, tracked_settings(trainer), global_step) if dist.is_main else None
    validator = validator_factory(tracker) if validator_factory is not None and dist.is_main else None
    try:
        with StopRequest("the erasers") as stop, (_open_log(log_path) if dist.is_main else nullcontext()) as log, \
                logging_redirect_tqdm():
            report = TrainingReport(log, tracker, total, global_step, config.log_every, enabled=dist.is_main)
            try:
                summary = _loop(trainer, data, output_dir, report, resume, global_step, stop, total, validator)
                if stop.requested:
                    summary["signal"] = stop.reason  # what stopped it, for the CLI's message
            finally:
                report.close()
        if validator is not None and summary["stopped"] != "interrupted" and summary["updates"] > global_step \
                and validator.last_step != summary["updates"]:
            validator.run(summary["updates"])  # the erasers as saved
    finally:
        if tracker is not None:
            tracker.close()
    trainer.save_erasers(output_dir, summary)
    if dist.is_main:
        _plot(log_path, output_dir / "loss.png")
    logger.info("erasers saved to %s (%d updates, %s)", output_dir, summary["updates"], summary["stopped"])
    return summary


def updates_per_trajectory(trainer) -> int:
    """How many steps of each denoising trajectory train (``--train_timesteps``)."""
    resolved = trainer.resolved
    sampler = trainer.family.make_sampler(trainer.pipe, trainer.config.num_inference_steps, resolved.num_frames,
                                          resolved.height, resolved.width, trainer.device)
    steps = sampler.num_steps
    wanted = trainer.config.trained_timesteps
    return steps if wanted == "all" else min(int(wanted), steps)


def planned_updates(trainer, data: PromptSet) -> int:
    """The updates this run will make when nothing stops it early: epochs x batches x trained steps, capped by
    ``--max_steps`` (the length the learning-rate schedule and the progress bar count on)."""
    config = trainer.config
    per_update = config.batch_size * config.gradient_accumulation_steps * trainer.dist.world_size
    total = config.num_epochs * math.ceil(len(data.prompts) / per_update) * updates_per_trajectory(trainer)
    return min(total, config.max_steps) if config.max_steps else total


def tracked_settings(trainer) -> dict:
    """The run's settings for the tracker's hyperparameter table (config and resolved values, no prompt lists)."""
    resolved = {k: v for k, v in trainer.resolved.to_dict().items()
                if k not in ("prompts", "preserve_prompts", "anchor_prompts")}
    return {**trainer.config.to_dict(), **{f"resolved_{k}": v for k, v in resolved.items()}}


def _loop(trainer, data, output_dir, report, resume, global_step, stop, total, validator=None) -> dict:
    config, family, pipe, dist = trainer.config, trainer.family, trainer.pipe, trainer.dist
    num_frames, height, width = trainer.resolved.num_frames, trainer.resolved.height, trainer.resolved.width
    grid = family.token_grid(pipe, num_frames, height, width)
    per_process = config.batch_size * config.gradient_accumulation_steps  # prompts of one update, on one process
    global_batch = per_process * dist.world_size
    batches_per_epoch = math.ceil(len(data.prompts) / global_batch)
    warned = set()
    watch = ZeroLossWatch()  # an eraser that learns nothing in the first trajectory is not saved
    for epoch in range(config.num_epochs):
        order = torch.randperm(len(data.prompts), generator=_generator(config.seed, epoch)).tolist()
        for b in range(batches_per_epoch):
            here = (epoch, b)
            if resume and here < (resume["position"]["epoch"], resume["position"]["batch_index"]):
                continue
            global_idx = order[b * global_batch : (b + 1) * global_batch]
            if dist.enabled and len(global_idx) < global_batch:
                # Every process needs prompts of its own: pad the epoch's last batch from its start, as
                # PyTorch's DistributedSampler does. (One process never pads.)
                global_idx += (order * global_batch)[: global_batch - len(global_idx)]
            idx = dist.shard(global_idx, per_process)
            # --gradient_accumulation_steps: the update's prompts in forward batches of --batch_size
            batch = [make_batch(data, idx[k : k + config.batch_size], trainer.device, grid, global_idx)
                     for k in range(0, len(idx), config.batch_size)]
            for i in idx:
                if trainer.probe is not None and not data.found[i] and i not in warned:
                    warned.add(i)
                    logger.warning("the concept's tokens do not occur in prompt %r: it trains without L_loc", data.prompts[i])

            # Draw the whole global batch's noise, so each prompt's trajectory is the same with any process count.
            sampler = family.make_sampler(pipe, config.num_inference_steps, num_frames, height, width, trainer.device,
                                          _generator(config.seed, epoch, b))
            start_row = dist.rank * per_process
            x = sampler.initial_latents(len(global_idx))[start_row : start_row + len(idx)]
            train_at = set(trained_step_indices(sampler.num_steps, config.train_timesteps, config.seed, epoch, b))
            first_step = 0
            if resume and here == (resume["position"]["epoch"], resume["position"]["batch_index"]):
                first_step = resume["position"]["step_index"]
                if resume["latents"] is not None:
                    x = resume["latents"].to(trainer.device)
                    sampler.load_state_dict(resume["sampler"])
                resume = None

            for i in range(first_step, sampler.num_steps):
                if i not in train_at:
                    x = sampler.step(trainer.prediction_without_update(sampler, x, i, batch), i, x)
                    continue
                start = time.perf_counter()
                trainer.set_learning_rate(global_step + 1, total)
                metrics, advance = trainer.update(sampler, x, i, batch)
                x = sampler.step(advance, i, x)
                global_step += 1
                row = {"step": global_step, **metrics, "seconds": time.perf_counter() - start,
                       "epoch": epoch, "timestep": int(sampler.timesteps[i])}
                report.record(row, metrics)
                done = config.max_steps is not None and global_step >= config.max_steps
                watch.observe(metrics["loss_unlearn"], global_step)
                if done or stop.requested:
                    watch.finish(family, [data.prompts[j] for j in global_idx])
                position = {"epoch": epoch, "batch_index": b, "step_index": i + 1, "global_step": global_step}
                periodic = config.save_every and global_step % config.save_every == 0 and not watch.nothing_learned
                if periodic or stop.requested or done:
                    _save_checkpoint(trainer, output_dir, position, x, sampler)
                if validator is not None and global_step % config.validation_every == 0 and not stop.requested:
                    validator.run(global_step)
                if stop.requested or done:
                    return {"updates": global_step, "stopped": "interrupted" if stop.requested else "max_steps"}
            watch.finish(family, [data.prompts[j] for j in global_idx])
    return {"updates": global_step, "stopped": "finished"}


def _open_log(log_path: Path):
    with writing(log_path):
        return open(log_path, "a")


def _save_checkpoint(trainer, output_dir, position, x, sampler):
    folder = checkpoint_folder(output_dir, position["global_step"])
    trainer.save_checkpoint(folder, position, x, sampler)
    if trainer.dist.is_main:
        _plot(Path(output_dir) / "train_log.jsonl", Path(output_dir) / "loss.png")
        logger.info("saved checkpoint %s", folder)
        if trainer.config.checkpoints_total_limit:
            rotate_checkpoints(output_dir, trainer.config.checkpoints_total_limit)


def _plot(log_path, png):
    """Redraw ``loss.png``. It is only a picture of ``train_log.jsonl``: a failure (full disk, a broken
    matplotlib) is a warning, never the end of a training."""
    try:
        if log_path.exists():
            rows = read_train_log(log_path)
            if rows:
                plot_train_log(rows, png)
    except Exception as err:  # noqa: BLE001 - any failure of the optional plot
        logger.warning("could not draw %s (%s); training goes on, the numbers are in %s", png, err, log_path.name)


def _truncate_log(log_path: Path, global_step: int) -> None:
    """On resume, drop log lines written after the checkpoint (they will be trained again)."""
    if log_path.exists():
        keep = [r for r in read_train_log(log_path) if r["step"] <= global_step]
        atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in keep))
