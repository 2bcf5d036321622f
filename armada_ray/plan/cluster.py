"""Does the plan fit the cluster? Workers (and embed actors) packed onto a cluster view node by node.

A cluster view is plain data, ``{"source": str, "nodes": [{"CPU", "GPU", "memory_gib", "accelerator", ...}]}``:
what Ray reports, the ``scaling.cluster_spec`` description at full scale, or :func:`machine_resources`. The
orchestration layer gathers it (``armada_ray.resources``); nothing here imports Ray.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from armada_ray.config import ArmadaConfig
from armada_ray.plan.checks import FAIL, OK, Check

GIB = 1024**3


def machine_resources() -> dict[str, Any]:
    """This machine as a one-node cluster view (a local run: no ``RAY_ADDRESS``)."""
    import psutil

    gpus = 0
    torch = sys.modules.get("torch")
    try:
        if torch is None:
            import torch  # lazy: only a view of this machine needs it, and only for its GPU count
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch/CUDA: no GPUs
        gpus = 0
    return {"source": "this machine (no RAY_ADDRESS)",
            "nodes": [{"node_id": "local", "ip": "127.0.0.1", "CPU": float(os.cpu_count() or 1), "GPU": float(gpus),
                       "memory_gib": psutil.virtual_memory().total / GIB, "accelerator": None}]}


def place_workers(nodes: list[dict[str, Any]], n: int, cpus: float, gpus: float) -> list[int]:
    """Workers per node when ``n`` workers of ``cpus`` CPUs and ``gpus`` GPUs are packed onto ``nodes``
    (largest first, as Ray Train's PACK placement does); ``sum(result) < n`` means they do not fit."""
    counts = [0] * len(nodes)
    order = sorted(range(len(nodes)), key=lambda i: (-nodes[i]["GPU"], -nodes[i]["CPU"]))
    left = n
    for i in order:
        fit_cpu = math.floor(nodes[i]["CPU"] / cpus + 1e-9) if cpus > 0 else left
        fit_gpu = math.floor(nodes[i]["GPU"] / gpus + 1e-9) if gpus > 0 else left
        take = max(0, min(left, fit_cpu, fit_gpu))
        counts[i] = take
        left -= take
        if left == 0:
            break
    return counts


def check_cluster(cfg: ArmadaConfig, command: str, res: dict[str, Any]) -> Check:
    """The training workers (``embed``: the teacher actors) fit ``res`` node by node; a worker never spans nodes."""
    check = Check("cluster")
    nodes = res["nodes"]
    total_cpu = sum(n["CPU"] for n in nodes)
    total_gpu = sum(n["GPU"] for n in nodes)
    have = f"{res['source']}: {len(nodes)} node(s), {total_cpu:g} CPU, {total_gpu:g} GPU"
    data = {"cluster_nodes": len(nodes), "cluster_cpus": total_cpu, "cluster_gpus": total_gpu}
    if command == "embed":
        e = cfg.embed
        cpu = 0.5 if cfg.teacher.kind == "http" else 1.0
        need = f"{e.concurrency} teacher actor(s) x ({cpu:g} CPU, {e.num_gpus_per_actor:g} GPU)"
        counts = place_workers(nodes, e.concurrency, cpu, e.num_gpus_per_actor)
        if sum(counts) < 1:
            return check.set(FAIL, f"not even one teacher actor fits ({need}); {have}", **data)
        if sum(counts) < e.concurrency:
            return check.set(OK, f"{need}: only {sum(counts)} fit at once, the pool will be smaller; {have}", **data)
        return check.set(OK, f"{need} fit; {have}", **data)
    s = cfg.scaling
    gpus = s.gpus_per_worker if s.use_gpu else 0.0
    need = f"{s.num_workers} worker(s) x ({s.cpus_per_worker:g} CPU, {gpus:g} GPU)"
    counts = place_workers(nodes, s.num_workers, s.cpus_per_worker, gpus)
    data["workers_per_node"] = [c for c in counts if c]
    if sum(counts) < s.num_workers:
        keys = f"scaling.num_workers={s.num_workers}, scaling.cpus_per_worker={s.cpus_per_worker:g}" + (
            f", scaling.gpus_per_worker={s.gpus_per_worker:g}" if s.use_gpu else "")
        return check.set(FAIL, f"{need} do not fit: {sum(counts)} of {s.num_workers} can be placed (a worker never "
                               f"spans nodes); {have}; lower {keys} or use a larger cluster", **data)
    placed = "+".join(str(c) for c in counts if c)
    extra = ""
    if command == "tune":
        trials = 0
        spare = [dict(n) for n in nodes]
        while trials < cfg.tune.max_concurrent_trials:
            got = place_workers(spare, s.num_workers, s.cpus_per_worker, gpus)
            if sum(got) < s.num_workers:
                break
            for i, c in enumerate(got):
                spare[i]["CPU"] -= c * s.cpus_per_worker
                spare[i]["GPU"] -= c * gpus
            trials += 1
        extra = f"; {trials} of tune.max_concurrent_trials={cfg.tune.max_concurrent_trials} trial(s) fit at once"
        data["concurrent_trials"] = trials
    return check.set(OK, f"{need} fit ({placed} per node){extra}; {have}", **data)
