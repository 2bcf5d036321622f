"""``armada train``: checks the plan on the driver, then runs the per-worker loop on a Ray Train
``TorchTrainer`` (gloo on CPU, NCCL on GPU; DeepSpeed reuses the process group Ray Train sets up)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from armada_ray import console, environ
from armada_ray.cache import resolve_teacher_identity
from armada_ray.config import ArmadaConfig, ConfigError, save_config
from armada_ray.fingerprint import TeacherIdentity
from armada_ray.train import checkpoint as ckpt
from armada_ray.train import ops
from armada_ray.train.ds_config import check_ds_settings

# Worker processes inherit these (set on the driver before Ray starts, and in the runtime env).
_PASS_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ARMADA_CACHE_DIR", "TORCH_EXTENSIONS_DIR",
             "HF_HOME", "MLFLOW_TRACKING_URI")


def resolve_run_name(cfg: ArmadaConfig) -> ArmadaConfig:
    """Fix ``run_name``: given, the latest run of the experiment when resuming, or a new timestamped one."""
    if cfg.run_name:
        return cfg
    exp_dir = cfg.work_dir / "runs" / cfg.experiment
    if cfg.resume:
        runs = sorted((p for p in exp_dir.glob("*") if (p / "config.yaml").exists()), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ConfigError(f"config error: resume=true but no earlier run under {exp_dir}; set run_name=<name>")
        return cfg.model_copy(update={"run_name": runs[-1].name})
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg.model_copy(update={"run_name": f"{cfg.task.name}-{cfg.loss.mode}-{stamp}"})


def worker_env(cfg: ArmadaConfig) -> dict[str, str]:
    now = environ.snapshot()
    env = {k: now[k] for k in _PASS_ENV if k in now}
    env["DS_ACCELERATOR"] = "cuda" if cfg.scaling.use_gpu else "cpu"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ops.DEFAULT_EXTENSIONS_DIR))
    # Ray Train V2 patches print() in its workers to log through the root logger *and* (when Ray has wrapped
    # sys.stdout) print as well, so every "[armada rank N]" line reached the console twice (issue 16)
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    for k, v in console.worker_env().items():  # library warnings off the console unless --verbose
        env.setdefault(k, v)
    return env


def _check_local_size(cfg: ArmadaConfig) -> list[str]:
    """A run on this machine (no cluster address) cannot ask for more CPUs or GPUs than it has: Ray would wait
    for them forever (issue 13: scaling.num_workers=1000 on 2 cores hung until killed)."""
    if os.environ.get("RAY_ADDRESS"):
        return []  # a cluster's size (and its autoscaler) is the preflight's to judge
    s = cfg.scaling
    cpus = os.cpu_count() or 1
    problems = []
    if s.num_workers * s.cpus_per_worker > cpus:
        problems.append(f"config error: scaling.num_workers={s.num_workers} x scaling.cpus_per_worker="
                        f"{s.cpus_per_worker:g} needs {s.num_workers * s.cpus_per_worker:g} CPUs; this machine has "
                        f"{cpus} (no RAY_ADDRESS: a local run); lower them or submit to a cluster")
    if s.use_gpu:
        import torch

        gpus = torch.cuda.device_count()
        if s.num_workers * s.gpus_per_worker > gpus:
            problems.append(f"config error: scaling.num_workers={s.num_workers} x scaling.gpus_per_worker="
                            f"{s.gpus_per_worker:g} needs {s.num_workers * s.gpus_per_worker:g} GPUs; this machine "
                            f"has {gpus}")
    return problems


def check_plan(cfg: ArmadaConfig) -> dict[str, Any]:
    """Everything that can be refused before cluster time: config conflicts, task/student mismatch, cache
    coverage and dimension, memory fit. Raises one ConfigError listing every problem."""
    from armada_ray.model.hub import resolve_model_path
    from armada_ray.tasks import load_task
    from armada_ray.train import memory

    problems = check_ds_settings(cfg.train, cfg.scaling, on_gpu=cfg.scaling.use_gpu)
    problems += _check_local_size(cfg)
    data = load_task(cfg.task)
    plan: dict[str, Any] = {"task": cfg.task.name, "task_kind": data.spec.kind, "train_rows": len(data.train),
                            "dev_rows": len(data.dev), "test_rows": len(data.test), "skipped_rows": len(data.skipped)}
    from armada_ray.tasks.base import write_skipped

    skipped = write_skipped(data, cfg.work_dir)
    if skipped is not None:
        plan["skipped_rows_file"] = str(skipped)
    model_path = resolve_model_path(cfg.student.model, cfg.student.revision, field="student.model")
    shape = memory.model_shape(model_path, causal_lm=data.spec.kind == "generative")
    is_encoder = shape["model_type"] in ("bert", "roberta", "deberta", "deberta-v2", "electra", "distilbert")
    if data.spec.kind == "generative" and is_encoder:
        problems.append(f"config error: task.name={cfg.task.name!r} is generative and needs a decoder (causal LM) "
                        f"student; student.model={cfg.student.model!r} is a {shape['model_type']} encoder")
    if is_encoder and cfg.student.kind == "decoder" or not is_encoder and cfg.student.kind == "encoder":
        problems.append(f"config error: student.kind={cfg.student.kind!r} but {cfg.student.model} is a "
                        f"{shape['model_type']} model ({'encoder' if is_encoder else 'decoder'})")
    if is_encoder and cfg.student.pooling in ("last", "first"):
        problems.append(f"config error: student.pooling={cfg.student.pooling!r} is for decoder students; "
                        f"{cfg.student.model} is an encoder: allowed auto, context, cls, pooler")
    if cfg.loss.mode == "armada":
        problems += _check_cache(cfg, data)
    problems += _check_resumed_heads(cfg, data.spec)
    on_gpu = cfg.scaling.use_gpu
    if on_gpu:
        available = cfg.scaling.gpu_memory_gb * cfg.scaling.memory_headroom
        device = f"GPU ({cfg.scaling.gpu_memory_gb:g} GiB each)"
    else:
        import psutil

        available = psutil.virtual_memory().total / memory.GIB * cfg.scaling.memory_headroom / cfg.scaling.num_workers
        device = "CPU RAM share per worker"
    est = memory.estimate_for_config(cfg, shape, available, device)
    plan["memory"] = est.as_dict()
    if not est.fits:
        problems.append(
            f"plan does not fit: {cfg.student.model} ({est.params / 1e6:.0f}M params, "
            f"{est.trainable_params / 1e6:.1f}M trainable) at ZeRO-{cfg.train.zero_stage}, "
            f"{cfg.scaling.num_workers} worker(s), batch {cfg.train.batch_size} x seq {cfg.student.max_length}: "
            f"~{est.total_gib:.1f} GiB per worker (weights {est.weights_gib:.1f}, grads {est.grads_gib:.1f}, "
            f"optimizer {est.optimizer_gib:.1f}, activations {est.activations_gib:.1f}) > {est.available_gib:.1f} "
            f"GiB available ({device}); try more workers, train.zero_stage=3, train.offload=true, LoRA, "
            "student.gradient_checkpointing=true or a smaller batch"
        )
    if problems:
        raise ConfigError(problems)
    return plan


def _check_cache(cfg: ArmadaConfig, data: Any) -> list[str]:
    from armada_ray.cache import open_cache_for
    from armada_ray.train.data import cache_coverage

    cache = open_cache_for(cfg)
    if cache is None:
        return [f"teacher cache: nothing cached for this teacher under {cfg.cache_root}; run `armada embed` "
                f"for task {cfg.task.name!r} first (or loss.mode=baseline)"]
    problems = []
    for split in ("train", "dev"):
        have, total = cache_coverage(cfg, cache, data, split)
        if have < total:
            problems.append(
                f"teacher cache {cache.path}: {total - have} of {total} {split} rows of task "
                f"{cfg.task.name!r} have no teacher vector; run `armada embed` (quarantined rows: "
                f"{cache.path / 'quarantine.jsonl'})"
            )
    declared = getattr(cfg.teacher, "dim", None)
    if declared is not None and declared != cache.dim:
        problems.append(f"config error: teacher.dim={declared} but the cached vectors have dimension {cache.dim}")
    latest = _latest_checkpoint_dir(cfg) if cfg.resume else None
    if latest is not None and ckpt.exists(ckpt.join(latest, "aligner.pt"), kind="file"):
        import torch

        local = ckpt.local_checkpoint(latest)
        dim = torch.load(local / "aligner.pt", map_location="cpu", weights_only=False).get("teacher_dim")
        if dim is not None and dim != cache.dim:
            problems.append(f"resume: the checkpoint's aligner takes teacher vectors of dimension {dim}, but the "
                            f"teacher cache holds dimension {cache.dim}; start a new run (resume=false)")
    return problems


def _check_resumed_heads(cfg: ArmadaConfig, spec: Any) -> list[str]:
    """A resumed checkpoint's heads were built for its task: refuse a task of another kind or width."""
    latest = _latest_checkpoint_dir(cfg) if cfg.resume else None
    saved = ckpt.read_json(latest, "task.json") if latest is not None else None
    if saved is None:
        return []
    if saved.get("kind") == spec.kind and saved.get("num_classes") == spec.head_width:
        return []
    return [f"student/task mismatch: resume=true continues {latest}, whose student was built for task "
            f"{saved.get('task')!r} ({saved.get('kind')}, {saved.get('num_classes')} output(s)), but "
            f"task.name={cfg.task.name!r} is {spec.kind} with {spec.head_width} output(s); start a new run "
            "(resume=false or another run_name)"]


def _latest_checkpoint_dir(cfg: ArmadaConfig) -> str | None:
    """The latest checkpoint of the named run (a local folder or a storage URI), or None."""
    if not cfg.run_name:
        return None
    ckpts = ckpt.list_checkpoints(ckpt.run_storage(cfg))
    return ckpts[-1][0] if ckpts else None


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
    scored = [(p, m) for p, m in ckpts if m.get("dev_metric") is not None]
    best = max(scored, key=lambda pm: pm[1]["dev_metric"], default=None)
    latest = ckpts[-1][0] if ckpts else None
    best_path = best[0] if best else latest
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
        "best_dev_metric": best[1].get("dev_metric") if best else None,
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


def run_train(cfg: ArmadaConfig) -> dict[str, Any]:
    """``armada train``: check the plan, run the TorchTrainer, print where everything went."""
    from armada_ray.preflight import preflight_if_submitted
    from armada_ray.ray_utils import ensure_ray

    preflight_if_submitted(cfg, "train")  # a `ray job submit` entrypoint checks its plan before any work

    cfg = resolve_run_name(cfg)
    t0 = time.perf_counter()
    plan = check_plan(cfg)
    if plan.get("skipped_rows_file"):
        print(f"[armada] {plan['skipped_rows']} source rows skipped (file, row, field, reason each): "
              f"{plan['skipped_rows_file']}", flush=True)
    print(f"[armada] plan: {plan['train_rows']} train / {plan['dev_rows']} dev rows of {cfg.task.name}; "
          f"~{plan['memory']['total_gib']:.2f} GiB per worker of {plan['memory']['available_gib']:.1f} available",
          flush=True)
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
