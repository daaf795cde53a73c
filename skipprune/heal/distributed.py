"""Healing on N processes, with torch.distributed as the engine: `torchrun --nproc-per-node N -m skipprune heal
...` or `accelerate launch --num_processes N -m skipprune heal ...` (both set RANK, WORLD_SIZE and the rendezvous
address; skipprune joins the group they describe).

- Data parallel (`ddp`): every process holds the whole student; gradients are averaged by DDP.
- Sharded (`fsdp2`): `fully_shard` on every decoder block (the blocks skipprune finds in any family), then on the
  root; each process holds a 1/N slice of every weight between uses. The teacher is sharded the same way and
  runs without gradients.
Every process draws the same global batch of windows and takes its own contiguous share; each local loss is a
sum over tokens divided by the global token count, times N (DDP and FSDP2 average gradients over the N
processes), so N processes compute the gradient one process computes for the same global batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..errors import PlanError

STRATEGIES = ("auto", "ddp", "fsdp2")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, batch):
        """This process's contiguous share of a global batch (the first shares one row longer when N does not
        divide it)."""
        return batch.tensor_split(self.size)[self.rank] if self.size > 1 else batch

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str) -> World:
    """Join the process group the launcher describes (gloo on the CPU, nccl on GPUs); one process: no group.
    Only the main process logs and shows progress."""
    if not launched():
        return World()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    if not world.main:
        logging.getLogger("skipprune").setLevel(logging.WARNING)
    return world


def leave(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def pick_strategy(strategy: str, world: World, size: int, device: str) -> str:
    """`auto`: DDP when the student (`size` bytes) fits one GPU with room for its gradients and optimizer state
    (half its memory or less), FSDP2 when it does not; DDP on the CPU. One process: neither."""
    if strategy not in STRATEGIES:
        raise PlanError(f"unknown --parallel {strategy!r}: use {', '.join(STRATEGIES)}")
    if world.size == 1:
        return "none"
    if strategy != "auto":
        return strategy
    if device != "cuda":
        return "ddp"
    import torch

    return "ddp" if size <= torch.cuda.get_device_properties(world.local_rank).total_memory / 2 else "fsdp2"


def wrap(model, strategy: str, blocks, device: str, trainable: bool = True):
    """The student (or, `trainable=False`, the teacher) ready for N processes."""
    if strategy == "ddp" and trainable:
        from torch.nn.parallel import DistributedDataParallel

        ids = [int(device.split(":")[1])] if device.startswith("cuda:") else None
        # an MoE's experts that no token of a step reached get no gradient: DDP must not wait for them
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    if strategy == "fsdp2":
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (dist.get_world_size(),))
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


def unwrap(model):
    """The module inside DDP's wrapper (FSDP2 shards a module in place: it is its own)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def gathered_state(model, world: World) -> dict | None:
    """An FSDP2 model's weights, whole, on the main process's CPU (None elsewhere; every process takes part)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if world.main else None
