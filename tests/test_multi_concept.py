"""One eraser for several concepts: each prompt is tied to its own concept (its words, its mask, its anchor), and
its loss is its own concept's, computed here by hand from the frozen model's outputs."""

import pytest
import torch

from receler.config import TrainConfig
from receler.erasers.utils import erasers_disabled
from receler.errors import UserError
from receler.families import get_family
from receler.tiny import build_tiny_pipeline
from receler.train_unlearning_prompt_only import parse_args
from receler.trainer import Concept, EraserTrainer, encode_prompt_set, make_batch
from receler.training import prompt_concepts

SIZE = dict(num_frames=9, height=32, width=32)


def config(tmp_path, *flags, csv=None):
    argv = ["--model_path", "m", "--output_dir", "o", *flags]
    if csv is not None:
        path = tmp_path / "prompts.csv"
        path.write_text(csv)
        argv += ["--prompts_file", str(path)]
    return parse_args(argv)


def test_each_prompt_gets_its_concept(tmp_path):
    c = config(tmp_path, "--target_concept", "red, blue", csv="prompt,concept\na red car,\na blue red thing,blue\n"
                                                              "nudity on the beach,\n")
    with pytest.raises(UserError, match="names none of the concepts"):
        prompt_concepts(c, ["a red car", "a blue red thing", "nudity on the beach"])
    c = config(tmp_path, "--target_concept", "red,blue", csv="prompt,concept\na red car,\na blue red thing,blue\n")
    assert prompt_concepts(c, ["a red car", "a blue red thing"]) == [Concept("red", ("red",)), Concept("blue", ("blue",))]
    c = config(tmp_path, "--target_concept", "red,blue", csv="prompt,concept\na red car,green\n")
    with pytest.raises(UserError, match="not one of"):
        prompt_concepts(c, ["a red car"])
    # One concept: every prompt erases it, with its --concept_words.
    c = config(tmp_path, "--target_concept", "nudity", "--concept_words", "naked,nude")
    assert prompt_concepts(c, ["a dog"]) == [Concept("nudity", ("naked", "nude"))]
    with pytest.raises(UserError, match="--concept_words is for one concept"):
        config(tmp_path, "--target_concept", "red,blue", "--concept_words", "crimson")
    assert TrainConfig(model_path="m", output_dir="o", target_concept=" red , blue ,").concepts == ["red", "blue"]


def test_a_two_concept_batch_trains_each_prompt_against_its_own_concept():
    family = get_family("cogvideox")
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    prompts = ["a red car in the park", "a blue dog on the beach"]
    anchors = ["a car in the park", "a dog on the beach"]
    concepts = [Concept("red", ("red",)), Concept("blue", ("blue",))]
    data = encode_prompt_set(family, pipe, prompts, None, concepts, "cpu", anchor_prompts=anchors)
    # The localization positions are each prompt's own concept word, found by hand in its token ids.
    for row, (prompt, word) in enumerate(zip(prompts, ("red", "blue"))):
        ids = family.prompt_token_ids(pipe, prompt)
        word_id = pipe.tokenizer(word, add_special_tokens=False).input_ids
        expected = [i for i, t in enumerate(ids) if [t] == word_id]
        assert data.positions[row].nonzero().flatten().tolist() == expected and expected
    assert data.concepts == ["red", "blue"]

    config = parse_args(["--model_path", "m", "--target_concept", "red,blue", "--output_dir", "o", "--eraser_rank",
                         "4", "--num_inference_steps", "4", "--beta", "0", "--alpha", "0", "--eta", "2"])
    trainer = EraserTrainer(family, pipe, config, "cpu")
    batch = make_batch(data, [0, 1], trainer.device, family.token_grid(pipe, **SIZE))
    sampler = family.make_sampler(pipe, 4, **SIZE, device="cpu", generator=torch.Generator().manual_seed(0))
    x = sampler.initial_latents(2)

    def o(texts):
        seen = []
        handle = family.loss_module(pipe.transformer).register_forward_hook(lambda m, a, out: seen.append(out))
        with torch.no_grad(), erasers_disabled(pipe.transformer):
            cond = family.encode_prompts(pipe, texts, "cpu")
            sampler.predict(pipe.transformer, x, 1, cond)
        handle.remove()
        return seen[0][:, cond["encoder_hidden_states"].shape[1]:].float()

    o_c, o_a = o(prompts), o(anchors)
    target = o_a - 2.0 * (o_c - o_a)  # each prompt moves away from its own concept, from its own anchor
    per_prompt = (o_c - target).pow(2).flatten(1).mean(dim=1)  # the erasers start as the identity
    metrics, _ = trainer.update(sampler, x, 1, batch)
    assert metrics["loss_unlearn"] == pytest.approx(float(per_prompt.mean()), rel=1e-5)
    # Swapping the anchors between the two prompts changes the loss: the pairing matters.
    swapped = o_a.flip(0) - 2.0 * (o_c - o_a.flip(0))
    assert float((o_c - swapped).pow(2).flatten(1).mean(dim=1).mean()) != pytest.approx(metrics["loss_unlearn"], rel=1e-3)
