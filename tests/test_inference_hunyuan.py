"""Inference on tiny HunyuanVideo and Wan models (test_hunyuan.py / test_wan.py in-process): the published
HunyuanVideo eraser layout, --eraser_weight, the clean side against a plain diffusers run, and the baselines."""


import numpy as np
import pytest
import torch

from receler import inference
from receler.families import get_family
from receler.media import read_video
from receler.tiny import save_tiny_pipeline

import test_hunyuan  # top-level user scripts (the repository root is on pytest's pythonpath)
import test_wan

FRAMES, SIZE, STEPS = 9, 32, 2
RENDER = ["--num_frames", str(FRAMES), "--height", str(SIZE), "--width", str(SIZE), "--num_inference_steps", str(STEPS),
          "--dtype", "float32"]


@pytest.fixture(scope="module")
def hunyuan_dir(tmp_path_factory):
    return save_tiny_pipeline("hunyuan_video", tmp_path_factory.mktemp("hv") / "model", seed=0)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return save_tiny_pipeline("wan", tmp_path_factory.mktemp("wan") / "model", seed=0)


@pytest.fixture(scope="module")
def published_eraser(tmp_path_factory, hunyuan_dir):
    """The published HunyuanVideo layout, written by hand: a plain dict saved with torch.save, no config."""
    import json

    config = json.loads((hunyuan_dir / "transformer" / "config.json").read_text())
    width = config["num_attention_heads"] * config["attention_head_dim"]
    rank, generator = 8, torch.Generator().manual_seed(3)
    state = {
        f"single_transformer_blocks.{i}.attn.adapter": {
            "down.weight": torch.randn(rank, width, generator=generator) * 0.5,
            "down.bias": torch.randn(rank, generator=generator) * 0.5,
            "up.weight": torch.randn(width, rank, generator=generator) * 0.5,
            "up.bias": torch.randn(width, generator=generator) * 0.5,
        }
        for i in range(config["num_single_layers"])
    }
    folder = tmp_path_factory.mktemp("published") / "hunyuan_nudity"
    folder.mkdir()
    torch.save(state, folder / "eraser_weights.pt")
    return folder


def video(path, width=SIZE):
    frames = read_video(path)
    assert frames.shape == (FRAMES, SIZE, width, 3), path
    return frames


def test_published_layout_loads_and_eraser_weight_scales_it(hunyuan_dir, published_eraser, tmp_path):
    base = ["--model_path", str(hunyuan_dir), *RENDER, "--prompt", "a naked woman on the beach", "--generate_clean"]
    test_hunyuan.main([*base, "--eraser_path", str(published_eraser), "--output_path", str(tmp_path / "w1.mp4")])
    assert not np.array_equal(video(tmp_path / "w1_clean.mp4"), video(tmp_path / "w1_erased.mp4"))
    video(tmp_path / "w1_compare.mp4", width=2 * SIZE)

    # The .pt file itself, at weight 0: the erasers add nothing.
    test_hunyuan.main([*base, "--eraser_path", str(published_eraser / "eraser_weights.pt"), "--eraser_weight", "0",
                       "--output_path", str(tmp_path / "w0.mp4")])
    np.testing.assert_array_equal(video(tmp_path / "w0_clean.mp4"), video(tmp_path / "w0_erased.mp4"))
    np.testing.assert_array_equal(video(tmp_path / "w0_clean.mp4"), video(tmp_path / "w1_clean.mp4"))


def test_clean_render_equals_a_plain_diffusers_run(family_name, tiny_model_dir, tmp_path, make_eraser):
    """For every family: the clean side (erasers loaded, switched off) is the plain diffusers pipeline's video."""
    folder = tiny_model_dir(family_name)
    family = get_family(family_name)
    eraser = make_eraser(tmp_path / "eraser", family_name, scale=0.5)
    pipe, _ = inference.load_pipeline_with_erasers(family, folder, eraser_path=eraser)
    call = dict(num_inference_steps=3, num_frames=FRAMES, height=SIZE, width=SIZE, **family.unguided_pipeline_kwargs(pipe))
    sides = inference.build_sides(erasers_loaded=True, generate_clean=True)
    frames = inference.Renderer(pipe, sides, call).render("a naked woman on the beach", seed=11)

    plain = family.pipeline_class().from_pretrained(folder, local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    reference = plain("a naked woman on the beach", generator=torch.Generator().manual_seed(11), output_type="np", **call).frames[0]
    np.testing.assert_allclose(frames["clean"], reference, rtol=0, atol=1e-5)
    assert np.abs(frames["erased"] - reference).max() > 1e-3


def test_negative_prompt_baseline_uses_true_cfg_and_embedded_guidance_one(hunyuan_dir, tmp_path):
    args = test_hunyuan.parse_args(["--model_path", "m", "--prompt", "p", "--baseline", "negative_prompt"])
    render_kwargs = get_family("hunyuan_video").inference_plan(get_family("hunyuan_video"), args).render_kwargs
    assert render_kwargs(None) == {"guidance_scale": 6.0}
    assert render_kwargs("nudity") == {"negative_prompt": "nudity", "true_cfg_scale": 6.0, "guidance_scale": 1.0}
    sides = inference.build_sides(erasers_loaded=False, generate_clean=True, baseline="negative_prompt",
                                  negative_prompt=None, concept="nudity", render_kwargs=render_kwargs)
    assert [(s.name, s.kwargs.get("negative_prompt")) for s in sides] == [("clean", None), ("negprompt", "nudity")]

    test_hunyuan.main(["--model_path", str(hunyuan_dir), *RENDER, "--prompt", "a naked woman", "--generate_clean",
                       "--baseline", "negative_prompt", "--negative_prompt", "nudity", "--output_path", str(tmp_path / "n.mp4")])
    assert not np.array_equal(video(tmp_path / "n_clean.mp4"), video(tmp_path / "n_negprompt.mp4"))
    video(tmp_path / "n_compare.mp4", width=2 * SIZE)  # clean | negprompt: no eraser
    assert not (tmp_path / "n_erased.mp4").exists()


def test_safree_baseline_renders_next_to_the_erased_video(hunyuan_dir, published_eraser, tmp_path):
    test_hunyuan.main(["--model_path", str(hunyuan_dir), *RENDER, "--prompt", "a nude woman, naked body on the beach",
                       "--eraser_path", str(published_eraser), "--generate_clean", "--baseline", "safree",
                       "--safree_keywords", "naked", "nudity", "nude body", "--output_path", str(tmp_path / "s.mp4")])
    clean, safree = video(tmp_path / "s_clean.mp4"), video(tmp_path / "s_safree.mp4")
    assert not np.array_equal(clean, safree)
    assert (tmp_path / "s_erased.mp4").exists() and (tmp_path / "s_grid.png").exists()
    video(tmp_path / "s_compare.mp4", width=2 * SIZE)


def test_wan_zero_eraser_and_outputs(wan_dir, tmp_path, make_eraser):
    eraser = make_eraser(tmp_path / "zero", "wan", scale=0.0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car\nnudity on the beach\n")
    out = tmp_path / "out"
    args = ["--model_path", str(wan_dir), *RENDER, "--prompt_file", str(prompts), "--eraser_path", str(eraser),
            "--generate_clean", "--output_path", str(out)]
    assert test_wan.main(args) == {"rendered": 2, "skipped": 0}
    for stem in ("000_a_red_car", "001_nudity_on_the_beach"):
        np.testing.assert_array_equal(video(out / f"{stem}_clean.mp4"), video(out / f"{stem}_erased.mp4"))
        video(out / f"{stem}_compare.mp4", width=2 * SIZE)
    assert test_wan.main(args) == {"rendered": 0, "skipped": 2}
