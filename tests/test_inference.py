"""Inference on tiny CogVideoX models: clean and erased renders on one loaded model, the files they make, prompt
files that resume, v2v / i2v, and the errors a user can cause (through test_cogvideo.py's main, in-process)."""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import CogVideoXPipeline

from receler import inference
from receler.families import get_family
from receler.media import read_video, write_video
from receler.tiny import build_tiny_pipeline, save_tiny_pipeline

import test_cogvideo  # the top-level user script (the repository root is on pytest's pythonpath)

FRAMES, SIZE, STEPS = 9, 32, 2
RENDER = ["--num_frames", str(FRAMES), "--height", str(SIZE), "--width", str(SIZE), "--num_inference_steps", str(STEPS)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_pipeline("cogvideox", tmp_path_factory.mktemp("cog") / "model", seed=0)


@pytest.fixture(scope="module")
def zero_eraser(tmp_path_factory, make_eraser):
    return make_eraser(tmp_path_factory.mktemp("zero") / "eraser", "cogvideox", scale=0.0)


@pytest.fixture(scope="module")
def random_eraser(tmp_path_factory, make_eraser):
    return make_eraser(tmp_path_factory.mktemp("random") / "eraser", "cogvideox", scale=0.5)


def run(model_dir, *extra):
    return test_cogvideo.main(["--model_path", str(model_dir), "--dtype", "float32", *RENDER, *extra])


def assert_video(path, frames=FRAMES, height=SIZE, width=SIZE) -> np.ndarray:
    video = read_video(path)
    assert video.shape == (frames, height, width, 3), path
    return video


def test_zero_eraser_renders_clean_and_erased_identically(model_dir, zero_eraser, tmp_path):
    run(model_dir, "--eraser_path", str(zero_eraser), "--prompt", "a naked woman on the beach", "--generate_clean",
        "--output_path", str(tmp_path / "beach.mp4"))
    clean = assert_video(tmp_path / "beach_clean.mp4")
    erased = assert_video(tmp_path / "beach_erased.mp4")
    np.testing.assert_array_equal(clean, erased)
    compare = assert_video(tmp_path / "beach_compare.mp4", width=2 * SIZE)
    assert compare.shape[2] == 2 * clean.shape[2]
    assert (tmp_path / "beach_grid.png").stat().st_size > 0
    assert json.loads((tmp_path / "prompts.json").read_text()) == {"beach": "a naked woman on the beach"}


def test_nonzero_eraser_changes_the_video_and_only_erased_without_generate_clean(model_dir, random_eraser, tmp_path):
    (tmp_path / "a").mkdir()  # an existing folder holds <slug>_<side>.mp4
    run(model_dir, "--eraser_path", str(random_eraser), "--prompt", "a naked woman", "--generate_clean",
        "--output_path", str(tmp_path / "a"))
    stem = tmp_path / "a" / "a_naked_woman"
    clean = assert_video(f"{stem}_clean.mp4")
    erased = assert_video(f"{stem}_erased.mp4")
    assert np.abs(clean.astype(int) - erased.astype(int)).mean() > 1.0

    run(model_dir, "--eraser_path", str(random_eraser), "--prompt", "a naked woman", "--output_path", str(tmp_path / "b.mp4"))
    assert sorted(p.name for p in tmp_path.glob("b_*")) == ["b_erased.mp4", "b_grid.png"]  # no clean, so no compare


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_clean_render_equals_a_plain_diffusers_run_and_erased_differs(scheduler, random_eraser, tmp_path):
    """The clean side is the base model: a plain CogVideoXPipeline with the same seed gives the same frames,
    also with the DPM solver, which draws fresh noise from the generator at every step."""
    folder = save_tiny_pipeline("cogvideox", tmp_path / "model", seed=0, scheduler=scheduler, rotary=scheduler == "dpm")
    family = get_family("cogvideox")
    pipe, config = inference.load_pipeline_with_erasers(family, folder, eraser_path=random_eraser)
    assert config["eraser_rank"] == 4
    call = dict(num_inference_steps=3, guidance_scale=6.0, use_dynamic_cfg=True, num_frames=FRAMES, height=SIZE,
                width=SIZE, **inference.text_kwargs(family, pipe))
    sides = inference.build_sides(erasers_loaded=True, generate_clean=True)
    frames = inference.Renderer(pipe, sides, call).render("a naked woman on the beach", seed=7)

    plain = CogVideoXPipeline.from_pretrained(folder, local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    reference = plain("a naked woman on the beach", generator=torch.Generator().manual_seed(7), output_type="np", **call).frames[0]
    np.testing.assert_allclose(frames["clean"], reference, rtol=0, atol=1e-5)
    assert np.abs(frames["erased"] - reference).max() > 1e-2


def test_prompt_file_renders_every_row_then_resumes(model_dir, random_eraser, tmp_path):
    prompts = tmp_path / "prompts.csv"
    # Rows 0 and 1: the same prompt, row 0 seeded in the file, row 1 by --seed with the same value.
    prompts.write_text('prompt,seed\n"a red car, fast",5\n"a red car, fast",\nnudity on the beach,9\n')
    out = tmp_path / "videos"
    args = ["--eraser_path", str(random_eraser), "--prompt_file", str(prompts), "--generate_clean", "--seed", "5",
            "--output_path", str(out)]
    assert run(model_dir, *args) == {"rendered": 3, "skipped": 0}

    stems = ["000_a_red_car_fast", "001_a_red_car_fast", "002_nudity_on_the_beach"]
    for stem in stems:
        for side in ("clean", "erased"):
            assert_video(out / f"{stem}_{side}.mp4")
        assert_video(out / f"{stem}_compare.mp4", width=2 * SIZE)
        assert (out / f"{stem}_grid.png").is_file()
    assert json.loads((out / "prompts.json").read_text()) == {
        stems[0]: "a red car, fast", stems[1]: "a red car, fast", stems[2]: "nudity on the beach"
    }
    np.testing.assert_array_equal(read_video(out / f"{stems[0]}_erased.mp4"), read_video(out / f"{stems[1]}_erased.mp4"))
    assert not np.array_equal(read_video(out / f"{stems[0]}_clean.mp4"), read_video(out / f"{stems[2]}_clean.mp4"))

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run(model_dir, *args) == {"rendered": 0, "skipped": 3}  # nothing loads, nothing is rewritten
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # A row with a side missing renders that side only; the original release's "_erase.mp4" counts as erased.
    (out / f"{stems[1]}_clean.mp4").unlink()
    (out / f"{stems[2]}_erased.mp4").rename(out / f"{stems[2]}_erase.mp4")
    assert run(model_dir, *args) == {"rendered": 1, "skipped": 2}
    assert_video(out / f"{stems[1]}_clean.mp4")
    assert (out / f"{stems[1]}_erased.mp4").stat().st_mtime_ns == mtimes[f"{stems[1]}_erased.mp4"]
    assert not (out / f"{stems[2]}_erased.mp4").exists()


def test_v2v_renders_on_the_tiny_model(model_dir, random_eraser, tmp_path):
    source = np.random.default_rng(0).integers(0, 256, size=(11, SIZE, SIZE, 3), dtype=np.uint8)
    write_video(source, tmp_path / "input.mp4", fps=8)
    run(model_dir, "--generate_type", "v2v", "--image_or_video_path", str(tmp_path / "input.mp4"), "--strength", "0.5",
        "--eraser_path", str(random_eraser), "--generate_clean", "--prompt", "a red car", "--output_path", str(tmp_path / "v.mp4"))
    clean = assert_video(tmp_path / "v_clean.mp4")  # 9 of the 11 input frames (4k+1)
    erased = assert_video(tmp_path / "v_erased.mp4")
    assert not np.array_equal(clean, erased)
    assert_video(tmp_path / "v_compare.mp4", width=2 * SIZE)


def test_i2v_needs_an_image_to_video_model_and_renders_on_one(model_dir, random_eraser, tmp_path, capsys):
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    image_args = ["--generate_type", "i2v", "--image_or_video_path", str(tmp_path / "in.png"), "--prompt", "a red car"]
    with pytest.raises(SystemExit) as exit_info:
        run(model_dir, *image_args, "--generate_clean", "--output_path", str(tmp_path / "x.mp4"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "image-to-video model" in err and "Traceback" not in err

    # A tiny image-to-video model: the transformer takes the image latents as extra channels (2 x 4).
    t2v = build_tiny_pipeline("cogvideox", seed=0)
    config = {k: v for k, v in t2v.transformer.config.items() if not k.startswith("_")}
    transformer = CogVideoXTransformer3DModel(**{**config, "in_channels": 8})
    i2v = CogVideoXImageToVideoPipeline(tokenizer=t2v.tokenizer, text_encoder=t2v.text_encoder, vae=t2v.vae,
                                        transformer=transformer, scheduler=t2v.scheduler)
    i2v.save_pretrained(tmp_path / "i2v")
    run(tmp_path / "i2v", *image_args, "--eraser_path", str(random_eraser), "--generate_clean",
        "--output_path", str(tmp_path / "i.mp4"))
    assert not np.array_equal(assert_video(tmp_path / "i_clean.mp4"), assert_video(tmp_path / "i_erased.mp4"))


def user_error(capsys, call) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert err.count("\n") == 1  # one paragraph
    return err


def test_missing_eraser_folder_is_one_clear_message(model_dir, tmp_path, capsys):
    err = user_error(capsys, lambda: run(model_dir, "--eraser_path", str(tmp_path / "nope"), "--prompt", "a cat",
                                         "--output_path", str(tmp_path / "o.mp4")))
    assert "nope" in err and "does not exist" in err
    assert not list(tmp_path.glob("o_*"))


def test_eraser_of_the_other_family_is_one_clear_message(model_dir, tmp_path, capsys, make_eraser):
    hunyuan_eraser = make_eraser(tmp_path / "hunyuan", "hunyuan_video", scale=0.1)
    err = user_error(capsys, lambda: run(model_dir, "--eraser_path", str(hunyuan_eraser), "--prompt", "a cat",
                                         "--output_path", str(tmp_path / "o.mp4")))
    assert "HunyuanVideo eraser" in err and "CogVideoX" in err


def test_other_user_errors(model_dir, tmp_path, capsys):
    base = ["--output_path", str(tmp_path / "o.mp4")]
    assert "nothing to render" in user_error(capsys, lambda: run(model_dir, "--prompt", "a cat", *base))
    assert "exactly one of --prompt" in user_error(capsys, lambda: run(model_dir, "--generate_clean", *base))
    assert "at least 1" in user_error(capsys, lambda: run(model_dir, "--prompt", "a", "--generate_clean", *base, "--num_frames", "0"))
    wan = tiny_folder(tmp_path, "wan")
    prompt_file = write(tmp_path / "p.txt", "a\nb\n")
    capsys.readouterr()
    assert "not a CogVideoX" in user_error(
        capsys, lambda: test_cogvideo.main(["--model_path", str(wan), "--prompt", "a", "--generate_clean", *base])
    )
    assert "--prompt_file renders many" in user_error(
        capsys, lambda: run(model_dir, "--prompt_file", str(prompt_file), "--generate_clean", *base)
    )


def tiny_folder(tmp_path, family):
    return save_tiny_pipeline(family, tmp_path / family, seed=0)


def write(path, text):
    path.write_text(text)
    return path


def test_every_flag_is_explained(family_name):
    family = get_family(family_name)
    script = importlib.import_module(family.inference.script.removesuffix(".py"))  # the family's seed-named script
    parser = script.build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert all(a.help and len(a.help) > 10 for a in flags), [a.dest for a in flags if not a.help]
    names = {o for a in flags for o in a.option_strings}
    for flag in ("--prompt", "--model_path", "--eraser_path", "--eraser_rank", "--output_path", "--guidance_scale",
                 "--num_inference_steps", "--num_frames", "--dtype", "--seed", "--generate_clean", "--height", "--width",
                 "--fps", "--prompt_file", "--use_cpu_offload", "--cpu_offload", "--negative_prompt", "--baseline",
                 "--concept", "--safree_keywords", "--safree_alpha", "--safree_steps", "--safree_projection",
                 "--safree_variant"):
        assert flag in names, flag
    defaults = script.parse_args(["--model_path", "m", "--prompt", "p", "--generate_clean"])
    assert (defaults.num_inference_steps, defaults.guidance_scale, defaults.fps) == (
        family.inference.num_inference_steps, family.inference.guidance_scale, family.inference.fps)
    if family_name == "cogvideox":  # the original release's defaults
        assert {"--generate_type", "--image_or_video_path", "--scheduler"} <= names
        assert (defaults.num_inference_steps, defaults.guidance_scale, defaults.use_dynamic_cfg, defaults.fps) == (50, 6.0, True, 8)
    if family_name == "hunyuan_video":
        assert {"--eraser_weight", "--true_cfg_scale"} <= names
        assert (defaults.num_inference_steps, defaults.fps, defaults.true_cfg_scale) == (30, 15, 6.0)


def test_receler_infer_reads_the_family_from_the_folder(family_name, tiny_model_dir, tmp_path, make_eraser):
    """The entry point renders any family's folder with that family's defaults; the family's script does the same."""
    from receler.infer import main as receler_infer

    folder = tiny_model_dir(family_name)
    eraser = make_eraser(tmp_path / "eraser", family_name, scale=0.0)
    common = [*RENDER, "--dtype", "float32", "--prompt", "a red car", "--eraser_path", str(eraser), "--generate_clean"]
    assert receler_infer(["--model_path", str(folder), *common, "--output_path", str(tmp_path / "a.mp4")]) == {
        "rendered": 1, "skipped": 0}
    script = importlib.import_module(get_family(family_name).inference.script.removesuffix(".py"))
    script.main(["--model_path", str(folder), *common, "--output_path", str(tmp_path / "b.mp4")])
    np.testing.assert_array_equal(read_video(tmp_path / "a_erased.mp4"), read_video(tmp_path / "b_erased.mp4"))
    np.testing.assert_array_equal(read_video(tmp_path / "a_clean.mp4"), read_video(tmp_path / "a_erased.mp4"))


def test_slugs_and_prefixes():
    assert inference.slugify("A Naked woman, on the BEACH!") == "a_naked_woman_on_the_beach"
    assert inference.slugify("日本") == "prompt"
    assert inference.row_prefix(Path("out"), 7, "a cat").name == "007_a_cat"
    jobs, folder, resumable = inference.plan_jobs(prompt="a cat", output_path="x/y.mp4", seed=3)
    assert (jobs[0].prefix, folder, resumable, jobs[0].seed) == (Path("x/y"), Path("x"), False, 3)
