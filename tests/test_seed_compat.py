"""What the seed toolkit's commands rely on, one behaviour at a time: frame counts rounded down to 4k+1 with a
warning, '...' and comment lines skipped and said, --output_path as a prefix, the eraser folder one level up,
seed 000's flags, the seed's import paths, and --eraser_weight for every family."""

import logging

import numpy as np
import pytest
import torch

from receler.families import get_family


# ------------------------------------------------------------------------------------------ frame counts


def test_frame_counts_round_down_to_4k_plus_1_with_a_warning_naming_both(family_name, caplog):
    """4k+1 for CogVideoX, HunyuanVideo and Wan (24 -> 21), 8k+1 for LTX-Video (24 -> 17)."""
    family = get_family(family_name)
    step = {"ltx_video": 8}.get(family_name, 4)

    def largest_valid_up_to(n):  # by search, not by the formula under test
        return max(v for v in range(1, n + 1) if (v - 1) % step == 0)

    with caplog.at_level(logging.WARNING):
        assert family.round_frames(24) == largest_valid_up_to(24)
    assert "24" in caplog.text and str(largest_valid_up_to(24)) in caplog.text
    counts = (1, 2, 4, 5, 9, 17, 49, 50, 52, 53)
    assert [family.round_frames(n) for n in counts] == [largest_valid_up_to(n) for n in counts]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        family.round_frames(49)
    assert caplog.text == ""  # valid counts pass silently
    from receler.errors import UserError

    with pytest.raises(UserError, match="at least 1"):
        family.round_frames(0)


def test_inference_renders_21_frames_for_24(tiny_model_dir, tmp_path, capsys):
    """Wan's causal VAE decodes the 6 latent frames of 21 (or 24) frames into 21. CogVideoX's pipeline is called
    with 21 (its VAE decodes an even number of latent frames into 4 frames each: 24, whether asked 21 or 24)."""
    import test_cogvideo
    import test_wan
    from receler.media import read_video

    common = ["--prompt", "a cat", "--generate_clean", "--num_frames", "24", "--height", "32", "--width", "32",
              "--num_inference_steps", "2"]
    test_wan.main(["--model_path", str(tiny_model_dir("wan")), *common, "--output_path", str(tmp_path / "wan.mp4")])
    assert read_video(tmp_path / "wan_clean.mp4").shape[0] == 21
    assert "--num_frames 24" in capsys.readouterr().err
    test_cogvideo.main(["--model_path", str(tiny_model_dir("cogvideox")), *common, "--output_path",
                        str(tmp_path / "cog.mp4")])
    assert "21 frames at 32x32" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ prompt files


def test_placeholder_and_comment_lines_are_skipped_and_said(tmp_path, caplog):
    from receler.io_utils import read_lines
    from receler.prompts import load_prompts

    txt = tmp_path / "p.txt"
    txt.write_text("# nudity_prompts.txt\na scene with nudity\n...\n  …  \nnudity in the background\n....\n")
    with caplog.at_level(logging.INFO):
        assert load_prompts(txt).prompts == ["a scene with nudity", "nudity in the background"]
    assert "skipped 1 '#' comment line and 3 '...' placeholder lines" in caplog.text
    csv = tmp_path / "p.csv"
    csv.write_text('prompt,preserve_prompt\na scene with nudity,a scene\n...,\n"a ... pause",x\n')
    assert load_prompts(csv).prompts == ["a scene with nudity", "a ... pause"]  # only a cell that is just '...'
    concepts = tmp_path / "c.txt"
    concepts.write_text("clothing\nfashion\napparel\n...\n")
    assert read_lines(concepts, what="concepts", flag="--x", item="concept") == ["clothing", "fashion", "apparel"]


# ------------------------------------------------------------------------------------------- outputs


def test_output_path_without_mp4_is_a_prefix_unless_it_is_a_folder(tmp_path):
    from receler.inference import plan_jobs

    def prefix(path, **kw):
        jobs, folder, _ = plan_jobs("A beautiful scene", None, path, 42, **kw)
        assert folder == jobs[0].prefix.parent
        return jobs[0].prefix

    assert prefix(str(tmp_path / "output" / "test")) == tmp_path / "output" / "test"  # -> test_clean.mp4
    assert prefix(str(tmp_path / "b.mp4")) == tmp_path / "b"
    (tmp_path / "existing").mkdir()
    assert prefix(str(tmp_path / "existing")) == tmp_path / "existing" / "a_beautiful_scene"
    assert prefix(str(tmp_path / "new") + "/") == tmp_path / "new" / "a_beautiful_scene"
    assert prefix(str(tmp_path / "dir"), folder=True) == tmp_path / "dir" / "a_beautiful_scene"


def test_output_dir_is_a_folder_and_cannot_be_combined_with_output_path(tiny_cogvideox_dir, tmp_path, capsys):
    import test_cogvideo

    base = ["--model_path", str(tiny_cogvideox_dir), "--prompt", "a cat", "--generate_clean", "--num_frames", "5",
            "--height", "32", "--width", "32", "--num_inference_steps", "1"]
    test_cogvideo.main(base + ["--output_dir", str(tmp_path / "videos")])
    assert (tmp_path / "videos" / "a_cat_clean.mp4").is_file()
    with pytest.raises(SystemExit):
        test_cogvideo.main(base + ["--output_dir", "a", "--output_path", "b"])
    assert "not both" in capsys.readouterr().err


def _eraser_folder(path, family_name="cogvideox", scale=0.2, seed=0):
    from receler.checkpoint import save_eraser_folder
    from receler.erasers.wrapper import attach_erasers
    from receler.tiny import build_tiny_pipeline

    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0)
    torch.manual_seed(seed)
    for eraser in attach_erasers(pipe.transformer, family.layout, 4).values():
        torch.nn.init.normal_(eraser.up.weight, std=scale)
    return save_eraser_folder(path, pipe.transformer, family.layout)


def test_an_eraser_path_one_level_below_an_eraser_folder_loads_the_folder(tmp_path, caplog):
    from receler.checkpoint import CheckpointError, resolve_eraser_path

    eraser = _eraser_folder(tmp_path / "output" / "nudity_unlearning")
    with caplog.at_level(logging.WARNING):
        assert resolve_eraser_path(eraser / "cogvideox_nudity_eraser") == eraser
    assert "cogvideox_nudity_eraser does not exist" in caplog.text
    assert resolve_eraser_path(eraser) == eraser
    missing = tmp_path / "nowhere" / "x"
    assert resolve_eraser_path(missing) == missing  # not below an eraser folder: left to fail clearly
    from receler.checkpoint import read_eraser_folder

    with pytest.raises(CheckpointError, match="does not exist"):
        read_eraser_folder(missing)


# ------------------------------------------------------------------------------------------- flags


def test_seed_000_flags_are_aliases_of_the_training_flags():
    from receler.train_unlearning_prompt_only import parse_args

    seed = parse_args(["--concept", "nudity", "--prompt_path", "p.csv", "--model_path", "m", "--eraser_ckpt_path", "o",
                       "--num_epoch", "3", "--generate_type", "t2v"])
    ours = parse_args(["--target_concept", "nudity", "--prompts_file", "p.csv", "--model_path", "m", "--output_dir", "o",
                       "--num_epochs", "3"])
    assert seed == ours
    with pytest.raises(SystemExit):
        parse_args(["--concept", "nudity", "--model_path", "m", "--output_dir", "o", "--generate_type", "i2v"])


def test_seed_000_flags_in_inference(tiny_cogvideox_dir, tmp_path):
    import test_cogvideo

    eraser = _eraser_folder(tmp_path / "eraser")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    args = test_cogvideo.parse_args(["--model_path", str(tiny_cogvideox_dir), "--eraser_ckpt_path", str(eraser),
                                     "--prompt_path", str(prompts), "--generate_type", "t2v", "--concept", "nudity"])
    assert args.eraser_path == [str(eraser)] and args.prompt_file == str(prompts) and args.concept == "nudity"


def test_seed_import_paths_re_export_the_real_objects():
    import receler.localization as localization
    import receler.losses as losses
    import train_unlearning_example
    from receler import concept_reg_cogvideo, unlearning_losses

    for name in ("NegativelyGuidedVelocityLoss", "ConceptPreservationLoss", "MaskLocalizationLoss", "T2VUnlearningLoss",
                 "unlearn_loss", "negative_guidance_target"):
        assert getattr(unlearning_losses, name) is getattr(losses, name)
        assert not hasattr(train_unlearning_example, name) or getattr(train_unlearning_example, name) is getattr(losses, name)
    assert concept_reg_cogvideo.AttnMapsCapture is localization.ConceptAttentionProbe
    assert concept_reg_cogvideo.get_mask is localization.masks_from_attention
    assert concept_reg_cogvideo.EraserOutputsCapture is localization.EraserOutputCapture
    # the seed's loss class computes the formula: mean((o' - (o_0 - eta (o_c - o_0)))^2)
    o_erased, o_c, o_0 = torch.randn(3, 2, 5, 4).unbind(0)
    by_hand = ((o_erased - (o_0 - 7.0 * (o_c - o_0))) ** 2).mean()
    torch.testing.assert_close(unlearning_losses.NegativelyGuidedVelocityLoss(7.0)(o_erased, o_c, o_0), by_hand)


def test_train_unlearning_example_trains_an_eraser(tmp_path, tiny_cogvideox_dir):
    import train_unlearning_example

    out = tmp_path / "example"
    summary = train_unlearning_example.main(["--model_path", str(tiny_cogvideox_dir), "--concept", "nudity",
                                             "--output_dir", str(out), "--max_steps", "2", "--num_inference_steps", "2",
                                             "--eraser_rank", "4"])
    assert summary == {"updates": 2, "stopped": "max_steps"} and (out / "eraser_weights.safetensors").is_file()


def test_decomposed_script_without_is_train_is_one_clear_message(capsys):
    import unlearn_train_cogvideox_decomposed

    with pytest.raises(SystemExit) as exc:
        unlearn_train_cogvideox_decomposed.main(["--concept", "nudity"])
    assert exc.value.code == 2 and "--is_train True" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ eraser weight


def test_eraser_weight_scales_every_familys_eraser_output(family_name, tmp_path):
    """h + w * eraser(h) on each wrapped attention, by hand, for w = 0.5; the loader sets it on every eraser."""
    from receler.checkpoint import load_erasers
    from receler.erasers.wrapper import collect_erasers
    from receler.tiny import build_tiny_pipeline

    family = get_family(family_name)
    eraser_dir = _eraser_folder(tmp_path / family_name, family_name)
    pipe = build_tiny_pipeline(family_name, seed=0)
    load_erasers(pipe.transformer, family.layout, eraser_dir, eraser_weight=0.5)
    blocks = list(family.layout.blocks(pipe.transformer))
    wrappers = [getattr(block, family.layout.attn_attr) for block in blocks]
    assert [w.eraser_weight for w in wrappers] == [0.5] * len(blocks)
    wrapper = wrappers[0]
    h = torch.randn(1, 6, wrapper.adapter.down.in_features)
    torch.testing.assert_close(wrapper._erase(h), h + 0.5 * wrapper.adapter(h))
    assert len(collect_erasers(pipe.transformer, family.layout)) == len(blocks)


@pytest.mark.parametrize("script_name", ["test_cogvideo", "test_wan"])
def test_eraser_weight_zero_renders_the_clean_model_in_every_cli(script_name, tmp_path, tiny_model_dir):
    import importlib

    from receler.media import read_video

    family_name = "cogvideox" if script_name == "test_cogvideo" else "wan"
    eraser = _eraser_folder(tmp_path / "eraser", family_name, scale=0.5)
    script = importlib.import_module(script_name)
    base = ["--model_path", str(tiny_model_dir(family_name)), "--eraser_path", str(eraser), "--prompt", "a cat",
            "--generate_clean", "--num_frames", "5", "--height", "32", "--width", "32", "--num_inference_steps", "2"]
    script.main(base + ["--eraser_weight", "0", "--output_path", str(tmp_path / "w0.mp4")])
    script.main(base + ["--output_path", str(tmp_path / "w1.mp4")])
    clean, zero = read_video(tmp_path / "w0_clean.mp4"), read_video(tmp_path / "w0_erased.mp4")
    assert np.array_equal(clean, zero)
    assert not np.array_equal(read_video(tmp_path / "w1_clean.mp4"), read_video(tmp_path / "w1_erased.mp4"))
