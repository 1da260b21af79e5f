"""Data parallelism over prompts: every process trains the same erasers on its share of each batch.

Under ``accelerate launch`` (or ``torchrun``) each process takes a slice of every global prompt batch;
losses are normalised by the *global* batch, gradients are summed across processes, so every process
takes the same AdamW step and the erasers stay identical everywhere. One process alone is the same
code with nothing to synchronise.
"""

import os

import torch


class Distributed:
    def __init__(self, device=None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world_size > 1:
            from accelerate import PartialState  # sets up the process group accelerate/torchrun describe

            state = PartialState(cpu=str(device) == "cpu" or not torch.cuda.is_available())
            self.rank, self.device = state.process_index, state.device
        else:
            self.rank = 0
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list, per_process: int) -> list:
        """This process's slice of a global batch of ``per_process * world_size`` items."""
        return items[self.rank * per_process : (self.rank + 1) * per_process]

    def sum_gradients(self, params: list) -> None:
        """All-reduce (sum) the gradients of ``params`` in one flat buffer; missing gradients count as zero."""
        if not self.enabled:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def sum_scalars(self, values: dict) -> dict:
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()
