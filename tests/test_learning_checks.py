"""An eraser must have something to learn: HunyuanVideo's template crop is counted with the folder's own
tokenizer, a concept prompt the transformer cannot see is refused (training and the attack, every family),
and a run whose unlearning loss stays exactly zero stops without saving an eraser."""

import json

import pytest
import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from receler.families import get_family
from receler.families.hunyuan_video import prompt_template, template_crop_start
from receler.learning_checks import PromptNotSeen, ZeroLossWatch
from receler.tiny import build_tiny_pipeline, save_tiny_pipeline
from receler.tiny.hunyuan_video import TINY_PROMPT_TEMPLATE, build_char_llama_tokenizer, build_llama_tokenizer
from receler.trainer import encode_prompt_set
from tests.test_attack import _tiny_eraser
from tests.conftest import TinyRuns

PROMPTS = TinyRuns.PROMPTS


def _train(tmp_path, model_dir, *extra, name="run"):
    return TinyRuns(tmp_path).train(model_dir, *extra, name=name)

PROMPT = "nudity on the beach"
TEMPLATES = {"tiny": TINY_PROMPT_TEMPLATE["template"], "diffusers": DEFAULT_PROMPT_TEMPLATE["template"]}


def _char_tokenizer_with_eos():
    tokenizer = build_char_llama_tokenizer()
    tokenizer.add_eos_token = True  # an EOS after the text: it follows the prompt, so it is not cropped
    return tokenizer


# Each tokenizer with the tokens a templated PROMPT must keep after the crop, written out by hand.
SPELLED = [("\u2581" if c == " " else c) for c in PROMPT]
TOKENIZERS = {
    "words": (build_llama_tokenizer, ["nudity", "\u2581on", "\u2581the", "\u2581beach", "<|eot_id|>"]),
    "chars": (build_char_llama_tokenizer, SPELLED + ["<|eot_id|>"]),
    "chars_with_eos": (_char_tokenizer_with_eos, SPELLED + ["<|eot_id|>", "<|end_of_text|>"]),
}


@pytest.mark.parametrize("template_name", TEMPLATES)
@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_crop_start_keeps_exactly_the_prompt(tokenizer_name, template_name):
    build, expected = TOKENIZERS[tokenizer_name]
    tokenizer, template = build(), TEMPLATES[template_name]
    crop = template_crop_start(tokenizer, template)
    ids = tokenizer(template.format(PROMPT)).input_ids
    assert tokenizer.convert_ids_to_tokens(ids[crop:]) == expected
    if tokenizer_name == "words" and template_name == "tiny":
        assert crop == TINY_PROMPT_TEMPLATE["crop_start"]  # the number the tiny folders ship with
    if tokenizer_name == "chars" and template_name == "diffusers":
        assert crop != DEFAULT_PROMPT_TEMPLATE["crop_start"]  # 95 is the original tokenizer's count only


def test_a_folder_template_wins_and_a_missing_crop_is_counted():
    pipe = build_tiny_pipeline("hunyuan_video", seed=0, llama_tokenizer="chars")
    counted = template_crop_start(pipe.tokenizer, DEFAULT_PROMPT_TEMPLATE["template"])
    assert prompt_template(pipe) == {**DEFAULT_PROMPT_TEMPLATE, "crop_start": counted}  # no template file
    own = {"template": TINY_PROMPT_TEMPLATE["template"], "crop_start": 7, "max_sequence_length": 16}
    pipe.prompt_template = own
    assert prompt_template(pipe) == own  # the folder's crop_start is taken as written
    pipe.prompt_template = {k: v for k, v in own.items() if k != "crop_start"}
    assert prompt_template(pipe)["crop_start"] == template_crop_start(pipe.tokenizer, own["template"])


@pytest.fixture(scope="module")
def char_hunyuan_dir(tmp_path_factory):
    """A tiny HunyuanVideo folder whose Llama tokenizer is character-level, with no prompt_template.json."""
    folder = save_tiny_pipeline("hunyuan_video", tmp_path_factory.mktemp("chars") / "hunyuan", seed=0,
                                llama_tokenizer="chars")
    assert not (folder / "prompt_template.json").exists()
    return folder


def _error_line(capsys) -> str:
    """The CLI's one-line error (log lines come before it on stderr); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_a_folder_with_another_tokenizer_and_no_template_trains_every_eraser(tmp_path, char_hunyuan_dir, capsys):
    from safetensors.torch import load_file

    summary, out = _train(tmp_path, char_hunyuan_dir, "--save_every", "0")
    assert summary["updates"] == 2 * 3
    log = capsys.readouterr().err  # the CLI logs to stderr
    assert "erasers saved" in log
    assert "do not occur" not in log  # the concept's tokens are among the tokens the transformer sees
    rows = _log(out)
    assert all(r["loss_unlearn"] > 0 and r["grad_norm"] > 0 for r in rows)
    assert any(r["loss_loc"] > 0 for r in rows)  # localization needs the concept inside the visible text
    ups = {k: v for k, v in load_file(str(out / "eraser_weights.safetensors")).items() if k.endswith("up.weight")}
    assert len(ups) == 2 and all(torch.count_nonzero(v) > 0 for v in ups.values())


# Templates that leave the transformer none of the prompt: diffusers' crop of 95 with this tokenizer keeps
# template text and the prompt is truncated away; a crop past the prompt leaves only padding, masked.
HIDING_TEMPLATES = {
    "diffusers_crop_95": (dict(DEFAULT_PROMPT_TEMPLATE), "equals the empty prompt's"),
    "crop_past_the_prompt": (dict(TINY_PROMPT_TEMPLATE, crop_start=200), "hides every text token"),
}


@pytest.mark.parametrize("case", HIDING_TEMPLATES)
def test_a_template_that_hides_the_prompt_is_refused(case, tmp_path, char_hunyuan_dir, capsys):
    import shutil

    template, reason = HIDING_TEMPLATES[case]
    folder = tmp_path / "model"
    shutil.copytree(char_hunyuan_dir, folder)
    (folder / "prompt_template.json").write_text(json.dumps(template))
    with pytest.raises(SystemExit) as exit_info:
        _train(tmp_path, folder)
    assert exit_info.value.code == 2
    err = _error_line(capsys)
    assert err.startswith("error: refusing to train")
    assert all(repr(p) in err for p in PROMPTS) and reason in err
    assert f"prompt_template.json crops the first {template['crop_start']} Llama tokens" in err
    assert not any((tmp_path / "run").glob("eraser_*")) and not (tmp_path / "run" / "checkpoints").exists()

    from evaluation.attack import main as attack_main

    eraser = _tiny_eraser(tmp_path, "hunyuan_video", None)
    with pytest.raises(SystemExit):
        attack_main(["--model_path", str(folder), "--eraser_path", str(eraser), "--prompt", PROMPTS[0],
                     "--target_concept", "nudity", "--detector", "none", "--steps", "2", "--num_frames", "9",
                     "--height", "32", "--width", "32", "--num_inference_steps", "2",
                     "--output_dir", str(tmp_path / "a")])
    err = _error_line(capsys)
    assert err.startswith("error: refusing to attack") and repr(PROMPTS[0]) in err and reason in err


@pytest.mark.parametrize("family_name", ["cogvideox", "wan"])
def test_a_text_encoder_that_ignores_the_prompt_is_refused(family_name):
    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0)
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight.zero_()  # every prompt now encodes alike
    with pytest.raises(PromptNotSeen, match="equals the empty prompt's") as err:
        encode_prompt_set(family, pipe, PROMPTS, None, "nudity", "cpu")
    assert all(repr(p) in str(err.value) for p in PROMPTS) and "text encoder's output" in str(err.value)


@pytest.fixture(scope="module")
def textless_cogvideox_dir(tmp_path_factory):
    """A tiny CogVideoX whose transformer discards its text: its prompts encode differently, its output is the same."""
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    with torch.no_grad():
        pipe.transformer.patch_embed.text_proj.weight.zero_()
        pipe.transformer.patch_embed.text_proj.bias.zero_()
    folder = tmp_path_factory.mktemp("textless") / "cogvideox"
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("max_steps", [None, 2])
def test_a_loss_that_stays_zero_stops_without_saving_an_eraser(max_steps, tmp_path, textless_cogvideox_dir, capsys):
    extra = ["--save_every", "1"] + (["--max_steps", str(max_steps)] if max_steps else [])
    with pytest.raises(SystemExit) as exit_info:
        _train(tmp_path, textless_cogvideox_dir, *extra)
    assert exit_info.value.code == 2
    log = capsys.readouterr().err
    err = log.strip().splitlines()[-1]
    assert err.startswith("error: the unlearning loss was exactly 0") and "learned nothing" in err
    assert log.count("WARNING receler.learning_checks: the unlearning loss of update 1 is exactly 0") == 1
    assert log.count("is exactly 0 for every prompt") == 1  # warned once, at the first update
    rows = _log(tmp_path / "run")
    assert len(rows) == (max_steps or 3)  # the whole first trajectory (3 steps), or up to --max_steps
    assert all(r["loss_unlearn"] == 0.0 and r["grad_norm"] == 0.0 for r in rows)
    assert not any((tmp_path / "run").glob("eraser_*")) and not (tmp_path / "run" / "checkpoints").exists()


def test_the_watch_ends_at_the_first_nonzero_loss():
    watch = ZeroLossWatch()
    watch.observe(0.0, 1)
    assert watch.nothing_learned
    watch.observe(0.25, 2)
    assert not watch.nothing_learned
    watch.finish(get_family("cogvideox"), ["p"])  # no error: the eraser got a gradient at update 2
