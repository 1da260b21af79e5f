"""The typed training config and train(): the CLI maps one to one onto TrainConfig's fields, validation happens
once (when the config is built), derived values are resolved separately and saved, and training from code
(with or without an already loaded pipeline) writes the same eraser as the CLI."""

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch

from receler.config import ResolvedTraining, TrainConfig, build_parser
from receler.errors import UserError
from receler.train_unlearning_prompt_only import DESCRIPTION, parse_args
from receler.train_unlearning_prompt_only import main as train_main

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ["--model_path", "m", "--target_concept", "nudity", "--output_dir", "o"]


def test_every_field_is_one_option_with_help_and_the_defaults_agree():
    parser = build_parser(DESCRIPTION)
    options = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    shortcuts = {f"shortcut_{flag.lstrip('-')}" for f in fields.values() for flag in f.metadata["shortcuts"]}
    assert set(options) == set(fields) | shortcuts
    for name, f in fields.items():
        assert f.metadata["help"] and options[name].help, name
        assert f"--{name}" in options[name].option_strings
    config = parse_args(REQUIRED)
    for name, f in fields.items():
        if f.default is not dataclasses.MISSING:
            assert getattr(config, name) == f.default, name


def test_aliases_and_shortcuts_of_the_seed_cli():
    assert parse_args(REQUIRED + ["--use_fp16"]).dtype == "float16"
    assert parse_args(REQUIRED + ["--cpu_offload"]).use_cpu_offload
    assert parse_args(REQUIRED + ["--checkpoint_blocks", "3"]).checkpoint_blocks == 3
    assert parse_args(REQUIRED).checkpoint_blocks == "auto"


@pytest.mark.parametrize("flags, needle", [
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--max_steps", "0"], "--max_steps must be at least 1"),
    (["--train_timesteps", "some"], "--train_timesteps must be 'all'"),
    (["--target_concept", " "], "--target_concept is empty"),
])
def test_a_bad_value_fails_when_the_config_is_built(flags, needle):
    with pytest.raises(UserError, match=needle):
        parse_args(REQUIRED + flags)
    values = {k.lstrip("-"): v for k, v in zip((REQUIRED + flags)[::2], (REQUIRED + flags)[1::2])}
    with pytest.raises(UserError, match=needle):  # in code too: the same single check
        TrainConfig(**{k: (int(v) if k in ("batch_size", "max_steps") else v) for k, v in values.items()})


def test_the_config_cannot_change_after_validation():
    config = parse_args(REQUIRED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.beta = 1.0


def _tiny_config(tmp_path, model_dir, name, **overrides):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt,preserve_prompt\n"a photo of nudity","a photo of a dressed man"\n'
                       '"nudity at night","a dressed man at night"\n')
    values = dict(model_path=str(model_dir), target_concept="nudity", prompts_file=str(prompts),
                  output_dir=str(tmp_path / name), num_inference_steps=3, eraser_rank=4, learning_rate=1e-2,
                  num_frames=9, height=32, width=32, save_every=0, batch_size=2)
    return TrainConfig(**{**values, **overrides})


def test_train_from_code_equals_the_cli_and_saves_config_and_resolved(tmp_path, tiny_cogvideox_dir):
    from receler.training import train

    config = _tiny_config(tmp_path, tiny_cogvideox_dir, "code")
    result = train(config)
    argv = [x for k, v in dataclasses.asdict(dataclasses.replace(config, output_dir=str(tmp_path / "cli"))).items()
            if v not in (None, False) for x in ([f"--{k}"] if v is True else [f"--{k}", str(v)])]
    summary = train_main(argv)
    assert summary == result.summary == {"updates": 3, "stopped": "finished"}

    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / n / "eraser_weights.safetensors")) for n in ("code", "cli"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "code" / "args.json").read_text())
    assert {k: saved[k] for k in config.to_dict()} == config.to_dict()  # the config as given: beta still None
    assert config.beta is None and saved["resolved"]["beta"] == 1.0 == result.resolved.beta
    assert saved["resolved"] == result.resolved.to_dict()
    assert ResolvedTraining(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["resolved"].items()}) == result.resolved
    eraser_config = json.loads((tmp_path / "code" / "eraser_config.json").read_text())
    assert eraser_config["train_config"] == config.to_dict() and eraser_config["resolved"] == saved["resolved"]


def test_train_on_a_loaded_pipeline_twice_starts_from_fresh_erasers(tmp_path, tiny_cogvideox_dir):
    """train(config, pipe): the erasers land on that pipeline; a second run on it is the same as a first run."""
    from receler.families import get_family
    from receler.training import train

    from safetensors.torch import load_file

    family = get_family("cogvideox")
    pipe = family.load_pipeline(tiny_cogvideox_dir)
    first = train(_tiny_config(tmp_path, tiny_cogvideox_dir, "first"), pipe=pipe)
    assert first.pipe is pipe and pipe.text_encoder is not None, "the caller's pipeline keeps its text encoder"
    train(_tiny_config(tmp_path, tiny_cogvideox_dir, "second"), pipe=pipe)
    train(_tiny_config(tmp_path, tiny_cogvideox_dir, "loaded"))
    a, b, c = (load_file(str(tmp_path / n / "eraser_weights.safetensors")) for n in ("first", "second", "loaded"))
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert max(float(v.abs().max()) for k, v in a.items() if ".up." in k) > 0, "the erasers trained"


def test_every_entry_point_is_a_cli_with_help(capsys):
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"receler-train", "receler-infer", "receler-eval"} <= set(scripts)
    for name, target in scripts.items():
        module, function = target.split(":")
        main = getattr(importlib.import_module(module), function)
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0, name
        assert "usage:" in capsys.readouterr().out, name


def _seed_named_scripts() -> list:
    from receler.families import all_families

    return (["receler/train_unlearning_prompt_only.py", "receler/estimate_memory.py"]
            + [f.inference.script for f in all_families()])


@pytest.mark.slow
@pytest.mark.parametrize("script", _seed_named_scripts())
def test_seed_named_scripts_run_from_a_checkout(script, tmp_path):
    """As the README documents them: ``python <script> ...`` from the repository root, not installed."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--model_path" in proc.stdout
