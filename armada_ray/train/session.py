"""The few things the per-worker loop needs from its runtime (rank, device, report, checkpoint, log).

Isolated here so the loop itself has one Ray touchpoint: ``Session.from_ray()`` inside a Ray Train
worker. Reports carry a checkpoint directory that every rank fills with its own DeepSpeed shard; Ray
Train merges the ranks' files into one checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Session:
    rank: int
    world_size: int
    device: torch.device
    label: str | None = None  # the run's short name: concurrent trials' lines must tell whose they are
    keeps_checkpoints = True  # class attribute: a Ray Train run checkpoints every epoch

    @classmethod
    def from_ray(cls, label: str | None = None) -> "Session":
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), label)

    def get_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def placement(self) -> str:
        """Where this rank runs (Ray node id, host, IP), for the job's logs."""
        import socket

        import ray

        node = ray.get_runtime_context().get_node_id()
        return (f"placement: rank {self.rank} of {self.world_size} on node_id={node} "
                f"host={socket.gethostname()} ip={ray.util.get_node_ip_address()}")

    def log(self, message: str) -> None:
        who = f"{self.label} rank {self.rank}" if self.label else f"rank {self.rank}"
        print(f"[armada {who}] {message}", file=sys.stdout, flush=True)


@dataclass
class LocalSession(Session):
    """One rank in this process, without Ray: what ``armada report`` runs many cells in.

    A Ray Train run pays ≈ 30 s of start-up (controller, worker group, process group) before its first step;
    a study of dozens of small cells that each fit one worker would spend most of its time there. Here the
    gloo process group is created once per process (:func:`init_local_process_group`) and every cell reuses
    it. Reports are kept in memory; no checkpoint is written (``keeps_checkpoints`` is False).
    """

    reports: list[dict[str, Any]] | None = None
    quiet: bool = False
    keeps_checkpoints = False

    @classmethod
    def create(cls, device: str = "cpu", quiet: bool = False) -> "LocalSession":
        init_local_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(0, 1, torch.device(device), reports=[], quiet=quiet)

    def get_checkpoint(self) -> Any:
        return None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        assert self.reports is not None
        self.reports.append(dict(metrics))

    def placement(self) -> str:
        return "placement: rank 0 of 1 in this process (no Ray)"

    def log(self, message: str) -> None:
        if not self.quiet:
            super().log(message)


def init_local_process_group(backend: str = "gloo") -> None:
    """A one-rank torch.distributed group on loopback (DeepSpeed needs one), created once per process."""
    import os
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        os.environ[key] = value
    dist.init_process_group(backend, rank=0, world_size=1)
