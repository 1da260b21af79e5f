"""The method options, each against its formula: mask modes and normalisation, the concept-prompt mask for prompts
without the concept's tokens, the anchor's unlearning target, and the guided training trajectory. Expected values
come from the frozen model's outputs read through a plain forward hook, not through the trainer."""

import json
from dataclasses import replace

import pytest
import torch

from receler.erasers.utils import erasers_disabled
from receler.errors import UserError
from receler.families import get_family
from receler.localization import layer_masks, masks_from_attention
from receler.tiny import build_tiny_pipeline
from receler.train_unlearning_prompt_only import parse_args
from receler.trainer import EraserTrainer, encode_prompt_set, make_batch

SIZE = dict(num_frames=9, height=32, width=32)
PROMPTS = ["a photo of nudity on the beach", "nudity in a park at night"]
ANCHORS = ["a photo of a person on the beach", "a person in a park at night"]


# --- masks ---------------------------------------------------------------------------------------


def test_video_normalisation_keeps_weak_frames_out_and_frame_normalisation_does_not():
    # Two latent frames of 2x2 tokens: the concept is strong in frame 0, barely present in frame 1.
    attention = torch.tensor([[0.0, 0.2, 1.0, 0.0, 0.010, 0.0, 0.0, 0.012]])
    grid = (2, 2, 2)
    per_frame = masks_from_attention(attention, grid, threshold=0.1, normalize="frame")
    per_video = masks_from_attention(attention, grid, threshold=0.1, normalize="video")
    # By hand: frame 1 min-max normalised is [0, 0, 0.833, 0, 0, 0, 0, 1] -> two tokens above 0.1.
    assert per_frame.tolist() == [[False, True, True, False, True, False, False, True]]
    # Over the whole video frame 1's values are 0.010 and 0.012 of the maximum: below the threshold.
    assert per_video.tolist() == [[False, True, True, False, False, False, False, False]]


def test_average_mode_gives_every_layer_the_mask_of_the_mean_attention():
    grid = (1, 2, 2)
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    c = torch.tensor([[0.0, 0.0, 0.0, 0.8]])
    per_layer = layer_masks([a, b, c], grid, 0.5, mode="per_layer")
    assert [m.tolist() for m in per_layer] == [[[True, False, False, False]], [[False, False, False, True]],
                                               [[False, False, False, True]]]
    # Mean = [1/3, 0, 0, 0.6]; min-max -> [0.556, 0, 0, 1]: both ends above 0.5, for every layer.
    average = layer_masks([a, b, c], grid, 0.5, mode="average")
    assert len(average) == 3 and all(m.tolist() == [[True, False, False, True]] for m in average)
    with pytest.raises(ValueError):
        layer_masks([a], grid, 0.5, mode="median")


# --- trainer-level options -----------------------------------------------------------------------


def trainer_for(*flags, prompts=PROMPTS, anchors=None, mask_fallback=False):
    family = get_family("cogvideox")
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    config = parse_args(["--model_path", "unused", "--target_concept", "nudity", "--output_dir", "unused",
                         "--eraser_rank", "4", "--learning_rate", "1e-3", "--num_inference_steps", "4", "--beta", "0",
                         *flags])
    data = encode_prompt_set(family, pipe, prompts, None, "nudity", "cpu", anchor_prompts=anchors,
                             mask_fallback=mask_fallback)
    trainer = EraserTrainer(family, pipe, config, "cpu")
    batch = make_batch(data, list(range(len(prompts))), trainer.device, family.token_grid(pipe, **SIZE))
    sampler = family.make_sampler(pipe, 4, **SIZE, device="cpu", generator=torch.Generator().manual_seed(0))
    return trainer, batch, sampler, family, pipe


def frozen_outputs(trainer, family, pipe, sampler, x, index, prompts):
    """``(prediction, final-block ff output on video rows)`` of the frozen model, read with a plain hook."""
    seen = []
    handle = family.loss_module(pipe.transformer).register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad(), erasers_disabled(pipe.transformer):
            cond = family.encode_prompts(pipe, prompts, "cpu")
            pred = sampler.predict(pipe.transformer, x, index, cond)
    finally:
        handle.remove()
    text = cond["encoder_hidden_states"].shape[1]
    return pred, seen[0][:, text:].float()


@pytest.mark.parametrize("eta, weight", [(0.0, 1.0), (2.0, 1.0), (3.0, 0.5)])
def test_anchor_target_is_the_anchored_negative_guidance(eta, weight):
    trainer, batch, sampler, family, pipe = trainer_for("--alpha", "0", "--eta", str(eta), "--anchor_weight",
                                                        str(weight), anchors=ANCHORS)
    x = sampler.initial_latents(2)
    _, o_c = frozen_outputs(trainer, family, pipe, sampler, x, 1, PROMPTS)
    _, o_a = frozen_outputs(trainer, family, pipe, sampler, x, 1, ANCHORS)
    _, o_0 = frozen_outputs(trainer, family, pipe, sampler, x, 1, ["", ""])
    base = weight * o_a + (1 - weight) * o_0
    target = base - eta * (o_c - base)
    # The erasers start as the identity, so the erased model's output is o_c.
    expected = (o_c - target).pow(2).flatten(1).mean(dim=1).mean()
    metrics, _ = trainer.update(sampler, x, 1, batch)
    assert metrics["loss_unlearn"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("trajectory", ["frozen", "erased"])
def test_guided_trajectory_advances_with_classifier_free_guidance(trajectory):
    trainer, batch, sampler, family, pipe = trainer_for("--alpha", "0", "--start_guidance", "3",
                                                        "--trajectory", trajectory)
    x = sampler.initial_latents(2)
    cond, _ = frozen_outputs(trainer, family, pipe, sampler, x, 1, PROMPTS)
    uncond, _ = frozen_outputs(trainer, family, pipe, sampler, x, 1, ["", ""])
    expected = uncond + 3.0 * (cond - uncond)
    # A step that is not trained, then a trained one, both while the erasers are still the identity.
    torch.testing.assert_close(trainer.prediction_without_update(sampler, x, 1, batch), expected, rtol=1e-5, atol=1e-5)
    _, advance = trainer.update(sampler, x, 1, batch)
    torch.testing.assert_close(advance, expected, rtol=1e-5, atol=1e-5)


def test_prompts_without_the_concept_borrow_the_concept_prompts_mask():
    prompts = ["a photo of nudity on the beach", "a person in a park at night"]  # the second lacks "nudity"
    trainer, batch, sampler, family, pipe = trainer_for("--eta", "1", prompts=prompts, mask_fallback=True)
    assert batch["found"].tolist() == [True, False] and batch["localizable"].tolist() == [True, True]
    used = {}
    import receler.trainer as trainer_module

    real = trainer_module.localization_loss

    def spy(outputs, masks, valid, reduction):
        used["masks"], used["valid"] = masks, valid
        return real(outputs, masks, valid, reduction=reduction)

    trainer_module.localization_loss = spy
    try:
        x = sampler.initial_latents(2)
        metrics, _ = trainer.update(sampler, x, 1, batch)
    finally:
        trainer_module.localization_loss = real
    assert metrics["loss_loc"] >= 0 and used["valid"].tolist() == [True, True]
    # Expected: the first prompt's own attention; the second prompt gets the bare concept prompt's attention.
    grid = batch["grid"]
    probe = trainer.probe
    with torch.no_grad(), erasers_disabled(pipe.transformer):
        with probe.capture(batch["positions"]):
            sampler.predict(pipe.transformer, x, 1, family.encode_prompts(pipe, prompts, "cpu"))
        own = probe.masks(grid, 0.1)
        concept_positions = batch["concept_positions"]
        with probe.capture(concept_positions):
            sampler.predict(pipe.transformer, x, 1, family.encode_prompts(pipe, ["nudity", "nudity"], "cpu"))
        borrowed = probe.masks(grid, 0.1)
    for got, mine, theirs in zip(used["masks"], own, borrowed):
        assert torch.equal(got[0], mine[0]) and torch.equal(got[1], theirs[1])


def test_without_the_fallback_such_prompts_train_without_localization():
    prompts = ["a photo of nudity on the beach", "a person in a park at night"]
    trainer, batch, *_ = trainer_for("--mask_fallback", "none", prompts=prompts, mask_fallback=False)
    assert batch["localizable"].tolist() == [True, False]


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--start_guidance", "0.5"], "start_guidance"),
    (["--anchor_weight", "1.5"], "anchor_weight"),
    (["--anchor_prompt", " "], "anchor_prompt"),
])
def test_bad_option_values_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        parse_args(["--model_path", "m", "--target_concept", "x", "--output_dir", "o", *flags])


def test_anchor_column_wins_and_every_option_is_recorded_in_the_eraser(tmp_path, tiny_model_dir):
    from receler.training import read_anchor_prompts
    from receler.train_unlearning_prompt_only import main as train_main

    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt,anchor_prompt\na photo of nudity on the beach,a photo of a person on the beach\n"
                   "nudity in a park,\n")
    config = parse_args(["--model_path", "m", "--target_concept", "nudity", "--output_dir", "o", "--prompts_file",
                         str(csv), "--anchor_prompt", "a person"])
    assert read_anchor_prompts(config, 2) == ["a photo of a person on the beach", "a person"]
    with pytest.raises(UserError, match="no anchor"):
        read_anchor_prompts(replace(config, anchor_prompt=None), 2)

    out = tmp_path / "eraser"
    train_main(["--model_path", str(tiny_model_dir("cogvideox")), "--target_concept", "nudity", "--prompts_file",
                str(csv), "--anchor_prompt", "a person", "--output_dir", str(out), "--eraser_rank", "4",
                "--num_inference_steps", "2", "--max_steps", "2", "--num_frames", "9", "--height", "32", "--width", "32",
                "--mask_mode", "average", "--mask_normalize", "video", "--start_guidance", "2", "--anchor_weight", "0.5"])
    recorded = json.loads((out / "eraser_config.json").read_text())
    for key, value in {"mask_mode": "average", "mask_normalize": "video", "mask_fallback": "concept",
                       "start_guidance": 2.0, "anchor_prompt": "a person", "anchor_weight": 0.5}.items():
        assert recorded["train_config"][key] == value, key
    assert recorded["resolved"]["anchor_prompts"] == ["a photo of a person on the beach", "a person"]
