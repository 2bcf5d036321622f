"""``armada train``: checks the plan on the driver, then runs the per-worker loop on a Ray Train
``TorchTrainer`` (gloo on CPU, NCCL on GPU; DeepSpeed reuses the process group Ray Train sets up)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from armada_ray import console
from armada_ray.cache import resolve_teacher_identity
from armada_ray.config import ArmadaConfig, save_config
from armada_ray.fingerprint import TeacherIdentity
from armada_ray.plan import check_plan, resolve_run_name
from armada_ray.ray_utils import ensure_ray
from armada_ray.resources import cluster_view
from armada_ray.train import checkpoint as ckpt
from armada_ray.train.env import worker_env


def teacher_identity(cfg: ArmadaConfig, known: TeacherIdentity | None = None) -> TeacherIdentity | None:
    """The teacher identity a distilled run's workers open the cache by (None for the baseline or when nothing was
    embedded): ``known`` (resolved earlier by the driver) when it was resolved from this config's teacher."""
    if cfg.loss.mode != "armada":
        return None
    return resolve_teacher_identity(cfg, known=known)


def build_trainer(cfg: ArmadaConfig, *, parent_run_id: str | None = None, callbacks: list[Any] | None = None,
                  name: str = "train", eval_test: bool = False, teacher: TeacherIdentity | None = None) -> Any:
    """The ``TorchTrainer`` of one training run (also built per trial by the Tune driver).

    ``eval_test``: also score the test split at every new best dev epoch (``test_at_best_dev`` in the summary).
    ``teacher``: the teacher identity the driver resolved (see :func:`teacher_identity`); the workers receive it
    in their config and open the cache by it, never fingerprinting the teacher themselves.
    """
    # lazy: Ray and the worker loop (torch, DeepSpeed) load only when a trainer is built
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from armada_ray.train.loop import train_loop_per_worker

    scaling = ray.train.ScalingConfig(
        num_workers=cfg.scaling.num_workers,
        use_gpu=cfg.scaling.use_gpu,
        resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                              **({"GPU": cfg.scaling.gpus_per_worker} if cfg.scaling.use_gpu else {})},
    )
    run_config = ray.train.RunConfig(
        name=name,
        storage_path=ckpt.run_storage(cfg),  # a folder or a pyarrow URI (s3://, gs://): Ray Train writes either
        failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.train.keep_checkpoints, checkpoint_score_attribute="dev_metric",
            checkpoint_score_order="max",
        ),
        callbacks=callbacks or None,
        # Ray Train's own INFO lines (resource requests, worker-group start) stay in its log files
        logging_config=ray.train.LoggingConfig(log_level=console.train_log_level()),
    )
    identity = teacher_identity(cfg, known=teacher)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "parent_run_id": parent_run_id,
                           "teacher": identity.to_json() if identity is not None else None, "eval_test": eval_test},
        scaling_config=scaling,
        run_config=run_config,
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
    )


def summarize_result(cfg: ArmadaConfig, wall_s: float) -> dict[str, Any]:
    """The facts of a finished run (paths, metrics, MLflow run id), also written to summary.json.

    Read from the run's checkpoint storage (local or a URI) rather than from Ray's ``Result``, so a run on remote
    storage and a resumed run are summarised the same way."""
    ckpts = ckpt.list_checkpoints(ckpt.run_storage(cfg))
    best = ckpt.best_of(ckpts)
    latest = ckpts[-1].location if ckpts else None
    best_path = best.location if best else latest
    # the latest checkpoint holds the whole history (the best one only up to its epoch)
    final_state: dict[str, Any] = {}
    for path in (latest, best_path):
        state = ckpt.read_json(path, "state.json") if path else None
        if state:
            final_state = state
            break
    task = ckpt.read_json(best_path, "task.json") if best_path else None
    summary = {
        "run_name": cfg.run_name,
        "run_dir": str(cfg.run_dir),
        "best_checkpoint": best_path,
        "latest_checkpoint": latest,
        "best_dev_metric": best.dev_metric if best else None,
        "test_at_best_dev": final_state.get("test_at_best_dev"),
        "metric": task["metric"] if task else None,
        "epochs": final_state.get("epoch"),
        "history": final_state.get("history", []),
        "mlflow_run_id": final_state.get("mlflow_run_id"),
        "tracking_uri": cfg.tracking_uri if cfg.tracking.enabled else None,
        "wall_s": round(wall_s, 1),
    }
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def run_train(cfg: ArmadaConfig, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """``armada train``: check the plan, run the TorchTrainer, print where everything went.

    ``plan``: the facts of a plan already checked on this driver (the CLI's preflight of a submitted job), so
    the checks do not run twice."""
    cfg = resolve_run_name(cfg)
    t0 = time.perf_counter()
    if plan is None:
        plan = check_plan(cfg, cluster_view(cfg))
    if plan.get("skipped_rows_file"):
        print(f"[armada] {plan['skipped_rows']} source rows skipped (file, row, field, reason each): "
              f"{plan['skipped_rows_file']}", flush=True)
    memory = plan.get("memory") or {}
    print(f"[armada] plan: {plan.get('train_rows')} train / {plan.get('dev_rows')} dev rows of {cfg.task.name}"
          + (f"; ~{memory['total_gib']:.2f} GiB per worker of {memory['available_gib']:.1f} available"
             if memory else ""), flush=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.run_dir)
    for k, v in worker_env(cfg).items():
        os.environ.setdefault(k, v)
    ensure_ray(runtime_env={"env_vars": worker_env(cfg)})
    result = build_trainer(cfg).fit()
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    summary = summarize_result(cfg, time.perf_counter() - t0)
    print(f"[armada] best dev {summary['metric']}: {summary['best_dev_metric']} -> {summary['best_checkpoint']}")
    return {k: v for k, v in summary.items() if k != "history"} | {"config": str(cfg.run_dir / "config.yaml")}
