"""Tests for the bundled world model (models/world-cogvideox) and the script that trains it.

The bundled model's tests skip when the folder has not been trained yet. Colour judgements come
from the pixel classifier (tested on its own in test_world.py), applied here directly rather than
through the scoring helpers under test.
"""

import importlib.util
import json
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import CogVideoXPipeline
from PIL import Image
from safetensors import safe_open

from receler.errors import UserError
from receler.world import classify_video, evaluation_prompts, make_dataset
from receler.world import model as world_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_world_model.py"
# Accuracy on the 14 quick prompts may fall below the 72-prompt figure measured at training time
# by chance (one miss is 7 points): allow this much.
ACCURACY_TOLERANCE = 0.15

requires_bundled_model = pytest.mark.skipif(
    not (world_model.WORLD_MODEL_DIR / "model_index.json").is_file(),
    reason=f"no trained world model at {world_model.WORLD_MODEL_DIR}; run scripts/train_world_model.py",
)


def load_script():
    spec = importlib.util.spec_from_file_location("train_world_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundled_pipe():
    return world_model.load_world_pipeline()


@requires_bundled_model
def test_bundled_model_loads_offline_with_the_validated_settings():
    pipe = CogVideoXPipeline.from_pretrained(world_model.WORLD_MODEL_DIR, local_files_only=True)
    transformer = pipe.transformer.config
    assert transformer.max_text_seq_length == world_model.TEXT_LENGTH
    assert transformer.use_rotary_positional_embeddings is False
    assert pipe.tokenizer.model_max_length == world_model.TEXT_LENGTH
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # The longest caption (two shapes) fits the prompt length, so no prompt is ever truncated.
    longest = "a purple triangle moving right and a yellow square moving down on a black background"
    assert len(pipe.tokenizer(longest).input_ids) <= world_model.TEXT_LENGTH
    # The big parts are stored in float16 (small folder) ...
    for part in ("transformer", "vae"):
        with safe_open(str(world_model.WORLD_MODEL_DIR / part / "diffusion_pytorch_model.safetensors"), "pt") as f:
            assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    # ... yet a plain from_pretrained computes in float32 throughout, and renders.
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        "a red circle moving left on a gray background",
        num_inference_steps=2,
        guidance_scale=1.0,
        num_frames=world_model.NUM_FRAMES,
        height=world_model.HEIGHT,
        width=world_model.WIDTH,
        max_sequence_length=world_model.TEXT_LENGTH,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).frames
    assert frames.shape == (1, world_model.NUM_FRAMES, world_model.HEIGHT, world_model.WIDTH, 3)
    assert np.isfinite(frames).all()


@requires_bundled_model
def test_bundled_model_renders_the_prompted_colour(bundled_pipe):
    summary = json.loads((world_model.WORLD_MODEL_DIR / "training_summary.json").read_text())
    measured = summary["evaluation"]["by_guidance"]["1"]["color_accuracy"]
    prompts = evaluation_prompts(quick=True)
    videos = world_model.render_world(bundled_pipe, prompts)

    assert len(videos) == len(prompts)
    for video in videos:
        assert video.dtype == np.uint8
        assert video.shape == (world_model.NUM_FRAMES, world_model.HEIGHT, world_model.WIDTH, 3)
    hits = [classify_video(video).color == item["color"] for video, item in zip(videos, prompts)]
    accuracy = sum(hits) / len(hits)
    assert accuracy >= measured - ACCURACY_TOLERANCE, f"colour accuracy {accuracy:.2f}, measured {measured:.2f}"
    assert world_model.color_accuracy(videos, prompts) == pytest.approx(accuracy)


@requires_bundled_model
def test_bundled_model_knows_shapes_and_motion(bundled_pipe):
    """On the quick check prompts (every colour, shape, direction and background, and two-shape scenes), the
    bundled model draws what the prompt says about as often as recorded when it was trained (on all 168)."""
    summary = json.loads((world_model.WORLD_MODEL_DIR / "training_summary.json").read_text())
    recorded = summary["evaluation"]["by_guidance"]["1"]
    prompts = world_model.check_prompts(quick=True)
    videos = world_model.render_world(bundled_pipe, prompts)
    labels = [classify_video(video) for video in videos]
    singles = [(label, item) for label, item in zip(labels, prompts) if " and " not in item["prompt"]]
    for attribute in ("color", "shape", "direction"):
        wanted = [item["prompt"].split()[{"color": 1, "shape": 2, "direction": 4}[attribute]] for _, item in singles]
        accuracy = sum(getattr(label, attribute) == w for (label, _), w in zip(singles, wanted)) / len(singles)
        assert accuracy >= recorded[f"{attribute}_accuracy"] - ACCURACY_TOLERANCE, (attribute, accuracy)


@requires_bundled_model
def test_a_video_does_not_depend_on_its_batch(bundled_pipe):
    """Per-prompt CPU generators: rendering alone or in a batch gives the same video."""
    prompts = evaluation_prompts(quick=True)[:2]
    together = world_model.render_world(bundled_pipe, prompts, num_inference_steps=4, batch_size=2)
    alone = world_model.render_world(bundled_pipe, prompts[1:], num_inference_steps=4, batch_size=1)
    difference = np.abs(together[1].astype(int) - alone[0].astype(int))
    assert difference.max() <= 2  # float rounding of batched matrix products, at most a level or two


def test_score_videos_counts_colour_shape_direction_and_background_hits():
    from receler.world import Scene, ShapeSpec, render_video

    red_circle = render_video(Scene((ShapeSpec("red", "circle", "left"),), "gray"), seed=1)
    blue_square = render_video(Scene((ShapeSpec("blue", "square", "up"),), "gray"), seed=2)
    prompts = ["a red circle moving left on a gray background", ("a red square moving down on a black background", 5)]
    scores = world_model.score_videos([red_circle, blue_square], prompts)
    assert scores["color_accuracy"] == 0.5  # the second video is blue, not red
    assert scores["shape_accuracy"] == 1.0
    assert scores["direction_accuracy"] == 0.5  # ... moves up, not down
    assert scores["background_accuracy"] == 0.5  # ... on gray, not black
    assert scores["per_color"] == {"red": 0.5}  # both prompts ask for red
    assert scores["per_shape"] == {"circle": 1.0, "square": 1.0}
    assert scores["shape_readings"] == {"circle": 1, "square": 1}
    # Fill ratios by prompted shape (the ground-truth circle ~pi/4 of its box, the square nearly all of it).
    assert scores["fill_ratios"]["circle"][0] == pytest.approx(np.pi / 4, abs=0.05)
    assert scores["fill_ratios"]["square"][0] > 0.95
    # A square asked for as a circle: a miss on circles, read as a square.
    misread = world_model.score_videos([blue_square], ["a blue circle moving up on a gray background"])
    assert misread["per_shape"] == {"circle": 0.0} and misread["shape_readings"] == {"square": 1}
    assert scores["two_shape_accuracy"] is None
    with pytest.raises(ValueError, match="2 videos for 1 prompts"):
        world_model.score_videos([red_circle, blue_square], prompts[:1])

    two = Scene((ShapeSpec("green", "triangle", "right"), ShapeSpec("purple", "square", "down")), "black")
    video = render_video(two, seed=3)
    assert world_model.score_videos([video], [two.caption()])["two_shape_accuracy"] == 1.0
    wrong = Scene((ShapeSpec("green", "triangle", "right"), ShapeSpec("purple", "circle", "down")), "black")
    assert world_model.score_videos([video], [wrong.caption()])["two_shape_accuracy"] == 0.5


def test_check_prompts_cover_every_attribute():
    from receler.world import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, scene_from_caption

    for quick in (False, True):
        items = world_model.check_prompts(quick=quick)
        scenes = [scene_from_caption(item["prompt"]) for item in items]
        singles = [scene.shapes[0] for scene in scenes if len(scene.shapes) == 1]
        assert {s.color for s in singles} == set(COLORS) and {s.shape for s in singles} == set(SHAPES)
        assert {s.direction for s in singles} == set(DIRECTIONS)
        assert {scene.background for scene in scenes} == set(BACKGROUNDS)
        assert any(len(scene.shapes) == 2 for scene in scenes)
        assert len({item["seed"] for item in items}) == len(items)
    assert len(world_model.check_prompts()) == 6 * 3 * 4 * 2 + 24


def test_a_seed_offset_renders_the_same_prompts_from_other_seeds():
    plain, shifted = world_model.check_prompts(), world_model.check_prompts(seed_offset=1000)
    assert [item["prompt"] for item in shifted] == [item["prompt"] for item in plain]
    assert [item["seed"] for item in plain] == list(range(20_000, 20_168))
    assert [item["seed"] for item in shifted] == list(range(21_000, 21_168))


def test_load_world_pipeline_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_world_model.py"):
        world_model.load_world_pipeline(tmp_path / "nothing")


# ----------------------------------------------------------------------------- the training script

# One thread: on a shared 2-core machine, 2 threads on tiny tensors can run 30x slower when another
# process is busy (threads wait on each other); the script sets the count process-wide, so the
# fixture below restores it for the tests that follow.
TINY_ARGS = [
    "--threads", "1", "--num_videos", "8", "--vae_videos", "6", "--two_shape_prob", "0.5",
    "--text_len", "20", "--text_dim", "16", "--text_layers", "1",
    "--vae_channels", "4,4,4,4", "--latent_channels", "4", "--vae_image_steps", "2", "--vae_image_batch_size", "3",
    "--vae_steps", "2", "--vae_batch_size", "2", "--vae_finetune_steps", "2", "--vae_robust_steps", "2",
    "--vae_check_videos", "4",
    "--num_layers", "1", "--num_heads", "2", "--transformer_steps", "2", "--batch_size", "4", "--warmup_steps", "1",
    "--log_every", "1",
]


@pytest.fixture(autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_training_script_help_explains_every_flag(capsys):
    script = load_script()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--output_dir", "--seed", "--threads", "--vae_steps", "--transformer_steps", "--caption_dropout"):
        assert flag in text


def test_training_script_runs_every_stage_and_saves_a_loadable_folder(tmp_path, capsys):
    script = load_script()
    folder = tmp_path / "world"
    state = ["--state_dir", str(tmp_path / "state")]
    summary = script.main(
        TINY_ARGS + state + ["--output_dir", str(folder), "--eval_prompts", "2", "--eval_inference_steps", "2",
                             "--eval_guidance", "1,3", "--snr_shift_scale", "2", "--min_snr_gamma", "5",
                             "--pixel_loss_weight", "0.5", "--pixel_loss_videos", "2", "--shape_pair_weight", "2",
                             "--shape_pair_videos", "3", "--shape_swap_weight", "1",
                             "--vae_shape_code_steps", "2"]
    )

    pipe = CogVideoXPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.transformer.config.max_text_seq_length == 20
    assert pipe.transformer.config.in_channels == 4
    assert pipe.scheduler.config.snr_shift_scale == 2.0  # sampling uses the schedule the model was trained with
    assert pipe.vae.config.scaling_factor == pytest.approx(summary["vae_scaling_factor"])
    with safe_open(str(folder / "vae" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.float32}

    written = json.loads((folder / "training_summary.json").read_text())
    assert written["seed"] == 0
    assert written["args"]["transformer_steps"] == 2 and written["args"]["min_snr_gamma"] == 5.0
    assert written["args"]["pixel_loss_weight"] == 0.5
    # The videos drawn as other shapes are encoded once, one per training video, and are not the same latents.
    plain = torch.load(tmp_path / "state" / "latents.pt", weights_only=True)
    pairs = torch.load(tmp_path / "state" / "shape_pairs.pt", weights_only=True)
    assert pairs["latents"].shape == plain["latents"].shape and not torch.allclose(pairs["latents"], plain["latents"])
    assert not torch.equal(pairs["caption_embeds"], plain["caption_embeds"])
    assert pairs["scaling_factor"] == plain["scaling_factor"]  # scaled like the latents they partner
    assert math.isfinite(written["transformer"]["final_loss"])
    # The extra terms (pixel, shape pairs, shape swap) are positive, and the v loss is logged apart from them.
    assert 0 < written["transformer"]["final_v_loss"] < written["transformer"]["final_loss"]
    assert set(written["evaluation"]["by_guidance"]) == {"1", "3"}
    for result in written["evaluation"]["by_guidance"].values():
        assert 0.0 <= result["color_accuracy"] <= 1.0
    assert {"vae_training_s", "transformer_training_s", "total_s"} <= set(written["timings"])
    accuracies = {"color_accuracy", "shape_accuracy", "direction_accuracy", "background_accuracy"}
    assert set(written["vae"]["reconstruction"]) == accuracies | {"with_latent_noise"}
    assert set(written["vae"]["reconstruction"]["with_latent_noise"]["0.2"]) == accuracies
    assert written["vae"]["phases"] == ["frames", "clips", "finetune", "robust", "shape_code"]
    # No staging or backup folders are left next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state", "world"]

    # --evaluate_only re-measures the saved model (here at another guidance) and keeps the rest of the summary.
    script.main(["--output_dir", str(folder), "--evaluate_only", "--eval_prompts", "2", "--eval_inference_steps", "2",
                 "--eval_guidance", "2", "--eval_seed_offset", "7", "--state_dir", str(tmp_path / "no-state")])
    remeasured = json.loads((folder / "training_summary.json").read_text())
    assert set(remeasured["evaluation"]["by_guidance"]) == {"2"}
    assert remeasured["evaluation"]["render_settings"]["seed_offset"] == 7
    assert remeasured["transformer"] == written["transformer"] and remeasured["vae"] == written["vae"]
    result = remeasured["evaluation"]["by_guidance"]["2"]
    assert sum(result["shape_readings"].values()) == 2  # the first two check prompts have one shape each
    assert set(result["shape_accuracy_per_shape"]) <= {"circle", "square", "triangle"}
    for quartiles in result["fill_ratio_quartiles_per_shape"].values():  # one list per prompted shape drawn
        assert len(quartiles) == 3 and quartiles == sorted(quartiles)
    assert not (tmp_path / "no-state").exists()  # it trains nothing, so it makes no state folder
    with pytest.raises(SystemExit) as refused:
        script.main(["--output_dir", str(tmp_path / "state"), "--evaluate_only"])
    assert refused.value.code == 2
    assert "model_index.json" in capsys.readouterr().err

    # A second run replaces the model in place, and the same seed gives the same weights.
    script.main(TINY_ARGS + state + ["--output_dir", str(folder), "--skip_eval", "--snr_shift_scale", "2",
                                     "--min_snr_gamma", "5", "--pixel_loss_weight", "0.5", "--pixel_loss_videos", "2",
                                     "--shape_pair_weight", "2", "--shape_pair_videos", "3",
                                     "--shape_swap_weight", "1", "--vae_shape_code_steps", "2"])
    again = CogVideoXPipeline.from_pretrained(folder, local_files_only=True)
    for before, after in zip(pipe.transformer.state_dict().values(), again.transformer.state_dict().values()):
        assert torch.equal(before, after)


def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    script = load_script()
    args = TINY_ARGS + ["--transformer_steps", "4", "--checkpoint_every", "2", "--skip_eval",
                        "--attribute_dropout", "0.5"]
    script.main(args + ["--output_dir", str(tmp_path / "whole"), "--state_dir", str(tmp_path / "s1")])

    real_update = script.update_ema
    calls = []

    def interrupt_after_two_steps(ema, model, decay):
        calls.append(1)
        if len(calls) == 3:  # step 3, after the checkpoint of step 2
            raise KeyboardInterrupt
        real_update(ema, model, decay)

    monkeypatch.setattr(script, "update_ema", interrupt_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        script.main(args + ["--output_dir", str(tmp_path / "resumed"), "--state_dir", str(tmp_path / "s2")])
    monkeypatch.setattr(script, "update_ema", real_update)
    assert not (tmp_path / "resumed").exists()
    # --stop_after 2 of the 4-step schedule, from scratch or from the checkpoint of step 2, saves the same model.
    script.main(args + ["--output_dir", str(tmp_path / "half"), "--state_dir", str(tmp_path / "s3"), "--stop_after", "2"])
    script.main(args + ["--output_dir", str(tmp_path / "half_resumed"), "--state_dir", str(tmp_path / "s2"), "--resume",
                        "--stop_after", "2"])
    half = CogVideoXPipeline.from_pretrained(tmp_path / "half", local_files_only=True).transformer.state_dict()
    half_resumed = CogVideoXPipeline.from_pretrained(tmp_path / "half_resumed", local_files_only=True).transformer
    assert all(torch.equal(a, b) for a, b in zip(half.values(), half_resumed.state_dict().values()))
    # A state trained on another noise schedule is refused, not silently continued.
    with pytest.raises(SystemExit) as refused:
        script.main(args + ["--output_dir", str(tmp_path / "other"), "--state_dir", str(tmp_path / "s2"), "--resume",
                            "--snr_shift_scale", "1"])
    assert refused.value.code == 2 and not (tmp_path / "other").exists()
    script.main(args + ["--output_dir", str(tmp_path / "resumed"), "--state_dir", str(tmp_path / "s2"), "--resume"])

    whole = CogVideoXPipeline.from_pretrained(tmp_path / "whole", local_files_only=True)
    resumed = CogVideoXPipeline.from_pretrained(tmp_path / "resumed", local_files_only=True)
    for module in ("transformer", "vae"):
        for a, b in zip(getattr(whole, module).state_dict().values(), getattr(resumed, module).state_dict().values()):
            assert torch.equal(a, b), module


def test_a_stop_signal_saves_the_state_of_the_step_it_finishes_and_the_resume_ends_where_a_whole_run_does(
        tmp_path, monkeypatch):
    script = load_script()
    args = TINY_ARGS + ["--transformer_steps", "4", "--checkpoint_every", "0", "--skip_eval"]
    script.main(args + ["--output_dir", str(tmp_path / "whole"), "--state_dir", str(tmp_path / "s1")])

    real_update = script.update_ema
    calls = []

    def kill_during_the_third_step(ema, model, decay):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what pkill sends; the step still finishes
        real_update(ema, model, decay)

    monkeypatch.setattr(script, "update_ema", kill_during_the_third_step)
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        script.main(args + ["--output_dir", str(tmp_path / "resumed"), "--state_dir", str(tmp_path / "s2")])
    monkeypatch.setattr(script, "update_ema", real_update)
    assert stopped.value.code == 130 and len(calls) == 3 and not (tmp_path / "resumed").exists()
    # No periodic checkpoints: the state on disk is the one the signal saved, after the third step.
    assert torch.load(tmp_path / "s2" / "transformer_state.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the run's handler is gone
    script.main(args + ["--output_dir", str(tmp_path / "resumed"), "--state_dir", str(tmp_path / "s2"), "--resume"])
    whole = CogVideoXPipeline.from_pretrained(tmp_path / "whole", local_files_only=True).transformer.state_dict()
    resumed = CogVideoXPipeline.from_pretrained(tmp_path / "resumed", local_files_only=True).transformer.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(whole.values(), resumed.values()))


def test_a_vae_phase_stopped_part_way_resumes_where_it_stopped_and_ends_as_a_whole_run(tmp_path, monkeypatch,
                                                                                        capsys):
    script = load_script()
    args = TINY_ARGS + ["--transformer_steps", "1", "--checkpoint_every", "0", "--skip_eval"]
    script.main(args + ["--output_dir", str(tmp_path / "whole"), "--state_dir", str(tmp_path / "s1")])

    real_step = script.vae_step
    calls = []

    def kill_during_call(n):
        def step(*a, **k):
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)  # the step still finishes
            return real_step(*a, **k)
        return step

    state_file = tmp_path / "s2" / "vae_phase_state.pt"
    run = args + ["--output_dir", str(tmp_path / "resumed"), "--state_dir", str(tmp_path / "s2")]
    # TINY_ARGS: 2 steps each of frames, clips, finetune and robust. The third VAE step is the first of the clips.
    monkeypatch.setattr(script, "vae_step", kill_during_call(3))
    with pytest.raises(SystemExit) as stopped:
        script.main(run)
    saved = torch.load(state_file, weights_only=True)
    assert stopped.value.code == 130 and len(calls) == 3
    assert (saved["phase"], saved["step"], saved["steps"]) == ("clips", 1, 2)
    assert set(saved["stats"]) == {"final_reconstruction_loss_frames"}
    assert not (tmp_path / "s2" / "vae_stage").exists()  # no phase of the VAE stage is marked done
    assert "the VAE's clips phase stopped at step 1 of 2 (SIGTERM)" in capsys.readouterr().err

    # Resumed: one clips step, two of the fine-tune, and a stop in the first of the robust phase (a late phase).
    calls.clear()
    monkeypatch.setattr(script, "vae_step", kill_during_call(4))
    with pytest.raises(SystemExit) as stopped:
        script.main(run + ["--resume"])
    saved = torch.load(state_file, weights_only=True)
    assert stopped.value.code == 130 and len(calls) == 4
    assert (saved["phase"], saved["step"]) == ("robust", 1)
    assert json.loads((tmp_path / "s2" / "vae_stage" / "phases.json").read_text())["phases"] == [
        "frames", "clips", "finetune"]
    monkeypatch.setattr(script, "vae_step", real_step)

    # A schedule of another length is refused, naming the flag that sets it.
    with pytest.raises(SystemExit) as refused:
        script.main(run + ["--resume", "--vae_robust_steps", "3"])
    assert refused.value.code == 2 and "--vae_robust_steps 2" in capsys.readouterr().err

    calls.clear()
    monkeypatch.setattr(script, "vae_step", kill_during_call(0))  # counts the steps, never stops
    script.main(run + ["--resume"])
    assert len(calls) == 1 and not state_file.exists()  # the last robust step only; the stage holds the phases now
    whole = CogVideoXPipeline.from_pretrained(tmp_path / "whole", local_files_only=True)
    resumed = CogVideoXPipeline.from_pretrained(tmp_path / "resumed", local_files_only=True)
    for module in ("vae", "transformer"):
        for a, b in zip(getattr(whole, module).state_dict().values(), getattr(resumed, module).state_dict().values()):
            assert torch.equal(a, b), module
    summaries = [json.loads((tmp_path / name / "training_summary.json").read_text())["vae"] for name in
                 ("whole", "resumed")]
    losses = [{k: v for k, v in s.items() if k.startswith("final_")} for s in summaries]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_rotary_positions_train_with_the_embedding_the_pipeline_samples_with(tmp_path, monkeypatch):
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    script = load_script()
    seen = []
    real_forward = CogVideoXTransformer3DModel.forward

    def spy(self, *args, **kwargs):
        if self.training:
            seen.append(kwargs.get("image_rotary_emb"))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(CogVideoXTransformer3DModel, "forward", spy)
    args = TINY_ARGS + ["--rotary_positions", "--state_dir", str(tmp_path / "state"), "--checkpoint_every", "1"]
    script.main(args + ["--output_dir", str(tmp_path / "world"), "--eval_prompts", "1", "--eval_inference_steps", "1",
                        "--eval_guidance", "1"])
    pipe = CogVideoXPipeline.from_pretrained(tmp_path / "world", local_files_only=True)
    assert pipe.transformer.config.use_rotary_positional_embeddings
    # TINY_ARGS: 64 px frames, four VAE levels (8x) and patch 2 -> a 4 x 4 token grid; 9 frames -> 3 latent frames.
    # Each head's 16 channels: 4 for time, 6 for rows, 6 for columns.
    expected_cos, expected_sin = get_3d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4), 3)
    assert len(seen) == 2  # both training steps
    for cos, sin in seen:
        assert cos.shape == (3 * 4 * 4, 16)
        assert torch.allclose(cos, expected_cos) and torch.allclose(sin, expected_sin)
    # The two positions at the same place one frame apart differ only in the time channels.
    assert torch.allclose(seen[0][0][0, 4:], seen[0][0][16, 4:]) and not torch.allclose(seen[0][0][0, :4],
                                                                                          seen[0][0][16, :4])
    # A state trained with rotary positions is not continued without them, nor the other way round.
    with pytest.raises(SystemExit) as refused:
        script.main(TINY_ARGS + ["--state_dir", str(tmp_path / "state"), "--resume", "--skip_eval",
                                 "--output_dir", str(tmp_path / "other")])
    assert refused.value.code == 2 and not (tmp_path / "other").exists()
    with pytest.raises(UserError, match="--head_dim"):
        script.parse_args(["--rotary_positions", "--head_dim", "24"])


def test_the_device_flag_names_what_is_wrong():
    script = load_script()
    assert script.parse_args([]).device == "cpu"
    assert script.parse_args(["--device", "cpu"]).device == "cpu"
    for bad in ("gpu0", "mps"):
        with pytest.raises(UserError, match="--device"):
            script.parse_args(["--device", bad])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device; use --device cpu"):
            script.parse_args(["--device", "cuda"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_draws_the_cpu_runs_random_stream_and_saves_a_cpu_loadable_folder(tmp_path):
    """On a GPU the data and random streams stay on the CPU: the first losses match the CPU run's to float error."""
    script = load_script()
    summaries = {}
    for device in ("cpu", "cuda"):
        summaries[device] = script.main(TINY_ARGS + ["--device", device, "--skip_eval", "--state_dir",
                                                     str(tmp_path / f"state-{device}"), "--output_dir",
                                                     str(tmp_path / device)])
    assert summaries["cuda"]["args"]["device"] == "cuda"
    cpu_loss, cuda_loss = (summaries[d]["transformer"]["final_loss"] for d in ("cpu", "cuda"))
    assert cuda_loss == pytest.approx(cpu_loss, rel=0.05)
    pipe = CogVideoXPipeline.from_pretrained(tmp_path / "cuda", local_files_only=True)
    assert {p.device.type for p in pipe.transformer.parameters()} == {"cpu"}


def test_the_shape_swap_term_skips_videos_whose_caption_was_dropped(tmp_path):
    script = load_script()
    args = TINY_ARGS + ["--skip_eval", "--state_dir", str(tmp_path / "state"), "--shape_swap_weight", "5",
                        "--shape_pair_videos", "2"]
    # Every caption dropped (at 0.99 the seeded draws drop all four of the two steps' swapped videos): the swap term
    # has nothing to ask of the caption, so the loss is the v loss alone.
    script.main(args + ["--output_dir", str(tmp_path / "dropped"), "--caption_dropout", "0.99"])
    dropped = json.loads((tmp_path / "dropped" / "training_summary.json").read_text())["transformer"]
    assert dropped["final_loss"] == dropped["final_v_loss"]
    # No caption dropped: the term adds to it.
    script.main(args + ["--output_dir", str(tmp_path / "kept"), "--caption_dropout", "0", "--resume"])
    kept = json.loads((tmp_path / "kept" / "training_summary.json").read_text())["transformer"]
    assert kept["final_loss"] > kept["final_v_loss"]


def test_a_state_carried_without_its_latents_cache_continues_on_re_encoded_latents(tmp_path, capsys):
    """A transformer state copied to another machine without latents.pt (hundreds of MB) re-encodes the dataset
    and continues; a state whose record names other latents is refused."""
    script = load_script()
    args = TINY_ARGS + ["--transformer_steps", "4", "--checkpoint_every", "2", "--skip_eval"]
    script.main(args + ["--output_dir", str(tmp_path / "whole"), "--state_dir", str(tmp_path / "s1")])
    script.main(args + ["--output_dir", str(tmp_path / "half"), "--state_dir", str(tmp_path / "s2"),
                        "--stop_after", "2"])
    state_file = tmp_path / "s2" / "transformer_state.pt"
    record = torch.load(state_file, weights_only=True)["latents_made_with"]
    cached = torch.load(tmp_path / "s2" / "latents.pt", weights_only=True)
    assert record["scaling_factor"] == pytest.approx(cached["scaling_factor"])
    (tmp_path / "s2" / "latents.pt").unlink()
    capsys.readouterr()
    script.main(args + ["--output_dir", str(tmp_path / "resumed"), "--state_dir", str(tmp_path / "s2"), "--resume"])
    log = capsys.readouterr().err
    assert "encoded 8 videos" in log and f"resumed the transformer from {state_file} at step 2" in log
    whole = CogVideoXPipeline.from_pretrained(tmp_path / "whole", local_files_only=True).transformer.state_dict()
    resumed = CogVideoXPipeline.from_pretrained(tmp_path / "resumed", local_files_only=True).transformer.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(whole.values(), resumed.values()))
    # The same state claiming latents with another scaling factor is refused, and left as it was.
    state = torch.load(state_file, weights_only=True)
    state["latents_made_with"]["scaling_factor"] *= 1.01
    torch.save(state, state_file)
    (tmp_path / "s2" / "latents.pt").unlink()
    with pytest.raises(SystemExit) as refused:
        script.main(args + ["--output_dir", str(tmp_path / "other"), "--state_dir", str(tmp_path / "s2"), "--resume",
                            "--transformer_steps", "6"])
    assert refused.value.code == 2 and state_file.is_file()


def test_a_state_without_an_optimizer_continues_with_a_fresh_one_and_re_warms_the_learning_rate(tmp_path, capsys):
    script = load_script()
    args = TINY_ARGS + ["--transformer_steps", "6", "--warmup_steps", "2", "--checkpoint_every", "2", "--skip_eval",
                        "--state_dir", str(tmp_path / "state")]
    script.main(args + ["--output_dir", str(tmp_path / "half"), "--stop_after", "2"])
    state_file = tmp_path / "state" / "transformer_state.pt"
    state = torch.load(state_file, weights_only=True)
    weights = {name: value.half() for name, value in state["ema"].items()}  # as the chain's snapshot keeps them
    torch.save({**state, "transformer": weights, "ema": weights, "optimizer": None}, state_file)
    capsys.readouterr()
    script.main(args + ["--output_dir", str(tmp_path / "on"), "--resume", "--stop_after", "4"])
    log = capsys.readouterr().err
    assert "has no optimizer state: a fresh one" in log
    # cosine_lr with 2 warmup steps of 6 at peak 1e-3: step 3 is the peak, halved by the re-warmup (1 of 2 steps);
    # step 4 is 1e-3 * (0.1 + 0.9 * (1 + cos(pi / 4)) / 2), re-warmed fully.
    assert "transformer step 3/6:" in log and "lr 5.00e-04" in log.split("transformer step 3/6:")[1].split("\n")[0]
    step4 = 1e-3 * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert f"lr {step4:.2e}" in log.split("transformer step 4/6:")[1].split("\n")[0]
    # The float16 weights were loaded into float32 ones, and training went on in float32.
    continued = torch.load(state_file, weights_only=True)
    assert continued["step"] == 4 and continued["optimizer"] is not None
    for part in ("transformer", "ema"):
        assert {value.dtype for value in continued[part].values()} == {torch.float32}, part


def test_a_resume_in_another_world_geometry_encodes_its_own_latents(tmp_path):
    script = load_script()
    args = TINY_ARGS + ["--skip_eval", "--state_dir", str(tmp_path / "state")]
    script.main(args + ["--output_dir", str(tmp_path / "plain")])
    plain = torch.load(tmp_path / "state" / "latents.pt", weights_only=True)
    script.main(args + ["--output_dir", str(tmp_path / "grid"), "--resume", "--position_grid", "4"])
    grid = torch.load(tmp_path / "state" / "latents.pt", weights_only=True)
    assert (plain["position_grid"], grid["position_grid"]) == (1, 4)
    assert plain["caption_index"].tolist() == grid["caption_index"].tolist()  # the same scenes, placed elsewhere
    assert not torch.equal(plain["latents"], grid["latents"])
    summary = json.loads((tmp_path / "grid" / "training_summary.json").read_text())
    assert summary["args"]["position_grid"] == 4
    assert summary["transformer"]["final_v_loss"] == summary["transformer"]["final_loss"]  # no extra terms
    script.main(args + ["--output_dir", str(tmp_path / "big"), "--resume", "--position_grid", "4", "--shape_size", "29"])
    big = torch.load(tmp_path / "state" / "latents.pt", weights_only=True)
    assert (big["position_grid"], big["shape_size"]) == (4, 29) and not torch.equal(big["latents"], grid["latents"])
    with pytest.raises(UserError, match="--position_grid"):
        script.parse_args(["--position_grid", "0"])
    with pytest.raises(UserError, match="--shape_size"):
        script.parse_args(["--shape_size", "61"])


def test_trained_world_args_read_the_training_summary(tmp_path):
    plain = {"position_grid": 1, "shape_size": None}
    assert world_model.trained_world_args(tmp_path) == plain  # no summary: the plain world
    (tmp_path / "training_summary.json").write_text(json.dumps({"args": {"seed": 0}}))
    assert world_model.trained_world_args(tmp_path) == plain  # trained before the flags existed
    (tmp_path / "training_summary.json").write_text(json.dumps({"args": {"position_grid": 4, "shape_size": 29}}))
    assert world_model.trained_world_args(tmp_path) == {"position_grid": 4, "shape_size": 29}


def test_the_probes_truth_is_drawn_in_the_world_it_is_given(bundled_pipe):
    from receler.world.probe import ground_truth

    captions, videos, latents, _ = ground_truth(bundled_pipe, 4, 777, {"position_grid": 4, "shape_size": 29})
    assert len(captions) == len(latents) == 4
    for video in videos:
        ys, xs = np.nonzero((video[0] != video[0, :1, :1]).any(axis=-1))
        assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (29, 29)  # every shape's box is 29 px
        assert xs.min() % 4 == 0 and ys.min() % 4 == 0


def test_the_probe_reads_each_prompted_shape_apart():
    from receler.world import Scene, ShapeSpec, render_video
    from receler.world.probe import accuracies, table

    circle = render_video(Scene((ShapeSpec("red", "circle", "left"),), "gray"), seed=1)
    square = render_video(Scene((ShapeSpec("blue", "square", "up"),), "gray"), seed=2)
    captions = ["a red circle moving left on a gray background", "a blue square moving up on a gray background",
                "a blue triangle moving up on a gray background"]  # the square again, asked for as a triangle
    row = accuracies([circle, square, square], captions)
    assert row["shape_per_shape"] == {"circle": 1.0, "square": 1.0, "triangle": 0.0}
    assert row["shape"] == pytest.approx(2 / 3)
    assert "| 100% / 100% / 0% |" in table([{"stage": "truth", **row}])
    assert "| 100% / - / - |" in table([{"stage": "truth", **accuracies([circle], captions[:1])}])


def test_partial_captions_leave_out_attributes():
    script = load_script()
    captions = ["a red circle moving left on a gray background"] * 400
    partial = script.partial_captions(captions, 0.25, seed=0)
    assert partial == script.partial_captions(captions, 0.25, seed=0)
    assert script.partial_captions(captions, 0.0, seed=0) == captions
    counts = {"colour": sum("red" not in c for c in partial), "shape": sum("red shape" in c for c in partial),
              "direction": sum("moving" not in c for c in partial)}
    for name, count in counts.items():
        assert 60 <= count <= 140, (name, count)  # about a quarter each
    assert "a circle moving left on a gray background" in partial
    assert all(c.endswith("on a gray background") for c in partial)


def test_training_script_refuses_a_folder_that_is_not_a_model(tmp_path):
    script = load_script()
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        script.main(TINY_ARGS + ["--output_dir", str(tmp_path), "--skip_eval", "--state_dir", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_snr_shift_scale_divides_the_signal_to_noise_ratio_before_the_zero_terminal_rescale():
    """The scheduler's signal levels against CogVideoX's schedule computed by hand from its formulas: scaled-linear
    betas, the signal-to-noise ratio divided by the shift, then rescaled so the last step holds no signal."""
    script = load_script()

    def by_hand(shift):
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        signal = torch.cumprod(1 - betas, dim=0)
        snr = signal / (1 - signal) / shift
        root = (snr / (1 + snr)).sqrt()
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])  # zero terminal SNR, first step unchanged
        return root ** 2

    for shift in (1.0, 3.0):
        scheduler = script.build_scheduler(script.parse_args(["--snr_shift_scale", str(shift)]))
        torch.testing.assert_close(scheduler.alphas_cumprod.double(), by_hand(shift), rtol=1e-4, atol=1e-6)
    assert script.parse_args([]).snr_shift_scale == 3.0  # CogVideoX-2b's, which the bundled model was trained with
    with pytest.raises(UserError, match="--snr_shift_scale"):
        script.parse_args(["--snr_shift_scale", "0"])


def test_min_snr_weights_count_each_timestep_min_snr_gamma_times_in_clean_latent_error():
    script = load_script()
    by_hand = SimpleNamespace(alphas_cumprod=torch.tensor([0.8, 0.5, 0.0, 0.99]))  # SNR 4, 1, 0, 99
    steps = torch.arange(4)
    torch.testing.assert_close(script.min_snr_weights(by_hand, steps, 5.0), torch.tensor([4 / 5, 1 / 2, 0, 5 / 100]))
    torch.testing.assert_close(script.min_snr_weights(by_hand, steps, 1.0), torch.tensor([1 / 5, 1 / 2, 0, 1 / 100]))

    # On the real schedule: the weighted v-prediction error equals min(SNR, gamma) times the error of the clean
    # latents the same prediction implies (x0 = sqrt(a) x_t - sqrt(1 - a) v).
    scheduler = script.build_scheduler(script.parse_args([]))
    generator = torch.Generator().manual_seed(0)
    clean, noise, guess = (torch.randn(3, 2, 4, 4, 4, generator=generator) for _ in range(3))
    timesteps = torch.tensor([10, 400, 900])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = scheduler.get_velocity(clean, noise, timesteps)
    signal = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
    implied = signal.sqrt() * noisy - (1 - signal).sqrt() * guess
    snr = (signal / (1 - signal)).flatten()
    for gamma in (0.5, 5.0):
        ours = script.min_snr_weights(scheduler, timesteps, gamma) * (guess - target).pow(2).flatten(1).mean(1)
        theirs = snr.clamp(max=gamma) * (implied - clean).pow(2).flatten(1).mean(1)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    with pytest.raises(UserError, match="--min_snr_gamma"):
        script.parse_args(["--min_snr_gamma", "-1"])


def test_the_pixel_loss_compares_the_decoded_clean_latents_a_v_prediction_implies():
    script = load_script()
    scheduler = script.build_scheduler(script.parse_args([]))
    generator = torch.Generator().manual_seed(0)
    clean, noise, guess = (torch.randn(3, 2, 4, 4, 4, generator=generator) for _ in range(3))  # [B, F, C, h, w]
    timesteps = torch.tensor([10, 400, 900])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = scheduler.get_velocity(clean, noise, timesteps)

    # With a decoder that returns its input, the clean-latent error is sigma times the v error, so the loss (divided
    # by sigma^2) is the plain v loss, over the scaling factor squared.
    scale = 2.0
    identity = SimpleNamespace(config=SimpleNamespace(scaling_factor=scale), decode=lambda z: SimpleNamespace(sample=z))
    ours = script.decoded_v_loss(identity, scheduler, noisy, guess, clean, timesteps)
    torch.testing.assert_close(ours, (guess - target).pow(2).flatten(1).mean(1) / scale**2, rtol=1e-4, atol=1e-6)

    # A real (tiny, untrained) VAE: the true velocity costs nothing, a wrong one costs something, and the gradient
    # reaches the prediction but not the frozen VAE.
    args = script.parse_args(TINY_ARGS)
    vae = script.build_vae(args).requires_grad_(False)
    vae.register_to_config(scaling_factor=0.7)
    clean, noise = (torch.randn(2, 3, 4, 16, 16, generator=generator) for _ in range(2))  # 9 frames of 64 px
    timesteps = torch.tensor([50, 700])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    exact = script.decoded_v_loss(vae, scheduler, noisy, scheduler.get_velocity(clean, noise, timesteps), clean,
                                  timesteps)
    assert exact.abs().max() < 1e-8
    wrong = torch.randn(clean.shape, generator=generator, requires_grad=True)
    loss = script.decoded_v_loss(vae, scheduler, noisy, wrong, clean, timesteps)
    assert (loss > 1e-4).all()
    loss.sum().backward()
    assert wrong.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())

    for bad in (["--pixel_loss_weight", "-1"], ["--pixel_loss_weight", "1", "--pixel_loss_videos", "0"],
                ["--pixel_loss_weight", "1", "--pixel_loss_videos", "33"]):
        with pytest.raises(UserError, match="--pixel_loss"):
            script.parse_args(bad)


def test_the_shape_pair_loss_scores_only_what_the_two_predictions_differ_by():
    script = load_script()
    scheduler = script.build_scheduler(script.parse_args([]))
    generator = torch.Generator().manual_seed(1)
    clean, pair_clean, noise, offset = (torch.randn(3, 2, 4, 4, 4, generator=generator) for _ in range(4))
    timesteps = torch.tensor([5, 300, 950])
    target = scheduler.get_velocity(clean, noise, timesteps)
    pair_target = scheduler.get_velocity(pair_clean, noise, timesteps)  # the same noise
    # With shared noise the targets differ by -sigma times the clean latents' difference (v = alpha eps - sigma x0).
    sigma = (1 - scheduler.alphas_cumprod[timesteps]).sqrt().float().view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(target - pair_target, -sigma * (clean - pair_clean), rtol=1e-4, atol=1e-5)

    # An error both predictions share costs nothing; an error in one costs its mean square.
    shared = script.shape_pair_loss(target + offset, target, pair_target + offset, pair_target)
    assert shared.abs().max() < 1e-10
    alone = script.shape_pair_loss(target, target, pair_target + offset, pair_target)
    torch.testing.assert_close(alone, offset.pow(2).flatten(1).mean(1))
    # A model deaf to the shape (the same prediction for both) is charged the true difference in full.
    deaf = torch.zeros_like(target, requires_grad=True)
    loss = script.shape_pair_loss(deaf, target, deaf, pair_target)
    torch.testing.assert_close(loss, (sigma * (clean - pair_clean)).pow(2).flatten(1).mean(1), rtol=1e-4, atol=1e-6)

    for bad in (["--shape_pair_weight", "-1"], ["--shape_pair_weight", "1", "--shape_pair_videos", "0"],
                ["--shape_pair_weight", "1", "--shape_pair_videos", "33"]):
        with pytest.raises(UserError, match="--shape_pair"):
            script.parse_args(bad)


def test_the_shape_swap_loss_asks_for_the_other_video_from_this_ones_noisy_latents():
    script = load_script()
    scheduler = script.build_scheduler(script.parse_args([]))
    generator = torch.Generator().manual_seed(2)
    clean, other, noise = (torch.randn(3, 2, 4, 4, 4, generator=generator) for _ in range(3))
    timesteps = torch.tensor([5, 300, 950])
    alpha = scheduler.alphas_cumprod[timesteps].sqrt().float().view(-1, 1, 1, 1, 1)
    sigma = (1 - scheduler.alphas_cumprod[timesteps]).sqrt().float().view(-1, 1, 1, 1, 1)
    noisy = alpha * clean + sigma * noise
    # A model that follows its input (the true v of the video it was given) is charged the videos' difference.
    follows_input = alpha * noise - sigma * clean
    loss = script.shape_swap_loss(scheduler, noisy, follows_input, other, timesteps)
    torch.testing.assert_close(loss, (clean - other).pow(2).flatten(1).mean(1), rtol=1e-4, atol=1e-5)
    # The v whose clean estimate (alpha * noisy - sigma * v) is the other video costs nothing.
    follows_caption = (alpha * noisy - other) / sigma
    assert script.shape_swap_loss(scheduler, noisy, follows_caption, other, timesteps).abs().max() < 1e-8
    # It trains: the gradient reaches the prediction.
    prediction = follows_input.clone().requires_grad_(True)
    script.shape_swap_loss(scheduler, noisy, prediction, other, timesteps).sum().backward()
    assert prediction.grad.abs().sum() > 0

    for bad in (["--shape_swap_weight", "-1"], ["--shape_swap_weight", "1", "--shape_pair_videos", "0"]):
        with pytest.raises(UserError, match="--shape_swap_weight"):
            script.parse_args(bad)


def test_the_shape_difference_weights_are_largest_where_the_two_videos_differ():
    script = load_script()
    own = torch.zeros(2, 3, 4, 5, 5)
    other = own.clone()
    other[0, 1, :, 2, 3] = 2.0  # video 0 differs at one position, by 2 on every channel
    other[1, :, 0] = 1.0  # video 1 differs everywhere, by 1 on channel 0 only
    weights = script.shape_difference_weights(own, other, focus=4.0)
    assert weights.shape == (2, 3, 1, 5, 5)
    # Video 0: |difference| is 2 at one of 75 positions, so its mean is 2/75 and the weight there 1 + 4 * 75.
    assert weights[0, 1, 0, 2, 3].item() == pytest.approx(1 + 4 * 75)
    assert (weights[0] == 1).sum().item() == 74  # and 1 where the videos agree
    assert weights[1].unique().tolist() == [5.0]  # the same difference everywhere: 1 + focus
    torch.testing.assert_close(weights.mean((1, 2, 3, 4)), torch.full((2,), 5.0))


def test_the_focused_shape_swap_loss_is_the_weighted_mean_of_the_squared_error():
    script = load_script()
    scheduler = script.build_scheduler(script.parse_args([]))
    generator = torch.Generator().manual_seed(3)
    clean, other, noise = (torch.randn(2, 2, 4, 3, 3, generator=generator) for _ in range(3))
    timesteps = torch.tensor([40, 700])
    alpha = scheduler.alphas_cumprod[timesteps].sqrt().float().view(-1, 1, 1, 1, 1)
    sigma = (1 - scheduler.alphas_cumprod[timesteps]).sqrt().float().view(-1, 1, 1, 1, 1)
    noisy = alpha * clean + sigma * noise
    follows_input = alpha * noise - sigma * clean  # its clean estimate is ``clean``
    weights = torch.rand(2, 2, 1, 3, 3, generator=generator) + 0.5
    loss = script.shape_swap_loss(scheduler, noisy, follows_input, other, timesteps, weights)
    squared = (clean - other).pow(2)  # [B, F, C, H, W]; the weights are shared by the 4 channels
    expected = torch.stack([(squared[b] * weights[b]).sum() / (4 * weights[b].sum()) for b in range(2)])
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    # Weights of 1 give the plain mean.
    torch.testing.assert_close(script.shape_swap_loss(scheduler, noisy, follows_input, other, timesteps,
                                                      torch.ones_like(weights)),
                               script.shape_swap_loss(scheduler, noisy, follows_input, other, timesteps))


def test_the_swap_focus_and_both_directions_change_the_swap_term_only(tmp_path):
    script = load_script()
    args = TINY_ARGS + ["--skip_eval", "--state_dir", str(tmp_path / "state"), "--shape_swap_weight", "5",
                        "--shape_pair_videos", "2", "--transformer_steps", "1", "--caption_dropout", "0"]
    losses = {}
    for name, extra in (("plain", []), ("focus", ["--shape_swap_focus", "4"]), ("both", ["--shape_swap_both"])):
        script.main(args + ["--output_dir", str(tmp_path / name), "--resume"] + extra)
        losses[name] = json.loads((tmp_path / name / "training_summary.json").read_text())["transformer"]
    # One step from the same weights, videos and noise: the v loss is the same, the swap term is not.
    assert losses["focus"]["final_v_loss"] == losses["both"]["final_v_loss"] == losses["plain"]["final_v_loss"]
    assert len({losses[name]["final_loss"] for name in losses}) == 3
    # --shape_swap_both encodes the videos a third time, as the shape after next: other latents, other captions.
    plain = torch.load(tmp_path / "state" / "latents.pt", weights_only=True)
    near = torch.load(tmp_path / "state" / "shape_pairs.pt", weights_only=True)
    far = torch.load(tmp_path / "state" / "shape_pairs_2.pt", weights_only=True)
    assert far["latents"].shape == plain["latents"].shape
    assert not torch.allclose(far["latents"], near["latents"]) and not torch.allclose(far["latents"], plain["latents"])
    assert not torch.equal(far["caption_embeds"], near["caption_embeds"])

    for bad in (["--shape_swap_focus", "-1", "--shape_swap_weight", "1"], ["--shape_swap_focus", "2"],
                ["--shape_swap_both"], ["--shape_v_focus", "2"]):
        with pytest.raises(UserError, match="--shape_swap_focus"):
            script.parse_args(bad)
    with pytest.raises(UserError, match="--shape_v_focus must be >= 0"):
        script.parse_args(["--shape_v_focus", "-1", "--shape_swap_weight", "1"])


def test_the_v_focus_weights_the_swapped_videos_where_their_shapes_differ_and_keeps_the_scale():
    script = load_script()
    clean = torch.zeros(4, 3, 2, 5, 5)
    swap_clean = torch.zeros(2, 3, 2, 5, 5)
    swap_clean[0, 1, :, 2, 3] = 1.0  # video 0 differs from its other-shape version at one of 75 positions
    swap_clean[1] = 0.5  # video 1 differs everywhere by the same amount
    weights = script.shape_v_weights(clean, swap_clean, 4.0)
    assert weights.shape == (4, 3, 1, 5, 5)
    # Before dividing by the mean: video 0 is 1 + 4*75 at the differing position and 1 elsewhere, video 1 is
    # 1 + 4 = 5 everywhere, videos 2 and 3 (no partner) are 1. Mean over the batch: (75*5 + 75*5 + 150) / 300 = 3.
    assert weights[0, 1, 0, 2, 3].item() == pytest.approx(301 / 3)
    assert weights[0, 0, 0, 0, 0].item() == pytest.approx(1 / 3)
    assert torch.allclose(weights[1], torch.full_like(weights[1], 5 / 3))
    assert torch.allclose(weights[2:], torch.full_like(weights[2:], 1 / 3))
    assert weights.mean().item() == pytest.approx(1.0)


def test_the_v_focus_changes_the_v_loss_and_not_the_swap_term(tmp_path):
    script = load_script()
    args = TINY_ARGS + ["--skip_eval", "--state_dir", str(tmp_path / "state"), "--shape_swap_weight", "5",
                        "--shape_pair_videos", "2", "--transformer_steps", "1", "--caption_dropout", "0", "--resume"]
    losses = {}
    for name, extra in (("plain", []), ("again", []), ("v_focus", ["--shape_v_focus", "4"])):
        script.main(args + ["--output_dir", str(tmp_path / name)] + extra)
        losses[name] = json.loads((tmp_path / name / "training_summary.json").read_text())["transformer"]
    assert losses["again"]["final_v_loss"] == losses["plain"]["final_v_loss"]  # the run is deterministic
    assert losses["v_focus"]["final_v_loss"] != losses["plain"]["final_v_loss"]
    # One step from the same weights, videos and noise: the same predictions, so the swap term is unchanged.
    swap_term = {name: losses[name]["final_loss"] - losses[name]["final_v_loss"] for name in losses}
    assert swap_term["v_focus"] == pytest.approx(swap_term["plain"], rel=1e-5)


def test_the_later_frame_weight_weighs_later_latent_frames_and_keeps_the_scale():
    script = load_script()
    # Three latent frames, later weight 4: 1, 4, 4 before dividing by their mean 3.
    weights = script.latent_frame_weights(3, 4.0)
    assert weights.shape == (1, 3, 1, 1, 1)
    assert weights.flatten().tolist() == pytest.approx([1 / 3, 4 / 3, 4 / 3])
    assert script.latent_frame_weights(5, 1.0).flatten().tolist() == pytest.approx([1.0] * 5)
    with pytest.raises(UserError, match="--later_frame_weight must be > 0"):
        script.parse_args(["--later_frame_weight", "0"])


def test_the_later_frame_weight_changes_the_v_loss_and_the_swap_term(tmp_path):
    script = load_script()
    args = TINY_ARGS + ["--skip_eval", "--state_dir", str(tmp_path / "state"), "--shape_swap_weight", "5",
                        "--shape_pair_videos", "2", "--transformer_steps", "1", "--caption_dropout", "0", "--resume"]
    losses = {}
    for name, extra in (("plain", []), ("one", ["--later_frame_weight", "1"]), ("later", ["--later_frame_weight", "4"])):
        script.main(args + ["--output_dir", str(tmp_path / name)] + extra)
        losses[name] = json.loads((tmp_path / name / "training_summary.json").read_text())["transformer"]
    assert losses["one"] == losses["plain"]  # weight 1 is the plain mean
    assert losses["later"]["final_v_loss"] != losses["plain"]["final_v_loss"]
    swap_term = {name: losses[name]["final_loss"] - losses[name]["final_v_loss"] for name in losses}
    assert swap_term["later"] != pytest.approx(swap_term["plain"], rel=1e-5)


def test_the_shape_code_labels_latent_pixels_by_the_shape_that_covers_them():
    from receler.world.scenes import BACKGROUNDS, COLORS

    script = load_script()
    video = np.empty((2, 9, 16, 16, 3), dtype=np.uint8)
    video[:] = BACKGROUNDS["gray"]
    # Video 0: a red square over pixel rows 4-11 and columns 4-9 in frame 0 and in frames 1-2 (half of the first
    # group of four), nowhere in frames 3-8. Video 1: a blue triangle (pixels 0-3 by 0-3) beside a red circle
    # (pixels 12-15 by 12-14) in every frame.
    video[0, 0:3, 4:12, 4:10] = COLORS["red"]
    video[1, :, 0:4, 0:4] = COLORS["blue"]
    video[1, :, 12:16, 12:15] = COLORS["red"]
    captions = ["a red square moving left on a gray background",
                "a blue triangle moving up and a red circle moving down on a gray background"]
    labels = script.shape_code_labels(video, captions, spatial_scale=4)
    assert labels.shape == (2, 3, 4, 4)  # the first frame alone, then two groups of four; 4 px squares
    square, circle, triangle = 1, 0, 2
    expected = torch.full((2, 3, 4, 4), -1)
    # Latent columns 1 (pixels 4-7, covered) and 2 (pixels 8-11, half covered): both labelled in the first frame. In
    # latent frame 1 the square is in half of the group's frames: column 1 is half covered, column 2 a quarter.
    # Latent frame 2 has none of it.
    expected[0, 0, 1:3, 1:3] = square
    expected[0, 1, 1:3, 1] = square
    expected[1, :, 0, 0] = triangle
    expected[1, :, 3, 3] = circle  # 12 of 16 pixels
    assert torch.equal(labels, expected)
    # A quarter of a square is not enough.
    video[0, 0, 4:12, 8:10] = BACKGROUNDS["gray"]
    video[0, 0, 4:12, 8:9] = COLORS["red"]
    assert script.shape_code_labels(video, captions, spatial_scale=4)[0, 0, 1, 2] == -1

    # The loss: cross-entropy of the first three channels over the latents' std, times the sharpness.
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 5, 3, 4, 4, generator=generator)
    logits = script.SHAPE_CODE_SHARPNESS * latents[:, :3] / latents.std()
    picked = [(b, f, y, x) for b, f, y, x in zip(*torch.nonzero(expected >= 0, as_tuple=True))]
    by_hand = sum(torch.logsumexp(logits[b, :, f, y, x], 0) - logits[b, expected[b, f, y, x], f, y, x]
                  for b, f, y, x in picked) / len(picked)
    torch.testing.assert_close(script.shape_code_loss(latents, expected), by_hand)
    # Its gradient reaches the code channels of the labelled latent pixels, and nothing else.
    latents.requires_grad_(True)
    script.shape_code_loss(latents, expected).backward()
    by_position = latents.grad.permute(0, 2, 3, 4, 1)  # [B, F, h, w, C]
    assert by_position[expected >= 0][:, :3].abs().min() > 0
    assert by_position[expected < 0].abs().max() == 0 and by_position[..., 3:].abs().max() == 0


def test_learning_rate_schedule_and_foreground_weights():
    script = load_script()
    assert script.cosine_lr(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert script.cosine_lr(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert script.cosine_lr(55, 100, 1.0, warmup=10) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))

    video = -torch.ones(1, 3, 1, 4, 4)  # black background
    video[0, 0, 0, 1, 2] = 1.0  # one red pixel
    weights = script.foreground_weights(video, extra=9.0)
    expected = torch.ones(1, 1, 1, 4, 4)
    expected[0, 0, 0, 1, 2] = 10.0
    assert torch.equal(weights, expected)


def test_latent_foreground_weights_mark_the_shape_and_only_the_shape():
    script = load_script()
    latents = torch.randn(2, 3, 16, 1, 1).expand(2, 3, 16, 8, 8).clone()  # flat: one latent per frame
    latents += 0.01 * torch.randn(latents.shape)  # encoder noise on the background
    latents[:, :, :, 2:4, 5:7] += 3.0  # a 2x2 shape in every frame
    weights = script.latent_foreground_weights(latents, extra=4.0, threshold=0.3)
    expected = torch.ones(2, 3, 1, 8, 8)
    expected[:, :, :, 2:4, 5:7] = 5.0
    assert torch.equal(weights, expected)


class RecordingVAE:
    """Encodes every video to fixed latents (a near-zero posterior std) and records what it is asked to decode."""

    def __init__(self, latents):
        self.latents, self.decoded = latents, []

    def encode(self, video):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        logvar = torch.full_like(self.latents, -30.0)
        self.video = video
        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(torch.cat([self.latents, logvar], dim=1)))

    def decode(self, latents):
        self.decoded.append(latents)
        return SimpleNamespace(sample=torch.zeros_like(self.video))


def test_the_robust_vae_phase_decodes_latents_with_noise_relative_to_their_spread():
    script = load_script()
    args = SimpleNamespace(vae_foreground_weight=0.0, vae_kl_weight=0.0)
    video = torch.rand(4, 3, 5, 8, 8) * 2 - 1
    latents = torch.randn(4, 2, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    # No noise: the decoder gets the latents themselves and the loss is the plain MSE against a zero reconstruction.
    vae = RecordingVAE(latents)
    loss, rec, _, code = script.vae_loss(vae, video, args, torch.Generator().manual_seed(1))
    assert code is None  # no shape-code labels, no shape-code term
    assert torch.allclose(vae.decoded[0], latents, atol=1e-5)
    assert rec.item() == pytest.approx((video**2).mean().item(), rel=1e-6)

    # With noise, each clip's added noise has a std of at most latent_noise x the batch's latent std, and some
    # clip gets a sizeable share of it; scaling the latents up scales the noise with them (same random draws).
    added = {}
    for scale in (1.0, 10.0):
        vae = RecordingVAE(latents * scale)
        script.vae_loss(vae, video, args, torch.Generator().manual_seed(1), latent_noise=0.3)
        added[scale] = vae.decoded[0] - latents * scale
    per_clip = added[1.0].flatten(1).std(dim=1) / latents.std()
    assert per_clip.max() <= 0.3 * 1.2  # a sample's std scatters around the drawn level
    assert per_clip.max() > 0.05
    assert len(set(per_clip.tolist())) == 4  # each clip draws its own level
    assert torch.allclose(added[10.0], 10 * added[1.0], atol=1e-3)


@requires_bundled_model
def test_the_probe_denoises_exactly_as_the_pipeline_generates(bundled_pipe):
    from receler.world import probe

    captions = ["a red square moving up on a gray background", "a cyan triangle moving left on a black background"]
    embeds = probe.embed(bundled_pipe, captions)
    noise = torch.randn(2, 3, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    # From the first step the schedule holds no signal, so whatever latents are given, this is a generation ...
    ours = probe.denoise_from(bundled_pipe, torch.ones_like(noise), embeds, 0, noise, num_inference_steps=4)
    # ... and must match the pipeline's own loop started from the same noise.
    theirs = bundled_pipe(prompt=captions, guidance_scale=1.0, num_inference_steps=4, num_frames=9, height=64,
                          width=64, latents=noise.clone(), max_sequence_length=world_model.TEXT_LENGTH,
                          output_type="latent").frames
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # Denoising from the last step barely moves clean latents (little noise is added, and removed).
    latents = probe.encode(bundled_pipe, np.stack([v for _, v in make_dataset(2, seed=3, two_shape_prob=0.0)]))
    assert latents.abs().mean() > 0.1
    late = probe.denoise_from(bundled_pipe, latents, embeds, 29, noise, num_inference_steps=30)
    assert (late - latents).pow(2).mean() < 0.1 * latents.pow(2).mean()


def test_the_probe_denoises_a_rotary_model_as_its_pipeline_generates():
    """Models with rotary positions (CogVideoX-5b's layout, --rotary_positions) need the embedding on every call."""
    from receler.tiny.cogvideox import build_tiny_cogvideox
    from receler.world import probe

    pipe = build_tiny_cogvideox(seed=1, scheduler="ddim", rotary=True)
    pipe.set_progress_bar_config(disable=True)
    captions = ["a red square moving up on a gray background", "a blue circle moving left on a black background"]
    embeds = probe.embed(pipe, captions)
    noise = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(2))  # 9 frames of 32 x 32
    ours = probe.denoise_from(pipe, torch.zeros_like(noise), embeds, 0, noise, num_inference_steps=3)
    theirs = pipe(prompt=captions, guidance_scale=1.0, num_inference_steps=3, num_frames=9, height=32, width=32,
                  latents=noise.clone(), max_sequence_length=pipe.transformer.config.max_text_seq_length,
                  output_type="latent").frames
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # Without the embedding the same transformer predicts something else: the test above would see a missing one.
    t = torch.tensor([500, 500])
    without = pipe.transformer(hidden_states=noise, encoder_hidden_states=embeds, timestep=t, return_dict=False)[0]
    assert not torch.allclose(probe.transformer_velocity(pipe, noise, embeds, t), without, atol=1e-4)


def test_the_probes_one_step_estimate_inverts_the_velocity_and_matches_the_scheduler():
    """``predict_clean`` turns the transformer's velocity into clean latents: handed the true velocity it returns
    the latents exactly, and for any velocity it agrees with the estimate diffusers' own DDIM step reports."""
    from diffusers import CogVideoXDDIMScheduler

    from receler.families.cogvideox import SCHEDULER_2B
    from receler.world import probe

    scheduler = CogVideoXDDIMScheduler(**SCHEDULER_2B)
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 3, 4, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, 4, generator=generator)
    timestep = 99
    seen = []

    def oracle(hidden_states, encoder_hidden_states, timestep, image_rotary_emb, return_dict):
        seen.append(timestep)
        return (scheduler.get_velocity(latents, noise, timestep),)

    sincos = SimpleNamespace(use_rotary_positional_embeddings=False)
    oracle.config = sincos
    pipe = SimpleNamespace(scheduler=scheduler, transformer=oracle)
    estimate = probe.predict_clean(pipe, latents, None, timestep, noise)
    torch.testing.assert_close(estimate, latents, atol=1e-5, rtol=1e-5)
    assert seen[0].tolist() == [timestep, timestep]

    guess = torch.randn(latents.shape, generator=generator)
    pipe.transformer = lambda **kwargs: (guess,)
    pipe.transformer.config = sincos
    scheduler.set_timesteps(30)
    noisy = scheduler.add_noise(latents, noise, torch.tensor([timestep]))
    theirs = scheduler.step(guess, timestep, noisy).pred_original_sample
    torch.testing.assert_close(probe.predict_clean(pipe, latents, None, timestep, noise), theirs)


def test_swap_shape_names_the_next_shape_and_nothing_else():
    from receler.world.probe import next_shape, swap_shape

    assert [next_shape(s) for s in ("circle", "square", "triangle")] == ["square", "triangle", "circle"]
    assert [next_shape(s, 2) for s in ("circle", "square", "triangle")] == ["triangle", "circle", "square"]

    assert swap_shape("a red circle moving left on a gray background") == "a red square moving left on a gray background"
    assert swap_shape("a blue triangle moving up on a black background") == "a blue circle moving up on a black background"
    assert swap_shape("a cyan square moving right and a red triangle moving down on a gray background") == (
        "a cyan triangle moving right and a red circle moving down on a gray background")


@requires_bundled_model
def test_shape_word_influence_is_zero_for_a_transformer_deaf_to_the_caption(bundled_pipe, monkeypatch):
    from receler.world.probe import shape_word_influence

    heard = shape_word_influence(bundled_pipe, num_videos=6, starts=(29, 6))
    assert list(heard) == [32, 799]
    assert heard[799] > 0.02  # at high noise the caption is all the model has to go on

    transformer = bundled_pipe.transformer
    forward = transformer.forward
    monkeypatch.setattr(transformer, "forward", lambda encoder_hidden_states, **kwargs: forward(
        encoder_hidden_states=torch.zeros_like(encoder_hidden_states), **kwargs))
    deaf = shape_word_influence(bundled_pipe, num_videos=6, starts=(29, 6))
    assert deaf == {32: 0.0, 799: 0.0}


@requires_bundled_model
def test_a_transformer_that_copies_its_input_redraws_nothing(bundled_pipe, monkeypatch):
    from receler.world import probe

    heard = probe.shape_redraw(bundled_pipe, num_videos=6, starts=(29, 12))
    assert list(heard) == [32, 599]
    for reading in heard.values():
        assert 0 <= reading["redrawn"] <= 1 and set(reading["redrawn_per_shape"]) <= {"circle", "square", "triangle"}
        assert reading["start"] > 0.05  # two shapes' latents differ where they are drawn

    # An estimate that is the input's own clean latents is exactly as far from the named shape as the input, and
    # decodes to the shape it was, not the one named.
    monkeypatch.setattr(probe, "predict_clean", lambda pipe, latents, *args: latents)
    copied = probe.shape_redraw(bundled_pipe, num_videos=6, starts=(29,))[32]
    assert copied["error"] == pytest.approx(copied["start"])
    assert copied["start"] == pytest.approx(heard[32]["start"])
    assert copied["redrawn"] <= 1 / 3  # the bundled VAE keeps most shapes, so most read as their own
    # Asked for the shape after next, the start is the distance to that shape: another pair of videos.
    far = probe.shape_redraw(bundled_pipe, num_videos=6, starts=(29,), ahead=2)[32]
    assert far["error"] == pytest.approx(far["start"]) and far["start"] != pytest.approx(copied["start"])
    assert far["redrawn"] <= 1 / 3


@requires_bundled_model
def test_the_probe_reports_every_stage_and_the_classifier_reads_the_truth(tmp_path):
    from receler.world.probe import main

    out, picture = tmp_path / "probe.json", tmp_path / "probe.png"
    rows = main(["--videos", "6", "--starts", "28", "--output", str(out), "--picture", str(picture)])
    # Gaussian noise of std s added to the latents is s away from them (RMS), wherever one looks.
    for row in rows:
        if row["stage"].startswith("vae + noise"):
            assert row["latent_error"] == pytest.approx(float(row["stage"].split()[-1]), rel=0.15)
    assert [r["stage"] for r in rows][:2] == ["truth", "vae"] and rows[-1]["stage"] == "generated"
    stages = [r["stage"] for r in rows]
    schedule = world_model.load_world_pipeline().scheduler
    schedule.set_timesteps(30)
    for index in (29, 27):  # the default --predict_at
        assert f"predicted from t={int(schedule.timesteps[index])}" in stages
    assert rows[0] == {"stage": "truth", "color": 1.0, "shape": 1.0, "direction": 1.0,  # ground truth reads right
                       "shape_first_frame": 1.0, "shape_later_frames": 1.0,
                       "shape_per_shape": {"circle": 1.0, "square": 1.0, "triangle": 1.0}}  # 6 videos hold all three
    written = json.loads(out.read_text())
    assert written["rows"] == rows
    assert written["world"] == {"position_grid": 1, "shape_size": None}  # the bundled model's: the plain world
    assert set(written["shape_word_influence"]) == {str(int(schedule.timesteps[i])) for i in (29, 27, 24, 18, 12, 6)}
    assert set(written["shape_redraw"]) == {str(int(schedule.timesteps[i])) for i in (29, 27, 24, 18, 12)}
    assert set(written["shape_redraw_after_next"]) == set(written["shape_redraw"])

    # A circle and a square differ in their corners (1 - pi/4 = 21% of the box), a triangle from either in at
    # least 29% of it, so the circle / square pair is the closest in any code that keeps the shapes.
    distances = written["shape_distances"]
    assert set(distances) == {"circle / square", "circle / triangle", "square / triangle", "circle / another colour"}
    assert 0 < distances["circle / square"] < min(distances["circle / triangle"], distances["square / triangle"])
    # A new colour changes every pixel of the circle, a square only its corners.
    assert distances["circle / another colour"] > distances["circle / square"]
    # Moving a shape further moves its latents further (the classifier's shapes are 19 px: 2 px is a tenth).
    shifts = written["shift_distances"]
    assert list(shifts) == ["1", "2", "4"] and 0 < shifts["1"] < shifts["2"] < shifts["4"]

    # The picture: a row of 64 px tiles (2 px apart) per stage, one tile per video; the first tile of the first row
    # is the middle frame of the first ground-truth video.
    image = np.asarray(Image.open(picture).convert("RGB"))
    assert image.shape[0] == len(rows) * 66 + 2
    label_width = image.shape[1] - 6 * 66 - 2
    truth = make_dataset(6, seed=777, two_shape_prob=0.0)[0][1]
    assert np.array_equal(image[2:66, label_width + 2 : label_width + 66], truth[len(truth) // 2])


def test_the_probe_reads_the_first_frames_shape_apart_from_the_later_frames():
    from dataclasses import replace

    from receler.world.probe import accuracies, table
    from receler.world.scenes import Scene, ShapeSpec, render_video

    scenes = [Scene((ShapeSpec("red", "circle", "right"),), "gray"), Scene((ShapeSpec("blue", "triangle", "up"),),
                                                                            "black")]
    captions = [scene.caption() for scene in scenes]
    videos = []
    for index, scene in enumerate(scenes):
        right = render_video(scene, seed=index)
        wrong = render_video(replace(scene, shapes=[replace(scene.shapes[0], shape="square")]), seed=index)
        videos.append(np.concatenate([right[:1], wrong[1:]]))  # the first frame right, the 8 others a square
    row = accuracies(videos, captions)
    assert row["shape_first_frame"] == 1.0 and row["shape_later_frames"] == 0.0
    assert row["shape"] == 0.0  # the majority over frames
    videos[1] = render_video(scenes[1], seed=1)  # now wholly right: 9 of the 16 later frames
    row = accuracies(videos, captions)
    assert row["shape_first_frame"] == 1.0 and row["shape_later_frames"] == 8 / 16
    assert "| 100% / 50% |" in table([{"stage": "x", **row}])


def test_shift_video_draws_the_scene_where_the_world_would_draw_it_moved():
    from receler.world.probe import shift_video
    from receler.world.scenes import BACKGROUNDS, COLORS, shape_mask

    def drawn_at(x: int) -> np.ndarray:  # a triangle at column x in every frame, drawn by hand
        video = np.empty((9, 64, 64, 3), np.uint8)
        video[:] = BACKGROUNDS["black"]
        for frame in video:
            frame[10:29, x : x + 19][shape_mask("triangle", 19)] = COLORS["cyan"]
        return video

    assert np.array_equal(shift_video(drawn_at(20), 3), drawn_at(23))  # room on the right: moved right
    assert np.array_equal(shift_video(drawn_at(45), 2), drawn_at(43))  # touches the right border: moved left
    with pytest.raises(ValueError, match="no room"):
        shift_video(drawn_at(20), 30)
