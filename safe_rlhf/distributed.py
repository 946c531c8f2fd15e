"""Process-group plumbing as plain functions: start-up, rank queries, collectives, and a clean shutdown.

Works under ``python -m`` (a one-process group is created on a free port), ``deepspeed`` and ``torchrun`` (which set
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT). On machines without CUDA the backend is gloo.
"""

from __future__ import annotations

import gc
import os
import socket
from typing import Any

import torch
import torch.distributed as dist


def find_free_port() -> int:
    """A TCP port nobody listens on now (``--master_port 0`` hangs the deepspeed launcher; pick one instead)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed() -> None:
    """Create the default process group once (single-process runs get a world of one)."""
    if dist.is_available() and dist.is_initialized():
        return
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
        )
        os.environ.setdefault("MASTER_PORT", str(find_free_port()))
    os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
    import deepspeed

    if torch.cuda.is_available():
        torch.cuda.set_device(device())
        deepspeed.init_distributed(dist_backend="nccl")
    else:
        deepspeed.init_distributed(dist_backend="gloo")


def synchronize() -> None:
    """Wait for this process's queued GPU work (a phase timer must not stop while its kernels run); no-op on CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize(device())


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def print0(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only."""
    if is_main_process():
        print(*args, **kwargs, flush=True)


def broadcast_object(value: Any, src: int = 0) -> Any:
    """The value held by rank ``src``, on every rank."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor on every rank)."""
    result = tensor.detach().clone().to(device())
    if world_size() > 1:
        dist.all_reduce(result, op=dist.ReduceOp.SUM)
    return result.cpu() if tensor.device.type == "cpu" else result


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(tensor) / world_size()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate tensors from every rank along dim 0 (rank order); dim 0 may differ (even be 0) between ranks."""
    if world_size() == 1:
        return tensor
    length = torch.tensor([tensor.shape[0]], device=device())
    lengths = [torch.zeros_like(length) for _ in range(world_size())]
    dist.all_gather(lengths, length)
    max_length = int(max(int(n.item()) for n in lengths))
    padded = torch.zeros(max_length, *tensor.shape[1:], dtype=tensor.dtype, device=device())
    padded[: tensor.shape[0]] = tensor.to(device())
    gathered = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    parts = [chunk[: int(n.item())] for chunk, n in zip(gathered, lengths)]
    return torch.cat(parts).to(tensor.device)


# Set by the entry point for ``--multirun``: several jobs run one after another in one process, and DeepSpeed caches
# the process group, so the group must outlive each job; it is destroyed once, at exit.
keep_process_group_between_jobs = False


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def shutdown(*engines: Any) -> None:
    """Destroy engines, collect garbage, then the process group.

    Order matters on CPU: without destroying DeepSpeed engines and a full ``gc.collect()`` first, gloo aborts at exit
    in about one 2-rank run in three.
    """
    for engine in engines:
        destroy = getattr(engine, "destroy", None)
        if callable(destroy):
            destroy()
    gc.collect()
    if keep_process_group_between_jobs:
        import atexit

        atexit.register(_destroy_process_group)  # idempotent: it checks is_initialized
        return
    _destroy_process_group()
