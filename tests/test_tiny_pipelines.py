"""The tiny random-weight pipelines: built offline, saved, reloaded by diffusers, and rendered."""

import json

import numpy as np
import torch

from receler.families import get_family
from receler.tiny import build_tiny_pipeline, hunyuan_video, save_tiny_pipeline
from receler.tiny.__main__ import main as tiny_cli
from receler.tiny.hunyuan_video import TINY_PROMPT_TEMPLATE, load_prompt_template
from receler.tiny.tokenizers import WORDS

FRAMES, SIZE = 9, 32


def _render_args(family, pipe):
    """The call arguments each tiny pipeline needs besides prompt, size, steps and generator: the text length
    (and for HunyuanVideo the template saved with the folder, sized for the tiny tokenizer), as the family says."""
    return get_family(family).pipeline_text_kwargs(pipe)


def _render(pipe, seed, **kwargs):
    return pipe(
        "a naked woman on the beach",
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    ).frames


def test_tiny_pipeline_saves_reloads_and_renders(family_name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    family = family_name
    folder = save_tiny_pipeline(family, tmp_path / family, seed=0)
    pipe = get_family(family).pipeline_class().from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    args = _render_args(family, pipe)
    if family == "hunyuan_video":  # the template saved with the folder, as the plain pipeline reads it
        assert args["prompt_template"] == load_prompt_template(folder) == TINY_PROMPT_TEMPLATE

    video = _render(pipe, seed=0, **args)
    assert video.shape == (1, FRAMES, SIZE, SIZE, 3)
    assert np.isfinite(video).all()
    assert video.std() > 0  # not a constant image
    np.testing.assert_array_equal(_render(pipe, seed=0, **args), video)
    assert not np.array_equal(_render(pipe, seed=1, **args), video)

    # The saved folder is the built pipeline: same tokens, same video.
    built = build_tiny_pipeline(family, seed=0)
    built.set_progress_bar_config(disable=True)
    for name in ("tokenizer", "tokenizer_2"):
        if hasattr(pipe, name):
            text = "A naked woman; Zebra é 42"
            assert getattr(pipe, name)(text).input_ids == getattr(built, name)(text).input_ids, name
    # Float noise only (weights loaded from disk may take other kernels): the project's 1e-5 "exactly".
    np.testing.assert_allclose(_render(built, seed=0, **args), video, rtol=0, atol=1e-5)


def test_built_pipeline_is_in_eval_mode(family_name):
    """As from_pretrained returns it: dropout off, so the in-memory pipeline renders like the saved one."""
    pipe = build_tiny_pipeline(family_name)
    assert not any(m.training for m in pipe.components.values() if isinstance(m, torch.nn.Module))


def test_hunyuan_video_template_crop_keeps_exactly_the_prompt():
    pipe = hunyuan_video.build_tiny_hunyuan_video()
    tokenizer, template = pipe.tokenizer, TINY_PROMPT_TEMPLATE["template"]
    crop_start = TINY_PROMPT_TEMPLATE["crop_start"]
    prompt = "nudity on the beach"

    assert len(tokenizer(template.split("{}")[0]).input_ids) == crop_start
    ids = tokenizer(template.format(prompt)).input_ids
    kept = tokenizer.convert_ids_to_tokens(ids[crop_start:])
    assert kept == ["nudity", "\u2581on", "\u2581the", "\u2581beach", "<|eot_id|>"]

    # Through the pipeline: after cropping, the mask covers the prompt and its <|eot_id|> only.
    text_len = hunyuan_video.TEXT_LEN
    _, _, mask = pipe.encode_prompt(prompt, prompt_template=TINY_PROMPT_TEMPLATE, max_sequence_length=text_len)
    assert mask[0].tolist() == [1] * len(kept) + [0] * (text_len - len(kept))


def test_hunyuan_video_tokenizers_keep_words_whole():
    llama, clip = hunyuan_video.build_llama_tokenizer(), hunyuan_video.build_clip_tokenizer()
    for word in WORDS:
        assert len(llama(word, add_special_tokens=False).input_ids) == 1, word
        assert len(llama(" " + word, add_special_tokens=False).input_ids) == 1, word
        assert len(clip(word, add_special_tokens=False).input_ids) == 1, word
    # Anything else still tokenizes, and nothing is unknown.
    ids = llama("Zebra 日本", add_special_tokens=False).input_ids
    assert llama.unk_token_id not in ids and llama.decode(ids) == "Zebra 日本"
    # Trained in-process, yet the same every time (the BPE trainer's hash maps must not decide ties).
    for build, tokenizer in ((hunyuan_video.build_llama_tokenizer, llama), (hunyuan_video.build_clip_tokenizer, clip)):
        assert all(build().get_vocab() == tokenizer.get_vocab() for _ in range(3))


def test_load_prompt_template(tmp_path):
    assert load_prompt_template(tmp_path) is None  # no file: the pipeline's default template
    assert load_prompt_template("hunyuanvideo-community/HunyuanVideo") is None
    (tmp_path / "prompt_template.json").write_text(json.dumps(TINY_PROMPT_TEMPLATE))
    assert load_prompt_template(tmp_path) == TINY_PROMPT_TEMPLATE


def test_cli_writes_a_pipeline_folder(family_name, tmp_path):
    tiny_cli(["--family", family_name, "--output_dir", str(tmp_path), "--seed", "1"])
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] in get_family(family_name).pipeline_classes
    assert (tmp_path / "prompt_template.json").is_file() == (family_name == "hunyuan_video")
