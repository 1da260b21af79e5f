"""Concept-localized regularization: where in the video the concept is, and keeping the eraser silent elsewhere.

On the frozen pass for the concept prompt, each wrapped layer's attention of video queries over the
concept's text tokens is read (softmax over *all* keys, averaged over heads), computed in query chunks
so the full N x N map never exists. It is read from the model's own attention computation: while a probed
attention module runs, :class:`ConceptAttentionProbe` watches the call it makes to
``torch.nn.functional.scaled_dot_product_attention`` and takes the query, key, mask and scale it passes
(after the model's q/k norms and rotary embedding, whatever they are), so nothing here re-implements a
model's attention. Per latent frame the map is min-max normalised and thresholded into a binary mask
``M_l`` (1 where the concept is). The localization loss (in ``losses.py``) then penalises each eraser's
output outside its mask.
"""

import logging
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

# Upper bound on one chunk's score matrix (batch x heads x queries x keys), in elements (~256 MB fp32).
DEFAULT_CHUNK_ELEMENTS = 2**26


def find_token_positions(prompt_ids: list, concept_ids: list) -> list:
    """Indices of every occurrence of the concept's token run inside the prompt's tokens."""
    n = len(concept_ids)
    if n == 0:
        return []
    positions = []
    for start in range(len(prompt_ids) - n + 1):
        if list(prompt_ids[start : start + n]) == list(concept_ids):
            positions.extend(range(start, start + n))
    return sorted(set(positions))


def concept_positions_mask(family, pipe, prompts: list, concept: str) -> tuple:
    """``(positions [B, T] bool, found [B] bool)``: which text positions hold the concept, per prompt."""
    spellings = family.concept_token_ids(pipe, concept)
    rows, found = [], []
    for prompt in prompts:
        ids = family.prompt_token_ids(pipe, prompt)
        hit = sorted({p for concept_ids in spellings for p in find_token_positions(ids, concept_ids)})
        row = torch.zeros(len(ids), dtype=torch.bool)
        row[hit] = True
        rows.append(row)
        found.append(bool(hit))
    return torch.stack(rows), torch.tensor(found)


def chunk_rows(batch: int, heads: int, num_keys: int, max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    return max(1, max_elements // max(1, batch * heads * num_keys))


def concept_attention_chunked(query, key, concept_keys, key_mask=None, chunk_size=None, attn_mask=None,
                              scale=None) -> torch.Tensor:
    """Attention mass of each query on the concept keys, averaged over heads: ``[B, Nq]``.

    ``query`` [B, H, Nq, d], ``key`` [B, H, Nk, d]; ``concept_keys`` [B, Nk] bool marks the concept's
    key positions; ``key_mask`` [B, Nk] bool (True = may be attended) excludes padding; ``attn_mask`` is a
    mask as ``scaled_dot_product_attention`` takes it (broadcastable to [B, H, Nq, Nk]; bool: True = may
    attend, float: added to the scores); ``scale`` defaults to ``d ** -0.5``. The softmax runs over all
    keys; per query chunk, ``log(sum over concept keys of e^s) - log(sum over keys of e^s)`` gives the log
    of the concept's probability mass without ever keeping a probability matrix.
    """
    batch, heads, num_queries, dim = query.shape
    if key.shape[1] != heads:  # grouped-query attention: each key head serves several query heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
    num_keys = key.shape[2]
    chunk_size = chunk_size or chunk_rows(batch, heads, num_keys)
    scale = dim**-0.5 if scale is None else scale
    allowed = torch.ones(batch, num_keys, dtype=torch.bool, device=key.device) if key_mask is None else key_mask.bool()
    concept = (concept_keys.bool() & allowed)[:, None, None, :]
    blocked = ~allowed[:, None, None, :]
    if attn_mask is not None:
        attn_mask = attn_mask.expand(batch, heads, num_queries, num_keys)  # a view: broadcast, not copied
    key_t = key.transpose(-1, -2)
    out = []
    for start in range(0, num_queries, chunk_size):
        scores = (query[:, :, start : start + chunk_size] @ key_t).float() * scale
        scores = scores.masked_fill(blocked, float("-inf"))
        if attn_mask is not None:
            rows = attn_mask[:, :, start : start + chunk_size]
            scores = scores.masked_fill(~rows, float("-inf")) if rows.dtype == torch.bool else scores + rows.float()
        log_all = torch.logsumexp(scores, dim=-1)
        log_concept = torch.logsumexp(scores.masked_fill(~concept, float("-inf")), dim=-1)
        out.append(torch.exp(log_concept - log_all).mean(dim=1))
    return torch.cat(out, dim=1)


def masks_from_attention(attention: torch.Tensor, grid: tuple, threshold: float, normalize: str = "frame") -> torch.Tensor:
    """Binary concept masks ``[B, N]`` from attention ``[B, N]``: min-max normalised per latent frame
    (``normalize="frame"``) or over the whole video (``"video"``), then ``> threshold``."""
    frames, rows, cols = grid
    if normalize not in ("frame", "video"):
        raise ValueError(f"normalize must be 'frame' or 'video', got {normalize!r}")
    groups = frames if normalize == "frame" else 1
    grouped = attention.float().reshape(attention.shape[0], groups, -1)
    low = grouped.amin(dim=-1, keepdim=True)
    high = grouped.amax(dim=-1, keepdim=True)
    normalised = (grouped - low) / (high - low).clamp_min(1e-12)
    return (normalised > threshold).reshape(attention.shape[0], -1)


def layer_masks(attention: list, grid: tuple, threshold: float, mode: str = "per_layer", normalize: str = "frame") -> list:
    """One mask ``[B, N]`` per layer from each layer's attention ``[B, N]`` (``per_layer``), or the mask of the
    attention averaged over layers, the same for every layer (``average``)."""
    if mode == "average":
        return [masks_from_attention(torch.stack(attention).mean(dim=0), grid, threshold, normalize)] * len(attention)
    if mode != "per_layer":
        raise ValueError(f"mode must be 'per_layer' or 'average', got {mode!r}")
    return [masks_from_attention(a, grid, threshold, normalize) for a in attention]


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class _AttentionRecorder(TorchFunctionMode):
    """Active while one probed attention module runs: sees the arguments of its call to
    ``scaled_dot_product_attention`` and hands them to the probe (the call itself goes ahead unchanged)."""

    def __init__(self, probe, layer: int):
        super().__init__()
        self.probe, self.layer = probe, layer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.probe._record(self.layer, {**dict(zip(_SDPA_ARGS, args)), **kwargs})
        return func(*args, **kwargs)


class ConceptAttentionProbe:
    """Records each layer's video->concept attention during one (frozen) forward pass.

    The family names the modules to watch (``probe_modules``: one per eraser) and where the text sits in
    their attention (``attention_text_position``): ``"first"`` or ``"last"`` in a joint text + video
    sequence, or ``"cross"`` when the keys are the text alone (cross-attention).
    """

    def __init__(self, family, transformer, chunk_size=None):
        self.family = family
        self.modules = family.probe_modules(transformer)
        self.text_position = family.attention_text_position
        self.chunk_size = chunk_size
        self.maps = {}
        self._positions = None

    def _record(self, layer, call) -> None:
        if layer in self.maps:
            return
        query, key = call["query"], call["key"]
        text = self._positions.shape[1]
        num_queries, num_keys = query.shape[-2], key.shape[-2]
        if self.text_position == "cross":
            if num_keys != text:
                return  # another attention of this module (e.g. over image tokens), not the text one
            queries, key_offset = slice(None), 0
        elif self.text_position == "first":
            queries, key_offset = slice(text, None), 0
        else:
            queries, key_offset = slice(None, num_queries - text), num_keys - text
        concept = torch.zeros(query.shape[0], num_keys, dtype=torch.bool, device=query.device)
        concept[:, key_offset : key_offset + text] = self._positions.to(query.device)
        mask = call.get("attn_mask")
        if mask is not None and mask.dim() >= 2 and mask.shape[-2] == num_queries > 1:
            mask = mask[..., queries, :]  # a per-query mask: keep the video queries' rows
        self.maps[layer] = concept_attention_chunked(
            query[:, :, queries], key, concept, chunk_size=self.chunk_size, attn_mask=mask, scale=call.get("scale")
        )

    def _watch(self, layer, forward, *args, **kwargs):
        with _AttentionRecorder(self, layer):
            return forward(*args, **kwargs)

    @contextmanager
    def capture(self, concept_positions: torch.Tensor):
        """Inside the block, the next forward pass records ``self.maps[layer] = [B, N_video]``."""
        self.maps = {}
        self._positions = concept_positions
        with ExitStack() as stack:
            for i, module in enumerate(self.modules):
                module.forward = partial(self._watch, i, module.forward)
                stack.callback(module.__dict__.pop, "forward", None)
            yield self

    def masks(self, grid: tuple, threshold: float, mode: str = "per_layer", normalize: str = "frame") -> list:
        """One mask ``[B, N]`` per eraser: from each layer's own attention (``per_layer``), or the same mask for
        every eraser from the attention averaged over layers (``average``)."""
        missing = [i for i in range(len(self.modules)) if i not in self.maps]
        if missing:
            raise RuntimeError(
                f"no concept attention was recorded for layers {missing}: their attention did not go through "
                f"torch's scaled_dot_product_attention (a non-native diffusers attention backend?). Train with "
                f"the native backend or --alpha 0."
            )
        return layer_masks([self.maps[i] for i in range(len(self.modules))], grid, threshold, mode, normalize)


class EraserOutputCapture:
    """Keeps each eraser's output (before the residual add) from one forward pass, for ``L_loc``.

    Only the first call per eraser is kept: gradient checkpointing re-runs the forward during backward.
    """

    def __init__(self, erasers: list):
        self.erasers = erasers
        self.outputs = {}
        self._handles = []

    def _hook(self, index, module, args, output):
        self.outputs.setdefault(index, output)

    def __enter__(self):
        self.outputs = {}
        self._handles = [e.register_forward_hook(partial(self._hook, i)) for i, e in enumerate(self.erasers)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def ordered(self) -> list:
        return [self.outputs[i] for i in range(len(self.erasers))]
