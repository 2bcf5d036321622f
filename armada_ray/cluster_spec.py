"""The nodes an autoscaling cluster can have, read from its description (issue 15).

A cluster that scales its GPU groups from zero (``cluster/autoscaler.yaml``, ``cluster/kuberay/*.yaml``) has no
GPU node alive when a job starts, so a preflight that counts only live nodes refuses every GPU plan before Ray
would ask for one. With ``scaling.cluster_spec`` naming the cluster's description, the preflight sizes the plan
against the cluster at full scale instead: the head plus every worker type at its maximum count (capped by the
launcher's global ``max_workers``), and still refuses a plan that none of those node types can hold.

Read by hand because neither format has a reader that gives per-node resources without a cloud account: Ray's
cluster-launcher YAML (``available_node_types`` with declared ``resources``) and KubeRay's RayCluster/RayJob
(``headGroupSpec``/``workerGroupSpecs``: ``rayStartParams`` overrides, else the container's resource limits).
Plain Python: no Ray import.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from armada_ray.config import ConfigError

_GIB = 2**30
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _quantity(value: Any) -> float:
    """A Kubernetes quantity ("96", "500m", "900Gi") as a number (bytes for memory)."""
    text = str(value).strip()
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|K|M|G|T)?", text)
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "m":
        return number / 1000
    return number * _UNITS[unit] if unit else number


def _node(kind: str, cpu: float, gpu: float, memory_bytes: float | None) -> dict[str, Any]:
    return {"node_id": f"{kind} (not yet started)", "ip": None, "node_type": kind, "CPU": float(cpu),
            "GPU": float(gpu), "memory_gib": (memory_bytes or 0.0) / _GIB, "accelerator": None}


def _launcher_nodes(doc: dict[str, Any], source: str) -> list[dict[str, Any]]:
    types = doc["available_node_types"] or {}
    head = doc.get("head_node_type")
    cap = doc.get("max_workers")
    nodes: list[dict[str, Any]] = []
    workers: list[dict[str, Any]] = []
    for name, spec in types.items():
        res = (spec or {}).get("resources") or {}
        if "CPU" not in res:
            raise ConfigError(f"{source}: available_node_types.{name}.resources declares no CPU; declare "
                              f"{{CPU: n, GPU: n, memory: bytes}} so the preflight can size plans on it "
                              "(Ray's own detection needs the cloud)")
        count = 1 if name == head else int((spec or {}).get("max_workers", cap or 0))
        made = [_node(name, res["CPU"], res.get("GPU", 0), res.get("memory")) for _ in range(count)]
        (nodes if name == head else workers).extend(made)
    workers.sort(key=lambda n: (-n["GPU"], -n["CPU"]))  # the richest nodes first under the global cap
    return nodes + (workers[:cap] if cap is not None else workers)


def _group_node(group: dict[str, Any], name: str) -> dict[str, Any]:
    params = group.get("rayStartParams") or {}
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    cpu = _quantity(params.get("num-cpus", limits.get("cpu", 0)))
    gpu = _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    memory = _quantity(params["memory"]) if "memory" in params else (
        _quantity(limits["memory"]) if "memory" in limits else None)
    return _node(name, cpu, gpu, memory)


def _kuberay_nodes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [_group_node(spec.get("headGroupSpec") or {}, "head")]
    for group in spec.get("workerGroupSpecs") or []:
        count = int(group.get("maxReplicas", group.get("replicas", 0)))
        nodes += [_group_node(group, group.get("groupName", "workers")) for _ in range(count)]
    return nodes


def nodes_from_spec(path: str | Path) -> dict[str, Any]:
    """The cluster at full scale, in :func:`armada_ray.resources.cluster_resources`' shape
    (``{"source", "nodes": [...]}``); raises :class:`ConfigError` naming what it cannot read."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config error: scaling.cluster_spec={str(path)!r}: no such file")
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]
    except yaml.YAMLError as exc:
        raise ConfigError(f"config error: scaling.cluster_spec={str(path)!r} is not YAML: "
                          f"{str(exc).splitlines()[0]}") from None
    for doc in docs:
        if "available_node_types" in doc:
            nodes = _launcher_nodes(doc, str(path))
            break
        if doc.get("kind") in ("RayCluster", "RayJob"):
            spec = doc.get("spec") or {}
            nodes = _kuberay_nodes(spec.get("rayClusterSpec", spec) if doc["kind"] == "RayJob" else spec)
            break
    else:
        raise ConfigError(f"config error: scaling.cluster_spec={str(path)!r} holds neither a Ray cluster-launcher "
                          "config (available_node_types) nor a KubeRay RayCluster/RayJob")
    types = sorted({n["node_type"] for n in nodes})
    return {"source": f"{path} at full scale (autoscaling; node types {', '.join(types)}; {len(nodes)} node(s) "
                      "at most)", "nodes": nodes}
