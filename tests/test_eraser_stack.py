"""Stacked erasers: the sum of their outputs, equal to one eraser built by hand to compute that sum; refused across
families; and a single eraser loads again over a stack."""

import numpy as np
import pytest
import torch
from PIL import Image

from receler.checkpoint import CheckpointError, load_eraser_stack, load_erasers, save_eraser_folder
from receler.erasers.utils import erasers_disabled
from receler.erasers.wrapper import attach_erasers, collect_erasers
from receler.families import get_family
from receler.tiny import build_tiny_pipeline


def random_eraser(folder, family_name, rank, seed):
    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0)
    torch.manual_seed(seed)
    for eraser in attach_erasers(pipe.transformer, family.layout, rank).values():
        for p in eraser.parameters():
            p.data.normal_(0, 0.2)
    save_eraser_folder(folder, pipe.transformer, family.layout)
    return {k: {n: t.clone() for n, t in e.state_dict().items()}
            for k, e in collect_erasers(pipe.transformer, family.layout).items()}


def output(pipe, family):
    torch.manual_seed(0)
    cond = family.encode_prompts(pipe, ["a red car"], "cpu")
    sampler = family.make_sampler(pipe, 2, 9, 32, 32, "cpu", torch.Generator().manual_seed(0))
    with torch.no_grad():
        return sampler.predict(pipe.transformer, sampler.initial_latents(1), 0, cond)


def test_a_stack_equals_one_eraser_computing_the_weighted_sum(tmp_path):
    family = get_family("cogvideox")
    a = random_eraser(tmp_path / "a", "cogvideox", rank=4, seed=1)
    b = random_eraser(tmp_path / "b", "cogvideox", rank=6, seed=2)
    wa, wb = 0.7, 1.5
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    load_eraser_stack(pipe.transformer, family.layout, [tmp_path / "a", tmp_path / "b"], [wa, wb])
    stacked = output(pipe, family)
    with erasers_disabled(pipe.transformer):
        clean = output(pipe, family)
    assert (stacked - clean).abs().max() > 1e-3  # the stack does something

    # One eraser of rank 4 + 6 whose hidden units are a's and b's side by side, each up projection scaled by its
    # weight: up(gelu(down h)) = wa up_a(gelu(down_a h)) + wb up_b(gelu(down_b h)), biases added the same way.
    combined = {}
    for name in a:
        combined[name] = {
            "down.weight": torch.cat([a[name]["down.weight"], b[name]["down.weight"]]),
            "down.bias": torch.cat([a[name]["down.bias"], b[name]["down.bias"]]),
            "up.weight": torch.cat([wa * a[name]["up.weight"], wb * b[name]["up.weight"]], dim=1),
            "up.bias": wa * a[name]["up.bias"] + wb * b[name]["up.bias"],
        }
    single = build_tiny_pipeline("cogvideox", seed=0)
    load_erasers(single.transformer, family.layout, combined)
    torch.testing.assert_close(stacked, output(single, family), atol=1e-6, rtol=1e-5)

    # A single eraser loads again over the stack (the stack is replaced, not added to).
    load_erasers(pipe.transformer, family.layout, tmp_path / "a")
    only_a = build_tiny_pipeline("cogvideox", seed=0)
    load_erasers(only_a.transformer, family.layout, tmp_path / "a")
    torch.testing.assert_close(output(pipe, family), output(only_a, family))


def test_a_stack_refuses_an_eraser_of_another_family_naming_both(tmp_path):
    random_eraser(tmp_path / "cog", "cogvideox", rank=4, seed=1)
    random_eraser(tmp_path / "wan", "wan", rank=4, seed=2)
    family = get_family("cogvideox")
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    with pytest.raises(CheckpointError) as err:
        load_eraser_stack(pipe.transformer, family.layout, [tmp_path / "cog", tmp_path / "wan"])
    message = str(err.value)
    assert "Wan" in message and "CogVideoX" in message
    assert not collect_erasers(pipe.transformer, family.layout)  # nothing was loaded
    with pytest.raises(CheckpointError, match="2 erasers but 3 weights"):
        load_eraser_stack(pipe.transformer, family.layout, [tmp_path / "cog"] * 2, [1, 1, 1])


def test_the_inference_cli_renders_a_stack_as_the_summed_eraser(tmp_path, tiny_cogvideox_dir):
    import test_cogvideo
    from receler.media import read_video

    a = random_eraser(tmp_path / "a", "cogvideox", rank=4, seed=1)
    b = random_eraser(tmp_path / "b", "cogvideox", rank=4, seed=2)
    family = get_family("cogvideox")
    combined = build_tiny_pipeline("cogvideox", seed=0)
    load_erasers(combined.transformer, family.layout, {
        name: {"down.weight": torch.cat([a[name]["down.weight"], b[name]["down.weight"]]),
               "down.bias": torch.cat([a[name]["down.bias"], b[name]["down.bias"]]),
               "up.weight": torch.cat([0.5 * a[name]["up.weight"], 2.0 * b[name]["up.weight"]], dim=1),
               "up.bias": 0.5 * a[name]["up.bias"] + 2.0 * b[name]["up.bias"]} for name in a})
    save_eraser_folder(tmp_path / "sum", combined.transformer, family.layout)
    common = ["--model_path", str(tiny_cogvideox_dir), "--prompt", "a red car", "--num_frames", "9", "--height", "32",
              "--width", "32", "--num_inference_steps", "2", "--guidance_scale", "1", "--fps", "4"]
    test_cogvideo.main(common + ["--eraser_path", str(tmp_path / "a"), str(tmp_path / "b"), "--eraser_weight", "0.5",
                                 "2", "--output_dir", str(tmp_path / "stacked")])
    test_cogvideo.main(common + ["--eraser_path", str(tmp_path / "sum"), "--output_dir", str(tmp_path / "single")])
    # The frame grids are lossless: the two renders agree to the rounding of float pixels to 8 bits. The mp4 files
    # go through H.264's YUV 4:2:0 round trip, which can turn a 1-level difference into 2.
    stacked, single = (np.asarray(Image.open(tmp_path / name / "a_red_car_grid.png")).astype(int)
                       for name in ("stacked", "single"))
    assert np.abs(stacked - single).max() <= 1
    stacked, = (tmp_path / "stacked").glob("*_erased.mp4")
    single, = (tmp_path / "single").glob("*_erased.mp4")
    assert (read_video(stacked).astype(int) - read_video(single).astype(int)).__abs__().max() <= 2
    with pytest.raises(SystemExit) as exit_info:
        test_cogvideo.main(common + ["--eraser_path", str(tmp_path / "a"), str(tmp_path / "b"), "--eraser_weight",
                                     "1", "2", "3", "--output_dir", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
