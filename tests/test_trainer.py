"""The trainer on tiny models: gradients reach every eraser weight, the backbone never changes, the
unlearning loss falls, the CLI writes a usable eraser folder, resuming is exact, and bad input, NaNs and
Ctrl-C are handled without losing anything."""

import json
import os
import signal

import pytest
import torch

from receler.families import get_family
from receler.tiny import build_tiny_pipeline
from receler.train_unlearning_prompt_only import main as train_main
from receler.trainer import EraserTrainer

def backbone_state(transformer):
    return {k: v.clone() for k, v in transformer.state_dict().items() if ".adapter." not in k}


def test_two_updates_reach_every_eraser_weight_and_leave_backbone(family_name, tiny_runs):
    trainer, batch, sampler = tiny_runs.trainer(family_name)
    assert batch["found"].all(), "the concept must be located in both prompts for L_loc to run"
    before = backbone_state(trainer.transformer)
    grads = []
    original_step = trainer.optimizer.step

    def record_then_step(*a, **k):
        grads.append({name: {p: w.grad.clone() for p, w in e.named_parameters()}
                      for name, e in zip(trainer.eraser_names, trainer.erasers)})
        return original_step(*a, **k)

    trainer.optimizer.step = record_then_step
    x = sampler.initial_latents(2)
    metrics = []
    for _ in range(2):
        m, _ = trainer.update(sampler, x, 1, batch)
        metrics.append(m)
    assert {"loss_unlearn", "loss_loc", "loss_preserve", "loss", "grad_norm"} <= set(metrics[0])
    # The up projection starts at zero, so the first backward moves only `up` (docs/method.md, "The eraser") ...
    assert all(torch.count_nonzero(g["down.weight"]) == 0 for g in grads[0].values())
    assert all(torch.count_nonzero(g["up.weight"]) > 0 for g in grads[0].values())
    # ... and from the second update on, every weight of every eraser has gradient.
    for name, g in grads[1].items():
        for param in ("down.weight", "down.bias", "up.weight", "up.bias"):
            assert torch.count_nonzero(g[param]) > 0, f"{name}.{param} got no gradient"
    after = backbone_state(trainer.transformer)
    assert all(torch.equal(before[k], after[k]) for k in before), "the backbone must stay bit-identical"
    assert all(not p.requires_grad for n, p in trainer.transformer.named_parameters() if ".adapter." not in n)


def test_unlearning_loss_falls(tiny_runs):
    trainer, batch, sampler = tiny_runs.trainer("cogvideox", "--alpha", "0", "--beta", "0", "--learning_rate", "1e-2")
    x = sampler.initial_latents(2)
    losses = [trainer.update(sampler, x, 1, batch)[0]["loss_unlearn"] for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


def _hooks_on(model) -> list:
    """Every hook (and replaced forward) left on ``model``'s modules, by module name."""
    left = []
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(module, kind):
                left.append((name, kind))
        if "forward" in module.__dict__:
            left.append((name, "forward"))
    return left


def test_trainers_and_an_attack_in_sequence_leave_no_hooks_behind(tiny_runs):
    """Each owner (trainer, attack) removes what it put on the model when it is done; no output (and no
    autograd graph) stays held by a hook between calls."""
    from receler.attack import attack_prompts

    pipe = build_tiny_pipeline("cogvideox", seed=0)
    transformer = pipe.transformer
    for flags in ((), ("--gradient_checkpointing",), ("--loss_target", "ff_all")):
        trainer, batch, sampler = tiny_runs.trainer("cogvideox", *flags, pipe=pipe)
        with trainer:
            trainer.update(sampler, sampler.initial_latents(2), 1, batch)
            assert all(c.value is None for c in trainer.outputs._captures.values()), "no output outlives its call"
            assert _hooks_on(transformer), "the trainer's loss hook is on the model while it trains"
        assert _hooks_on(transformer) == [], flags
        assert not transformer.is_gradient_checkpointing
    attack_prompts(get_family("cogvideox"), pipe, ["a photo of nudity"], num_tokens=2, steps=2, lr=1e-2,
                   num_inference_steps=2, **tiny_runs.SIZE)
    assert _hooks_on(transformer) == []


@pytest.mark.slow
def test_cli_writes_a_loadable_eraser_that_changes_the_concept_prompt(tiny_runs, tiny_cogvideox_dir):
    summary, out = tiny_runs.train(tiny_cogvideox_dir, "--num_epochs", "2", "--save_every", "4")
    assert summary["updates"] == 2 * 2 * 3  # epochs x prompts (batch 1) x timesteps
    for name in ("eraser_config.json", "eraser_weights.pt", "eraser_weights.safetensors", "args.json",
                 "train_log.jsonl", "loss.png"):
        assert (out / name).exists(), name
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step_4", "step_8", "step_12"}
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert {"step", "loss", "loss_unlearn", "loss_preserve", "loss_loc", "lr", "grad_norm", "seconds"} <= set(rows[0])
    config = json.loads((out / "eraser_config.json").read_text())
    assert config["eraser_type"] == "adapter" and config["eraser_rank"] == 4
    assert config["target_concept"] == "nudity" and config["base_model"]["pipeline_class"] == "CogVideoXPipeline"

    change = tiny_runs.concept_render_change("cogvideox", tiny_cogvideox_dir, out)
    assert change > 1e-3, "a trained eraser must change the concept prompt's video"


def test_auto_generated_preserved_concepts_feed_the_preservation_loss(tmp_path, tiny_cogvideox_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of nudity on the beach\nnudity in a park at night\n")
    out = tmp_path / "auto"
    train_main(["--model_path", str(tiny_cogvideox_dir), "--target_concept", "nudity", "--prompts_file", str(prompts),
                "--auto_generate_preserved", "--num_preserved_concepts", "3", "--output_dir", str(out),
                "--num_inference_steps", "2", "--eraser_rank", "4", "--num_frames", "9", "--height", "32", "--width", "32"])
    concepts = (out / "preserved_concepts.txt").read_text().split("\n")
    concepts = [c for c in concepts if c]
    assert len(concepts) == 3 and all("nudity" not in c for c in concepts)
    args = json.loads((out / "args.json").read_text())
    assert args["beta"] is None and args["resolved"]["beta"] == 1.0  # as given, and as resolved
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all("loss_preserve" in r for r in rows) and rows[-1]["loss_preserve"] > 0


def test_every_family_trains_with_the_same_flags(family_name, tiny_runs, tiny_model_dir):
    """One CLI, one set of flags, for every family; the eraser changes that family's concept video."""
    folder = tiny_model_dir(family_name)
    summary, out = tiny_runs.train(folder, "--max_steps", "3", "--save_every", "0", name=family_name)
    assert summary["updates"] == 3
    config = json.loads((out / "eraser_config.json").read_text())
    assert config["model_family"] == family_name

    assert tiny_runs.concept_render_change(family_name, folder, out) > 1e-4


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tiny_runs, tiny_cogvideox_dir):
    common = ("--num_epochs", "2", "--save_every", "0")
    _, full = tiny_runs.train(tiny_cogvideox_dir, *common, name="full")
    # Stop in the middle of a trajectory (update 5 = step 2 of the second prompt's trajectory), then resume.
    _, part = tiny_runs.train(tiny_cogvideox_dir, *common, "--max_steps", "5", name="part")
    assert (part / "checkpoints" / "step_5").exists()
    tiny_runs.train(tiny_cogvideox_dir, *common, "--resume_from", str(part / "checkpoints" / "step_5"), name="part")
    a, b = tiny_runs.tensors(full), tiny_runs.tensors(part)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed erasers must equal the uninterrupted run's bit for bit"
    steps = [json.loads(line)["step"] for line in (part / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_runs, tiny_cogvideox_dir, monkeypatch, capsys):
    import receler.trainer as trainer_module

    calls = {"n": 0}
    real = trainer_module.unlearn_loss

    def nan_on_third(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer_module, "unlearn_loss", nan_on_third)
    with pytest.raises(SystemExit) as exit_info:
        tiny_runs.train(tiny_cogvideox_dir, "--save_every", "2")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not finite" in err and "Traceback" not in err
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2"]
    assert all(torch.isfinite(t).all() for t in tiny_runs.tensors(out / "checkpoints" / "step_2").values())


def test_ctrl_c_saves_the_erasers_trained_so_far(tiny_runs, tiny_cogvideox_dir, monkeypatch):
    real_update = EraserTrainer.update
    calls = {"n": 0}

    def interrupt_during_second(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C mid-update
        return real_update(self, *a, **k)

    monkeypatch.setattr(EraserTrainer, "update", interrupt_during_second)
    with pytest.raises(SystemExit) as exit_info:  # the CLI exits 130 so `set -e` scripts stop
        tiny_runs.train(tiny_cogvideox_dir, "--save_every", "0")
    assert exit_info.value.code == 130
    out = tiny_runs.tmp_path / "run"
    assert (out / "eraser_weights.safetensors").exists() and (out / "checkpoints" / "step_2").exists()
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda tmp: ["--model_path", str(tmp / "missing")], "does not exist"),
        (lambda tmp: ["--prompts_file", str(_write(tmp / "empty.txt", "\n\n"))], "empty.txt"),
        (lambda tmp: ["--num_frames", "0"], "--num_frames must be at least 1"),
        (lambda tmp: ["--prompts_file", str(_write(tmp / "bad.csv", "id,label\n1,x\n"))], "bad.csv"),
        (lambda tmp: ["--model_path", str(_write(tmp / "nomodel" / "x.txt", "").parent)], "model_index.json"),
    ],
    ids=["missing_model", "empty_prompts", "no_frames", "csv_without_prompt_column", "not_a_pipeline"],
)
def test_bad_input_gives_one_clear_message(setup, needle, tmp_path, tiny_cogvideox_dir, capsys):
    argv = {"--model_path": str(tiny_cogvideox_dir), "--target_concept": "nudity", "--output_dir": str(tmp_path / "o")}
    extra = setup(tmp_path)
    for flag, value in zip(extra[::2], extra[1::2]):
        argv[flag] = value
    with pytest.raises(SystemExit) as exit_info:
        train_main([x for kv in argv.items() for x in kv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err
    assert not (tmp_path / "o" / "eraser_weights.pt").exists()


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
