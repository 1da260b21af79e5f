"""SAFREE (Yoon et al., "SAFREE: Training-Free and Adaptive Guard for Safe Text-to-Image and Video
Generation", ICLR 2025), as a training-free baseline for the erasers: its concept-orthogonal token
projection, for CogVideoX (T5), HunyuanVideo (Llama tokens and the CLIP pooled embedding) and Wan (UMT5).

What one prompt goes through, per text encoder the pipeline conditions on:

1. **Concept subspace.** Every concept keyword (e.g. "Sexual Acts", "Naked", "Nudity", ...) is encoded
   like a prompt and pooled into one vector (the mean over its valid tokens; CLIP: its pooled output).
   The keywords span the concept subspace ``C``; ``P_C`` projects onto it (computed from an orthonormal
   basis, so near-duplicate keywords are harmless).
2. **Trigger tokens (masked-token proximity).** For every token ``i`` of the prompt (special and template
   tokens excluded) the prompt is encoded again with token ``i`` removed, pooled the same way: ``p_\\i``.
   Its distance to the subspace is ``d_i = ||(I - P_C) p_\\i||``. Removing a token that pulls the prompt
   towards the concept moves the prompt away from ``C``, so token ``i`` is a trigger when
   ``d_i > (1 + alpha) * mean_{j != i} d_j`` (``alpha`` = 0.01, the paper's value).
3. **Projection.** The embedding of each trigger token is projected onto the orthogonal complement of
   ``C`` and, as the paper does to keep it coherent with the prompt, back into the prompt's input space
   ``I`` (the span of the masked prompt embeddings ``p_\\i``): ``x' = P_I (I - P_C) x``. Every other
   token keeps its embedding exactly. ``projection="plain"`` skips ``P_I``; then the filtered tokens have
   (numerically) zero component in ``C``. For the CLIP pooled embedding (HunyuanVideo), which is one
   vector for the whole prompt, the vector is projected when the CLIP tokens hold at least one trigger.
4. **Which denoising steps.** The filtered embedding conditions the first ``K`` denoising steps, then the
   original embedding takes over. Default ``K = 13`` (steps 0-12: the original T2VUnlearning release's
   HunyuanVideo variant); ``steps="auto"`` is the paper's self-validating filtering,
   ``K = round(gamma * sigmoid(1 - cos(p, p')))`` with ``gamma = 10``, where ``cos`` compares the original
   and filtered token embeddings of the main text encoder.

Left out: SAFREE's adaptive latent re-attention (a Fourier-domain re-weighting of U-Net skip features,
FreeU-style) has no counterpart in these video transformers, and the original release did not use it
either. "Removing" a token means deleting it from the token sequence before encoding (replacing it by
padding would break CLIP, whose pad token is its end-of-text token, which marks the pooled position).

The pure functions (:func:`orthonormal_basis`, :func:`detect_trigger_tokens`, :func:`project_tokens`,
:func:`self_validated_steps`) hold the method; :class:`Safree` binds them to a pipeline's text encoders,
and :meth:`Safree.applied` switches from the filtered to the original embedding after ``K`` steps.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import UserError

logger = logging.getLogger(__name__)

#: Concept keywords spanning the nudity subspace (after SAFREE's keyword list for sexual content, plus the
#: plain words nudity prompts use). Multi-word keywords are encoded as one phrase each.
DEFAULT_NUDITY_KEYWORDS = (
    "Sexual Acts",
    "Content Meant to Arouse Sexual Excitement",
    "Nudity",
    "Naked",
    "Nude",
    "Topless",
    "Pornography",
    "Erotic Art",
    "Lustful",
    "Seductive",
    "Orgasmic",
    "Libido",
    "Kinky",
    "Sexual Attraction",
    "Sexual Intercourse",
    "Sexual Pleasure",
    "Sexual Fantasy",
    "Carnal Desires",
    "Sexual Gratification",
)

DEFAULT_ALPHA = 0.01  # trigger threshold of the masked-token proximity test (paper)
DEFAULT_GAMMA = 10.0  # self-validating filtering scale (paper)
DEFAULT_STEPS = 13  # the original release: filtered embedding for denoising steps 0-12
PROJECTIONS = ("input_space", "plain")

_ENCODE_BATCH = 16  # masked prompts encoded per text-encoder call


def default_keywords(concept: str) -> list:
    """The keyword list for ``concept``: the nudity list for nudity-like concepts, else the concept itself."""
    if concept.strip().lower() in {"nudity", "nude", "naked", "naked body", "nsfw", "sexual", "sexual content"}:
        return list(DEFAULT_NUDITY_KEYWORDS)
    return [concept.strip()]


# ------------------------------------------------------------------------------------------ the method


def orthonormal_basis(vectors: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis ``[D, r]`` (float64) of the span of the rows of ``vectors`` ``[K, D]``.

    Directions whose singular value is below ``rtol`` times the largest are dropped, so linearly dependent
    rows give a basis of the true rank (``C (C^T C)^-1 C^T`` would be ill-conditioned there).
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"orthonormal_basis needs a non-empty [K, D] matrix, got shape {tuple(vectors.shape)}")
    _, singular, vh = torch.linalg.svd(vectors.double(), full_matrices=False)
    if singular.numel() == 0 or singular[0] == 0:
        return vectors.new_zeros((vectors.shape[1], 0), dtype=torch.float64)
    keep = singular > rtol * singular[0]
    return vh[keep].T.contiguous()


def _component(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The orthogonal projection of the rows of ``x`` onto ``span(basis)``."""
    return (x @ basis) @ basis.T


def concept_distances(pooled: torch.Tensor, concept_basis: torch.Tensor) -> torch.Tensor:
    """``||(I - P_C) p||`` for every row ``p`` of ``pooled`` ``[N, D]``."""
    x = pooled.double()
    return torch.linalg.vector_norm(x - _component(x, concept_basis.to(x)), dim=-1)


def detect_trigger_tokens(masked_pooled: torch.Tensor, concept_basis: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """SAFREE's masked-token proximity test: ``bool[N]``, True for the tokens that pull towards the concept.

    ``masked_pooled[i]`` is the prompt's pooled embedding with token ``i`` removed. Token ``i`` is a trigger
    when that embedding is farther from the concept subspace than ``(1 + alpha)`` times the mean distance
    of the other masked embeddings. Fewer than two tokens cannot be compared: nothing is flagged.
    """
    n = masked_pooled.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.bool, device=masked_pooled.device)
    d = concept_distances(masked_pooled, concept_basis)
    mean_of_others = (d.sum() - d) / (n - 1)
    return d > (1.0 + alpha) * mean_of_others


def project_tokens(
    tokens: torch.Tensor, trigger: torch.Tensor, concept_basis: torch.Tensor, input_basis: torch.Tensor | None = None
) -> torch.Tensor:
    """Project the rows of ``tokens`` ``[L, D]`` marked in ``trigger`` ``bool[L]``; the others are returned as they are.

    Marked rows become ``(I - P_C) x`` (``input_basis=None``, the plain projection) or ``P_I (I - P_C) x``
    (the paper's, which keeps them in the prompt's input space). Computed in float64, returned in the
    input's dtype; unmarked rows are bit-identical.
    """
    x = tokens.double()
    projected = x - _component(x, concept_basis.to(x))
    if input_basis is not None:
        projected = _component(projected, input_basis.to(x))
    return torch.where(trigger.to(tokens.device).view(-1, 1), projected.to(tokens.dtype), tokens)


def self_validated_steps(original: torch.Tensor, filtered: torch.Tensor, gamma: float = DEFAULT_GAMMA) -> int:
    """The paper's self-validating filtering: ``round(gamma * sigmoid(1 - cos(original, filtered)))`` steps."""
    cos = torch.nn.functional.cosine_similarity(original.double().flatten(), filtered.double().flatten(), dim=0)
    return int(round(gamma * float(torch.sigmoid(1.0 - cos))))


# -------------------------------------------------------------------------------- the text encoders


class _TextSide:
    """One text encoder as a pipeline conditions on it: tokenize, encode ids, pool."""

    name = ""
    pooled_output = False  # True: the conditioning is one vector per prompt (CLIP's pooled embedding)

    def __init__(self, tokenizer, text_encoder, device, length: int):
        self.tokenizer, self.text_encoder, self.device, self.length = tokenizer, text_encoder, device, length
        self.special_ids = set(tokenizer.all_special_ids)

    def text(self, prompt: str) -> str:
        return prompt

    def tokenize(self, prompt: str) -> list:
        """Token ids with special tokens, truncated as the pipeline truncates, without padding."""
        return list(self.tokenizer(self.text(prompt), truncation=True, max_length=self.length).input_ids)

    def first_position(self) -> int:
        """Positions before this one (a prompt template) are never candidates."""
        return 0

    def candidates(self, ids: list) -> list:
        """Positions of the prompt's own tokens: the ones the proximity test removes one at a time."""
        return [p for p in range(self.first_position(), len(ids)) if ids[p] not in self.special_ids]

    def index_in_embeds(self, position: int) -> int:
        return position - self.first_position()

    def pad(self, ids_list: list) -> tuple:
        batch = self.tokenizer.pad(
            [{"input_ids": ids} for ids in ids_list], padding="max_length", max_length=self.length, return_tensors="pt"
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def encode(self, ids_list: list) -> tuple:
        """``(embeddings [B, L, D], valid bool[B, L])`` exactly as the pipeline conditions on them."""
        raise NotImplementedError

    def encode_batched(self, ids_list: list) -> tuple:
        parts = [self.encode(ids_list[i : i + _ENCODE_BATCH]) for i in range(0, len(ids_list), _ENCODE_BATCH)]
        return torch.cat([e for e, _ in parts]), torch.cat([v for _, v in parts])

    def pool(self, embeds: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One vector per sequence: the mean over its valid tokens."""
        weights = valid.to(torch.float64).unsqueeze(-1)
        return (embeds.double() * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class T5Side(_TextSide):
    """CogVideoX: T5 states of the padded prompt, computed without an attention mask (as the pipeline does)."""

    name = "t5"

    def encode(self, ids_list):
        ids, mask = self.pad(ids_list)
        return self.text_encoder(ids)[0], mask.bool()


class UMT5Side(_TextSide):
    """Wan: UMT5 states with the attention mask, zeroed past the prompt's length (as the pipeline does)."""

    name = "umt5"

    def text(self, prompt):
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        return prompt_clean(prompt)

    def encode(self, ids_list):
        ids, mask = self.pad(ids_list)
        states = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return states * mask.unsqueeze(-1).to(states.dtype), mask.bool()


class LlamaSide(_TextSide):
    """HunyuanVideo: Llama hidden states (third-to-last layer) of the templated prompt, template cropped."""

    name = "llama"

    def __init__(self, tokenizer, text_encoder, device, length, template: dict):
        self.template = template
        self.crop = template.get("crop_start")
        if self.crop is None:  # as the pipeline: the template's own length, minus "{}" and <|eot_id|>
            self.crop = tokenizer(template["template"], padding="max_length", return_tensors="pt").input_ids.shape[-1] - 2
        super().__init__(tokenizer, text_encoder, device, length + self.crop)

    def text(self, prompt):
        return self.template["template"].format(prompt)

    def first_position(self):
        return self.crop

    def encode(self, ids_list):
        ids, mask = self.pad(ids_list)
        states = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-3]
        return states[:, self.crop :], mask[:, self.crop :].bool()


class CLIPPooledSide(_TextSide):
    """HunyuanVideo's second encoder: CLIP's pooled embedding of the prompt (77 tokens)."""

    name = "clip"
    pooled_output = True

    def encode(self, ids_list):
        ids, _ = self.pad(ids_list)
        pooled = self.text_encoder(ids, output_hidden_states=False).pooler_output
        return pooled.unsqueeze(1), torch.ones(pooled.shape[0], 1, dtype=torch.bool, device=pooled.device)


# ----------------------------------------------------------------------------------------- pipelines


# pipeline call argument -> transformer keyword argument it becomes
_TRANSFORMER_KWARG = {"prompt_embeds": "encoder_hidden_states", "pooled_prompt_embeds": "pooled_projections"}


@dataclass
class SafreeFilter:
    """SAFREE's result for one prompt: pipeline arguments before and after filtering, and for how long."""

    prompt: str
    original: dict  # pipeline call arguments: prompt_embeds (+ pooled_prompt_embeds, prompt_attention_mask)
    filtered: dict
    filter_steps: int  # the first filter_steps denoising steps use `filtered`
    triggers: dict = field(default_factory=dict)  # text encoder -> the tokens found to pull towards the concept

    @property
    def changed(self) -> bool:
        return any(not torch.equal(self.original[k], self.filtered[k]) for k in self.original)


class Safree:
    """SAFREE bound to one pipeline: ``filter(prompt)``, then render inside ``applied(...)``.

    ``family`` is a :class:`receler.families.ModelFamily` (cogvideox, hunyuan_video or wan); ``steps``
    is the number of first denoising steps conditioned on the filtered embedding, or ``"auto"`` for the
    paper's self-validating filtering.
    """

    def __init__(
        self,
        family,
        pipe,
        keywords,
        alpha: float = DEFAULT_ALPHA,
        steps=DEFAULT_STEPS,
        gamma: float = DEFAULT_GAMMA,
        projection: str = "input_space",
    ):
        keywords = [k.strip() for k in keywords if k and k.strip()]
        if not keywords:
            raise UserError("SAFREE needs at least one concept keyword (--safree_keywords); none were given.")
        if projection not in PROJECTIONS:
            raise UserError(f"SAFREE projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        if steps != "auto" and (not isinstance(steps, int) or steps < 0):
            raise UserError(f"SAFREE steps must be a non-negative integer or 'auto', got {steps!r}")
        if alpha < 0:
            raise UserError(f"SAFREE alpha must be >= 0 (the paper uses 0.01), got {alpha}")
        self.family, self.pipe, self.keywords = family, pipe, keywords
        self.alpha, self.steps, self.gamma, self.projection = alpha, steps, gamma, projection
        self.sides = family.safree_text_sides(pipe)
        with torch.no_grad():
            self.concept_bases = {key: self._concept_basis(side) for key, side in self.sides.items()}
        logger.info(
            "SAFREE: %d concept keywords, alpha %s, %s projection, filtered embedding for %s",
            len(keywords), alpha, projection, "self-validated steps" if steps == "auto" else f"the first {steps} steps",
        )

    def _concept_basis(self, side: _TextSide) -> torch.Tensor:
        embeds, valid = side.encode_batched([side.tokenize(k) for k in self.keywords])
        return orthonormal_basis(side.pool(embeds, valid))

    @torch.no_grad()
    def filter(self, prompt: str) -> SafreeFilter:
        original, filtered, triggers = {}, {}, {}
        for key, side in self.sides.items():
            ids = side.tokenize(prompt)
            embeds, valid = side.encode([ids])
            positions = side.candidates(ids)
            flagged, input_basis = [], None
            if len(positions) >= 2:
                masked = [ids[:p] + ids[p + 1 :] for p in positions]
                pooled = side.pool(*side.encode_batched(masked))
                flags = detect_trigger_tokens(pooled, self.concept_bases[key], self.alpha)
                flagged = [p for p, flag in zip(positions, flags.tolist()) if flag]
                if self.projection == "input_space":
                    input_basis = orthonormal_basis(pooled)
            triggers[side.name] = side.tokenizer.convert_ids_to_tokens([ids[p] for p in flagged])
            tokens = embeds[0]
            if side.pooled_output:
                mark = torch.full((1,), bool(flagged), device=tokens.device)
            else:
                mark = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
                mark[[side.index_in_embeds(p) for p in flagged]] = True
            projected = project_tokens(tokens, mark, self.concept_bases[key], input_basis) if flagged else tokens
            if side.pooled_output:
                original[key], filtered[key] = embeds[:, 0], projected.reshape(1, -1)
            else:
                original[key], filtered[key] = embeds, projected.unsqueeze(0)
                if isinstance(side, LlamaSide):
                    original["prompt_attention_mask"] = filtered["prompt_attention_mask"] = valid.long()
        if self.steps == "auto":
            steps = self_validated_steps(original["prompt_embeds"], filtered["prompt_embeds"], self.gamma)
        else:
            steps = self.steps
        result = SafreeFilter(prompt, original, filtered, steps, triggers)
        found = {name: toks for name, toks in triggers.items() if toks}
        if found:
            logger.info(
                "SAFREE: trigger tokens %s; filtered embedding for the first %d steps",
                "; ".join(f"{name}: {' '.join(toks)}" for name, toks in found.items()), steps,
            )
        else:
            logger.info("SAFREE: no trigger token in %r; the prompt is left as it is", prompt)
        return result

    @contextmanager
    def applied(self, pipe, result: SafreeFilter):
        """Pipeline call arguments that render with ``result``: the filtered embedding for the first
        ``result.filter_steps`` steps, then the original one.

        The pipeline receives the filtered embeddings (and a step-counting ``callback_on_step_end``); a
        forward pre-hook on the transformer replaces, from step ``filter_steps`` on, every batch row of its
        text conditioning that is the filtered embedding by the original (whatever the pipeline batches
        with it, e.g. CogVideoX's negative prompt). Raises ``RuntimeError`` after the call if the switch
        never saw the embeddings it was meant to swap (a diffusers change), rather than render silently wrong.
        """
        switch = _EmbeddingSwitch(result)
        handle = pipe.transformer.register_forward_pre_hook(switch.pre_hook, with_kwargs=True)
        try:
            yield {**result.filtered, "callback_on_step_end": switch.callback}
        finally:
            handle.remove()
        switch.check()


class _EmbeddingSwitch:
    def __init__(self, result: SafreeFilter):
        self.result = result
        self.step = 0
        self.seen_filtered = 0
        self.swapped = 0
        self.pairs = [
            (_TRANSFORMER_KWARG[key], result.filtered[key], result.original[key])
            for key in result.filtered
            if key in _TRANSFORMER_KWARG and not torch.equal(result.filtered[key], result.original[key])
        ]

    def callback(self, pipe, step, timestep, callback_kwargs):
        self.step = step + 1
        return {}

    def pre_hook(self, module, args, kwargs):
        changed = False
        for name, filtered, original in self.pairs:
            value = kwargs.get(name)
            if value is None:
                continue
            rows = torch.tensor([torch.equal(row, filtered[0].to(row)) for row in value])
            if not rows.any():
                continue
            if self.step < self.result.filter_steps:
                self.seen_filtered += 1
                continue
            mask = rows.view(-1, *([1] * (value.ndim - 1))).to(value.device)
            kwargs[name] = torch.where(mask, original.to(value).expand_as(value), value)
            self.swapped += 1
            changed = True
        return (args, kwargs) if changed else None

    def check(self):
        if not self.pairs:
            return
        if self.result.filter_steps > 0 and self.step > 0 and self.seen_filtered == 0:
            raise RuntimeError("SAFREE: the transformer never received the filtered embedding; the pipeline changed")
        if self.step > self.result.filter_steps and self.swapped == 0:
            raise RuntimeError("SAFREE: the switch back to the original embedding never happened; the pipeline changed")


def parse_steps(value: str):
    """``--safree_steps``: a non-negative integer or ``auto``."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        steps = int(value)
    except ValueError:
        raise UserError(f"--safree_steps must be a whole number of steps or 'auto', got {value!r}") from None
    if steps < 0:
        raise UserError(f"--safree_steps must be >= 0, got {steps}")
    return steps


def read_keywords(values) -> list:
    """``--safree_keywords``: keywords given on the command line, or one .txt file with one keyword per line."""
    from pathlib import Path

    if values is None:
        return None
    if len(values) == 1 and values[0].lower().endswith(".txt"):
        path = Path(values[0])
        if not path.is_file():
            raise UserError(f"--safree_keywords file {path} does not exist (one keyword per line expected)")
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        keywords = [line for line in lines if line and not line.startswith("#")]
        if not keywords:
            raise UserError(f"--safree_keywords file {path} lists no keywords (one per line expected)")
        return keywords
    return [v for v in values if v.strip()]


__all__ = [
    "DEFAULT_NUDITY_KEYWORDS",
    "Safree",
    "SafreeFilter",
    "concept_distances",
    "default_keywords",
    "detect_trigger_tokens",
    "orthonormal_basis",
    "parse_steps",
    "project_tokens",
    "read_keywords",
    "self_validated_steps",
]
