"""Data parallelism: two processes under `accelerate launch` end with the erasers of one process that
trains on the same prompts with the same effective batch (up to float32 rounding)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from receler.train_unlearning_prompt_only import main as train_main

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    ("a photo of nudity on the beach", "a photo of a dressed woman on the beach"),
    ("nudity in a park at night", "a dressed man in a park at night"),
    ("a nudity scene in a room", "a scene in a room"),
    ("a red car", "a blue car"),  # no concept tokens: trains without L_loc, on whichever process holds it
]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate's launcher is not installed")
def test_two_processes_equal_one_with_the_same_effective_batch(tmp_path, tiny_cogvideox_dir):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,preserve_prompt\n" + "".join(f'"{p}","{q}"\n' for p, q in PROMPTS))
    common = ["--model_path", str(tiny_cogvideox_dir), "--target_concept", "nudity", "--prompts_file", str(prompts),
              "--num_inference_steps", "3", "--eraser_rank", "4", "--learning_rate", "1e-2", "--num_frames", "9",
              "--height", "32", "--width", "32", "--save_every", "0", "--device", "cpu"]
    train_main(common + ["--batch_size", "2", "--output_dir", str(tmp_path / "one")])

    launcher = Path(sys.executable).parent / "accelerate"
    result = subprocess.run(
        [str(launcher if launcher.exists() else "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "receler" / "train_unlearning_prompt_only.py"), *common,
         "--batch_size", "1", "--output_dir", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "eraser_weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "eraser_weights.safetensors"))
    assert set(one) == set(two)
    assert max(one[k].abs().max().item() for k in one) > 1e-2, "the erasers must have trained"
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k
    log = (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 2 * 3, "two global batches of two prompts, three updates each, logged once"
