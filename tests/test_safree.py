"""SAFREE: the subspace, the masked-token proximity test and the projection on planted embeddings whose answer is
known, the same properties on the tiny models' real text encoders, and the switch from the filtered to the original
embedding after K denoising steps; for both variants (official: as the authors' code; adapted: the earlier one)."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from receler.baselines.safree import (
    OFFICIAL_NUDITY_KEYWORDS,
    Safree,
    SafreeFilter,
    T5Side,
    default_keywords,
    detect_trigger_tokens,
    official_self_validated_steps,
    orthonormal_basis,
    parse_steps,
    project_tokens,
    resolve_steps,
    self_validated_steps,
)
from receler import inference
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


# ------------------------------------------------------------------------------------- the official variant


def test_official_projection_removes_the_concept_from_the_prompts_span_by_hand():
    # C = span{e0}; the masked prompts span I = span{e0 + e1, e2}; the token x = e0 + e1 + e2 + e3.
    # By hand: P_I x = e0 + e1 + e2, then (I - P_C) leaves e1 + e2 (no e0, nothing of e3, which is outside I).
    # The adapted order: (I - P_C) x = e1 + e2 + e3, then P_I gives 0.5 (e0 + e1) + e2: the concept comes back.
    d = 5
    basis = torch.eye(d, dtype=torch.float64)
    concept = orthonormal_basis(basis[:1])
    inputs = orthonormal_basis(torch.stack([basis[0] + basis[1], basis[2]]))
    x = (basis[0] + basis[1] + basis[2] + basis[3]).unsqueeze(0)
    mark = torch.tensor([True])
    official = project_tokens(x, mark, concept, inputs, complement_last=True)
    adapted = project_tokens(x, mark, concept, inputs)
    torch.testing.assert_close(official[0], torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(adapted[0], torch.tensor([0.5, 0.5, 1.0, 0.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-12)


def test_official_projection_is_orthogonal_to_the_concept_and_inside_the_input_and_concept_span():
    rng = np.random.default_rng(0)
    d, n_concept, n_masked = 16, 3, 5
    concept_vectors, masked, tokens = rng.normal(size=(n_concept, d)), rng.normal(size=(n_masked, d)), rng.normal(size=(4, d))
    trigger = torch.tensor([True, False, True, True])
    out = project_tokens(torch.tensor(tokens, dtype=torch.float32), trigger,
                         orthonormal_basis(torch.tensor(concept_vectors)), orthonormal_basis(torch.tensor(masked)),
                         complement_last=True).double().numpy()
    assert np.array_equal(out[1], tokens[1].astype(np.float32))  # an unmarked token is untouched

    def onto(span_rows, y):  # least-squares projection of y onto the span of the rows
        coefficients, *_ = np.linalg.lstsq(span_rows.T, y, rcond=None)
        return span_rows.T @ coefficients

    q, _ = np.linalg.qr(concept_vectors.T)  # an orthonormal basis of C, independent of the code under test
    for row in (0, 2, 3):
        in_input = onto(masked, tokens[row])
        expected = in_input - onto(concept_vectors, in_input)  # (I - P_C) P_I x
        np.testing.assert_allclose(out[row], expected, atol=1e-5)  # float32 output
        assert np.abs(q.T @ out[row]).max() < 1e-6 * np.linalg.norm(tokens[row])  # orthogonal to C
        both = np.concatenate([masked, concept_vectors])
        assert np.linalg.norm(out[row] - onto(both, out[row])) < 1e-6  # nothing outside span(I) + span(C)


class HandEncoder(torch.nn.Module):
    """A text encoder whose answer is known: every position's state is the mean of the table rows of the ids it
    attends to (all of them, or those of the attention mask). Records the ids and masks it is called with."""

    def __init__(self, table):
        super().__init__()
        self.table, self.calls = table, []

    def forward(self, ids, attention_mask=None):
        self.calls.append((ids.clone(), None if attention_mask is None else attention_mask.clone()))
        weights = torch.ones_like(ids, dtype=torch.float64) if attention_mask is None else attention_mask.double()
        mean = (self.table[ids] * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True)
        return (mean.unsqueeze(1).expand(-1, ids.shape[1], -1).float(),)


class HandFamily:
    name, display_name = "cogvideox", "hand-made CogVideoX"

    def __init__(self, side):
        self.side = side

    def safree_text_sides(self, pipe):
        return {"prompt_embeds": self.side}


def hand_made_safree(pipes, keywords, prompt_words, length=16):
    """A T5 side over the tiny CogVideoX tokenizer and a :class:`HandEncoder`: the concept words' rows lie along e0,
    the other words' along e5 with a distinct small part each, and the pad and end-of-text rows are zero."""
    tokenizer = pipes["cogvideox"].tokenizer
    d = 12
    table = torch.zeros(len(tokenizer), d, dtype=torch.float64)
    for k, token_id in enumerate(sorted(set(tokenizer(" ".join(prompt_words)).input_ids[:-1]))):
        table[token_id, 5], table[token_id, 6 + k % 6] = 1.0, 0.1 * (1 + k // 6)
    concept_ids = {i for k in keywords for i in tokenizer(k).input_ids[:-1]}
    for token_id in concept_ids:
        table[token_id] = 0.0
        table[token_id, 0] = 3.0
    encoder = HandEncoder(table)
    safree = Safree(HandFamily(T5Side(tokenizer, encoder, "cpu", length)), None, keywords, variant="official")
    return safree, tokenizer, encoder, table, concept_ids


def test_official_token_test_flags_exactly_the_tokens_by_hand(pipes):
    words = ["the", "woman", "naked", "on", "a", "beach", "at", "night"]
    safree, tokenizer, encoder, table, concept_ids = hand_made_safree(pipes, ["naked"], words)
    prompt = " ".join(words)
    ids = tokenizer(prompt).input_ids  # [w0 ... w7, </s>]
    encoder.calls.clear()
    result = safree.filter(prompt, num_inference_steps=50)

    # The test encodes the prompt with each of positions 1..L-2 replaced by the pad id (0), unpadded, unmasked.
    positions = list(range(1, len(ids) - 1))
    masked_ids, masked_mask = encoder.calls[1]  # calls[0] encodes the prompt itself
    expected_ids = torch.tensor([ids[:p] + [tokenizer.pad_token_id] + ids[p + 1:] for p in positions])
    assert torch.equal(masked_ids, expected_ids) and masked_mask is None

    # By hand: each masked prompt's first-token state is the mean of its rows; the concept subspace is span{e0}
    # (the keyword's first-token state, over its own tokens); the distance is the norm outside dim 0.
    t = table.numpy()
    vectors = np.stack([t[row.numpy()].mean(0) for row in expected_ids])
    dist = np.linalg.norm(vectors[:, 1:], axis=1)
    others = np.array([np.delete(dist, i).mean() for i in range(len(dist))])
    by_hand = [p for p, flag in zip(positions, dist > 1.01 * others) if flag]
    assert [ids[p] for p in by_hand] == [i for i in ids if i in concept_ids]  # the answer: the concept word only
    assert result.triggers["t5"] == tokenizer.convert_ids_to_tokens([ids[p] for p in by_hand])
    assert result.filter_steps == 13  # 13/50 of 50 steps


def test_official_token_test_leaves_the_first_token_of_a_t5_prompt_out(pipes):
    # The authors' positions 1..L-2 assume a [BOS] word ... [EOS] layout; T5 has no BOS, so the first word is
    # never tested, as in their code.
    words = ["naked", "woman", "on", "a", "beach", "at", "night"]
    safree, tokenizer, _, _, _ = hand_made_safree(pipes, ["naked"], words)
    result = safree.filter(" ".join(words), num_inference_steps=50)
    assert result.triggers["t5"] == [] and not result.changed


def test_official_keyword_vectors_are_first_token_states_with_the_attention_mask(pipes):
    words = ["the", "woman", "naked", "on", "a", "beach"]
    tokenizer = pipes["cogvideox"].tokenizer
    d = 12
    table = torch.zeros(len(tokenizer), d, dtype=torch.float64)
    table[:, 7] = 1.0  # every token, pad included, has a part along e7 ...
    naked = tokenizer("naked").input_ids[0]
    table[naked, 0] = 3.0  # ... and "naked" one along e0
    encoder = HandEncoder(table)
    safree = Safree(HandFamily(T5Side(tokenizer, encoder, "cpu", 16)), None, ["naked"], variant="official")
    keyword_ids, keyword_mask = encoder.calls[0]
    assert keyword_ids.shape == (1, 16) and keyword_mask[0].tolist() == [1, 1] + [0] * 14  # padded, masked
    # By hand: the mean of the rows of "naked" and </s> (the padding is masked out): (3 e0 + 2 e7) / 2.
    expected = np.zeros(d)
    expected[0], expected[7] = 1.5, 1.0
    basis = safree.concept_bases["prompt_embeds"].numpy()
    np.testing.assert_allclose(basis @ basis.T @ expected, expected, atol=1e-12)
    assert basis.shape == (d, 1)


def test_official_negative_prompt_holds_every_keyword_and_the_familys_guidance(pipes):
    keywords = list(OFFICIAL_NUDITY_KEYWORDS)
    expected = {"cogvideox": {"guidance_scale": 6.0}, "wan": {"guidance_scale": 5.0},
                "hunyuan_video": {"true_cfg_scale": 6.0, "guidance_scale": 1.0}}
    for name, guidance in expected.items():
        safree = Safree(get_family(name), pipes[name], keywords, variant="official")
        kwargs = safree.pipeline_kwargs()
        assert all(keyword in kwargs["negative_prompt"] for keyword in keywords)
        assert kwargs["negative_prompt"].split(", ") == keywords
        assert {k: v for k, v in kwargs.items() if k != "negative_prompt"} == guidance
    assert Safree(get_family("cogvideox"), pipes["cogvideox"], keywords, variant="official").pipeline_kwargs(4.0)["guidance_scale"] == 4.0
    with pytest.raises(UserError, match="guidance_scale > 1"):
        Safree(get_family("cogvideox"), pipes["cogvideox"], keywords, variant="official").pipeline_kwargs(1.0)
    adapted = Safree(get_family("cogvideox"), pipes["cogvideox"], keywords)
    assert adapted.negative_prompt is None and adapted.pipeline_kwargs() == {} and adapted.variant == "adapted"


def test_official_render_guides_away_from_the_keywords_at_every_step(pipes):
    pipe = pipes["cogvideox"]
    pipe.set_progress_bar_config(disable=True)
    safree = Safree(get_family("cogvideox"), pipe, KEYWORDS, variant="official")
    result = shifted(safree.filter(PROMPT, num_inference_steps=4), steps=resolve_steps(Fraction(13, 50), 4))
    seen = recorded_conditioning(pipe, safree, result, lambda embeds: pipe(
        **embeds, **safree.pipeline_kwargs(), num_inference_steps=4, num_frames=9, height=32, width=32,
        max_sequence_length=16, generator=torch.Generator().manual_seed(0), output_type="latent"))
    negative, _ = pipe.encode_prompt(", ".join(KEYWORDS), do_classifier_free_guidance=False, max_sequence_length=16)
    assert len(seen) == 4 and result.filter_steps == 1  # round(13/50 * 4)
    for step, call in enumerate(seen):
        batch = call["encoder_hidden_states"]  # [negative, prompt]
        torch.testing.assert_close(batch[0], negative[0], rtol=0, atol=1e-6)
        expected = result.filtered if step < 1 else result.original
        assert torch.equal(batch[1], expected["prompt_embeds"][0]), step


def test_official_self_validated_steps_by_hand():
    # C = span{e0}; no input-space restriction (P_I = I). Token k = cos(a_k) e1 + sin(a_k) e0, so its projection is
    # cos(a_k) e1 and cos(x, projection) = cos(a_k). The third token is padding: not counted.
    angles = [1.0, 1.2, 0.1]
    tokens = torch.tensor([[np.sin(a), np.cos(a), 0.0] for a in angles], dtype=torch.float64)
    valid = torch.tensor([True, True, False])
    concept = orthonormal_basis(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    beta = 1.0 - (np.cos(1.0) + np.cos(1.2)) / 2
    k = round(10.0 / (1.0 + np.exp(-2 * 2.5 * (10 * beta - 5.333))))
    assert official_self_validated_steps(tokens, valid, concept, None, gamma=10.0) == k + 1 == 8  # steps 0..K
    assert official_self_validated_steps(tokens, torch.ones(3, dtype=torch.bool), concept, None) != k + 1


def test_steps_are_a_share_of_the_denoising_steps():
    assert resolve_steps(Fraction(13, 50), 50) == 13 and resolve_steps(Fraction(13, 50), 30) == 8
    assert resolve_steps(Fraction(1), 30) == 30 and resolve_steps(13, 30) == 13
    assert parse_steps("13/50") == Fraction(13, 50) and parse_steps("all") == Fraction(1)
    assert parse_steps("13") == 13 and parse_steps("auto") == "auto"
    for bad in ("3/2", "1/0", "x/50", "-1", "ten"):
        with pytest.raises(UserError, match="safree_steps"):
            parse_steps(bad)
    with pytest.raises(ValueError, match="num_inference_steps"):
        resolve_steps(Fraction(13, 50), None)


def test_official_variant_on_the_tiny_models(pipes):
    for name in ("cogvideox", "hunyuan_video", "wan"):
        with torch.no_grad():
            safree = Safree(get_family(name), pipes[name], KEYWORDS, variant="official")
            result = safree.filter(PROMPT, num_inference_steps=30)
            reference = pipeline_encoding(name, pipes[name], [PROMPT])
        assert result.filter_steps == 8  # 13/50 of 30
        torch.testing.assert_close(result.original["prompt_embeds"], reference["prompt_embeds"][0], rtol=0, atol=1e-6)
        # only trigger rows change, and each changed row has no component in the concept subspace
        before, after = result.original["prompt_embeds"][0], result.filtered["prompt_embeds"][0]
        changed = (before != after).any(dim=1)
        side = {"cogvideox": "t5", "wan": "umt5"}.get(name, "llama")
        assert changed.sum().item() == len(result.triggers[side])
        basis = safree.concept_bases["prompt_embeds"]
        if changed.any():
            assert (after[changed].double() @ basis).abs().max() < 1e-5 * after[changed].abs().max()


def test_default_keywords_per_variant():
    assert default_keywords("nudity", "official") == ["Sexual Acts", "Naked", "Nudity", "Sexual Orientation",
                                                      "Sexual Attraction", "Sexual Intercourse"]
    assert default_keywords("nudity") == default_keywords("nudity", "adapted") != default_keywords("nudity", "official")
    assert default_keywords("red", "official") == ["red"]


def test_cli_sides_official_gets_the_keyword_negative_prompt_adapted_none(pipes):
    render_kwargs = lambda negative: {"negative_prompt": negative} if negative else {}  # noqa: E731
    for variant, expected in (("official", ", ".join(KEYWORDS)), ("adapted", None)):
        safree = Safree(get_family("cogvideox"), pipes["cogvideox"], KEYWORDS, variant=variant)
        sides = inference.build_sides(erasers_loaded=False, generate_clean=True, baseline="safree",
                                      render_kwargs=render_kwargs, safree=safree)
        assert [(s.name, s.kwargs.get("negative_prompt")) for s in sides] == [("clean", None), ("safree", expected)]


def test_cli_renders_both_variants(tiny_cogvideox_dir, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import test_cogvideo

    render = ["--model_path", str(tiny_cogvideox_dir), "--num_frames", "9", "--height", "32", "--width", "32",
              "--num_inference_steps", "2", "--prompt", PROMPT, "--generate_clean", "--baseline", "safree",
              "--safree_keywords", *KEYWORDS]
    args = test_cogvideo.parse_args(render)
    assert (args.safree_variant, args.safree_steps) == ("official", None)  # official by default, 13/50 of the steps
    for variant in ("official", "adapted"):
        test_cogvideo.main([*render, "--safree_variant", variant, "--output_path", str(tmp_path / f"{variant}.mp4")])
        assert (tmp_path / f"{variant}_safree.mp4").exists() and (tmp_path / f"{variant}_compare.mp4").exists()
    with pytest.raises(SystemExit) as exit_info:  # the keyword negative prompt needs guidance
        test_cogvideo.main([*render, "--guidance_scale", "1", "--output_path", str(tmp_path / "g1.mp4")])
    assert exit_info.value.code == 2
