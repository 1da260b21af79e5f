"""scripts/refine_world_decoder.py: only the decoder changes, its inputs are what the transformer hands it, and an
interrupted refinement resumes to the weights of an uninterrupted one."""

import importlib.util
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from receler.world import model as world_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "refine_world_decoder.py"
SMALL = ["--model_dir", str(world_model.WORLD_MODEL_DIR), "--videos", "6", "--batch_size", "2", "--threads", "1",
         "--check_videos", "0"]


def load_script():
    spec = importlib.util.spec_from_file_location("refine_world_decoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def vae_tensors(folder: Path) -> dict:
    return load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")


def test_only_the_decoder_changes(tmp_path):
    script = load_script()
    folder = tmp_path / "new" / "refined"  # its parent is made too
    record = script.main(SMALL + ["--output_dir", str(folder), "--steps", "2", "--check_videos", "3"])
    before, after = vae_tensors(world_model.WORLD_MODEL_DIR), vae_tensors(folder)
    assert before.keys() == after.keys()
    decoder = [name for name in before if name.startswith(("decoder.", "post_quant_conv."))]
    others = [name for name in before if name not in decoder]
    assert decoder and others
    assert all(torch.equal(before[name], after[name]) for name in others)  # the encoder, bit for bit
    assert sum(not torch.equal(before[name], after[name]) for name in decoder) > len(decoder) // 2
    for part in ("transformer", "text_encoder"):  # copied unchanged
        for file in (world_model.WORLD_MODEL_DIR / part).iterdir():
            assert (folder / part / file.name).read_bytes() == file.read_bytes()
    summary = (folder / "training_summary.json").read_text()
    assert '"decoder_refinement"' in summary and '"evaluation"' not in summary  # the old scores are not carried over
    assert record["settings"]["steps"] == 2 and record["final_loss"] > 0
    for when in ("before", "after"):  # the VAE check read the reconstructions on both sides of the refinement
        assert 0 <= record[f"reconstructions_{when}"]["shape_accuracy"] <= 1
    assert sorted(p.name for p in folder.parent.iterdir()) == ["refined"]  # no state or staging folder left behind
    world_model.load_world_pipeline(folder)  # still a pipeline folder that loads offline


def test_the_decoder_sees_true_latents_or_the_transformers_estimate():
    script = load_script()
    pipe = world_model.load_world_pipeline()
    args = script.parse_args(SMALL + ["--output_dir", "unused"])
    videos, latents, embeds = script.training_pool(pipe, args)
    assert len(videos) == len(latents) == len(embeds) == 6
    args.clean_share = 1.0
    shown = script.decoder_inputs(pipe, latents, embeds, args, torch.Generator().manual_seed(0))
    assert torch.equal(shown, latents)
    # At t=0 the noise is ~1% of the signal: the estimate must be the latents, up to the transformer's small error.
    args.clean_share, args.max_timestep = 0.0, 0
    shown = script.decoder_inputs(pipe, latents, embeds, args, torch.Generator().manual_seed(0))
    assert not torch.equal(shown, latents)
    assert (shown - latents).pow(2).mean().sqrt() < 0.1 * latents.std()
    # From t up to 999 the estimate is a guess: far further from the latents than at t=0.
    args.max_timestep = 999
    far = script.decoder_inputs(pipe, latents, embeds, args, torch.Generator().manual_seed(0))
    assert (far - latents).pow(2).mean().sqrt() > 2 * (shown - latents).pow(2).mean().sqrt()


def test_denoised_inputs_end_where_the_sampler_ends():
    script = load_script()
    pipe = world_model.load_world_pipeline()
    args = script.parse_args(SMALL + ["--output_dir", "unused", "--inputs", "denoised", "--clean_share", "0"])
    _, latents, embeds = script.training_pool(pipe, args)
    pipe.scheduler.set_timesteps(world_model.NUM_INFERENCE_STEPS)
    last = int(pipe.scheduler.timesteps[-1])
    # Only the sampler's last step is at or below max_timestep 0, and the last DDIM step (alpha set to one) lands on
    # the transformer's estimate of the clean latents: the same as a one-step estimate from that timestep.
    args.max_timestep = 0
    shown = script.decoder_inputs(pipe, latents, embeds, args, torch.Generator().manual_seed(0))
    draws = torch.Generator().manual_seed(0)
    torch.randint(0, 1, (len(latents),), generator=draws)  # the timesteps the estimate mode would use
    noise = torch.randn(latents.shape, generator=draws)
    t = torch.full((len(latents),), last)
    noisy = pipe.scheduler.add_noise(latents, noise, t)
    with torch.no_grad():
        velocity = pipe.transformer(hidden_states=noisy, encoder_hidden_states=embeds, timestep=t,
                                    image_rotary_emb=world_model.rotary_embedding(pipe, latents.shape, "cpu"),
                                    return_dict=False)[0]
    alpha = pipe.scheduler.alphas_cumprod[last]
    expected = alpha.sqrt() * noisy - (1 - alpha).sqrt() * velocity  # x0 from a v-prediction
    torch.testing.assert_close(shown, expected, rtol=1e-4, atol=1e-4)
    # With timesteps up to 400 eligible, the draw starts the sampler earlier: several steps, another result.
    args.max_timestep = 400
    longer = script.decoder_inputs(pipe, latents, embeds, args, torch.Generator().manual_seed(0))
    assert not torch.allclose(longer, shown)


def test_an_interrupted_refinement_resumes_to_the_same_decoder(tmp_path, monkeypatch):
    script = load_script()
    script.main(SMALL + ["--output_dir", str(tmp_path / "straight"), "--steps", "3"])

    real_lr = script.cosine_lr

    def stop_at_step_one(step, *rest, **kwargs):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # what pkill sends; the step still finishes
        return real_lr(step, *rest, **kwargs)

    monkeypatch.setattr(script, "cosine_lr", stop_at_step_one)
    with pytest.raises(SystemExit) as stopped:
        script.main(SMALL + ["--output_dir", str(tmp_path / "resumed"), "--steps", "3"])
    assert stopped.value.code == 130
    assert (tmp_path / "resumed.state.pt").is_file() and not (tmp_path / "resumed").exists()
    assert torch.load(tmp_path / "resumed.state.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(script, "cosine_lr", real_lr)
    with pytest.raises(SystemExit) as wrong:  # the saved state is of a 3-step run
        script.main(SMALL + ["--output_dir", str(tmp_path / "resumed"), "--steps", "4"])
    assert wrong.value.code == 2
    script.main(SMALL + ["--output_dir", str(tmp_path / "resumed"), "--steps", "3"])
    straight, resumed = vae_tensors(tmp_path / "straight"), vae_tensors(tmp_path / "resumed")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_bad_folders_are_refused_with_the_fix(tmp_path, capsys):
    script = load_script()
    with pytest.raises(SystemExit) as missing:
        script.main(["--model_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert missing.value.code == 2 and "not a world-model folder" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit) as taken:
        script.main(SMALL + ["--output_dir", str(tmp_path / "taken")])
    assert taken.value.code == 2 and "choose a new folder" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_the_loss_weights_the_shapes_pixels(kind):
    script = load_script()
    # One 1-frame, 2x2 clip on a black background (-1) with one white pixel, the shape (bottom right: the world
    # reads the background at the top left), decoded 0.5 off everywhere but on the shape pixel, 1.0 off.
    target = -torch.ones(1, 3, 1, 2, 2)
    target[..., 1, 1] = 1.0
    decoded = target + 0.5
    decoded[..., 1, 1] = 0.0
    errors = {"mse": (1.0, 0.25), "l1": (1.0, 0.5)}[kind]  # (shape pixel, each background pixel)
    weight = 1 + 9.0  # the shape pixel's weight; background pixels weigh 1
    expected = (weight * errors[0] + 3 * errors[1]) / (weight + 3)
    assert script.decoder_loss(decoded, target, kind, 9.0).item() == pytest.approx(expected)
