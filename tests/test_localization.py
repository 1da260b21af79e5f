"""Concept attention read in chunks equals the block cut from a full softmax; planted patterns give the
expected masks; concept tokens are found inside prompts."""

import pytest
import torch

from receler.families import get_family
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


def test_probe_reads_the_models_own_attention(tiny_cogvideox):
    """The probe's q/k (after norms) reproduce the attention the processor computes: compare with a full
    softmax built from the same block's projections."""
    from diffusers.models.attention_processor import Attention

    family = get_family("cogvideox")
    transformer = tiny_cogvideox.transformer
    probe = ConceptAttentionProbe(family, transformer)
    cond = family.encode_prompts(tiny_cogvideox, ["a photo of nudity"], "cpu")
    positions, _ = concept_positions_mask(family, tiny_cogvideox, ["a photo of nudity"], "nudity")
    sampler = family.make_sampler(tiny_cogvideox, 2, 9, 32, 32, "cpu", torch.Generator().manual_seed(0))
    x = sampler.initial_latents(1)

    seen = {}

    def keep_inputs(module, args, kwargs):
        seen.setdefault(id(module), kwargs)

    attn = family.probe_modules(transformer)[0]
    assert isinstance(attn, Attention)
    handle = attn.register_forward_pre_hook(keep_inputs, with_kwargs=True)
    with torch.no_grad(), probe.capture(positions):
        sampler.predict(transformer, x, 0, cond)
    handle.remove()
    kwargs = seen[id(attn)]
    text, video = kwargs["encoder_hidden_states"], kwargs["hidden_states"]
    joint = torch.cat([text, video], 1)
    heads = attn.heads
    q = attn.norm_q(attn.to_q(joint).view(1, -1, heads, 16).transpose(1, 2))
    k = attn.norm_k(attn.to_k(joint).view(1, -1, heads, 16).transpose(1, 2))
    concept = torch.zeros(1, joint.shape[1], dtype=torch.bool)
    concept[:, : text.shape[1]] = positions
    expected = full_softmax_reference(q[:, :, text.shape[1]:], k, concept)
    assert len(probe.maps) == len(transformer.transformer_blocks)
    assert torch.allclose(probe.maps[0].double(), expected, atol=1e-6)
