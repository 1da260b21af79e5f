"""Erasers: zero-init identity, the on/off switch, float32 weights, save/load in both formats, the published
layout, mismatch errors and refusing pickled code. Table-driven over model families where it applies."""

import pickle

import pytest
import torch

from receler.checkpoint import CheckpointError, load_erasers, read_eraser_folder, save_eraser_folder
from receler.erasers.utils import AdapterEraser, DisableEraser, erasers_disabled, iter_erasers
from receler.erasers.wrapper import attach_erasers
from receler.families import get_family
from receler.tiny import build_tiny_pipeline


def tiny_inputs(family, pipe, seed=0):
    """A fixed random transformer call for ``family``: (sampler, latents, cond)."""
    frames, height, width = 9, 32, 32
    sampler = family.make_sampler(pipe, 2, frames, height, width, "cpu", torch.Generator().manual_seed(seed))
    cond = family.encode_prompts(pipe, ["a red circle moving left"], "cpu")
    return sampler, sampler.initial_latents(1), cond


def run(family, pipe, inputs):
    sampler, x, cond = inputs
    with torch.no_grad():
        return sampler.predict(pipe.transformer, x, 0, cond)


def randomize(erasers, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for e in erasers.values():
            for p in e.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_fresh_eraser_is_identity_and_switch_restores(family_name):
    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0)
    inputs = tiny_inputs(family, pipe)
    reference = run(family, pipe, inputs)

    erasers = attach_erasers(pipe.transformer, family.layout, eraser_rank=4)
    assert len(erasers) == len(family.layout.blocks(pipe.transformer))
    assert torch.equal(run(family, pipe, inputs), reference), "a zero-initialised eraser must change nothing"

    randomize(erasers)
    changed = run(family, pipe, inputs)
    assert (changed - reference).abs().max() > 1e-4

    with DisableEraser(pipe.transformer):
        assert torch.equal(run(family, pipe, inputs), reference)
    assert all(e.use_eraser for _, e in iter_erasers(pipe.transformer)), "flags restored after the block"
    assert torch.equal(run(family, pipe, inputs), changed)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_save_load_round_trip(family_name, fmt, tmp_path):
    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0)
    randomize(attach_erasers(pipe.transformer, family.layout, eraser_rank=4))
    inputs = tiny_inputs(family, pipe)
    expected = run(family, pipe, inputs)
    save_eraser_folder(tmp_path, pipe.transformer, family.layout)
    other = {"safetensors": "eraser_weights.pt", "pt": "eraser_weights.safetensors"}[fmt]
    (tmp_path / other).unlink()  # make sure the format under test is the one read

    fresh = build_tiny_pipeline(family_name, seed=0)
    config = load_erasers(fresh.transformer, family.layout, tmp_path)
    assert config["eraser_rank"] == 4 and config["model_family"] == family_name
    assert torch.equal(run(family, fresh, inputs), expected)


def test_published_layout_loads_through_inject_eraser(tmp_path, tiny_cogvideox):
    """A checkpoint as the original release wrote it (a plain dict of state dicts) changes the output."""
    from receler.erasers.cogvideo_erasers import inject_eraser

    family = get_family("cogvideox")
    transformer = tiny_cogvideox.transformer
    width = transformer.transformer_blocks[0].attn1.to_v.in_features
    g = torch.Generator().manual_seed(3)
    published = {
        f"transformer_blocks.{i}.attn1.adapter": {
            "down.weight": torch.randn(8, width, generator=g) * 0.1,
            "down.bias": torch.randn(8, generator=g) * 0.1,
            "up.weight": torch.randn(width, 8, generator=g) * 0.1,
            "up.bias": torch.randn(width, generator=g) * 0.1,
        }
        for i in range(len(transformer.transformer_blocks))
    }
    torch.save(published, tmp_path / "eraser_weights.pt")
    (tmp_path / "eraser_config.json").write_text('{"eraser_type": "adapter", "eraser_rank": 8}')

    inputs = tiny_inputs(family, tiny_cogvideox)
    before = run(family, tiny_cogvideox, inputs)
    inject_eraser(transformer, torch.load(tmp_path / "eraser_weights.pt", weights_only=True), 8)
    after = run(family, tiny_cogvideox, inputs)
    assert (after - before).abs().max() > 1e-4
    loaded = transformer.transformer_blocks[1].attn1.adapter
    assert torch.equal(loaded.up.weight, published["transformer_blocks.1.attn1.adapter"]["up.weight"])
    # The folder form of the same checkpoint loads identically.
    fresh = build_tiny_pipeline("cogvideox", seed=0)
    inject_eraser(fresh.transformer, tmp_path, None)
    assert torch.equal(run(family, fresh, inputs), after)


def _published(width, blocks, rank, prefix="transformer_blocks.{i}.attn1.adapter"):
    return {
        prefix.format(i=i): {
            "down.weight": torch.zeros(rank, width), "down.bias": torch.zeros(rank),
            "up.weight": torch.zeros(width, rank), "up.bias": torch.zeros(width),
        }
        for i in range(blocks)
    }


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda w, n: _published(w, n, 8), "rank 8 but eraser rank 4"),
        (lambda w, n: _published(w + 16, n, 4), "wide"),
        (lambda w, n: _published(w, n + 1, 4), "has 3 erasers but"),
        (lambda w, n: _published(w, n, 4, "single_transformer_blocks.{i}.attn.adapter"), "HunyuanVideo eraser"),
        (lambda w, n: _published(w, n, 4, "blocks.{i}.attn1.adapter"), "Wan eraser"),
    ],
    ids=["rank", "width", "block_count", "family_hunyuan", "family_wan"],
)
def test_mismatch_names_the_problem_and_loads_nothing(make, needle, tiny_cogvideox):
    family = get_family("cogvideox")
    transformer = tiny_cogvideox.transformer
    width = transformer.transformer_blocks[0].attn1.to_v.in_features
    state = make(width, len(transformer.transformer_blocks))
    with pytest.raises(CheckpointError) as err:
        load_erasers(transformer, family.layout, state, eraser_rank=4)
    assert needle in str(err.value)
    assert not list(iter_erasers(transformer)), "nothing may be wrapped or loaded after a failed validation"


class _Payload:
    """Unpickling this would create a marker file: proof that the checkpoint ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_callable_is_refused_not_executed(tmp_path, tiny_cogvideox):
    marker = tmp_path / "code_ran"
    with open(tmp_path / "eraser_weights.pt", "wb") as f:
        pickle.dump({"transformer_blocks.0.attn1.adapter": {"down.weight": _Payload(str(marker))}}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_eraser_folder(tmp_path)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_erasers(tiny_cogvideox.transformer, get_family("cogvideox").layout, tmp_path)
    assert not marker.exists()


def test_eraser_weights_stay_float32_on_half_backbones(tiny_cogvideox):
    transformer = tiny_cogvideox.transformer
    erasers = attach_erasers(transformer, get_family("cogvideox").layout, eraser_rank=4)
    randomize(erasers)
    before = {k: e.down.weight.clone() for k, e in erasers.items()}
    transformer.to(torch.bfloat16)
    for name, eraser in erasers.items():
        assert all(p.dtype == torch.float32 for p in eraser.parameters())
        assert torch.equal(eraser.down.weight, before[name]), "casting the backbone must not round eraser weights"
    assert transformer.transformer_blocks[0].attn1.attn.to_q.weight.dtype == torch.bfloat16
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    assert erasers[next(iter(erasers))](x).dtype == torch.bfloat16


def test_adapter_is_zero_initialised_and_switch_validates():
    eraser = AdapterEraser(12, 3)
    assert torch.count_nonzero(eraser.up.weight) == 0 and torch.count_nonzero(eraser.up.bias) == 0
    assert torch.count_nonzero(eraser.down.weight) > 0
    assert torch.equal(eraser(torch.randn(4, 12)), torch.zeros(4, 12))
    with pytest.raises(TypeError):
        eraser.use_eraser = 1
    holder = torch.nn.Sequential(eraser)
    with erasers_disabled(holder):
        assert eraser.use_eraser is False
    assert eraser.use_eraser is True


def test_compatibility_imports():
    from receler.erasers.cogvideo_erasers import (  # noqa: F401
        CogVideoXWithEraser,
        inject_eraser,
        save_cogvideo_eraser_from_transformer,
        setup_cogvideo_adapter_eraser,
    )
    from receler.erasers.utils import AdapterEraser, DisableEraser  # noqa: F401


def test_setup_and_save_under_original_names(tmp_path, tiny_cogvideox):
    from receler.erasers.cogvideo_erasers import save_cogvideo_eraser_from_transformer, setup_cogvideo_adapter_eraser

    erasers = setup_cogvideo_adapter_eraser(tiny_cogvideox.transformer, 4, "cpu", torch.float16)
    assert list(erasers) == ["transformer_blocks.0.attn1.adapter", "transformer_blocks.1.attn1.adapter"]
    assert all(p.dtype == torch.float32 for e in erasers.values() for p in e.parameters())
    save_cogvideo_eraser_from_transformer(tmp_path, tiny_cogvideox.transformer)
    state = torch.load(tmp_path / "eraser_weights.pt", weights_only=True)
    assert set(state) == set(erasers)
    assert set(state["transformer_blocks.0.attn1.adapter"]) == {"down.weight", "down.bias", "up.weight", "up.bias"}
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temporary files"


def test_an_eraser_whose_config_names_another_family_is_refused(tmp_path, make_eraser):
    """Families whose erasers sit at the same paths are told apart by the family eraser_config.json names."""
    import json

    folder = make_eraser(tmp_path / "eraser", "cogvideox", scale=0.1)
    config = json.loads((folder / "eraser_config.json").read_text())
    (folder / "eraser_config.json").write_text(json.dumps({**config, "model_family": "another_family"}))
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    with pytest.raises(CheckpointError, match="another_family"):
        load_erasers(pipe.transformer, get_family("cogvideox").layout, folder)
    assert not list(iter_erasers(pipe.transformer)), "nothing was wrapped or loaded"
