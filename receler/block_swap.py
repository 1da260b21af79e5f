"""Block swap (``--blocks_to_swap N``): the frozen weights of the last N transformer blocks live in CPU memory
and visit the GPU only while their block runs.

Each swapped block's weights are packed into one flat buffer in pinned CPU memory. Hooks on the transformer
and on every block follow the passes: when block ``i`` is about to run, its weights are made ready on the
device and the next :data:`PREFETCH_BLOCKS` swapped blocks in the direction of travel start copying (on a
separate CUDA stream, so the copy overlaps the compute); every other swapped block is released. A forward
pass travels up the blocks; gradient checkpointing recomputes them in backward travelling down, so backward
swaps in reverse order. The direction is read from the order of the calls: a pass starts at the
transformer's own call, and a block called at or below the one before it is a backward recomputation.

Why swap needs gradient checkpointing: without it, autograd keeps every block's weights referenced from the
forward pass until backward has used them, so nothing would leave the GPU. With it, a block's forward keeps
no tensors and its recomputation in backward uses the copy fetched for it, which is freed once that block's
backward has run.

Erasers (the ``adapter`` inside each wrapped attention), anything trainable and buffers are never swapped: the
erasers and their optimizer state stay on the device.

The copies sit behind :class:`DeviceCopies` (a few methods), so that where the "host" and the "device" are the
same CPU a stand-in can record what moves when (the tests), and a run on a CPU gives the same numbers as
without swap.
"""

import collections
import logging
import mmap

import torch

from .erasers.utils import AdapterEraser
from .errors import UserError

logger = logging.getLogger(__name__)

#: swapped blocks copied ahead of the one running; the estimator counts ``1 + PREFETCH_BLOCKS`` blocks resident
PREFETCH_BLOCKS = 1
_ALIGN = 256  # byte alignment of each weight inside a packed buffer (vectorised kernels need aligned rows)


# ------------------------------------------------------------------------------------------ the copies


class DeviceCopies:
    """How a packed block moves between host and device memory. This base class is for a device that is the
    host itself (a CPU run): the "device copy" is a clone and nothing waits."""

    def __init__(self, device):
        self.device = torch.device(device)

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """Host memory for one block's packed weights (uint8)."""
        return torch.empty(nbytes, dtype=torch.uint8)

    def start(self, host: torch.Tensor, block: int):
        """Begin copying block ``block``'s packed weights to the device; returns a handle for :meth:`finish`."""
        return host.to(self.device, copy=True)

    def finish(self, pending, block: int) -> torch.Tensor:
        """The device buffer of a started copy, usable by the computation that runs next."""
        return pending

    def released(self, block: int) -> None:
        """Block ``block``'s device copy was dropped (the computation queued so far may still read it)."""

    def close(self) -> None:
        """The swap is over: the host buffers stay as ordinary memory."""


class CudaCopies(DeviceCopies):
    """Page-locked host buffers, copies on a side stream, the compute stream waiting on each copy's event.

    The CPU may queue work far ahead of the GPU; each new copy first waits until the GPU has finished with the
    blocks released before it, so no more than ``1 + PREFETCH_BLOCKS`` swapped blocks hold device memory."""

    def __init__(self, device):
        super().__init__(device)
        self.stream = torch.cuda.Stream(self.device)
        self._released = collections.deque()  # events after the last use of each released block
        self._registered = []  # page-locked host ranges, unlocked again by close()

    def host_buffer(self, nbytes):
        # pin_memory=True would round every buffer up to a power of two (up to twice the CPU memory): page-lock
        # exactly the pages of an ordinary allocation instead, whole pages that no other allocation shares.
        page = mmap.PAGESIZE
        raw = torch.empty(nbytes + 2 * page, dtype=torch.uint8)
        start, size = -raw.data_ptr() % page, -(-nbytes // page) * page
        buffer = raw[start : start + size]
        cudart = torch.cuda.cudart()
        try:
            status = int(cudart.cudaHostRegister(buffer.data_ptr(), size, 0))
        except (AttributeError, RuntimeError) as err:
            status = str(err)
        if status != 0:
            logger.debug("cudaHostRegister failed (%s): using pin_memory", status)
            return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self._registered.append(buffer)
        return buffer[:nbytes]

    def start(self, host, block):
        while self._released:
            self._released.popleft().synchronize()
        with torch.cuda.stream(self.stream):
            buffer = host.to(self.device, non_blocking=True)
            done = self.stream.record_event()
        return buffer, done

    def finish(self, pending, block):
        buffer, done = pending
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(done)
        buffer.record_stream(compute)  # its memory is reused only once the compute stream is past this use
        return buffer

    def released(self, block):
        self._released.append(torch.cuda.current_stream(self.device).record_event())

    def close(self):
        torch.cuda.synchronize(self.device)  # no copy may still read a range being unlocked
        cudart = torch.cuda.cudart()
        for buffer in self._registered:
            cudart.cudaHostUnregister(buffer.data_ptr())
        self._registered = []


def device_copies(device) -> DeviceCopies:
    device = torch.device(device)
    return CudaCopies(device) if device.type == "cuda" else DeviceCopies(device)


# ---------------------------------------------------------------------------------------- one block


class _PackedBlock:
    """One swapped block: its frozen parameters, their bytes packed into one host buffer, and how to unpack."""

    def __init__(self, params: list, copies: DeviceCopies):
        self.params = params
        self.slots = []  # (offset in bytes, number of bytes, dtype, shape)
        offset = 0
        for p in params:
            nbytes = p.numel() * p.element_size()
            self.slots.append((offset, nbytes, p.dtype, tuple(p.shape)))
            offset += -(-nbytes // _ALIGN) * _ALIGN
        self.host = copies.host_buffer(max(offset, 1))
        with torch.no_grad():
            for p, view in zip(params, self.views(self.host)):
                view.copy_(p.data)
        self.empty = [torch.empty(0, dtype=p.dtype, device=copies.device) for p in params]

    @property
    def nbytes(self) -> int:
        return self.host.numel()

    def views(self, buffer: torch.Tensor) -> list:
        return [buffer[o : o + n].view(dtype).view(shape) for o, n, dtype, shape in self.slots]

    def install(self, tensors: list) -> None:
        for p, t in zip(self.params, tensors):
            p.data = t


def swappable_parameters(block: torch.nn.Module) -> list:
    """The block's frozen parameters: never an eraser's (the ``adapter`` modules) nor anything trainable."""
    erasers = {id(p) for m in block.modules() if isinstance(m, AdapterEraser) for p in m.parameters()}
    return [p for p in block.parameters() if id(p) not in erasers and not p.requires_grad]


# ------------------------------------------------------------------------------------------ the swap


class BlockSwap:
    """Keeps the frozen weights of the last ``count`` of ``blocks`` in host memory and brings each to the device
    just before its block runs (see the module's docstring). Built by :func:`enable_block_swap`; ``close()``
    removes the hooks and leaves the swapped weights as ordinary parameters in CPU memory."""

    def __init__(self, transformer, blocks: list, count: int, device, copies: DeviceCopies | None = None,
                 prefetch: int = PREFETCH_BLOCKS, compiled: bool = False):
        self.device = torch.device(device)
        self.copies = copies or device_copies(self.device)
        self.prefetch = prefetch
        self.blocks = list(blocks)
        count = max(0, min(count, len(self.blocks)))
        self.swapped = list(range(len(self.blocks) - count, len(self.blocks)))
        self.packed = {}
        for i in self.swapped:
            packed = _PackedBlock(swappable_parameters(self.blocks[i]), self.copies)
            packed.install(packed.empty)  # the device copies are made per use; the originals go
            self.packed[i] = packed
        transformer.to(self.device)  # everything else (the swapped weights are empty placeholders by now)
        self.state = {}  # block -> pending copy, or READY once its weights are installed
        self.last, self.direction = -1, 1
        # Compiled blocks would trace the hooks into their graphs: keep the hooks eager (importing the compiler
        # costs seconds, so only when blocks are compiled).
        eager = torch.compiler.disable if compiled else (lambda fn: fn)
        self._handles = [transformer.register_forward_pre_hook(eager(self._pass_starts))]
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(eager(self._block_hook(i))))

    READY = "ready"

    @property
    def host_bytes(self) -> int:
        return sum(p.nbytes for p in self.packed.values())

    def resident(self) -> list:
        """The swapped blocks whose weights are on the device or on their way."""
        return sorted(self.state)

    # ------------------------------------------------------------------------------------ the hooks
    def _pass_starts(self, module, args):
        self.last, self.direction = -1, 1
        self._plan(None)

    def _block_hook(self, index):
        def hook(module, args):
            if index <= self.last:  # a block again, or one below the last: backward recomputing, going down
                self.direction = -1
            self.last = index
            self._plan(index)

        return hook

    # ----------------------------------------------------------------------------------- the schedule
    def ahead(self, current: int | None) -> list:
        """The next ``prefetch`` swapped blocks after ``current`` (None: before the first block) in the
        direction of travel."""
        if self.direction > 0:
            start = -1 if current is None else current
            return [i for i in self.swapped if i > start][: self.prefetch]
        return [i for i in reversed(self.swapped) if i < current][: self.prefetch]

    def _plan(self, current: int | None) -> None:
        upcoming = self.ahead(current)
        running = [current] if current in self.packed else []
        for i in [i for i in self.state if i not in running + upcoming]:
            self._release(i)
        for i in running:
            self._ready(i)
        for i in upcoming:
            if i not in self.state:
                self._fetch(i)

    def _fetch(self, i: int) -> None:
        self.state[i] = self.copies.start(self.packed[i].host, i)

    def _ready(self, i: int) -> None:
        if i not in self.state:
            self._fetch(i)  # not prefetched (the first swapped block of a pass): copy now and wait
        if self.state[i] is not self.READY:
            packed = self.packed[i]
            packed.install(packed.views(self.copies.finish(self.state[i], i)))
            self.state[i] = self.READY

    def _release(self, i: int) -> None:
        if self.state.pop(i) is self.READY:
            self.packed[i].install(self.packed[i].empty)
            self.copies.released(i)

    # ------------------------------------------------------------------------------------------ close
    def close(self) -> None:
        """Remove the hooks; the swapped weights become ordinary parameters again, in CPU memory (the whole
        model may not fit the device: move it yourself if it does)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for i in list(self.state):
            self._release(i)
        for packed in self.packed.values():
            packed.install(packed.views(packed.host))
        self.copies.close()
        if self.packed and self.device.type != "cpu":
            logger.info("block swap off: the weights of the %d swapped blocks stay in CPU memory", len(self.packed))
        self.packed = {}


def enable_block_swap(transformer, blocks: list, count: int, device, copies: DeviceCopies | None = None,
                      compiled: bool = False):
    """Put ``transformer`` on ``device`` except the frozen weights of its last ``count`` ``blocks``, which stay
    in host memory and are swapped in per block; returns the :class:`BlockSwap` (None when ``count`` is 0).
    ``compiled``: the blocks will be compiled (the hooks are then kept out of their graphs)."""
    if not count:
        transformer.to(device)
        return None
    swap = BlockSwap(transformer, blocks, count, device, copies, compiled=compiled)
    logger.info("block swap: the weights of the last %d of %d blocks (%.2f GiB) live in %sCPU memory, copied to %s "
                "%d block(s) ahead", len(swap.swapped), len(blocks), swap.host_bytes / 2**30,
                "pinned " if isinstance(swap.copies, CudaCopies) else "", device, swap.prefetch)
    return swap


# ------------------------------------------------------------------------------------ training settings


def requested_swap(config):
    """``--blocks_to_swap`` as asked: a count, ``"auto"``, or (not given) ``"auto"`` under ``--use_cpu_offload``
    and 0 otherwise."""
    if config.blocks_to_swap is not None:
        return config.blocks_to_swap
    return "auto" if config.use_cpu_offload else 0


def device_budget(device, transformer) -> float:
    """Bytes an update may use on a GPU: 90% of its free memory plus what the transformer already holds there
    (the estimate counts the weights itself, wherever they are now)."""
    device = torch.device(device)
    free, _ = torch.cuda.mem_get_info(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    held = sum(t.numel() * t.element_size() for t in [*transformer.parameters(), *transformer.buffers()]
               if t.device.type == "cuda" and t.device.index == index)
    return 0.9 * (free + held)


def resolve_block_swap(config, family, pipe, device, resolved, checkpoint_blocks: int) -> tuple:
    """``(blocks to swap, blocks to checkpoint)`` for a run. A count is taken as given; ``auto`` swaps nothing
    on a CPU or when the update fits without, else the fewest blocks that fit the GPU's free memory by the
    memory estimator. Swapping checkpoints every block; an explicit smaller ``--checkpoint_blocks`` is refused."""
    device = torch.device(device)
    total = len(family.block_modules(pipe.transformer))
    asked = requested_swap(config)
    if asked == "auto":
        asked = _auto_swap(config, family, pipe, device, resolved, checkpoint_blocks, total)
    count = min(int(asked), total)
    if count == 0:
        return 0, checkpoint_blocks
    if not config.gradient_checkpointing and config.checkpoint_blocks != "auto" and int(config.checkpoint_blocks) < total:
        raise UserError(
            f"--blocks_to_swap ({count} blocks) needs every block checkpointed, but --checkpoint_blocks is "
            f"{config.checkpoint_blocks} of {total}: a block's weights can leave the GPU only if backward recomputes "
            f"its activations. Leave --checkpoint_blocks out (auto) or pass --gradient_checkpointing."
        )
    return count, total


def _auto_swap(config, family, pipe, device, resolved, checkpoint_blocks, total) -> int:
    if device.type != "cuda":
        logger.info("--blocks_to_swap auto: nothing to swap on a %s", device.type)
        return 0
    from .estimate_memory import estimate, fewest_blocks_to_swap, run_shape

    shape, common = run_shape(family, pipe.transformer, resolved, config)
    budget = device_budget(device, pipe.transformer)
    if estimate(shape, checkpoint_blocks=checkpoint_blocks, **common)["peak"] <= budget:
        logger.info("--blocks_to_swap auto: the update fits %.1f GiB without swapping", budget / 2**30)
        return 0
    count = fewest_blocks_to_swap(shape, budget, **common)
    if count is None:
        need = estimate(shape, checkpoint_blocks=total, blocks_to_swap=total, **common)["peak"]
        logger.warning("even swapping every block the update needs ~%.1f GiB (%.1f GiB available): add --fp8_weights, "
                       "--offload_activations, fewer --num_frames or a smaller size", need / 2**30, budget / 2**30)
        return total
    logger.info("--blocks_to_swap auto: swapping %d of %d blocks to fit %.1f GiB", count, total, budget / 2**30)
    return count
