"""The training workflow on tiny models: learning-rate schedules against their formulas, checkpoint rotation,
``--resume_from latest``, gradient accumulation against a larger batch, the progress bar, the tracker's event
files, validation renders (against the inference CLI's renders of the same checkpoint) and the model card."""

import hashlib
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from receler.lr_schedule import lr_factor
from receler.run_checkpoints import resolve_resume, rotate_checkpoints
from receler.train_unlearning_prompt_only import main as train_main

PROMPTS = ["a photo of nudity on the beach", "nudity in a park at night"]
PRESERVE = ["a photo of a dressed woman on the beach", "a dressed man in a park at night"]
SMALL = ["--num_inference_steps", "3", "--eraser_rank", "4", "--learning_rate", "1e-2", "--num_frames", "9",
         "--height", "32", "--width", "32", "--report_to", "none"]


def _prompts(tmp_path, preserve=True):
    path = tmp_path / "prompts.csv"
    if preserve:
        path.write_text("prompt,preserve_prompt\n" + "".join(f'"{p}","{q}"\n' for p, q in zip(PROMPTS, PRESERVE)))
    else:
        path.write_text("prompt\n" + "".join(f'"{p}"\n' for p in PROMPTS))
    return path


def _train(tmp_path, model_dir, *extra, name="run", preserve=True):
    out = tmp_path / name
    argv = ["--model_path", str(model_dir), "--target_concept", "nudity", "--prompts_file",
            str(_prompts(tmp_path, preserve)), "--output_dir", str(out), *SMALL, *extra]
    return train_main(argv), out


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _weights(folder):
    return load_file(str(folder / "eraser_weights.safetensors"))


# ------------------------------------------------------------------------------------ learning rate


def test_schedule_factors_match_their_formulas_by_hand():
    # 10 updates, 2 of warm-up: updates 1-2 rise to the full rate, then the decay runs over 8 updates with
    # progress p = (u - 3) / 8.
    for kind in ("constant", "linear", "cosine"):
        assert lr_factor(kind, 1, 10, 2) == 0.5 and lr_factor(kind, 2, 10, 2) == 1.0
        assert lr_factor(kind, 3, 10, 2) == 1.0  # the first update after the warm-up runs at the full rate
    assert [lr_factor("constant", u, 10, 2) for u in (3, 6, 10)] == [1.0, 1.0, 1.0]
    assert lr_factor("linear", 6, 10, 2) == pytest.approx(0.625)    # 1 - 3/8
    assert lr_factor("linear", 10, 10, 2) == pytest.approx(0.125)   # 1 - 7/8: never 0
    assert lr_factor("cosine", 6, 10, 2) == pytest.approx(0.6913417162)   # (1 + cos(3 pi / 8)) / 2
    assert lr_factor("cosine", 10, 10, 2) == pytest.approx(0.0380602337)  # (1 + cos(7 pi / 8)) / 2
    assert lr_factor("cosine", 1, 4) == 1.0 and lr_factor("linear", 1, 4) == 1.0  # no warm-up
    with pytest.raises(ValueError):
        lr_factor("step", 1, 4)


def test_training_runs_each_update_at_its_scheduled_rate(tmp_path, tiny_cogvideox_dir):
    # 2 prompts x 3 steps = 6 updates; linear with 2 warm-up updates: 1/2, 1, then 1 - k/4 for k = 0..3
    _, out = _train(tmp_path, tiny_cogvideox_dir, "--lr_scheduler", "linear", "--lr_warmup_steps", "2")
    expected = [0.5e-2, 1e-2, 1e-2, 0.75e-2, 0.5e-2, 0.25e-2]
    assert [r["lr"] for r in _log(out)] == pytest.approx(expected, rel=1e-12)
    # max_steps caps the schedule's length: cosine over 4 updates, no warm-up
    _, out = _train(tmp_path, tiny_cogvideox_dir, "--lr_scheduler", "cosine", "--max_steps", "4", name="cosine")
    expected = [1e-2 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert [r["lr"] for r in _log(out)] == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------- checkpoints, resume


def test_checkpoints_total_limit_keeps_the_k_most_recent(tmp_path, tiny_cogvideox_dir):
    _, out = _train(tmp_path, tiny_cogvideox_dir, "--save_every", "1", "--checkpoints_total_limit", "2")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_5", "step_6"]
    _, out = _train(tmp_path, tiny_cogvideox_dir, "--save_every", "1", name="all")
    assert len(list((out / "checkpoints").iterdir())) == 6  # without the limit every one is kept


def _fake_checkpoint(folder, complete=True):
    folder.mkdir(parents=True)
    for name in ("eraser_config.json", "eraser_weights.safetensors") + (("training_state.pt",) if complete else ()):
        (folder / name).write_text("x")


def test_latest_is_the_highest_complete_step_and_rotation_drops_partial_ones(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step, complete in ((2, True), (10, True), (30, False), (9, True)):
        _fake_checkpoint(ckpts / f"step_{step}", complete)
    (ckpts / "notes").mkdir()
    assert resolve_resume("latest", tmp_path) == ckpts / "step_10"  # step_30 has no training state
    assert resolve_resume(str(ckpts / "step_2"), tmp_path) == ckpts / "step_2"
    assert resolve_resume("latest", tmp_path / "elsewhere") is None  # nothing yet: a fresh start
    assert resolve_resume(None, tmp_path) is None
    rotate_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in ckpts.iterdir()) == ["notes", "step_10", "step_9"]


def test_resume_latest_continues_from_the_highest_complete_step(tmp_path, tiny_cogvideox_dir):
    common = ("--num_epochs", "2", "--save_every", "2")
    _, full = _train(tmp_path, tiny_cogvideox_dir, *common, name="full")
    _, part = _train(tmp_path, tiny_cogvideox_dir, *common, "--max_steps", "5", name="part")
    # A later step that was being written when the run died: it must be skipped, not resumed.
    broken = part / "checkpoints" / "step_9"
    shutil.copytree(part / "checkpoints" / "step_4", broken)
    (broken / "training_state.pt").unlink()
    assert resolve_resume("latest", part) == part / "checkpoints" / "step_5"
    summary, _ = _train(tmp_path, tiny_cogvideox_dir, *common, "--resume_from", "latest", name="part")
    assert summary["updates"] == 12
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a), "resuming from 'latest' must equal the uninterrupted run"
    assert [r["step"] for r in _log(part)] == list(range(1, 13))


# ------------------------------------------------------------------------------------- accumulation


def test_gradient_accumulation_equals_a_batch_that_many_times_larger(tmp_path, tiny_cogvideox_dir):
    """Every loss term on (localization, preservation): 2 batches of 1 accumulated = 1 batch of 2, within 1e-5."""
    flags = ("--max_steps", "4", "--alpha", "1", "--save_every", "0")
    _, big = _train(tmp_path, tiny_cogvideox_dir, *flags, "--batch_size", "2", name="big")
    _, acc = _train(tmp_path, tiny_cogvideox_dir, *flags, "--batch_size", "1", "--gradient_accumulation_steps", "2",
                    name="acc")
    _, one = _train(tmp_path, tiny_cogvideox_dir, *flags, "--batch_size", "1", name="one")
    a, b, c = _weights(big), _weights(acc), _weights(one)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-4, "a batch of 1 must differ (the test can fail)"
    for x, y in zip(_log(big), _log(acc)):
        for key in ("loss_unlearn", "loss_loc", "loss_preserve", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-8), key
    assert json.loads((acc / "args.json").read_text())["gradient_accumulation_steps"] == 2


def test_accumulation_with_adversarial_training_is_refused(tmp_path, tiny_cogvideox_dir, capsys):
    with pytest.raises(SystemExit):
        _train(tmp_path, tiny_cogvideox_dir, "--adversarial", "--gradient_accumulation_steps", "2")
    assert "--gradient_accumulation_steps" in capsys.readouterr().err


# --------------------------------------------------------------------------------- progress, tracker


def test_progress_bar_counts_updates_with_loss_and_seconds_per_update(tmp_path, tiny_cogvideox_dir, capsys):
    _train(tmp_path, tiny_cogvideox_dir, "--max_steps", "4")
    err = capsys.readouterr().err
    assert re.search(r"training: 100%\|[^|]*\| 4/4 \[", err), err[-2000:]
    assert "loss=" in err and "s/update=" in err


def test_tensorboard_events_hold_every_update_and_the_hyperparameters(tmp_path, tiny_cogvideox_dir):
    pytest.importorskip("tensorboard", reason="tensorboard is in requirements.txt: pip install -r requirements.txt")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = _train(tmp_path, tiny_cogvideox_dir, "--report_to", "tensorboard", "--max_steps", "5")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = _log(out)
    for key in ("loss", "loss_unlearn", "lr", "grad_norm"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [r["step"] for r in rows]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)  # float32 in the file
    assert list((out / "tensorboard").rglob("hparams.yml")), "accelerate's tracker stores the run's settings"
    _, quiet = _train(tmp_path, tiny_cogvideox_dir, "--report_to", "none", "--max_steps", "2", name="quiet")
    assert not (quiet / "tensorboard").exists()


def test_wandb_without_the_package_is_one_clear_message(tmp_path, tiny_cogvideox_dir, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit):
        _train(tmp_path, tiny_cogvideox_dir, "--report_to", "wandb")
    err = capsys.readouterr().err
    assert "pip install wandb" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "train_log.jsonl").exists()  # refused before anything trained


# ---------------------------------------------------------------------------------------- validation


def test_validation_renders_equal_the_inference_cli_and_the_world_classifier_scores_them(tmp_path):
    """On the bundled world model: validation/step_N holds clean and erased videos identical to what
    test_cogvideo.py renders from checkpoints/step_N at guidance 1 with the same seed, and scores.json holds the
    classifier's reading of them."""
    import test_cogvideo
    from receler.media import read_video
    from receler.world.measure import read_video as reading
    from receler.world.measure import shows_target
    from receler.world.model import WORLD_MODEL_DIR
    from receler.world.targets import parse_target

    if not (WORLD_MODEL_DIR / "model_index.json").exists():
        pytest.skip("the bundled world model is missing")
    train = tmp_path / "train.txt"
    train.write_text("a red circle moving left on a gray background\na red square moving up on a gray background\n")
    val = tmp_path / "val.csv"
    val.write_text("prompt,seed\na red triangle moving right on a gray background,3\n"
                   "a blue circle moving down on a gray background,\n")
    out = tmp_path / "world"
    size = ["--num_frames", "9", "--height", "64", "--width", "64", "--num_inference_steps", "4"]
    train_main(["--model_path", str(WORLD_MODEL_DIR), "--target_concept", "red", "--prompts_file", str(train),
                "--output_dir", str(out), *size, "--max_steps", "3", "--save_every", "2", "--eraser_rank", "4",
                "--learning_rate", "1e-2", "--report_to", "none", "--seed", "5",
                "--validation_prompts", str(val), "--validation_every", "2"])
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step_2", "step_3"]  # every 2, and the end
    step = out / "validation" / "step_2"
    stems = ["000_a_red_triangle_moving_right_on_a_gray_background", "001_a_blue_circle_moving_down_on_a_gray_background"]
    for stem in stems:
        for suffix in ("_clean.mp4", "_erased.mp4", "_compare.mp4", "_grid.png"):
            assert (step / f"{stem}{suffix}").is_file(), stem + suffix
    assert read_video(step / f"{stems[0]}_compare.mp4").shape[2] == 2 * 64

    rendered = tmp_path / "cli"
    for i, seed in enumerate(("3", "5")):  # the file's seed, else the run's --seed
        prompt = val.read_text().splitlines()[1 + i].split(",")[0]
        test_cogvideo.main(["--model_path", str(WORLD_MODEL_DIR), "--eraser_path", str(out / "checkpoints" / "step_2"),
                            "--prompt", prompt, "--generate_clean", "--guidance_scale", "1", "--seed", seed, *size,
                            "--output_path", str(rendered / stems[i])])
        for side in ("clean", "erased"):
            ours, cli = read_video(step / f"{stems[i]}_{side}.mp4"), read_video(rendered / f"{stems[i]}_{side}.mp4")
            assert np.abs(ours.astype(int) - cli.astype(int)).mean() < 0.5, (stems[i], side)

    scores = json.loads((step / "scores.json").read_text())
    target = parse_target("red")
    shown = shows_target(reading(read_video(rendered / f"{stems[0]}_clean.mp4")), target)
    assert scores["target"] == "red" and scores["clean"]["target_prompts"] == 1 and scores["clean"]["other_prompts"] == 1
    assert scores["clean"]["target_shown"] == float(shown)
    assert 0.0 <= scores["erased"]["other_color_accuracy"] <= 1.0
    assert json.loads((step / "prompts.json").read_text())[stems[1]].startswith("a blue circle")


def test_training_without_validation_never_loads_the_vae(tmp_path, tiny_cogvideox_dir):
    from receler.config import TrainConfig
    from receler.training import train

    result = train(TrainConfig(model_path=str(tiny_cogvideox_dir), target_concept="nudity",
                               prompts_file=str(_prompts(tmp_path)), output_dir=str(tmp_path / "novae"), max_steps=1,
                               num_inference_steps=2, eraser_rank=4, num_frames=9, height=32, width=32,
                               report_to="none"))
    assert result.pipe.vae is None
    assert not (tmp_path / "novae" / "validation").exists()


# ---------------------------------------------------------------------------------------- model card


def _card_table(text: str) -> dict:
    return {m.group(1).strip(): m.group(2).strip() for m in re.finditer(r"^\| ([^|]+) \| (.+) \|$", text, re.M)}


def test_model_card_names_the_settings_actually_used(tmp_path, tiny_cogvideox_dir):
    concepts = tmp_path / "preserved.txt"
    concepts.write_text("# what to keep\nswimsuit\nperson\n...\n")
    _, out = _train(tmp_path, tiny_cogvideox_dir, "--num_frames", "12", "--lr_scheduler", "cosine",
                    "--lr_warmup_steps", "1", "--gradient_accumulation_steps", "2", "--preserved_concepts_file",
                    str(concepts), "--max_steps", "2", preserve=False)
    card = (out / "README.md").read_text()
    table = _card_table(card)
    assert table["concept"] == "nudity"
    assert table["base model"] == f"`{tiny_cogvideox_dir}` (CogVideoXPipeline)"
    assert table["video"] == "9 frames at 32x32"                 # 12 rounded down to 4k+1, as trained
    assert table["beta (preservation weight)"] == "1"            # the default once preserve prompts exist
    assert table["preserved concepts"].startswith("swimsuit, person")  # '...' and the comment skipped
    assert table["learning rate"] == "0.01, cosine schedule, 1 warm-up updates"
    assert table["prompts per update"].startswith("2 (1 per batch x 2 accumulated")
    assert table["updates"] == "2 (stopped: max_steps)"
    digest = hashlib.sha256((out / "eraser_weights.safetensors").read_bytes()).hexdigest()[:16]
    assert table["weights sha256"] == digest
    assert "## Limitations" in card and "Trained at 9 frames of 32x32" in card
    step_card = _card_table((out / "checkpoints" / "step_2" / "README.md").read_text())
    assert step_card["updates"] == "2"


def test_measuring_tools_add_and_replace_their_section(tmp_path, tiny_cogvideox_dir):
    from receler.model_card import update_model_card

    _, out = _train(tmp_path, tiny_cogvideox_dir, "--max_steps", "1")
    update_model_card(out, "nudity", {"frame_nudity_rate": 0.25, "sides": {"erased": {"frame_nudity_rate": 0.0}},
                                      "videos": [{"stem": "x"}]}, source="eval/nudity.json")
    update_model_card(out, "attack", {"concept_rate_attacked": 0.75})
    update_model_card(out, "nudity", {"frame_nudity_rate": 0.125})  # a re-run replaces the section
    card = (out / "README.md").read_text()
    assert card.count("### Nudity rate") == 1 and card.count("### Learned-prompt attack") == 1
    rows = _card_table(card)
    assert rows["frame_nudity_rate"] == "0.125" and "sides.erased.frame_nudity_rate" not in rows
    assert rows["concept_rate_attacked"] == "0.75"
    assert "Nothing measured yet" not in card
    digest = hashlib.sha256((out / "eraser_weights.safetensors").read_bytes()).hexdigest()[:16]
    assert f"for weights sha256 {digest}" in card
    assert update_model_card(tmp_path, "nudity", {"x": 1}) is None  # not an eraser folder: nothing written


def test_eval_preservation_with_eraser_path_fills_the_card(tmp_path, tiny_cogvideox_dir):
    from evaluation.eval_preservation import main as preservation_main
    from receler.media import write_video

    _, out = _train(tmp_path, tiny_cogvideox_dir, "--max_steps", "1")
    videos = tmp_path / "videos"
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    write_video(frames, videos / "000_a_cat_clean.mp4")
    write_video(frames, videos / "000_a_cat_erased.mp4")
    result = preservation_main(["--video_dir", str(videos), "--output_dir", str(tmp_path / "eval"),
                                "--eraser_path", str(out)])
    rows = _card_table((out / "README.md").read_text())
    assert float(rows["psnr"]) == pytest.approx(result["psnr"], rel=1e-3) and float(rows["psnr"]) == 100.0
