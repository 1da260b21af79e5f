"""The learned soft-prompt attack and adversarial eraser training."""

import pytest
import torch

from receler.attack import attack_loss, attack_target, frozen_trajectory, learn_soft_prompt, padding_positions
from receler.erasers.wrapper import attach_erasers
from receler.families import get_family
from receler.loss_target import LossTarget
from receler.tiny import build_tiny_pipeline


def test_attack_objective_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    o_att, o_c, o_0 = (torch.randn(2, 5, 3, generator=g) for _ in range(3))
    eta = 2.5
    expected = ((o_att.double() - (o_0.double() + eta * (o_c.double() - o_0.double()))) ** 2).mean()
    assert attack_loss(o_att, attack_target(o_c, o_0, eta)).item() == pytest.approx(expected.item(), rel=1e-6)
    # eta = 1: the target is the frozen model's own output on the concept prompt
    assert torch.equal(attack_target(o_c, o_0, 1.0), o_c)
    per_sample = attack_loss(o_att, o_c, reduction="none")
    assert per_sample.shape == (2,) and per_sample.mean().item() == pytest.approx(attack_loss(o_att, o_c).item())


def test_soft_tokens_go_after_the_prompt_and_carry_gradient(family_name):
    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0)
    prompts = ["a red circle", "a blue square moving left"]
    positions = padding_positions(family, pipe, prompts, 3)
    for prompt, row in zip(prompts, positions):
        ids = family.prompt_token_ids(pipe, prompt)
        pad = pipe.tokenizer.pad_token_id
        first_pad = ids.index(pad)
        assert row.tolist() == [first_pad, first_pad + 1, first_pad + 2]
    cond = family.encode_prompts(pipe, prompts, "cpu")
    vectors = torch.randn(3, cond["encoder_hidden_states"].shape[-1], requires_grad=True)
    out = family.with_soft_tokens(cond, positions, vectors)
    assert torch.equal(out["encoder_hidden_states"][1, positions[1]], vectors.detach())
    untouched = torch.ones_like(cond["encoder_hidden_states"][..., 0], dtype=torch.bool)
    untouched[torch.arange(2)[:, None], positions] = False
    assert torch.equal(out["encoder_hidden_states"][untouched], cond["encoder_hidden_states"][untouched])
    out["encoder_hidden_states"].sum().backward()
    assert torch.count_nonzero(vectors.grad) == vectors.numel()
    if family_name == "hunyuan_video":
        assert out["encoder_attention_mask"][torch.arange(2)[:, None], positions].eq(1).all()


def test_no_room_for_soft_tokens_is_a_clear_error():
    from receler.errors import UserError

    family = get_family("cogvideox")
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    with pytest.raises(UserError, match="no room for 4 soft tokens"):
        padding_positions(family, pipe, ["a " * 14 + "red"], 4)


def test_attack_loss_falls_against_a_random_eraser(tiny_runs):
    family = get_family("cogvideox")
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    pipe.transformer.requires_grad_(False)
    erasers = attach_erasers(pipe.transformer, family.layout, eraser_rank=8)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for e in erasers.values():
            for p in e.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    prompts = ["a red circle moving left"]
    conds = [family.encode_prompts(pipe, prompts, "cpu")]
    positions = padding_positions(family, pipe, prompts, 4)
    sampler = family.make_sampler(pipe, 6, **tiny_runs.SIZE, device="cpu", generator=torch.Generator().manual_seed(0))
    trajectories = [frozen_trajectory(family, pipe, conds[0], sampler)]
    with LossTarget(family, None, [pipe.transformer]) as outputs:
        soft, losses = learn_soft_prompt(family, pipe, outputs, conds, positions, trajectories, [sampler], steps=40,
                                         lr=5e-2, num_tokens=4, seed=0)
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < 0.8 * first, losses
        assert all(p.grad is None for p in pipe.transformer.parameters() if p.requires_grad), "only the soft prompt learns"

        # A smaller budget is a prefix of the same run: the soft prompt seen by progress() after step 10 is what a
        # 10-step run learns on its own (the world benchmark scores several budgets from one run this way).
        seen = {}
        learn_soft_prompt(family, pipe, outputs, conds, positions, trajectories, [sampler], steps=12, lr=5e-2,
                          num_tokens=4, seed=0,
                          progress=lambda step, loss, soft: seen.setdefault(step + 1, soft.vectors.detach().clone()))
        short, _ = learn_soft_prompt(family, pipe, outputs, conds, positions, trajectories, [sampler], steps=10,
                                     lr=5e-2, num_tokens=4, seed=0)
    assert torch.equal(seen[10], short.vectors.detach())
    assert not torch.equal(seen[10], seen[12])


def test_adversarial_update_refreshes_the_prompt_and_trains_on_both(tiny_runs):
    grads = {}
    for weight in ("0", "1"):
        trainer, batch, sampler = tiny_runs.trainer("cogvideox", "--adversarial", "--adv_steps", "2", "--adv_weight", weight,
                                               "--alpha", "0", "--beta", "0")
        from receler.trainer import encode_prompt_set, make_batch

        data = encode_prompt_set(trainer.family, trainer.pipe, tiny_runs.PROMPTS, tiny_runs.PRESERVE, "nudity", "cpu", soft_tokens=4)
        batch = make_batch(data, [0, 1], "cpu", batch["grid"])
        trainer.start_adversary(data)
        start = trainer.adversary.soft.vectors.detach().clone()
        recorded = []
        original_step = trainer.optimizer.step

        def record(*a, **k):
            recorded.append([p.grad.clone() for p in trainer.params])
            return original_step(*a, **k)

        trainer.optimizer.step = record
        x = sampler.initial_latents(2)
        for _ in range(2):
            metrics, _ = trainer.update(sampler, x, 1, batch)
        assert not torch.equal(trainer.adversary.soft.vectors, start), "the inner loop moved the soft prompt"
        assert metrics["loss_attack"] > 0 and "loss_adversarial" in metrics
        assert all(torch.count_nonzero(g) > 0 for g in recorded[1]), "every eraser weight gets gradient at update 2"
        grads[weight] = recorded[0]
    # With weight 1 the attacked prompt adds its own gradient to the plain prompt's.
    assert any(not torch.equal(a, b) for a, b in zip(grads["0"], grads["1"]))


@pytest.mark.slow
def test_without_adversarial_the_plain_trainer_runs_bit_for_bit(tiny_runs, tiny_cogvideox_dir):
    _, plain = tiny_runs.train(tiny_cogvideox_dir, "--save_every", "0", name="plain")
    _, flagged = tiny_runs.train(tiny_cogvideox_dir, "--save_every", "0", "--adv_steps", "5", "--adv_lr", "1",
                        "--adv_weight", "3", "--adv_num_tokens", "2", name="flagged")
    a, b = tiny_runs.tensors(plain), tiny_runs.tensors(flagged)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_adversarial_cli_trains_and_resumes_exactly(tmp_path, tiny_runs, tiny_cogvideox_dir):
    common = ("--num_epochs", "1", "--save_every", "0", "--adversarial", "--adv_steps", "1")
    _, full = tiny_runs.train(tiny_cogvideox_dir, *common, name="full")
    _, part = tiny_runs.train(tiny_cogvideox_dir, *common, "--max_steps", "4", name="part")
    tiny_runs.train(tiny_cogvideox_dir, *common, "--resume_from", str(part / "checkpoints" / "step_4"), name="part")
    a, b = tiny_runs.tensors(full), tiny_runs.tensors(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _tiny_eraser(tmp_path, family_name, folder):
    """A random (nonzero) eraser for a tiny model, saved as an eraser folder."""
    from receler.checkpoint import save_eraser_folder

    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0)
    erasers = attach_erasers(pipe.transformer, family.layout, eraser_rank=4)
    with torch.no_grad():
        for e in erasers.values():
            e.up.weight.normal_(0, 0.2)
    out = tmp_path / f"eraser_{family_name}"
    save_eraser_folder(out, pipe.transformer, family.layout)
    return out


def test_attack_cli_writes_every_field_and_videos(tmp_path, tiny_cogvideox_dir):
    from evaluation.attack import main as attack_main
    from receler.media import read_video

    eraser = _tiny_eraser(tmp_path, "cogvideox", tiny_cogvideox_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left on a gray background\na blue square moving up on a black background\n")
    out = tmp_path / "attack"
    report = attack_main(["--model_path", str(tiny_cogvideox_dir), "--eraser_path", str(eraser), "--prompts_file",
                          str(prompts), "--target_concept", "red", "--steps", "6", "--num_tokens", "2",
                          "--num_frames", "9", "--height", "32", "--width", "32", "--num_inference_steps", "3",
                          "--output_dir", str(out)])
    saved = __import__("json").loads((out / "attack.json").read_text())
    for key in ("model_path", "eraser_path", "target_concept", "settings", "video_size", "soft_prompt", "loss_curve",
                "loss_first", "loss_last", "detector", "concept_rate", "videos"):
        assert key in saved, key
    assert len(saved["loss_curve"]) == 6 and saved["detector"].startswith("world")
    for side in ("clean", "erased", "attacked"):
        assert 0.0 <= saved["concept_rate"][side]["rate"] <= 1.0
        assert len(saved["concept_rate"][side]["per_frame"]) == 9
    from safetensors.torch import load_file

    assert load_file(str(out / "soft_prompt.safetensors"))["vectors"].shape == (2, 32)
    first = saved["videos"][0]["files"]
    assert read_video(out / first["attacked"]).shape == (9, 32, 32, 3)
    assert report["loss_curve"] == saved["loss_curve"]


def test_attack_cli_scores_nudity_with_nudenet(tmp_path, tiny_cogvideox_dir):
    pytest.importorskip("nudenet")
    from evaluation.attack import main as attack_main

    eraser = _tiny_eraser(tmp_path, "cogvideox", tiny_cogvideox_dir)
    out = tmp_path / "attack"
    attack_main(["--model_path", str(tiny_cogvideox_dir), "--eraser_path", str(eraser), "--prompt", "a nude woman",
                 "--target_concept", "nudity", "--steps", "2", "--num_tokens", "2", "--num_frames", "9",
                 "--height", "32", "--width", "32", "--num_inference_steps", "2", "--output_dir", str(out)])
    saved = __import__("json").loads((out / "attack.json").read_text())
    assert saved["detector"].startswith("NudeNet")
    for side in ("clean", "erased", "attacked"):
        assert len(saved["concept_rate"][side]["per_frame"]) == 9


@pytest.mark.parametrize("case", ["no_eraser", "other_family"])
def test_attack_cli_refuses_a_missing_or_foreign_eraser(case, tmp_path, tiny_cogvideox_dir, capsys):
    from evaluation.attack import main as attack_main

    eraser = tmp_path / "missing" if case == "no_eraser" else _tiny_eraser(tmp_path, "wan", None)
    with pytest.raises(SystemExit) as exit_info:
        attack_main(["--model_path", str(tiny_cogvideox_dir), "--eraser_path", str(eraser), "--prompt", "a red circle",
                     "--target_concept", "red", "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert ("does not exist" in err) if case == "no_eraser" else ("Wan" in err and "CogVideoX" in err)
