"""What only LTX-Video has (everything shared is tested for every registered family elsewhere): erasers at the
same paths as CogVideoX's, told apart by the eraser config; frames of 8k+1 and sizes in multiples of 32; the
2B preset at 121 x 512 x 768 in the memory estimator."""

import json

import pytest
import torch

from receler.checkpoint import CheckpointError, load_erasers
from receler.erasers.utils import iter_erasers
from receler.errors import UserError
from receler.families import get_family
from receler.tiny import build_tiny_pipeline


@pytest.mark.parametrize("eraser_family, model_family", [("ltx_video", "cogvideox"), ("cogvideox", "ltx_video")])
def test_erasers_at_the_same_paths_are_told_apart_by_their_config(eraser_family, model_family, tmp_path, make_eraser):
    folder = make_eraser(tmp_path / "eraser", eraser_family, scale=0.1, rank=4)
    assert json.loads((folder / "eraser_config.json").read_text())["model_family"] == eraser_family
    assert get_family(eraser_family).layout.module_name(0) == get_family(model_family).layout.module_name(0)
    pipe = build_tiny_pipeline(model_family, seed=0)
    with pytest.raises(CheckpointError, match=get_family(eraser_family).display_name):
        load_erasers(pipe.transformer, get_family(model_family).layout, folder)
    assert not list(iter_erasers(pipe.transformer))


def test_frames_and_sizes_follow_the_vae():
    family = get_family("ltx_video")
    family.check_frames(121)
    family.check_size(512, 768)
    with pytest.raises(UserError, match=r"8k\+1 \(e.g. 113 or 121\)"):
        family.check_frames(117)  # valid for the 4x families, not for LTX-Video's 8x temporal compression
    with pytest.raises(UserError, match="multiples of 32"):
        family.check_size(480, 720)


def test_estimator_preset_for_ltx_video_2b(capsys):
    from receler.estimate_memory import main

    report = main(["--preset", "ltx-video-2b", "--gradient_checkpointing"])
    shape = report["shape"]
    assert (report["settings"]["num_frames"], shape["video_tokens"], shape["text_tokens"]) == (None, 16 * 16 * 24, 128)
    assert shape["blocks"] == 28 and shape["width"] == 2048 and not shape["joint_text"]
    assert "121 frames x 512x768 = 6144 video tokens (+128 text)" in capsys.readouterr().out
    # bf16 weights plus the float32 erasers and AdamW state of rank 128 on 28 blocks of width 2048
    erasers = 28 * (2 * 2048 * 128 + 128 + 2048)
    assert report["estimate"]["weights"] == 2 * shape["params"]
    assert report["estimate"]["erasers_and_adamw"] == 16 * erasers


def test_prompt_conditioning_carries_its_padding_mask():
    """Padding tokens are masked in LTX-Video's cross-attention: a prompt's conditioning carries its mask."""
    family = get_family("ltx_video")
    pipe = build_tiny_pipeline("ltx_video", seed=0)
    cond = family.encode_prompts(pipe, ["a naked woman", "nudity on the beach at night"], "cpu")
    ids = [family.prompt_token_ids(pipe, p) for p in ("a naked woman", "nudity on the beach at night")]
    expected = torch.tensor([[t != pipe.tokenizer.pad_token_id for t in row] for row in ids])
    assert torch.equal(cond["encoder_attention_mask"].bool(), expected)
    assert cond["encoder_hidden_states"].shape[:2] == expected.shape
