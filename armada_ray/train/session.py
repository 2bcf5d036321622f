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
    teacher_fingerprint_id: str | None = None

    @classmethod
    def from_ray(cls, teacher_fingerprint_id: str | None = None) -> "Session":
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), teacher_fingerprint_id)

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
        print(f"[armada rank {self.rank}] {message}", file=sys.stdout, flush=True)
