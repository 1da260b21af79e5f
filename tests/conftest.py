"""Shared test helpers: tiny offline pipelines (random weights, built in seconds, nothing downloaded), the test
lanes, and parametrisation over the family registry.

- Lanes: ``pytest`` runs the fast lane; tests marked ``slow`` (end-to-end runs: full CLIs over several epochs,
  subprocesses, the world model's classifier and benchmark) run with ``pytest -m "slow or not slow"`` or
  ``pytest --all`` (what ``.ci/run`` does).
- A test that takes a ``family_name`` argument runs once per registered model family
  (``receler.families.FAMILY_NAMES``), so a new family is tested without editing any test.
"""

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parent.parent

# The world model's own tests (classifier, benchmark, bundled model) are end-to-end by nature.
SLOW_MODULES = ("test_world.py", "test_world_model.py", "test_world_targets.py", "test_world_benchmark.py")


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", help="run the slow lane too (same as -m 'slow or not slow')")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an end-to-end run; left out of the default (fast) lane")
    if config.getoption("--all"):
        config.option.markexpr = "slow or not slow"
    elif not config.option.markexpr:
        config.option.markexpr = "not slow"  # the fast lane, unless -m says otherwise


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_generate_tests(metafunc):
    """``family_name``: every registered family, unless the test parametrises it itself."""
    if "family_name" in metafunc.fixturenames and not any(
        "family_name" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")
    ):
        from receler.families import FAMILY_NAMES

        metafunc.parametrize("family_name", FAMILY_NAMES)


# -------------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="session")
def tiny_cogvideox_dir(tmp_path_factory):
    """A saved tiny CogVideoX pipeline folder (DDIM, sincos positions like CogVideoX-2b)."""
    from receler.tiny import save_tiny_pipeline

    return save_tiny_pipeline("cogvideox", tmp_path_factory.mktemp("tiny") / "cogvideox", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_cogvideox_dir):
    """``tiny_model_dir(family)``: a saved tiny pipeline folder of that family, built once per session."""
    from receler.tiny import save_tiny_pipeline

    folders = {"cogvideox": tiny_cogvideox_dir}

    def get(family):
        if family not in folders:
            folders[family] = save_tiny_pipeline(family, tmp_path_factory.mktemp("tiny") / family, seed=0)
        return folders[family]

    return get


@pytest.fixture
def tiny_cogvideox():
    """A fresh in-memory tiny CogVideoX pipeline (each test may wrap or train it freely)."""
    from receler.tiny.cogvideox import build_tiny_cogvideox

    return build_tiny_cogvideox(seed=0)


# ----------------------------------------------------------------------------------------- training


class TinyRuns:
    """Training on tiny models: a trainer with its batch and sampler, a CLI run, the tensors it wrote."""

    PROMPTS = ["a photo of nudity on the beach", "nudity in a park at night"]
    PRESERVE = ["a photo of a dressed woman on the beach", "a dressed man in a park at night"]
    SIZE = dict(num_frames=9, height=32, width=32)

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path

    def trainer(self, family_name, *flags, pipe=None):
        """``(EraserTrainer, batch of both prompts, sampler of 4 steps)`` on the tiny model of ``family_name``,
        configured by the training CLI's ``flags`` (rank 4, lr 1e-3, beta 1 unless given)."""
        from dataclasses import replace

        from receler.families import get_family
        from receler.tiny import build_tiny_pipeline
        from receler.train_unlearning_prompt_only import parse_args
        from receler.trainer import EraserTrainer, encode_prompt_set, make_batch

        family = get_family(family_name)
        pipe = pipe or build_tiny_pipeline(family_name, seed=0)
        config = parse_args(["--model_path", "unused", "--target_concept", "nudity", "--output_dir", "unused",
                             "--eraser_rank", "4", "--learning_rate", "1e-3", "--num_inference_steps", "4", *flags])
        config = replace(config, beta=1.0 if config.beta is None else config.beta)
        data = encode_prompt_set(family, pipe, self.PROMPTS, self.PRESERVE, "nudity", "cpu")
        trainer = EraserTrainer(family, pipe, config, "cpu")
        batch = make_batch(data, [0, 1], trainer.device, family.token_grid(pipe, **self.SIZE))
        sampler = family.make_sampler(pipe, 4, **self.SIZE, device="cpu", generator=torch.Generator().manual_seed(0))
        return trainer, batch, sampler

    def train(self, model_dir, *flags, name="run"):
        """Run the training CLI in-process on both prompts (with preserve prompts); ``(summary, output folder)``."""
        from receler.train_unlearning_prompt_only import main

        prompts = self.tmp_path / "prompts.csv"
        prompts.write_text("prompt,preserve_prompt\n" + "".join(f'"{p}","{q}"\n' for p, q in zip(self.PROMPTS, self.PRESERVE)))
        out = self.tmp_path / name
        argv = ["--model_path", str(model_dir), "--target_concept", "nudity", "--prompts_file", str(prompts),
                "--output_dir", str(out), "--num_inference_steps", "3", "--eraser_rank", "4",
                "--learning_rate", "1e-2", "--num_frames", "9", "--height", "32", "--width", "32", *flags]
        return main(argv), out

    def concept_render_change(self, family_name, model_dir, eraser_dir) -> float:
        """Largest change the eraser makes to the first prompt's denoised latents (same seed, 3 steps)."""
        from receler.checkpoint import load_erasers
        from receler.families import get_family
        from receler.sampling import sample

        family = get_family(family_name)
        pipe = family.load_pipeline(model_dir)
        cond = family.encode_prompts(pipe, [self.PROMPTS[0]], "cpu")

        def render():
            return sample(family, pipe, cond, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                          progress=False, **self.SIZE)

        clean = render()
        load_erasers(pipe.transformer, family.layout, eraser_dir)
        return float((render() - clean).abs().max())

    @staticmethod
    def tensors(folder) -> dict:
        from safetensors.torch import load_file

        return load_file(str(Path(folder) / "eraser_weights.safetensors"))

    @staticmethod
    def log(folder) -> list:
        return [json.loads(line) for line in (Path(folder) / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture
def tiny_runs(tmp_path):
    return TinyRuns(tmp_path)


@pytest.fixture(scope="session")
def make_eraser():
    """``make_eraser(folder, family_name, scale, rank=4, seed=0)``: an eraser folder for the tiny model of that
    family, with zero (``scale=0``) or random weights."""
    from receler.checkpoint import save_eraser_folder
    from receler.erasers.wrapper import attach_erasers
    from receler.families import get_family
    from receler.tiny import build_tiny_pipeline

    def make(folder, family_name, scale: float, rank: int = 4, seed: int = 0) -> Path:
        family = get_family(family_name)
        pipe = build_tiny_pipeline(family_name, seed=0)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for eraser in attach_erasers(pipe.transformer, family.layout, rank).values():
                for param in eraser.parameters():
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
        return save_eraser_folder(folder, pipe.transformer, family.layout)

    return make
