"""Concept attention read in chunks equals the block cut from a full softmax; planted patterns give the
expected masks; concept tokens are found inside prompts."""

import math
from functools import partial

import pytest
import torch

from receler.families import all_families, get_family
from receler.tiny import build_tiny_pipeline
from receler.localization import (
    ConceptAttentionProbe,
    concept_attention_chunked,
    concept_positions_mask,
    find_token_positions,
    masks_from_attention,
)


def full_softmax_reference(q, k, concept, key_mask=None):
    scores = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1)  # [B, H, Nq, Nk], the full map
    return (probs * concept[:, None, None, :].double()).sum(-1).mean(1)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
def test_chunked_equals_full_softmax(chunk_size):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 10, 8, generator=g), torch.randn(2, 3, 13, 8, generator=g)
    concept = torch.zeros(2, 13, dtype=torch.bool)
    concept[0, [2, 3]] = True
    concept[1, [5]] = True
    key_mask = torch.ones(2, 13, dtype=torch.bool)
    key_mask[1, 10:] = False  # padding keys of the second sample
    got = concept_attention_chunked(q, k, concept, key_mask=key_mask, chunk_size=chunk_size)
    expected = full_softmax_reference(q, k, concept, key_mask)
    assert got.shape == (2, 10)
    assert torch.allclose(got.double(), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_chunked_takes_an_sdpa_style_mask(kind):
    """A mask as scaled_dot_product_attention takes it (per head and query, bool or added to the scores) gives
    what the full softmax with the same mask gives."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 9, 8, generator=g), torch.randn(2, 3, 6, 8, generator=g)
    concept = torch.zeros(2, 6, dtype=torch.bool)
    concept[:, 1] = True
    allowed = torch.rand(2, 3, 9, 6, generator=g) > 0.3
    allowed[..., 1] = True  # every query may see the concept key
    mask = allowed if kind == "bool" else torch.where(allowed, 0.0, -1e4)
    got = concept_attention_chunked(q, k, concept, attn_mask=mask, chunk_size=4, scale=0.3)
    scores = q.double() @ k.double().transpose(-1, -2) * 0.3
    scores = scores.masked_fill(~allowed, float("-inf")) if kind == "bool" else scores + mask.double()
    expected = (scores.softmax(-1) * concept[:, None, None, :].double()).sum(-1).mean(1)
    assert torch.allclose(got.double(), expected, atol=1e-6)


def test_no_concept_tokens_gives_zero_attention():
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8)
    got = concept_attention_chunked(q, k, torch.zeros(1, 6, dtype=torch.bool))
    assert torch.equal(got, torch.zeros(1, 4))


def test_planted_pattern_gives_expected_mask():
    """Queries in the top-left corner of frame 0 and the right column of frame 1 look at the concept key."""
    frames, rows, cols, dim = 2, 3, 4, 16
    num_video = frames * rows * cols
    concept_key = torch.zeros(dim)
    concept_key[0] = 1.0
    other_key = torch.zeros(dim)
    other_key[1] = 1.0
    keys = torch.stack([other_key, concept_key, other_key])[None, None]  # [1, 1, 3, d]: text position 1 = concept
    planted = torch.zeros(frames, rows, cols, dtype=torch.bool)
    planted[0, 0, 0] = planted[0, 0, 1] = True
    planted[1, :, 3] = True
    queries = torch.zeros(num_video, dim)
    queries[:, 1] = 4.0  # by default, attend to the other keys
    queries[planted.flatten(), 0] = 40.0  # planted tokens attend to the concept key
    queries[planted.flatten(), 1] = 0.0
    concept = torch.tensor([[False, True, False]])
    attention = concept_attention_chunked(queries[None, None], keys, concept, chunk_size=5)
    mask = masks_from_attention(attention, (frames, rows, cols), threshold=0.1)
    assert torch.equal(mask[0], planted.flatten())


def test_mask_is_normalised_per_frame():
    # Frame 1 has ten times less attention overall but the same relative pattern: same mask.
    frame0 = torch.tensor([0.0, 0.5, 1.0, 0.05])
    attention = torch.cat([frame0, frame0 / 10])[None]
    mask = masks_from_attention(attention, (2, 2, 2), threshold=0.1)
    assert mask.tolist() == [[False, True, True, False, False, True, True, False]]


def test_find_token_positions():
    assert find_token_positions([5, 1, 2, 9, 1, 2, 0], [1, 2]) == [1, 2, 4, 5]
    assert find_token_positions([5, 1, 3], [1, 2]) == []
    assert find_token_positions([5, 1, 3], []) == []


def test_concept_positions_in_tiny_prompts(tiny_cogvideox):
    family = get_family("cogvideox")
    prompts = ["a photo of nudity on the beach", "a woman walking"]
    positions, found = concept_positions_mask(family, tiny_cogvideox, prompts, "nudity")
    assert found.tolist() == [True, False]
    tokens = tiny_cogvideox.tokenizer.convert_ids_to_tokens(family.prompt_token_ids(tiny_cogvideox, prompts[0]))
    assert [tokens[i] for i in positions[0].nonzero().flatten().tolist()] == ["\u2581nudity"]
    assert positions.shape == (2, tiny_cogvideox.transformer.config.max_text_seq_length)


def _replayed_concept_attention(family, transformer, positions) -> tuple:
    """A reference for the probe, computed without it: every probed attention module runs a second time on
    the same inputs, with its value projection's output replaced by the concept indicator (1 on the
    concept's text tokens, 0 on every other key) and torch's explicit-softmax attention kernel. The
    attention output of a video query is then sum_j softmax_j * indicator_j = its attention mass on the
    concept, per head; its mean over channels averages the heads. Returns ``(hooks context, maps)``."""
    from contextlib import ExitStack

    from torch.nn.attention import SDPBackend, sdpa_kernel

    maps, replaying = {}, []

    def indicator_values(text, module, args, output):
        inputs = args[0]
        offset = next(o for o in range(inputs.shape[1] - text.shape[1] + 1)
                      if torch.equal(inputs[:, o : o + text.shape[1]], text))
        values = torch.zeros_like(output)
        values[:, offset : offset + text.shape[1]] = positions[:, :, None].to(output.dtype)
        replaying[-1]["text_rows"] = (offset, offset + text.shape[1], inputs.shape[1])
        return values

    def replay(layer, module, args, kwargs, output):
        if replaying:
            return None
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        replaying.append({})
        seen = {}
        handles = [module.to_v.register_forward_hook(partial(indicator_values, text))]
        to_out = getattr(module, "to_out", None)
        if to_out is not None:  # the attention result is the output projection's input
            handles.append(to_out[0].register_forward_pre_hook(lambda m, a: seen.setdefault("attended", a[0])))
        try:
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
                again = module(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        start, end, total = replaying.pop()["text_rows"]
        if to_out is None:  # no output projection (HunyuanVideo's single blocks): the module returns (video, text)
            video = again[0] if isinstance(again, tuple) else again
        else:
            attended = seen["attended"]
            video = torch.cat([attended[:, :start], attended[:, end:]], dim=1) if end - start < total else attended
        maps[layer] = video.double().mean(dim=-1)
        return None

    stack = ExitStack()
    for i, module in enumerate(family.probe_modules(transformer)):
        stack.callback(module.register_forward_hook(partial(replay, i), with_kwargs=True).remove)
    return stack, maps


@pytest.mark.parametrize("family", all_families(), ids=lambda f: f.name)
def test_probe_equals_the_models_own_softmax_for_every_family(family):
    """The chunked concept attention the probe reads from each layer's own attention call equals a reference
    the model computes itself with indicator values and the explicit-softmax kernel (independent of the probe)."""
    pipe = build_tiny_pipeline(family.name, seed=0)
    transformer = pipe.transformer
    prompt = "a photo of nudity on the beach"
    cond = family.encode_prompts(pipe, [prompt], "cpu")
    positions, found = concept_positions_mask(family, pipe, [prompt], "nudity")
    assert found.all()
    sampler = family.make_sampler(pipe, 2, 9, 32, 32, "cpu", torch.Generator().manual_seed(0))
    x = sampler.initial_latents(1)
    probe = ConceptAttentionProbe(family, transformer, chunk_size=3)  # several chunks of video queries
    hooks, reference = _replayed_concept_attention(family, transformer, positions)
    with hooks, torch.no_grad(), probe.capture(positions):
        sampler.predict(transformer, x, 0, cond)
    layers = len(family.probe_modules(transformer))
    assert sorted(probe.maps) == sorted(reference) == list(range(layers))
    video_tokens = math.prod(family.token_grid(pipe, 9, 32, 32))
    for layer in range(layers):
        got, expected = probe.maps[layer].double(), reference[layer]
        assert got.shape == expected.shape == (1, video_tokens)
        assert expected.max() > 1e-3, "the concept must draw some attention for the comparison to mean anything"
        assert torch.allclose(got, expected, atol=1e-5), (layer, (got - expected).abs().max())
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in family.probe_modules(transformer))
