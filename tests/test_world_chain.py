"""scripts/world_model_chain.sh: the chain of runs that made the best world model, as one command.

The chain takes hours, so these tests read its dry run (the commands it would run) and check each link against
the command the docs give for that run: the script must rebuild what the docs measured, flag for flag.
"""

import importlib.util
import os
import re
import shutil
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ROOT / "scripts" / "world_model_chain.sh"
DOCS = ROOT / "docs" / "world_benchmark.md"
# The documented runs the chain's links reproduce, in order.
DOCUMENTED_RUNS = ["world-v4", "world-v5p", "world-v6", "world-v7s8b", "world-v9A", "world-v11f", "world-v12fv",
                   "world-v13lf"]
# Where the chain and the documented runs differ on purpose: folders, and the device (a flag the docs leave out).
PLACES = {"output_dir", "state_dir", "device"}


def script_module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv):
    return script_module("train_world_model").parse_args(argv)


def dry_run(tmp_path, **env):
    result = subprocess.run(
        ["bash", str(CHAIN)], capture_output=True, text=True, check=True,
        env={**os.environ, "DRY_RUN": "1", "STATE_DIR": str(tmp_path / "state"), "OUT_DIR": str(tmp_path / "out"),
             "SNAPSHOT_DIR": str(tmp_path / "snapshot"), **env},
    )
    return result.stdout.splitlines()


def is_link(line):
    """A training run of the chain (not the refined model's evaluation)."""
    return "scripts/train_world_model.py" in line and "--evaluate_only" not in line


def training_args(line, script="scripts/train_world_model.py"):
    words = shlex.split(line)
    return words[words.index(script) + 1:]


def documented_command(run, script="scripts/train_world_model.py", flag="--output_dir"):
    """The docs' ``script`` command whose ``flag`` is runs/<run>, its continuation lines joined."""
    lines = DOCS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if script in line and re.search(rf"{flag} runs/{run}\s", line))
    command = lines[start]
    while command.endswith("\\"):
        start += 1
        command = command[:-1] + " " + lines[start].strip()
    return command


def comparable(namespace):
    return {key: value for key, value in vars(namespace).items() if key not in PLACES}


def test_each_link_is_the_documented_run(tmp_path):
    links = [line for line in dry_run(tmp_path) if is_link(line)]
    assert len(links) == len(DOCUMENTED_RUNS)
    for link, run in zip(links, DOCUMENTED_RUNS):
        ours = parse_args(training_args(link))
        theirs = parse_args(training_args(documented_command(run)))
        assert comparable(ours) == comparable(theirs), run
        assert ours.resume and ours.state_dir == str(tmp_path / "state")
    steps = [parse_args(training_args(link)).transformer_steps for link in links]
    assert steps == sorted(set(steps)), "each link must stretch the schedule further"


def test_the_vae_comes_from_the_source_folder_with_the_robust_phase_left(tmp_path):
    lines = dry_run(tmp_path, VAE_SOURCE="some/model")
    assert f"cp -r some/model/text_encoder some/model/vae {tmp_path}/state/vae_stage/" in lines
    assert any('"phases": ["frames", "clips", "finetune"]' in line for line in lines)
    # a state that already has its VAE stage is not overwritten
    (tmp_path / "state" / "vae_stage").mkdir(parents=True)
    (tmp_path / "state" / "vae_stage" / "phases.json").write_text("{}")
    assert not any(line.startswith("cp ") for line in dry_run(tmp_path))


def test_a_link_whose_model_exists_is_skipped(tmp_path):
    done = tmp_path / "out" / "05000-rotary"
    done.mkdir(parents=True)
    (done / "training_summary.json").write_text("{}")
    lines = dry_run(tmp_path, DEVICE="cuda", THREADS="2")
    links = [line for line in lines if is_link(line)]
    assert f"# {done} holds a model: skipped" in lines
    assert len(links) == len(DOCUMENTED_RUNS) - 1
    # (parsed by hand: the training script refuses --device cuda on a machine without one)
    runs = [line for line in lines if line.startswith("python ")]
    assert len(runs) == len(links) + 2  # and the decoder's refinement, then its evaluation
    assert all(line.endswith(" --device cuda") or " --device cuda " in line for line in runs)
    assert all(" --threads 2 " in line for line in runs)
    assert lines[-1] == f"# the chain's model: {tmp_path}/out/44000-all-refined"
    # A refined model that exists is not refined again.
    (tmp_path / "out" / "44000-all-refined").mkdir(parents=True)
    (tmp_path / "out" / "44000-all-refined" / "training_summary.json").write_text("{}")
    assert not any("refine_world_decoder.py" in line for line in dry_run(tmp_path))


def test_the_decoder_refinement_is_the_documented_one(tmp_path):
    lines = dry_run(tmp_path)
    refine = next(line for line in lines if "scripts/refine_world_decoder.py" in line)
    evaluate = next(line for line in lines if "--evaluate_only" in line)
    script = "scripts/refine_world_decoder.py"
    parse = script_module("refine_world_decoder").parse_args
    ours = parse(training_args(refine, script))
    theirs = parse(training_args(documented_command("world-chain/44000-all", script, "--model_dir"), script))
    places = {"model_dir", "output_dir", "device", "threads"}
    assert {k: v for k, v in vars(ours).items() if k not in places} == \
        {k: v for k, v in vars(theirs).items() if k not in places}
    assert ours.model_dir == f"{tmp_path}/out/44000-all" and ours.output_dir == f"{tmp_path}/out/44000-all-refined"
    assert training_args(evaluate)[:2] == ["--output_dir", ours.output_dir]  # the refined model is what is scored


def fake_state(state_dir, step):
    (state_dir / "vae_stage" / "vae").mkdir(parents=True)
    (state_dir / "vae_stage" / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(1000))
    (state_dir / "vae_stage" / "phases.json").write_text('{"phases": ["frames", "clips", "finetune", "robust"]}')
    torch.save({"step": step, "transformer": {"w": torch.randn(5)},
                "ema": {"w": torch.randn(5), "count": torch.tensor([70000], dtype=torch.int64)},
                "optimizer": {"state": {0: {"exp_avg": torch.randn(5)}}}, "generator": torch.arange(3)},
               state_dir / "transformer_state.pt")


def chain(tmp_path, *argv, **env):
    """The chain for real, with a stand-in for the training script: the script's own Python (python -c reads the
    state's step, python - compacts it) runs, a training command is only printed."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$1" in -c|-) exec {sys.executable} "$@";; esac\necho "trained: $*"\n')
    python.chmod(0o755)
    return subprocess.run(
        ["bash", str(CHAIN), *argv], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHON": str(python), "STATE_DIR": str(tmp_path / "state"), "OUT_DIR": str(tmp_path / "out"),
             "SNAPSHOT_DIR": str(tmp_path / "snapshot"), "VAE_SOURCE": str(ROOT / "models" / "world-cogvideox"), **env},
    )


def test_a_saved_snapshot_continues_the_chain_where_it_stopped(tmp_path):
    fake_state(tmp_path / "state", 9000)
    saved = chain(tmp_path, "save")
    assert saved.returncode == 0, saved.stderr
    assert f"# saved the chain's state at step 9000 to {tmp_path}/snapshot" in saved.stdout
    for name in ("phases.json", "vae/diffusion_pytorch_model.safetensors"):
        original = tmp_path / "state" / "vae_stage" / name
        assert (tmp_path / "snapshot" / name).read_bytes() == original.read_bytes(), name
    # The state is kept compact: the averaged weights for both, rounded to float16; no optimizer; the step and random
    # stream as they were.
    full = torch.load(tmp_path / "state" / "transformer_state.pt", weights_only=True)
    compact = torch.load(tmp_path / "snapshot" / "transformer_state.pt", weights_only=True)
    rounded = full["ema"]["w"].to(torch.float16)
    assert compact["transformer"]["w"].dtype == torch.float16 and torch.equal(compact["transformer"]["w"], rounded)
    assert torch.equal(compact["ema"]["w"], rounded)
    assert torch.equal(compact["ema"]["count"], full["ema"]["count"])  # integers are kept as they are
    assert compact["optimizer"] is None and compact["step"] == 9000 and torch.equal(compact["generator"], full["generator"])
    # Another session: runs/ is gone, the snapshot was committed.
    shutil.rmtree(tmp_path / "state")
    result = chain(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    trained = [line for line in lines if line.startswith("trained: ") and is_link(line)]
    # 5000 and 7500 are behind step 9000; the link to 14000 continues from it, and the rest follow.
    assert [parse_args(line.split()[2:]).transformer_steps for line in trained] == [
        14000, 20000, 26000, 32000, 38000, 44000]
    assert sum("past this link: skipped" in line for line in lines) == 2
    restored = tmp_path / "state"
    assert (restored / "transformer_state.pt").read_bytes() == (tmp_path / "snapshot" / "transformer_state.pt").read_bytes()
    assert (restored / "vae_stage" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (restored / "vae_stage" / "text_encoder" / "config.json").is_file()  # the text encoder from VAE_SOURCE


def test_a_snapshot_at_a_links_end_writes_that_links_model(tmp_path):
    # A finished chain's snapshot (step 44000) on a machine without runs/: the last link is not skipped but run again,
    # training no step, so that its model is written; every earlier link is past and skipped.
    fake_state(tmp_path / "state", 44000)
    assert chain(tmp_path, "save").returncode == 0
    shutil.rmtree(tmp_path / "state")
    result = chain(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    trained = [parse_args(line.split()[2:]) for line in lines if line.startswith("trained: ") and is_link(line)]
    assert [args.transformer_steps for args in trained] == [44000]
    assert trained[0].output_dir == f"{tmp_path}/out/44000-all" and trained[0].resume
    assert sum("past this link: skipped" in line for line in lines) == 7


def test_save_refuses_without_a_state_and_keeps_the_last_snapshot(tmp_path):
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "transformer_state.pt").write_bytes(b"last good")
    refused = chain(tmp_path, "save")
    assert refused.returncode == 2 and "nothing to save" in refused.stderr
    assert (tmp_path / "snapshot" / "transformer_state.pt").read_bytes() == b"last good"
    unknown = chain(tmp_path, "sav")
    assert unknown.returncode == 2 and "unknown argument 'sav'" in unknown.stderr
