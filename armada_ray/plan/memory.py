"""Does the student fit one worker? The ``armada_ray.train.memory`` estimate against what one worker gets: GPU
memory (``scaling.gpu_memory_gb``) on GPU, else the memory of the node it is placed on, shared by the workers
placed there (:func:`armada_ray.plan.cluster.place_workers`)."""

from __future__ import annotations

from typing import Any

from armada_ray.config import ArmadaConfig
from armada_ray.plan.checks import OK, SKIP, Check
from armada_ray.plan.cluster import place_workers
from armada_ray.train import memory


def student_shape(cfg: ArmadaConfig, task_kind: str) -> dict[str, Any]:
    """The student's parameter count and shape from its model config (no weights loaded)."""
    from armada_ray.model.hub import resolve_model_path  # lazy: model.hub imports torch

    path = resolve_model_path(cfg.student.model, cfg.student.revision, field="student.model")
    return memory.model_shape(path, causal_lm=task_kind == "generative")


def worker_budget(cfg: ArmadaConfig, res: dict[str, Any] | None) -> tuple[float, str] | None:
    """(GiB one worker may use, how that was decided); None when it depends on a cluster view we do not have."""
    s = cfg.scaling
    if s.use_gpu:
        accel = {n.get("accelerator") for n in (res or {}).get("nodes", []) if n.get("accelerator")}
        return s.gpu_memory_gb * s.memory_headroom, (
            f"GPU memory per worker: scaling.gpu_memory_gb={s.gpu_memory_gb:g} x headroom {s.memory_headroom:g}"
            + (f"; cluster GPUs: {', '.join(sorted(accel))}" if accel else ""))
    if res is None:
        return None
    nodes = res["nodes"]
    counts = place_workers(nodes, s.num_workers, s.cpus_per_worker, 0.0)
    used = [(nodes[i], c) for i, c in enumerate(counts) if c > 0] or [(max(nodes, key=lambda n: n["memory_gib"]),
                                                                       s.num_workers)]
    available = min(n["memory_gib"] / c for n, c in used) * s.memory_headroom
    return available, (f"CPU memory per worker: node memory / workers on it x headroom {s.memory_headroom:g}, "
                       f"{res['source']}")


def check_memory(cfg: ArmadaConfig, res: dict[str, Any] | None, shape: dict[str, Any] | None,
                 shape_problems: list[str] | None = None) -> Check:
    """The estimate per worker against :func:`worker_budget`; a refusal names the figures and what to change.
    ``shape`` None: the student's config could not be read, for the reasons in ``shape_problems``."""
    check = Check("memory")
    budget = worker_budget(cfg, res)
    if budget is None:
        return check.set(SKIP, "cluster resources unknown (check 6)")
    if shape is None:
        return check.fail(shape_problems or [f"cannot read the config of student.model={cfg.student.model!r}"])
    available, device = budget
    est = memory.estimate_for_config(cfg, shape, available, device)
    figures = (f"{cfg.student.model} ({est.params / 1e6:,.0f}M params, {est.trainable_params / 1e6:,.1f}M "
               f"trainable) at ZeRO-{cfg.train.zero_stage}{' + offload' if cfg.train.offload else ''}, "
               f"{cfg.scaling.num_workers} worker(s), batch {cfg.train.batch_size} x seq {cfg.student.max_length}: "
               f"~{est.total_gib:.1f} GiB per worker (weights {est.weights_gib:.1f}, grads {est.grads_gib:.1f}, "
               f"optimizer {est.optimizer_gib:.1f}, activations {est.activations_gib:.1f})")
    data = {"memory_gib_per_worker": round(est.total_gib, 3), "memory_available_gib": round(est.available_gib, 3),
            "memory": est.as_dict()}
    if est.fits:
        return check.set(OK, f"{figures} <= {est.available_gib:.1f} GiB available ({device})", **data)
    return check.fail([f"plan does not fit: {figures} > {est.available_gib:.1f} GiB available ({device}); try more "
                       "workers, train.zero_stage=3, train.offload=true (GPU), LoRA, "
                       "student.gradient_checkpointing=true or a smaller batch / student.max_length"], **data)
