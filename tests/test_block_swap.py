"""Block swap (``--blocks_to_swap``): which block's weights are on the "device" when, in forward and in backward
with checkpointing, recorded through a stand-in for the device copies; the same erasers as without swap; the
settings it resolves to; the estimator's swap terms against numbers computed by hand."""

import pytest
import torch

from receler.block_swap import BlockSwap, DeviceCopies, swappable_parameters
from receler.erasers.utils import AdapterEraser
from receler.erasers.wrapper import attach_erasers
from receler.errors import UserError
from receler.families import get_family
from receler.trainer import enable_block_checkpointing


class RecordingCopies(DeviceCopies):
    """The device is the CPU; every copy started, finished and released is written down."""

    def __init__(self):
        super().__init__("cpu")
        self.log = []

    def start(self, host, block):
        self.log.append(("fetch", block))
        return super().start(host, block)

    def finish(self, pending, block):
        self.log.append(("ready", block))
        return super().finish(pending, block)

    def released(self, block):
        self.log.append(("release", block))


def _swapped_tiny(num_layers, count, prefetch, copies=None):
    """A tiny CogVideoX of ``num_layers`` blocks with erasers, every block checkpointed, its last ``count``
    blocks swapped; each block's run is logged (in the recording copies' log) with the swapped blocks whose
    weights are then in place."""
    from receler.tiny.cogvideox import build_tiny_cogvideox

    family = get_family("cogvideox")
    pipe = build_tiny_cogvideox(seed=0, num_layers=num_layers)
    transformer = pipe.transformer.requires_grad_(False)
    erasers = attach_erasers(transformer, family.layout, 4, fresh=True)
    for eraser in erasers.values():
        eraser.requires_grad_(True)
        torch.nn.init.normal_(eraser.up.weight)  # nonzero, so the backward reaches every block
    blocks = family.block_modules(transformer)
    enable_block_checkpointing(transformer, blocks)
    copies = copies or RecordingCopies()
    runs = copies.log if isinstance(copies, RecordingCopies) else []
    swap = BlockSwap(transformer, blocks, count, "cpu", copies, prefetch=prefetch)

    def in_place():  # read from the parameters themselves, not from the swap's bookkeeping
        return tuple(i for i in swap.swapped if all(p.numel() > 0 for p in swappable_parameters(blocks[i])))

    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda module, args, i=i: runs.append(("run", i, in_place())))
    sampler = family.make_sampler(pipe, 4, 9, 32, 32, "cpu", torch.Generator().manual_seed(0))
    cond = family.encode_prompts(pipe, ["a cat on the beach"], "cpu")
    x = sampler.initial_latents(1)
    return family, pipe, swap, copies, erasers, (lambda: sampler.predict(transformer, x, 0, cond))


def _passes(predict, copies):
    """The log of a frozen forward, a forward with grad, and its backward, one list each."""
    logs = []
    with torch.no_grad():
        predict()
    logs.append(copies.log[:])
    copies.log.clear()
    out = predict()
    logs.append(copies.log[:])
    copies.log.clear()
    out.square().mean().backward()
    logs.append(copies.log[:])
    return logs


def test_schedule_swaps_the_last_blocks_one_ahead_up_in_forward_and_down_in_backward():
    """5 blocks, the last 3 swapped, one block prefetched. Worked out by hand: a pass starts by fetching the first
    swapped block (2) while blocks 0-1 run; each swapped block is made ready as it starts, the next one fetched,
    the previous released; backward recomputes 4, 3, 2, 1, 0 and swaps in that order, reusing block 4, which the
    forward left in place."""
    _, _, _, copies, erasers, predict = _swapped_tiny(5, 3, prefetch=1)
    forward = [("fetch", 2), ("run", 0, ()), ("run", 1, ()),
               ("ready", 2), ("fetch", 3), ("run", 2, (2,)),
               ("release", 2), ("ready", 3), ("fetch", 4), ("run", 3, (3,)),
               ("release", 3), ("ready", 4), ("run", 4, (4,))]
    frozen, with_grad, backward = _passes(predict, copies)
    assert frozen == forward
    assert with_grad == [("release", 4)] + forward  # the frozen pass's last block leaves when the next pass starts
    assert backward == [("fetch", 3), ("run", 4, (4,)),
                        ("release", 4), ("ready", 3), ("fetch", 2), ("run", 3, (3,)),
                        ("release", 3), ("ready", 2), ("run", 2, (2,)),
                        ("release", 2), ("run", 1, ()), ("run", 0, ())]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for e in erasers.values() for p in e.parameters())


def test_schedule_with_every_block_swapped_two_ahead():
    """All 5 blocks swapped, two prefetched: the pass's start fetches blocks 0 and 1 before block 0 runs."""
    _, _, _, copies, _, predict = _swapped_tiny(5, 5, prefetch=2)
    forward = [("fetch", 0), ("fetch", 1),
               ("ready", 0), ("fetch", 2), ("run", 0, (0,)),
               ("release", 0), ("ready", 1), ("fetch", 3), ("run", 1, (1,)),
               ("release", 1), ("ready", 2), ("fetch", 4), ("run", 2, (2,)),
               ("release", 2), ("ready", 3), ("run", 3, (3,)),
               ("release", 3), ("ready", 4), ("run", 4, (4,))]
    frozen, with_grad, backward = _passes(predict, copies)
    assert frozen == forward
    assert with_grad == [("release", 4)] + forward
    assert backward == [("fetch", 3), ("fetch", 2), ("run", 4, (4,)),
                        ("release", 4), ("ready", 3), ("fetch", 1), ("run", 3, (3,)),
                        ("release", 3), ("ready", 2), ("fetch", 0), ("run", 2, (2,)),
                        ("release", 2), ("ready", 1), ("run", 1, (1,)),
                        ("release", 1), ("ready", 0), ("run", 0, (0,))]


def test_erasers_are_never_swapped_and_close_restores_the_weights():
    family, pipe, swap, _, erasers, predict = _swapped_tiny(3, 3, prefetch=1)
    eraser_params = {id(p) for e in erasers.values() for p in e.parameters()}
    swapped = {id(p) for packed in swap.packed.values() for p in packed.params}
    assert swapped and not swapped & eraser_params
    assert all(p.numel() > 0 for e in erasers.values() for p in e.parameters()), "erasers stay in place"
    with torch.no_grad():
        during = predict()
    swap.close()
    assert all(p.numel() > 0 for p in pipe.transformer.parameters())
    with torch.no_grad():  # no hooks now: the weights in place are the originals
        assert torch.equal(predict(), during)


def _trained(tiny_runs, family_name, *flags):
    trainer, batch, sampler = tiny_runs.trainer(family_name, *flags)
    x = sampler.initial_latents(2)
    for i in range(3):
        trainer.update(sampler, x, i, batch)
    return [p.detach().clone() for p in trainer.params], trainer


def test_update_with_swap_gives_the_same_erasers(family_name, tiny_runs):
    """float32 on a CPU (the "device" and the "host" are the same memory): three updates with the last block
    swapped give bit for bit the erasers of three without; the backbone is intact afterwards."""
    reference, _ = _trained(tiny_runs, family_name, "--gradient_checkpointing")
    got, trainer = _trained(tiny_runs, family_name, "--blocks_to_swap", "1")
    assert trainer.block_swap is not None and trainer.block_swap.swapped == [trainer.resolved.checkpoint_blocks - 1]
    assert all(torch.equal(a, b) for a, b in zip(reference, got))
    assert any(p.abs().max() > 0 for p in got[3::4]), "the erasers trained"
    fresh = tiny_runs.trainer(family_name)[0].transformer.state_dict()
    trainer.close()
    kept = trainer.transformer.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in fresh.items() if ".adapter." not in k)


def test_swap_composes_with_fp8_storage_and_activation_offload(tiny_runs):
    reference, _ = _trained(tiny_runs, "cogvideox", "--gradient_checkpointing", "--fp8_weights", "--offload_activations")
    got, trainer = _trained(tiny_runs, "cogvideox", "--blocks_to_swap", "99", "--fp8_weights", "--offload_activations")
    assert trainer.resolved.blocks_to_swap == 2  # every block of the tiny model
    host = trainer.block_swap.packed[0].views(trainer.block_swap.packed[0].host)
    assert torch.float8_e4m3fn in {t.dtype for t in host}, "the fp8 weights are swapped as stored"
    assert all(torch.equal(a, b) for a, b in zip(reference, got))


# ------------------------------------------------------------------------------------------- settings


def _resolved(tiny_runs, *flags):
    from receler.train_unlearning_prompt_only import parse_args
    from receler.tiny import build_tiny_pipeline
    from receler.training import resolve_training

    config = parse_args(["--model_path", "-", "--target_concept", "x", "--output_dir", "-", *flags])
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    return resolve_training(config, get_family("cogvideox"), pipe, "cpu")


def test_swap_checkpoints_every_block_and_refuses_fewer(tiny_runs):
    resolved = _resolved(tiny_runs, "--blocks_to_swap", "1")
    assert (resolved.blocks_to_swap, resolved.checkpoint_blocks) == (1, 2)
    assert resolved.to_dict()["blocks_to_swap"] == 1  # recorded in args.json and eraser_config.json
    assert _resolved(tiny_runs, "--blocks_to_swap", "7").blocks_to_swap == 2  # at most every block
    with pytest.raises(UserError, match=r"--blocks_to_swap \(1 blocks\) needs every block checkpointed, but "
                                        r"--checkpoint_blocks is 1 of 2"):
        _resolved(tiny_runs, "--blocks_to_swap", "1", "--checkpoint_blocks", "1")


def test_cpu_offload_and_auto_swap_nothing_on_a_cpu(tiny_runs):
    for flags in (("--use_cpu_offload",), ("--blocks_to_swap", "auto")):
        resolved = _resolved(tiny_runs, *flags)
        assert (resolved.blocks_to_swap, resolved.checkpoint_blocks) == (0, 0)
    assert _resolved(tiny_runs, "--use_cpu_offload", "--blocks_to_swap", "1").blocks_to_swap == 1


def test_config_refuses_a_bad_swap_count():
    from receler.config import TrainConfig

    with pytest.raises(UserError, match="--blocks_to_swap must be 'auto' or a number of blocks >= 0"):
        TrainConfig(model_path="-", target_concept="x", output_dir="-", blocks_to_swap=-1)


# ------------------------------------------------------------------------------------------ estimator


# CogVideoX-5b's block, from its config (width 48 heads x 64 = 3072, time embedding 512, feed-forward 4 x width):
# two LayerNormZero (Linear 512 -> 6 x 3072 with bias, LayerNorm weight and bias), q/k/v/out Linear 3072 -> 3072
# with bias, q/k LayerNorm(64) weight and bias, feed-forward 3072 -> 12288 -> 3072 with biases.
D, T, FF = 3072, 512, 4 * 3072
BLOCK_PARAMS = 2 * (T * 6 * D + 6 * D + 2 * D) + 4 * (D * D + D) + 2 * 2 * 64 + (D * FF + FF + FF * D + D)
BLOCK_LINEAR_WEIGHTS = 2 * T * 6 * D + 4 * D * D + 2 * D * FF


def _shape_5b():
    from receler.estimate_memory import _pipe_of, model_shape
    from receler.presets import PRESETS, build_transformer

    family = get_family("cogvideox")
    transformer = build_transformer(PRESETS["cogvideox-5b"], torch.bfloat16, "meta")
    return model_shape(family, transformer, _pipe_of(family, transformer), 49, 480, 720)


def test_estimator_swap_terms_match_hand_computed_numbers_for_cogvideox_5b():
    from receler.estimate_memory import FP8_OVERHEAD, copied_per_update, estimate, fewest_blocks_to_swap

    shape = _shape_5b()
    assert shape.blocks == 42 and shape.block_params == [BLOCK_PARAMS] * 42  # 132,197,632 each
    every = dict(checkpoint_blocks=42)
    plain, swapped = estimate(shape, **every), estimate(shape, blocks_to_swap=30, **every)
    # bf16: 30 blocks leave, the running block and the one prefetched stay: 28 blocks of 2 bytes per parameter
    assert plain["weights"] - swapped["weights"] == 28 * BLOCK_PARAMS * 2
    assert plain["peak"] - swapped["peak"] == 28 * BLOCK_PARAMS * 2
    assert swapped["cpu_swapped_weights"] == 30 * BLOCK_PARAMS * 2 and plain["cpu_swapped_weights"] == 0
    assert copied_per_update(shape, 30) == 4 * 30 * BLOCK_PARAMS * 2  # 2 frozen passes, forward, recomputation
    # one swapped block is always the running one: nothing saved
    assert estimate(shape, blocks_to_swap=1, **every)["weights"] == plain["weights"]
    # fp8 storage: linear weights 1 byte (+ the compute-dtype copies), the rest bf16; CPU memory holds them as stored
    fp8_block = BLOCK_LINEAR_WEIGHTS + 2 * (BLOCK_PARAMS - BLOCK_LINEAR_WEIGHTS)
    plain8, swapped8 = estimate(shape, fp8=True, **every), estimate(shape, fp8=True, blocks_to_swap=30, **every)
    assert plain8["weights"] - swapped8["weights"] == pytest.approx(28 * (fp8_block + FP8_OVERHEAD * BLOCK_LINEAR_WEIGHTS))
    assert swapped8["cpu_swapped_weights"] == 30 * fp8_block
    # the fewest blocks that fit a budget 20 blocks of weights under the unswapped peak: 22 (two stay resident)
    budget = plain["peak"] - 20 * BLOCK_PARAMS * 2
    assert fewest_blocks_to_swap(shape, budget) == 22


def test_recommend_lists_swap_when_nothing_else_fits(capsys):
    from receler.estimate_memory import main

    report = main(["--preset", "cogvideox-5b", "--recommend", "--gpu_memory", "8"])
    best = report["recommendation"]
    assert not any(o["fits"] for o in report["options"] if not o["blocks_to_swap"])
    assert best["fits"] and best["flags"].endswith(f"--blocks_to_swap {best['blocks_to_swap']}")
    assert f"recommended: {best['flags']}" in capsys.readouterr().out
    fitting = [o for o in report["options"] if o["fits"]]
    assert min(o["copied_per_update"] for o in fitting) == best["copied_per_update"]


def test_estimator_use_cpu_offload_swaps_the_fewest_blocks_that_fit(capsys):
    from receler.estimate_memory import estimate, main

    report = main(["--preset", "cogvideox-5b", "--use_cpu_offload", "--gpu_memory", "12"])
    swap = report["settings"]["blocks_to_swap"]
    assert report["settings"]["checkpoint_blocks"] == 42 and 0 < swap < 42
    shape = _shape_5b()
    common = dict(checkpoint_blocks=42, localization=True)
    assert estimate(shape, blocks_to_swap=swap, **common)["peak"] <= 12 * 2**30
    assert estimate(shape, blocks_to_swap=swap - 1, **common)["peak"] > 12 * 2**30
    assert "swapped weights in pinned CPU memory" in capsys.readouterr().out


def test_swap_parameters_skip_adapters_and_trainable_ones():
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), AdapterEraser(4, 2), torch.nn.Linear(4, 4))
    block.requires_grad_(False)
    block[2].requires_grad_(True)
    assert [id(p) for p in swappable_parameters(block)] == [id(block[0].weight), id(block[0].bias)]


def test_swapped_model_runs_like_the_original(family_name):
    """Every family's tiny model, all blocks swapped (no grad): the same prediction as before swapping."""
    from receler.tiny import build_tiny_pipeline

    family = get_family(family_name)
    pipe = build_tiny_pipeline(family_name, seed=0)
    sampler = family.make_sampler(pipe, 4, 9, 32, 32, "cpu", torch.Generator().manual_seed(0))
    cond = family.encode_prompts(pipe, ["a cat on the beach"], "cpu")
    x = sampler.initial_latents(1)
    with torch.no_grad():
        before = sampler.predict(pipe.transformer, x, 1, cond)
        blocks = family.block_modules(pipe.transformer)
        swap = BlockSwap(pipe.transformer.requires_grad_(False), blocks, len(blocks), "cpu")
        assert all(p.numel() == 0 for b in blocks for p in swappable_parameters(b)), "nothing stays in place"
        assert torch.equal(sampler.predict(pipe.transformer, x, 1, cond), before)
    swap.close()


def test_cuda_copies_wait_for_each_copy_and_for_the_gpu_before_the_next(monkeypatch):
    """The CUDA copies with a stand-in runtime that records what they ask of it, over one forward pass (5 blocks,
    the last 3 swapped): each copy is recorded on the side stream, the compute stream waits for it before the block
    runs and claims the memory (record_stream); a released block records an event on the compute stream, and the
    CPU waits for it before starting the next copy, so at most the running block and one copy hold GPU memory.
    Host buffers are whole page-locked pages, unlocked again on close."""
    import mmap

    from receler import block_swap

    log, counter = [], [0]

    class Event:
        def __init__(self, stream):
            counter[0] += 1
            self.id = counter[0]
            log.append(("record", stream, self.id))

        def synchronize(self):
            log.append(("cpu waits", self.id))

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def record_event(self):
            return Event(self.name)

        def wait_event(self, event):
            log.append(("wait", self.name, event.id))

    class Runtime:
        def cudaHostRegister(self, ptr, size, flags):
            log.append(("lock", ptr % mmap.PAGESIZE, size % mmap.PAGESIZE))
            return 0

        def cudaHostUnregister(self, ptr):
            log.append("unlock")
            return 0

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: __import__("contextlib").nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream("compute"))
    monkeypatch.setattr(torch.cuda, "cudart", lambda: Runtime())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: log.append(("claim", stream.name)),
                        raising=False)

    class CpuAsCuda(block_swap.CudaCopies):  # the "device" is the CPU, everything else goes to the runtime
        def __init__(self):
            super().__init__("cpu")

    _, _, swap, _, _, predict = _swapped_tiny(5, 3, prefetch=1, copies=CpuAsCuda())
    assert log == [("lock", 0, 0)] * 3
    log.clear()
    with torch.no_grad():
        predict()
    assert log == [("record", "side", 1),                                           # copy of block 2
                   ("wait", "compute", 1), ("claim", "compute"), ("record", "side", 2),  # block 2 runs; copy 3
                   ("record", "compute", 3),                                        # block 2 released
                   ("wait", "compute", 2), ("claim", "compute"),                    # block 3 runs
                   ("cpu waits", 3), ("record", "side", 4),                         # block 2 done; copy 4
                   ("record", "compute", 5),                                        # block 3 released
                   ("wait", "compute", 4), ("claim", "compute")]                    # block 4 runs
    swap.close()
    assert log[-3:] == ["unlock"] * 3



def test_training_cli_with_swap_writes_the_same_erasers(tiny_cogvideox_dir, tiny_runs):
    """The whole run (``train()``: the transformer is placed by the trainer, not before): the same eraser files."""
    import json

    _, plain = tiny_runs.train(tiny_cogvideox_dir, "--gradient_checkpointing", "--max_steps", "2", name="plain")
    _, swapped = tiny_runs.train(tiny_cogvideox_dir, "--use_cpu_offload", "--blocks_to_swap", "1", "--max_steps", "2",
                                 name="swapped")
    a, b = tiny_runs.tensors(plain), tiny_runs.tensors(swapped)
    assert a.keys() == b.keys()
    # Equal to float rounding: bit for bit on some CPUs, not on others (an AMD EPYC differs by 5e-6 on weights of
    # 0.2, the plain run against itself not at all), since the swapped blocks' tensors are fresh copies and the CPU
    # kernels may pick another summation order for them. A wrong swap moves the weights by the update itself (1e-2).
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=k)
    resolved = json.loads((swapped / "args.json").read_text())["resolved"]
    assert (resolved["blocks_to_swap"], resolved["checkpoint_blocks"]) == (1, 2)
