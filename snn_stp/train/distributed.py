"""torch.distributed set-up from torchrun's environment, and the reductions the loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_request: str = "auto") -> DistContext:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local, device)


def resolve_device(device_request: str = "auto", local_rank: int = 0) -> torch.device:
    """``train.device`` as a device: ``auto`` is this process's GPU where torch sees one, else the CPU."""
    if device_request == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device_request)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device {device_request!r} asked for CUDA, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def teardown(context: DistContext, finished: bool = False) -> None:
    """Leave the process group. After a run that ``finished`` on every rank, wait for all ranks
    first: a rank that destroys its group and exits while another still works (rank 0 writes the
    summary) closes the connections under that rank's gloo threads, which once aborted it
    ("terminate called without an active exception"). After a failure, no wait: the other ranks
    may never arrive."""
    if context.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[float], context: DistContext) -> list[float]:
    """Element-wise sum over ranks (float64), identity when alone."""
    if not context.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(value, context: DistContext) -> list:
    """Every rank's ``value`` (any picklable object), in rank order."""
    if not context.enabled:
        return [value]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


#: Slurm's environment variables a run records (``summary.json``'s ``placement``), by the name it
#: records them under.
SLURM_VARIABLES = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID",
                   "array_task_id": "SLURM_ARRAY_TASK_ID", "node": "SLURMD_NODENAME",
                   "partition": "SLURM_JOB_PARTITION", "restart_count": "SLURM_RESTART_COUNT"}


def placement(context: DistContext) -> dict:
    """Where this process runs, for the run's summary: the launcher (``slurm`` inside a Slurm job,
    else ``local``), the host, the device and GPU model, the world size, and the Slurm job's ids
    (array job and index, node, partition, how often it was requeued) where there is one."""
    import socket

    found = {"launcher": "slurm" if "SLURM_JOB_ID" in os.environ else "local", "host": socket.gethostname(),
             "device": str(context.device), "world_size": context.world_size}
    if context.device.type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(context.device)
    slurm = {key: os.environ[name] for key, name in SLURM_VARIABLES.items() if name in os.environ}
    if slurm:
        found["slurm"] = slurm
    return found

