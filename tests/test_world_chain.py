"""scripts/world_model_chain.sh: the chain of runs that made the best world model, as one command.

The chain takes hours, so these tests read its dry run (the commands it would run) and check each link against
the command the docs give for that run: the script must rebuild what the docs measured, flag for flag.
"""

import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ROOT / "scripts" / "world_model_chain.sh"
DOCS = ROOT / "docs" / "world_benchmark.md"
# The documented runs the chain's links reproduce, in order.
DOCUMENTED_RUNS = ["world-v4", "world-v5p", "world-v6", "world-v7s8b", "world-v9A", "world-v11f", "world-v12fv",
                   "world-v13lf"]
# Where the chain and the documented runs differ on purpose: folders, and the device (a flag the docs leave out).
PLACES = {"output_dir", "state_dir", "device"}


def parse_args(argv):
    spec = importlib.util.spec_from_file_location("train_world_model", ROOT / "scripts" / "train_world_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args(argv)


def dry_run(tmp_path, **env):
    result = subprocess.run(
        ["bash", str(CHAIN)], capture_output=True, text=True, check=True,
        env={**os.environ, "DRY_RUN": "1", "STATE_DIR": str(tmp_path / "state"), "OUT_DIR": str(tmp_path / "out"),
             **env},
    )
    return result.stdout.splitlines()


def training_args(line):
    words = shlex.split(line)
    return words[words.index("scripts/train_world_model.py") + 1:]


def documented_command(run):
    """The docs' training command for runs/<run>, its continuation lines joined."""
    lines = DOCS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines)
                 if "scripts/train_world_model.py" in line and re.search(rf"--output_dir runs/{run}\s", line))
    command = lines[start]
    while command.endswith("\\"):
        start += 1
        command = command[:-1] + " " + lines[start].strip()
    return command


def comparable(namespace):
    return {key: value for key, value in vars(namespace).items() if key not in PLACES}


def test_each_link_is_the_documented_run(tmp_path):
    links = [line for line in dry_run(tmp_path) if "scripts/train_world_model.py" in line]
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
    links = [line for line in lines if "scripts/train_world_model.py" in line]
    assert f"# {done} holds a model: skipped" in lines
    assert len(links) == len(DOCUMENTED_RUNS) - 1
    # (parsed by hand: the training script refuses --device cuda on a machine without one)
    assert all(" --device cuda " in link and " --threads 2 " in link for link in links)
    assert lines[-1] == f"# the chain's model: {tmp_path}/out/44000-all"
