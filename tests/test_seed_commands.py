"""The seed toolkit's own commands run as written, on tiny models (tests/fixtures/seed_commands.txt holds a copy of
them). Each session runs in a fresh folder where the model paths the commands name hold tiny pipelines of the
same layout (CogVideoX-5b: rotary positions and the DPM solver; cogvideox-2b: sincos positions and DDIM); every
command goes through the script's own ``main(argv)``, in this process."""

import importlib
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "seed_commands.txt"
NOTES_ROOT = "/root/autodl-tmp/"  # the notes' machine; moved into the test folder (see the fixture's header)


def read_sessions(path=FIXTURE) -> dict:
    """``{session: [("file", name, text) | ("command", argv)]}`` from the fixture."""
    sessions, block, current = {}, None, None

    def close():
        if block is None:
            return
        kind, name, lines = block
        text = "\n".join(lines).strip("\n")
        if kind == "file":
            sessions[current].append(("file", name, text + "\n"))
        else:
            sessions[current].append(("command", shlex.split(text.replace("\\\n", " "))))

    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("=== session "):
            close()
            block, current = None, line.split()[2]
            sessions[current] = []
        elif line.startswith("--- "):
            close()
            words = line[4:].split()
            block = (words[0], words[1] if words[0] == "file" else None, [])
        elif block is not None:
            block[2].append(line)
        # lines before the first block (the header) are comments
    close()
    return sessions


def script_main(argv: list):
    """``(main, args)`` of ``[ENV=value ...] python script.py args...``: the script's own main function."""
    while "=" in argv[0] and not argv[0].startswith("-"):
        argv = argv[1:]  # CUDA_VISIBLE_DEVICES=0 and the like: nothing to do on a CPU
    assert argv[0] == "python", argv
    module = argv[1].removesuffix(".py").replace("/", ".")
    return importlib.import_module(module).main, argv[2:]


def run_session(name, folder: Path, monkeypatch) -> list:
    monkeypatch.chdir(folder)
    results = []
    for block in read_sessions()[name]:
        if block[0] == "file":
            (folder / block[1]).write_text(block[2])
            continue
        argv = [a.replace(NOTES_ROOT, f"{folder}/") for a in block[1]]
        main, args = script_main(argv)
        results.append(main(args))
    return results


@pytest.fixture(scope="module")
def seed_models(tmp_path_factory):
    from receler.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("seed_models")
    return {
        "5b": save_tiny_pipeline("cogvideox", root / "CogVideoX-5b", seed=0, rotary=True, scheduler="dpm", num_layers=1),
        "2b": save_tiny_pipeline("cogvideox", root / "cogvideox-2b", seed=0, num_layers=1),
    }


def _link(model: Path, at: Path) -> None:
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(model, target_is_directory=True)


def test_fixture_holds_the_seed_commands():
    sessions = read_sessions()
    assert set(sessions) == {"quick_start", "training_usage", "memory_and_concepts", "notes_training"}
    commands = [b[1] for blocks in sessions.values() for b in blocks if b[0] == "command"]
    assert len(commands) == 8
    assert commands[0][:3] == ["CUDA_VISIBLE_DEVICES=0", "python", "receler/train_unlearning_prompt_only.py"]
    assert "--is_train" in commands[-1] and "True" in commands[-1]  # "--is_train True\" joined as the shell does


@pytest.mark.slow  # 1000 updates, as the command asks (about a minute on one CPU core)
def test_readme_quick_start_trains_then_renders_test_clean_and_erased(tmp_path, seed_models, monkeypatch):
    from receler.media import read_video

    _link(seed_models["5b"], tmp_path / "CogVideoX-5b")
    train, render = run_session("quick_start", tmp_path, monkeypatch)
    eraser = tmp_path / "output" / "nudity_unlearning"
    args = json.loads((eraser / "args.json").read_text())
    resolved = args["resolved"]
    assert resolved["num_frames"] == 21  # --num_frames 24 rounded down to 4k+1, as the diffusers pipeline renders
    assert resolved["prompts"] == ["a scene with nudity", "nudity in the background", "explicit nudity content"]
    assert resolved["dtype"] == "float16" and args["use_cpu_offload"] is True
    assert len((eraser / "preserved_concepts.txt").read_text().splitlines()) == 15 and resolved["beta"] == 1.0
    assert train == {"updates": 10 * 2 * 50, "stopped": "finished"}  # epochs x batches of 2 of 3 prompts x steps
    assert (eraser / "README.md").is_file()

    assert render == {"rendered": 1, "skipped": 0}
    clean, erased = (read_video(tmp_path / "output" / f"test_{side}.mp4") for side in ("clean", "erased"))
    assert clean.shape[0] == 49 and erased.shape == clean.shape
    assert not np.array_equal(clean, erased), "the trained eraser (rank 128, as the command asks) changes the video"
    assert not (tmp_path / "output" / "test").exists()  # a prefix, not a folder


@pytest.mark.slow  # 1000 updates, as the command asks
def test_readme_training_usage_runs_as_written(tmp_path, seed_models, monkeypatch):
    _link(seed_models["5b"], tmp_path / "CogVideoX-5b")
    (summary,) = run_session("training_usage", tmp_path, monkeypatch)
    assert summary == {"updates": 1000, "stopped": "finished"}
    assert (tmp_path / "output" / "eraser_weights.safetensors").is_file()


def test_readme_memory_estimates_and_preserved_concepts_run_as_written(tmp_path, seed_models, monkeypatch, capsys):
    _link(seed_models["5b"], tmp_path / "CogVideoX-5b")
    first, second, third, concepts = run_session("memory_and_concepts", tmp_path, monkeypatch)
    out = capsys.readouterr()
    assert "21 frames" in out.out and "--num_frames 24" in out.err  # rounded, and the warning names both counts
    assert first["settings"]["batch_size"] == 2 and first["settings"]["dtype"] == "float16"
    assert second["recommendation"] is not None and third["recommendation"] is not None
    chosen = (tmp_path / "preserved_concepts.txt").read_text().splitlines()
    assert len(chosen) == 15 and len(concepts) == 15 and not any("nud" in c for c in chosen)
    assert "--model_path" in out.err  # the fallback says what a model would add


def test_engineers_notes_training_command_runs_as_written(tmp_path, seed_models, monkeypatch):
    _link(seed_models["2b"], tmp_path / "models" / "cogvideox-2b")
    data = tmp_path / "T2VUnlearning" / "evaluation" / "data"
    data.mkdir(parents=True)
    rows = [(f"photo {i} of nudity on a beach", f"photo {i} of a dressed person on a beach") for i in range(10)]
    (data / "10prompt_pairs.csv").write_text("prompt,normal prompt\n" + "".join(f"{a},{b}\n" for a, b in rows))
    (summary,) = run_session("notes_training", tmp_path, monkeypatch)
    assert summary == {"updates": 10 * 50, "stopped": "finished"}
    eraser = tmp_path / "T2VUnlearning" / "adapter" / "10prompt_50step_1epoch_cogvideox2b_nudity_erasure"
    args = json.loads((eraser / "args.json").read_text())
    assert args["target_concept"] == "nudity" and args["num_epochs"] == 1 and args["generate_type"] == "t2v"
    assert args["resolved"]["num_frames"] == 17 and args["resolved"]["beta"] == 0.0 and args["eta"] == 7.0
    assert len(args["resolved"]["prompts"]) == 10
