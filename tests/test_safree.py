"""SAFREE: the subspace, the masked-token proximity test and the projection on planted embeddings whose answer is
known, the same properties on the tiny models' real text encoders, and the switch from the filtered to the original
embedding after K denoising steps."""

import numpy as np
import pytest
import torch

from receler.baselines.safree import (
    Safree,
    SafreeFilter,
    default_keywords,
    detect_trigger_tokens,
    orthonormal_basis,
    project_tokens,
    self_validated_steps,
)
from receler.errors import UserError
from receler.families import get_family
from receler.inference import text_kwargs
from receler.tiny import build_tiny_pipeline

D = 12


def e(i, scale=1.0):
    v = torch.zeros(D, dtype=torch.float64)
    v[i] = scale
    return v


def planted():
    """Six prompt tokens: four about the scene (mostly along e5), two about the concept (span{e0, e1})."""
    concept = torch.stack([e(0), e(0) + e(1), 2 * e(0) + e(1)])  # rank 2: span{e0, e1}
    tokens = torch.stack([
        e(5) + e(6, 0.1),
        e(5) + e(7, 0.1),
        e(0, 3.0) + e(1, 2.0),
        e(5) + e(8, 0.1),
        e(0, -2.0) + e(1, 1.0) + e(10, 0.05),
        e(5) + e(9, 0.1),
    ])
    masked = torch.stack([torch.cat([tokens[:i], tokens[i + 1:]]).mean(0) for i in range(len(tokens))])
    return concept, tokens, masked


def test_concept_basis_has_the_keywords_rank():
    concept, _, _ = planted()
    basis = orthonormal_basis(concept)
    assert basis.shape == (D, 2)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2, dtype=torch.float64))
    projector = basis @ basis.T  # onto span{e0, e1}
    expected = torch.zeros(D, D, dtype=torch.float64)
    expected[0, 0] = expected[1, 1] = 1.0
    torch.testing.assert_close(projector, expected)


def test_masked_token_proximity_flags_exactly_the_concept_tokens():
    concept, _, masked = planted()
    # By hand: the distance to span{e0, e1} is the norm of everything outside dims 0 and 1.
    d = np.linalg.norm(masked.numpy()[:, 2:], axis=1)
    mean_of_others = np.array([np.delete(d, i).mean() for i in range(len(d))])
    by_hand = d > 1.01 * mean_of_others
    assert by_hand.tolist() == [False, False, True, False, True, False]
    flags = detect_trigger_tokens(masked, orthonormal_basis(concept), alpha=0.01)
    assert flags.tolist() == by_hand.tolist()
    # A huge alpha flags nothing; fewer than two tokens cannot be compared.
    assert not detect_trigger_tokens(masked, orthonormal_basis(concept), alpha=10.0).any()
    assert detect_trigger_tokens(masked[:1], orthonormal_basis(concept)).tolist() == [False]


def test_plain_projection_removes_the_concept_and_leaves_other_tokens():
    concept, tokens, masked = planted()
    flags = detect_trigger_tokens(masked, orthonormal_basis(concept))
    tokens32 = tokens.float()
    out = project_tokens(tokens32, flags, orthonormal_basis(concept))
    assert out.dtype == torch.float32
    assert torch.equal(out[~flags], tokens32[~flags])  # bit-identical
    assert out[flags][:, :2].abs().max() < 1e-7  # no component left in span{e0, e1}
    torch.testing.assert_close(out[flags][:, 2:], tokens32[flags][:, 2:])  # the rest is kept
    assert out[4, 10].item() == pytest.approx(0.05)


def test_input_space_projection_stays_in_the_prompts_span():
    concept, tokens, masked = planted()
    flags = detect_trigger_tokens(masked, orthonormal_basis(concept))
    out = project_tokens(tokens, flags, orthonormal_basis(concept), orthonormal_basis(masked))
    assert torch.equal(out[~flags], tokens[~flags])
    # Independently: P_I (I - P_C) x with P_I from least squares on the masked embeddings.
    m = masked.numpy().T  # [D, N]
    for row in np.flatnonzero(flags.numpy()):
        x = tokens[row].numpy().copy()
        x[:2] = 0.0  # (I - P_C) x, the concept subspace being span{e0, e1}
        coefficients, *_ = np.linalg.lstsq(m, x, rcond=None)
        np.testing.assert_allclose(out[row].numpy(), m @ coefficients, atol=1e-10)


def test_self_validated_steps_formula():
    x = torch.randn(4, 8, dtype=torch.float64)
    assert self_validated_steps(x, x) == round(10 / (1 + np.exp(-0.0)))  # cos 1 -> 5
    y = torch.zeros_like(x)
    y[0, 0], x2 = 1.0, torch.zeros_like(x)
    x2[0, 1] = 1.0
    assert self_validated_steps(x2, y) == round(10 / (1 + np.exp(-1.0)))  # orthogonal -> 7
    assert self_validated_steps(x2, -x2, gamma=20) == round(20 / (1 + np.exp(-2.0)))  # opposite -> 18


def test_default_keywords():
    assert default_keywords("nudity")[:4] == ["Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Naked"]
    assert default_keywords(" red car ") == ["red car"]


# ------------------------------------------------------------------------------------------ tiny models

PROMPT = "a nude woman, naked body on the beach at night"
KEYWORDS = ["naked", "nudity", "nude body"]


class _Pipes(dict):
    def __missing__(self, name):
        self[name] = build_tiny_pipeline(name, seed=0)
        return self[name]


@pytest.fixture(scope="module")
def pipes():
    """Tiny pipelines by family name, each built once."""
    return _Pipes()


def pipeline_encoding(name, pipe, texts):
    """What the pipeline itself feeds the transformer, and which rows are valid tokens (not padding)."""
    kwargs = text_kwargs(get_family(name), pipe)
    if name == "hunyuan_video":
        embeds, pooled, mask = pipe.encode_prompt(texts, prompt_template=kwargs["prompt_template"],
                                                  max_sequence_length=kwargs["max_sequence_length"])
        return {"prompt_embeds": (embeds, mask.bool()), "pooled_prompt_embeds": (pooled[:, None], torch.ones(len(texts), 1, dtype=torch.bool))}
    embeds, _ = pipe.encode_prompt(texts, do_classifier_free_guidance=False, max_sequence_length=kwargs["max_sequence_length"])
    length = kwargs["max_sequence_length"]
    mask = pipe.tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").attention_mask
    return {"prompt_embeds": (embeds, mask.bool())}


def test_tiny_model_projection_removes_the_concept_subspace(family_name, pipes):
    name, pipe = family_name, pipes[family_name]
    try:
        sides = get_family(name).safree_text_sides(pipe)
    except UserError:
        pytest.skip(f"{name} has no SAFREE baseline")
    with torch.no_grad():
        safree = Safree(get_family(name), pipe, KEYWORDS, projection="plain")
        result = safree.filter(PROMPT)
        reference = pipeline_encoding(name, pipe, [PROMPT])
        keywords = pipeline_encoding(name, pipe, KEYWORDS)
    assert result.changed and any(result.triggers.values())
    for key, (embeds, _) in reference.items():
        original = result.original[key] if key == "prompt_embeds" else result.original[key][:, None]
        torch.testing.assert_close(original, embeds, rtol=0, atol=1e-6)  # SAFREE encodes as the pipeline does

        # The concept subspace, independently: the keywords' pipeline embeddings, mean over valid tokens.
        kw_embeds, kw_mask = keywords[key]
        rows = [(kw_embeds[i][kw_mask[i]].double().mean(0)).numpy() for i in range(len(KEYWORDS))]
        span = np.stack(rows, axis=1)  # [D, K]
        before = embeds[0].double().numpy()
        after = (result.filtered[key] if key == "prompt_embeds" else result.filtered[key][:, None])[0].double().numpy()
        changed = np.flatnonzero(np.abs(after - before).max(axis=1) > 0)
        unchanged = np.setdiff1d(np.arange(len(before)), changed)
        np.testing.assert_array_equal(after[unchanged], before[unchanged])
        side = sides[key].name
        assert len(changed) == (len(result.triggers[side]) if key == "prompt_embeds" else int(bool(result.triggers[side])))
        for row in changed:
            coefficients, *_ = np.linalg.lstsq(span, after[row], rcond=None)
            in_concept = np.linalg.norm(span @ coefficients)
            assert in_concept < 1e-5 * np.linalg.norm(before[row]), (key, row, in_concept)


def test_safree_with_input_space_projection_keeps_untouched_tokens(pipes):
    with torch.no_grad():
        result = Safree(get_family("cogvideox"), pipes["cogvideox"], KEYWORDS).filter(PROMPT)
    before, after = result.original["prompt_embeds"][0], result.filtered["prompt_embeds"][0]
    differs = (before != after).any(dim=1)
    assert differs.sum().item() == len(result.triggers["t5"]) > 0
    assert result.filter_steps == 13


def test_self_validated_steps_on_the_tiny_model(pipes):
    with torch.no_grad():
        result = Safree(get_family("cogvideox"), pipes["cogvideox"], KEYWORDS, steps="auto").filter(PROMPT)
    expected = self_validated_steps(result.original["prompt_embeds"], result.filtered["prompt_embeds"])
    assert result.filter_steps == expected and 5 <= expected <= 8


def test_bad_settings_are_user_errors(pipes):
    family, pipe = get_family("cogvideox"), pipes["cogvideox"]
    with pytest.raises(UserError, match="keyword"):
        Safree(family, pipe, ["  "])
    with pytest.raises(UserError, match="projection"):
        Safree(family, pipe, KEYWORDS, projection="sideways")
    with pytest.raises(UserError, match="steps"):
        Safree(family, pipe, KEYWORDS, steps=-1)


def recorded_conditioning(pipe, safree, result, call):
    """Run ``call`` inside ``safree.applied``; return what the transformer received at every call."""
    seen = []

    def record(module, args, kwargs):
        seen.append({k: kwargs[k].clone() for k in ("encoder_hidden_states", "pooled_projections") if kwargs.get(k) is not None})

    with safree.applied(pipe, result) as embeds:
        handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
        try:
            call(embeds)
        finally:
            handle.remove()
    return seen


def shifted(result, steps):
    """A SafreeFilter whose filtered embeddings differ from the originals everywhere (a known answer)."""
    filtered = {k: (v + 0.5 if k != "prompt_attention_mask" else v) for k, v in result.original.items()}
    return SafreeFilter(result.prompt, result.original, filtered, steps)


def test_filtered_embedding_for_the_first_k_steps_then_the_original_cogvideox(pipes):
    pipe = pipes["cogvideox"]
    pipe.set_progress_bar_config(disable=True)
    safree = Safree(get_family("cogvideox"), pipe, KEYWORDS)
    result = shifted(safree.filter(PROMPT), steps=2)
    seen = recorded_conditioning(pipe, safree, result, lambda embeds: pipe(
        **embeds, num_inference_steps=4, guidance_scale=6.0, num_frames=9, height=32, width=32, max_sequence_length=16,
        generator=torch.Generator().manual_seed(0), output_type="latent"))
    assert len(seen) == 4
    negative = seen[0]["encoder_hidden_states"][0]
    for step, call in enumerate(seen):
        batch = call["encoder_hidden_states"]  # [negative, prompt] (classifier-free guidance)
        assert torch.equal(batch[0], negative)
        expected = result.filtered if step < 2 else result.original
        assert torch.equal(batch[1], expected["prompt_embeds"][0]), step


def test_filtered_embedding_for_the_first_k_steps_then_the_original_hunyuan(pipes):
    pipe = pipes["hunyuan_video"]
    pipe.set_progress_bar_config(disable=True)
    family = get_family("hunyuan_video")
    safree = Safree(family, pipe, KEYWORDS)
    result = shifted(safree.filter(PROMPT), steps=1)
    seen = recorded_conditioning(pipe, safree, result, lambda embeds: pipe(
        **embeds, num_inference_steps=3, num_frames=9, height=32, width=32, **text_kwargs(family, pipe),
        generator=torch.Generator().manual_seed(0), output_type="latent"))
    assert len(seen) == 3
    for step, call in enumerate(seen):
        expected = result.filtered if step < 1 else result.original
        assert torch.equal(call["encoder_hidden_states"], expected["prompt_embeds"]), step
        assert torch.equal(call["pooled_projections"], expected["pooled_prompt_embeds"]), step
