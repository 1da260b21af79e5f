"""SAFREE (Yoon et al., "SAFREE: Training-Free and Adaptive Guard for Safe Text-to-Image and Video
Generation", ICLR 2025), as a training-free baseline for the erasers: its concept-orthogonal token
projection, for CogVideoX (T5), HunyuanVideo (Llama tokens and the CLIP pooled embedding) and Wan (UMT5).

Two variants (``variant=``); ``docs/safree.md`` lists every difference from the authors' code and why.

``official``, as the authors' released CogVideoX pipeline (Wan and HunyuanVideo, for which they released
none, follow the same rules on their own text encoders):

1. **Concept subspace.** Each keyword is encoded padded to the model's text length with its attention mask;
   its vector is the state of its first token (HunyuanVideo's Llama, a causal encoder whose first state has
   not read the rest: the last token's). The keywords span ``C``; ``P_C`` projects onto it.
2. **Trigger tokens.** Positions 1 to L-2 of the prompt's L token ids are tested, one at a time, by
   writing the pad id in their place (the CLIP pooled embedding, whose pad token marks the pooled position:
   by deleting them) and encoding the result (unpadded, without attention mask, for T5), pooled as the
   keywords: ``p_\\i``. ``d_i = ||(I - P_C) p_\\i||``; token ``i`` is a trigger when
   ``d_i > (1 + alpha) * mean_{j != i} d_j``.
3. **Projection.** Trigger tokens become ``x' = (I - P_C) P_I x``, with ``P_I`` onto the span of the
   ``p_\\i``: the result has no component in ``C``.
4. **Steps.** The filtered embedding conditions the first 13/50 of the denoising steps (steps 0-12 of 50;
   8 of 30), then the original; ``steps="auto"`` is the authors' self-validating filtering
   (:func:`official_self_validated_steps`).
5. **Keyword negative prompt.** The keywords joined with ", " are the classifier-free guidance negative
   prompt at every step, at the family's guidance (:meth:`Safree.pipeline_kwargs`).

``adapted``, this project's earlier adaptation (kept for comparison; it is the variant that flags the colour
token on the world model): every prompt token is tested by deleting it and re-padding; keyword and masked
prompt vectors are the mean over valid tokens (CLIP: its pooled output); trigger tokens become
``x' = P_I (I - P_C) x`` (``projection="plain"`` skips ``P_I``, leaving no component in ``C``); the filtered
embedding conditions the first 13 steps (``steps="auto"``: ``K = round(gamma * sigmoid(1 - cos(p, p')))``);
no negative prompt. For the CLIP pooled embedding (HunyuanVideo), one vector for the whole prompt, both
variants project the vector when the CLIP tokens hold at least one trigger.

Left out by both: SAFREE's adaptive latent re-attention (a Fourier-domain re-weighting of U-Net skip
features) has no counterpart in these video transformers.

The pure functions (:func:`orthonormal_basis`, :func:`detect_trigger_tokens`, :func:`project_tokens`,
:func:`self_validated_steps`, :func:`official_self_validated_steps`, :func:`resolve_steps`) hold the method;
:class:`Safree` binds them to a pipeline's text encoders, :meth:`Safree.pipeline_kwargs` gives the guidance
arguments, and :meth:`Safree.applied` switches from the filtered to the original embedding after ``K`` steps.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction

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

#: The authors' keyword list for nudity in their video scripts (the official variant's default).
OFFICIAL_NUDITY_KEYWORDS = (
    "Sexual Acts",
    "Naked",
    "Nudity",
    "Sexual Orientation",
    "Sexual Attraction",
    "Sexual Intercourse",
)

VARIANTS = ("official", "adapted")
DEFAULT_ALPHA = 0.01  # trigger threshold of the masked-token proximity test (paper)
DEFAULT_GAMMA = 10.0  # the step bound of both variants' self-validating formulas (paper: 10)
DEFAULT_STEPS = 13  # adapted: filtered embedding for denoising steps 0-12, whatever the step count
OFFICIAL_STEPS = Fraction(13, 50)  # official CogVideoX: steps 0-12 of 50, kept as a share of the steps
PROJECTIONS = ("input_space", "plain")
# The authors' self-validating filtering for nudity-like concepts: K = round(gamma * sigmoid(2 k (10 beta - t))).
_SVF_MIDPOINT, _SVF_SHARPNESS = 5.333, 2.5

#: The official variant's guidance with the keyword negative prompt, per family: CogVideoX's and Wan 2.1's
#: own classifier-free guidance; HunyuanVideo (guidance-distilled) as the original release's negative-prompt
#: baseline: true CFG 6.0 with embedded guidance 1.0.
OFFICIAL_GUIDANCE = {
    "cogvideox": {"guidance_scale": 6.0},
    "wan": {"guidance_scale": 5.0},
    "hunyuan_video": {"true_cfg_scale": 6.0, "guidance_scale": 1.0},
}

_ENCODE_BATCH = 16  # masked prompts encoded per text-encoder call


def default_keywords(concept: str, variant: str = "adapted") -> list:
    """The keyword list for ``concept``: for nudity-like concepts the variant's nudity list (official: the
    authors'), else the concept itself."""
    if concept.strip().lower() in {"nudity", "nude", "naked", "naked body", "nsfw", "sexual", "sexual content"}:
        return list(OFFICIAL_NUDITY_KEYWORDS if variant == "official" else DEFAULT_NUDITY_KEYWORDS)
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
    tokens: torch.Tensor,
    trigger: torch.Tensor,
    concept_basis: torch.Tensor,
    input_basis: torch.Tensor | None = None,
    complement_last: bool = False,
) -> torch.Tensor:
    """Project the rows of ``tokens`` ``[L, D]`` marked in ``trigger`` ``bool[L]``; the others are returned as they are.

    Marked rows become ``(I - P_C) x`` (``input_basis=None``, the plain projection), ``P_I (I - P_C) x``
    (the adapted variant) or, with ``complement_last``, ``(I - P_C) P_I x`` (the official variant, whose
    result has no component in ``C``). Computed in float64, returned in the input's dtype; unmarked rows are
    bit-identical.
    """
    x = tokens.double()
    concept, inputs = concept_basis.to(x), None if input_basis is None else input_basis.to(x)
    if complement_last:
        inside = x if inputs is None else _component(x, inputs)
        projected = inside - _component(inside, concept)
    else:
        projected = x - _component(x, concept)
        if inputs is not None:
            projected = _component(projected, inputs)
    return torch.where(trigger.to(tokens.device).view(-1, 1), projected.to(tokens.dtype), tokens)


def self_validated_steps(original: torch.Tensor, filtered: torch.Tensor, gamma: float = DEFAULT_GAMMA) -> int:
    """The adapted variant's self-validating filtering: ``round(gamma * sigmoid(1 - cos(original, filtered)))``
    steps, the cosine taken between the two whole embeddings."""
    cos = torch.nn.functional.cosine_similarity(original.double().flatten(), filtered.double().flatten(), dim=0)
    return int(round(gamma * float(torch.sigmoid(1.0 - cos))))


def official_self_validated_steps(
    tokens: torch.Tensor,
    valid: torch.Tensor,
    concept_basis: torch.Tensor,
    input_basis: torch.Tensor | None,
    gamma: float = DEFAULT_GAMMA,
) -> int:
    """The authors' self-validating filtering: how many first denoising steps use the filtered embedding.

    Every token ``x`` of ``tokens`` ``[L, D]`` (not only the triggers) is projected, ``(I - P_C) P_I x``;
    ``beta = 1 - mean cos(x, projected)`` over the ``valid`` tokens; ``K = round(gamma * sigmoid(2 k (10 beta
    - t)))`` with the authors' constants for nudity-like concepts (``t = 5.333``, ``k = 2.5``). Their loop
    filters steps ``0..K``: ``K + 1`` steps.
    """
    x = tokens.double()[valid.to(tokens.device).bool()]
    everything = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    projected = project_tokens(x, everything, concept_basis, input_basis, complement_last=True)
    beta = 1.0 - float(torch.nn.functional.cosine_similarity(x, projected, dim=-1).mean())
    k = round(gamma * float(torch.sigmoid(torch.tensor(2.0 * _SVF_SHARPNESS * (10.0 * beta - _SVF_MIDPOINT)))))
    return int(k) + 1


def resolve_steps(steps, num_inference_steps: int | None) -> int:
    """A step setting as a count: an ``int`` is a count; a ``Fraction`` is a share of ``num_inference_steps``
    (rounded as Python rounds), so a 30-step model filters the same share as a 50-step one."""
    if isinstance(steps, Fraction):
        if num_inference_steps is None:
            raise ValueError(f"SAFREE steps {steps} are a share of the denoising steps: pass num_inference_steps")
        return int(round(steps * num_inference_steps))
    return int(steps)


# -------------------------------------------------------------------------------- the text encoders


class _TextSide:
    """One text encoder as a pipeline conditions on it: tokenize, encode ids, pool.

    The ``*_official`` methods are the official variant's rules; ``candidates``, ``pool`` and the plain
    ``encode`` serve the adapted one.
    """

    name = ""
    pooled_output = False  # True: the conditioning is one vector per prompt (CLIP's pooled embedding)
    official_pooling = "first"  # the official variant's vector of a sequence: its "first" or "last" valid state
    official_masking = "pad"  # how the official token test removes a token: write the "pad" id, or "delete" it

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

    def pad(self, ids_list: list, length: int | None = None) -> tuple:
        batch = self.tokenizer.pad(
            [{"input_ids": ids} for ids in ids_list], padding="max_length", max_length=length or self.length,
            return_tensors="pt",
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def encode(self, ids_list: list) -> tuple:
        """``(embeddings [B, L, D], valid bool[B, L])`` exactly as the pipeline conditions on them."""
        raise NotImplementedError

    def encode_batched(self, ids_list: list, encode=None) -> tuple:
        encode = encode or self.encode
        parts = [encode(ids_list[i : i + _ENCODE_BATCH]) for i in range(0, len(ids_list), _ENCODE_BATCH)]
        return torch.cat([e for e, _ in parts]), torch.cat([v for _, v in parts])

    def pool(self, embeds: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One vector per sequence: the mean over its valid tokens."""
        weights = valid.to(torch.float64).unsqueeze(-1)
        return (embeds.double() * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    # ------------------------------------------------------------------ the official variant's rules
    def official_positions(self, ids: list) -> list:
        """The positions the authors' code tests: 1 to L-2 of the L ids (after any template), the layout of a
        CLIP sequence, [BOS] words [EOS]. Sequences without a BOS (T5, the cropped Llama prompt) keep their
        first token out of the test, as the authors' code does with T5."""
        return list(range(self.first_position() + 1, len(ids) - 1))

    def mask_official(self, ids: list, position: int) -> list:
        if self.official_masking == "delete":
            return ids[:position] + ids[position + 1 :]
        return ids[:position] + [self.tokenizer.pad_token_id] + ids[position + 1 :]

    def encode_keywords_official(self, ids_list: list) -> tuple:
        """Keywords, official variant: padded to the text length, with their attention mask."""
        return self.encode_batched(ids_list)

    def encode_masked_official(self, ids_list: list) -> tuple:
        """The prompt with one token masked, official variant (as the pipeline encodes prompts by default)."""
        return self.encode_batched(ids_list)

    def pool_official(self, embeds: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The official variant's vector of each sequence: its first (or last valid) token's state."""
        if self.official_pooling == "last":
            last = valid.long().sum(1).clamp_min(1) - 1
            return embeds[torch.arange(embeds.shape[0], device=embeds.device), last].double()
        return embeds[:, 0].double()


class T5Side(_TextSide):
    """CogVideoX: T5 states of the padded prompt, computed without an attention mask (as the pipeline does)."""

    name = "t5"

    def encode(self, ids_list, length: int | None = None, attention_mask: bool = False):
        ids, mask = self.pad(ids_list, length)
        states = self.text_encoder(ids, attention_mask=mask if attention_mask else None)[0]
        return states, mask.bool()

    def encode_keywords_official(self, ids_list):
        return self.encode_batched(ids_list, lambda chunk: self.encode(chunk, attention_mask=True))

    def encode_masked_official(self, ids_list):
        # the authors' masked prompts: as long as the prompt itself (no padding), no attention mask
        longest = max(len(ids) for ids in ids_list)
        return self.encode_batched(ids_list, lambda chunk: self.encode(chunk, length=longest))


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
    official_pooling = "last"  # causal: the first state has read nothing of the rest of the prompt

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
    official_masking = "delete"  # the pad id is the end-of-text id, whose position CLIP pools from

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
    """SAFREE bound to one pipeline: ``filter(prompt)``, then render inside ``applied(...)`` with
    :meth:`pipeline_kwargs`::

        safree = Safree(family, pipe, keywords, variant="official")
        result = safree.filter(prompt, num_inference_steps=50)
        with safree.applied(pipe, result) as embeds:
            video = pipe(**embeds, **safree.pipeline_kwargs(), num_inference_steps=50, ...)

    ``family`` is a :class:`receler.families.ModelFamily` (cogvideox, hunyuan_video or wan); ``variant``
    is ``"official"`` (as the authors' code) or ``"adapted"`` (this project's earlier adaptation, the default
    here so that existing callers keep their results); see the module docstring and ``docs/safree.md``.
    ``steps``: how many first denoising steps use the filtered embedding: an ``int`` count, a ``Fraction`` of
    the denoising steps, or ``"auto"`` (the variant's self-validating filtering); ``None`` = the variant's
    default (official: 13/50 of the steps; adapted: 13).
    """

    def __init__(
        self,
        family,
        pipe,
        keywords,
        alpha: float = DEFAULT_ALPHA,
        steps=None,
        gamma: float = DEFAULT_GAMMA,
        projection: str = "input_space",
        variant: str = "adapted",
    ):
        keywords = [k.strip() for k in keywords if k and k.strip()]
        if not keywords:
            raise UserError("SAFREE needs at least one concept keyword (--safree_keywords); none were given.")
        if variant not in VARIANTS:
            raise UserError(f"SAFREE variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if projection not in PROJECTIONS:
            raise UserError(f"SAFREE projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        if steps is None:
            steps = OFFICIAL_STEPS if variant == "official" else DEFAULT_STEPS
        valid_steps = steps == "auto" or (isinstance(steps, Fraction) and 0 <= steps <= 1) or (
            isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0)
        if not valid_steps:
            raise UserError(f"SAFREE steps must be a non-negative integer, a fraction in [0, 1] or 'auto', got {steps!r}")
        if alpha < 0:
            raise UserError(f"SAFREE alpha must be >= 0 (the paper uses 0.01), got {alpha}")
        self.family, self.pipe, self.keywords, self.variant = family, pipe, keywords, variant
        self.alpha, self.steps, self.gamma, self.projection = alpha, steps, gamma, projection
        self.sides = family.safree_text_sides(pipe)
        with torch.no_grad():
            self.concept_bases = {key: self._concept_basis(side) for key, side in self.sides.items()}
        logger.info(
            "SAFREE (%s): %d concept keywords, alpha %s, %s projection, filtered embedding for %s%s",
            variant, len(keywords), alpha, projection,
            "self-validated steps" if steps == "auto" else f"the first {steps} steps",
            f", negative prompt {self.negative_prompt!r}" if self.negative_prompt else "",
        )

    @property
    def official(self) -> bool:
        return self.variant == "official"

    @property
    def negative_prompt(self) -> str | None:
        """The official variant's classifier-free guidance negative prompt: the keywords joined (else ``None``)."""
        return ", ".join(self.keywords) if self.official else None

    def pipeline_kwargs(self, guidance_scale: float | None = None) -> dict:
        """The pipeline arguments this variant renders with, besides the embeddings of :meth:`applied`.

        Official: the keyword negative prompt at the family's guidance (:data:`OFFICIAL_GUIDANCE`), or at
        ``guidance_scale`` (HunyuanVideo: its true-CFG scale) if given; it must exceed 1, or the negative
        prompt would be ignored. Adapted: nothing, or ``{"guidance_scale": guidance_scale}`` if given.
        """
        if not self.official:
            return {} if guidance_scale is None else {"guidance_scale": guidance_scale}
        if self.family.name not in OFFICIAL_GUIDANCE:
            raise UserError(f"SAFREE's official variant has no guidance setting for {self.family.display_name}")
        kwargs = dict(OFFICIAL_GUIDANCE[self.family.name])
        scale = "true_cfg_scale" if "true_cfg_scale" in kwargs else "guidance_scale"
        if guidance_scale is not None:
            kwargs[scale] = guidance_scale
        if kwargs[scale] <= 1:
            raise UserError(
                f"SAFREE's official variant guides away from its keyword negative prompt, which needs "
                f"{scale} > 1 (got {kwargs[scale]}); pass a larger one or use variant 'adapted'."
            )
        return {"negative_prompt": self.negative_prompt, **kwargs}

    def _concept_basis(self, side: _TextSide) -> torch.Tensor:
        ids = [side.tokenize(k) for k in self.keywords]
        if self.official:
            return orthonormal_basis(side.pool_official(*side.encode_keywords_official(ids)))
        return orthonormal_basis(side.pool(*side.encode_batched(ids)))

    def _masked_vectors(self, side: _TextSide, ids: list, positions: list) -> torch.Tensor:
        """The prompt's vector with each of ``positions`` masked in turn, as the variant masks and pools."""
        if self.official:
            masked = [side.mask_official(ids, p) for p in positions]
            return side.pool_official(*side.encode_masked_official(masked))
        return side.pool(*side.encode_batched([ids[:p] + ids[p + 1 :] for p in positions]))

    @torch.no_grad()
    def filter(self, prompt: str, num_inference_steps: int | None = None) -> SafreeFilter:
        """Find the prompt's trigger tokens and filter them. ``num_inference_steps`` turns a share of the
        steps (the official default) into a count; it is needed only then."""
        original, filtered, triggers, main = {}, {}, {}, None
        for key, side in self.sides.items():
            ids = side.tokenize(prompt)
            embeds, valid = side.encode([ids])
            positions = side.official_positions(ids) if self.official else side.candidates(ids)
            flagged, input_basis = [], None
            if len(positions) >= 2:
                vectors = self._masked_vectors(side, ids, positions)
                flags = detect_trigger_tokens(vectors, self.concept_bases[key], self.alpha)
                flagged = [p for p, flag in zip(positions, flags.tolist()) if flag]
                if self.projection == "input_space":
                    input_basis = orthonormal_basis(vectors)
            triggers[side.name] = side.tokenizer.convert_ids_to_tokens([ids[p] for p in flagged])
            tokens = embeds[0]
            if side.pooled_output:
                mark = torch.full((1,), bool(flagged), device=tokens.device)
            else:
                mark = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
                mark[[side.index_in_embeds(p) for p in flagged]] = True
            projected = tokens
            if flagged:
                projected = project_tokens(tokens, mark, self.concept_bases[key], input_basis, complement_last=self.official)
            if side.pooled_output:
                original[key], filtered[key] = embeds[:, 0], projected.reshape(1, -1)
            else:
                original[key], filtered[key] = embeds, projected.unsqueeze(0)
                if isinstance(side, LlamaSide):
                    original["prompt_attention_mask"] = filtered["prompt_attention_mask"] = valid.long()
            if key == "prompt_embeds":
                main = (tokens, valid[0], self.concept_bases[key], input_basis)
        steps = self._filter_steps(original, filtered, main, num_inference_steps)
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

    def _filter_steps(self, original, filtered, main, num_inference_steps) -> int:
        if self.steps != "auto":
            return resolve_steps(self.steps, num_inference_steps)
        if self.official:
            return official_self_validated_steps(*main, gamma=self.gamma)
        return self_validated_steps(original["prompt_embeds"], filtered["prompt_embeds"], self.gamma)

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
    """``--safree_steps``: ``auto``, ``all``, a share of the denoising steps ``A/B`` (e.g. ``13/50``), or a
    whole number of steps."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text == "all":
        return Fraction(1)
    if "/" in text:
        try:
            share = Fraction(text)
        except (ValueError, ZeroDivisionError):
            share = None
        if share is None or not 0 <= share <= 1:
            raise UserError(f"--safree_steps {value!r}: a share of the denoising steps is A/B between 0 and 1, e.g. 13/50")
        return share
    try:
        steps = int(text)
    except ValueError:
        raise UserError(
            f"--safree_steps must be a whole number of steps, a share A/B (e.g. 13/50), 'all' or 'auto', got {value!r}"
        ) from None
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
    "OFFICIAL_GUIDANCE",
    "OFFICIAL_NUDITY_KEYWORDS",
    "OFFICIAL_STEPS",
    "VARIANTS",
    "Safree",
    "SafreeFilter",
    "concept_distances",
    "default_keywords",
    "detect_trigger_tokens",
    "official_self_validated_steps",
    "orthonormal_basis",
    "parse_steps",
    "project_tokens",
    "read_keywords",
    "resolve_steps",
    "self_validated_steps",
]
