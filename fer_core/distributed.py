"""Device choice and torchrun/DDP set-up (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Env:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device_name: str = "auto") -> Env:
    """Join the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return Env(rank, world, local_rank, device)


def barrier(env: Env) -> None:
    if env.distributed:
        dist.barrier()


def any_true(env: Env, flag: bool) -> bool:
    """True on every rank when it is true on any rank."""
    if not env.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


def average_gradients(env: Env, parameters) -> None:
    """For tasks that step their own optimisers: average each parameter's gradient over the
    processes as soon as backward has accumulated it (every process runs the same graph, so the
    all-reduces pair up in the same order)."""
    if not env.distributed:
        return

    def average(param: torch.Tensor) -> None:
        dist.all_reduce(param.grad)
        param.grad.div_(env.world)

    for param in parameters:
        param.register_post_accumulate_grad_hook(average)


def teardown(env: Env) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
