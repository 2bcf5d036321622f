"""The cluster view the plan checks read (``armada_ray.plan``): ``scaling.cluster_spec`` at full scale when given,
else the Ray cluster at ``$RAY_ADDRESS`` (or the one this process is connected to), else this machine."""

from __future__ import annotations

import os
import sys
from typing import Any

from armada_ray.cluster_spec import nodes_from_spec
from armada_ray.plan import machine_resources

GIB = 1024**3


def cluster_resources() -> dict[str, Any]:
    """What the workers can use: the Ray cluster at ``$RAY_ADDRESS`` (or the one this process is already
    connected to), else this machine. ``{"source", "nodes": [{"CPU", "GPU", "memory_gib", ...}], ...}``.

    Connecting to a cluster only to read it, this function disconnects again, so the command that follows
    connects with its own runtime environment.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return _ray_resources(ray, os.environ.get("RAY_ADDRESS") or "this process's Ray instance")
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address and address != "local":
        import ray  # lazy: a local run and the CLI's start-up never load Ray here

        ray.init(address=address, configure_logging=False, log_to_driver=False)
        try:
            return _ray_resources(ray, address)
        finally:
            ray.shutdown()
    return machine_resources()


def _ray_resources(ray: Any, address: str) -> dict[str, Any]:
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        nodes.append({
            "node_id": n.get("NodeID"), "ip": n.get("NodeManagerAddress"), "CPU": float(res.get("CPU", 0.0)),
            "GPU": float(res.get("GPU", 0.0)), "memory_gib": float(res.get("memory", 0.0)) / GIB,
            "accelerator": next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), None),
        })
    return {"source": f"Ray cluster {address}", "nodes": nodes}


def cluster_view(cfg: Any) -> dict[str, Any]:
    """The view the plan is sized on: GPU groups that scale from zero count at their maximum (issue 15)."""
    if cfg.scaling.cluster_spec:
        return nodes_from_spec(cfg.scaling.cluster_spec)
    return cluster_resources()
