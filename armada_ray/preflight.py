"""``armada <command> --preflight``: will this plan work here? One table, and a refusal with the reason.

The same checks run by themselves at the top of ``armada embed|train|tune`` when the process is the
entrypoint of a ``ray job submit`` job (:func:`preflight_if_submitted`), so a job that cannot work stops in
seconds instead of after the cluster has pulled models and started workers.

Checks (numbered in the table; a refusal names the failing numbers):

1. ``config``   the config validates (it did, to get here), DeepSpeed settings agree with the hardware, the
                task kind suits the command, a sweep's search space and metric are usable.
2. ``task``     the task loads with its caps: rows per split.
3. ``teacher``  http: ``GET {endpoint}/models`` answers (else a one-text ``/embeddings`` probe) within a short
                timeout, with the key from ``teacher.api_key_env``; hf: the model id resolves and its config
                reads; diffusion: an offline shape, a local pipeline folder, or a hub id found in the HF cache
                (offline) / on the hub (online).
4. ``cache``    rows of train/dev/test that already have a vector for this teacher fingerprint. Training
                needs every train and dev row; for ``embed`` the figures only say how much work is left.
5. ``memory``   the estimated memory per worker (``armada_ray.train.memory``: weights, gradients, optimizer,
                activations for the student, LoRA, ZeRO stage, precision, batch and sequence length) against
                what one worker gets: GPU memory (``scaling.gpu_memory_gb``) on GPU, else the node's memory
                shared by the workers placed on it.
6. ``cluster``  the workers (and embed actors) fit the cluster's CPUs/GPUs node by node: the Ray cluster at
                ``$RAY_ADDRESS`` when set (``ray.cluster_resources()`` / ``ray.nodes()``), else this machine.
7. ``tracking`` the MLflow tracking store answers (``GET /health``) or its sqlite folder is writable.

Statuses: ``ok``, ``FAIL`` (the plan is refused) and ``skip`` (not needed by this command, or not decidable,
with the reason). Every figure in a detail is an estimate or a count, never a guess presented as a
measurement.
"""

from __future__ import annotations

import json
import math
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from armada_ray.config import ArmadaConfig, ConfigError, redact_url_credentials
from armada_ray.environ import submission_id, submitted_job_config
from armada_ray.tracking import check_tracking_store

OK, FAIL, SKIP = "ok", "FAIL", "skip"
PROBE_TIMEOUT_S = 5.0
SKIP_ENV = "ARMADA_SKIP_PREFLIGHT"  # set to 1 to start a submitted job without its preflight
GIB = 1024**3

# Which checks each command needs; the others are listed as skip.
_ALL = ("config", "task", "teacher", "cache", "memory", "cluster", "tracking")
NEEDS: dict[str, tuple[str, ...]] = {
    "train": _ALL,
    "tune": _ALL,
    "demo": _ALL,
    "embed": ("config", "task", "teacher", "cache", "cluster"),
    "eval": ("config", "task", "tracking"),
    "export": ("config", "tracking"),
    "serve-teacher": ("config", "teacher"),
    "ui": ("config", "tracking"),
    "tasks": ("config",),
}
_TRAINS = ("train", "tune")  # commands that read the teacher cache and need it complete


@dataclass
class Check:
    name: str
    status: str = SKIP
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def set(self, status: str, detail: str, **data: Any) -> "Check":
        self.status, self.detail = status, detail
        self.data.update(data)
        return self


# ------------------------------------------------------------------------------------------ resources


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
        import ray

        ray.init(address=address, configure_logging=False, log_to_driver=False)
        try:
            return _ray_resources(ray, address)
        finally:
            ray.shutdown()
    return _machine_resources()


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


def _machine_resources() -> dict[str, Any]:
    import psutil

    gpus = 0
    torch = sys.modules.get("torch")
    try:
        if torch is None:
            import torch
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


# ------------------------------------------------------------------------------------------ checks


def _check_config(cfg: ArmadaConfig, command: str, check: Check) -> None:
    from armada_ray.tasks import task_spec
    from armada_ray.train.ds_config import check_ds_settings

    problems = check_ds_settings(cfg.train, cfg.scaling, on_gpu=cfg.scaling.use_gpu)
    spec = task_spec(cfg.task)
    if command == "tune":
        from armada_ray.tune import check_sweep

        try:
            check_sweep(cfg, spec.metrics)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        check.set(FAIL, "; ".join(problems))
    else:
        check.set(OK, f"valid; ZeRO-{cfg.train.zero_stage}, precision {cfg.train.precision}, "
                      f"{cfg.scaling.num_workers} worker(s), task {cfg.task.name} ({spec.kind})")


def _check_task(cfg: ArmadaConfig, check: Check) -> Any:
    from armada_ray.tasks import load_task

    try:
        data = load_task(cfg.task)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the user fixes data_dir/network
        check.set(FAIL, f"task {cfg.task.name!r} does not load: {_one_line(exc)}")
        return None
    sizes = data.sizes()
    check.set(OK, f"{cfg.task.name}: {sizes['train']} train / {sizes['dev']} dev / {sizes['test']} test rows"
                  + (f" ({len(data.skipped)} unusable source rows skipped)" if data.skipped else ""), **sizes)
    return data


def _http(url: str, headers: dict[str, str], timeout: float, body: dict[str, Any] | None = None,
          limit: int = 1 << 20) -> tuple[int, bytes]:
    """GET (or POST ``body`` as JSON): (status, up to ``limit`` bytes of the answer); an HTTP error is a status."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(limit)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4096) if exc.fp else b""


def _ask(shown: str, what: str, url: str, headers: dict[str, str], timeout: float,
         body: dict[str, Any] | None = None, limit: int = 1 << 20) -> tuple[int, bytes]:
    """:func:`_http`, with a teacher that does not answer at all reported as one RuntimeError line."""
    try:
        return _http(url, headers, timeout, body, limit)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise RuntimeError(f"{shown} does not answer ({what}: {reason})") from None


def probe_http_teacher(teacher: Any, timeout: float = PROBE_TIMEOUT_S) -> str:
    """One cheap request to an OpenAI-compatible teacher; returns what it said, raises RuntimeError."""
    from armada_ray.teachers.http import sanitize_endpoint

    endpoint = teacher.endpoint.rstrip("/")
    shown = sanitize_endpoint(endpoint)
    headers = {"User-Agent": "armada-ray-preflight", "Content-Type": "application/json"}
    if teacher.api_key_env:
        key = os.environ.get(teacher.api_key_env, "")
        if not key:
            raise RuntimeError(f"teacher.api_key_env={teacher.api_key_env!r}: the environment variable "
                               f"{teacher.api_key_env} is not set (export the key; it never goes into the config)")
        headers["Authorization"] = f"Bearer {key}"
    timeout = min(timeout, teacher.timeout_s)
    status, body = _ask(shown, "GET /models", f"{endpoint}/models", headers, timeout)
    if status in (401, 403):
        raise RuntimeError(f"{shown} refused the credentials (HTTP {status}) "
                           f"{'in $' + teacher.api_key_env if teacher.api_key_env else '(no teacher.api_key_env set)'}")
    if 200 <= status < 300:
        try:
            ids = [m.get("id") for m in json.loads(body).get("data", [])]
        except (ValueError, AttributeError):
            ids = []
        listed = "" if not ids else (f", model {teacher.model!r} listed" if teacher.model in ids
                                     else f", model {teacher.model!r} NOT among its {len(ids)} models")
        return f"{shown} answered GET /models (HTTP {status}{listed})"
    if teacher.api != "embeddings":
        raise RuntimeError(f"{shown}: GET /models answered HTTP {status}")
    # no /models route: one embeddings request with one short text (costs one request)
    status, body = _ask(shown, "POST /embeddings", f"{endpoint}/embeddings", headers, timeout,
                        body={"model": teacher.model, "input": ["armada preflight probe"]}, limit=1 << 22)
    if not 200 <= status < 300:
        raise RuntimeError(f"{shown}: POST /embeddings answered HTTP {status}: {body[:160]!r}")
    try:
        dim = len(json.loads(body)["data"][0]["embedding"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise RuntimeError(f"{shown}: POST /embeddings answered HTTP {status} without an embedding") from None
    if teacher.dim is not None and dim != teacher.dim:
        raise RuntimeError(f"{shown} returns vectors of dimension {dim}, but teacher.dim={teacher.dim}")
    return f"{shown} answered a one-text /embeddings probe (dimension {dim})"


def _probe_teacher(teacher: Any) -> str:
    if teacher.kind == "http":
        return probe_http_teacher(teacher)
    if teacher.kind == "hf":
        from armada_ray.teachers.hf import HFTeacher

        t = HFTeacher(teacher, device="cpu")  # reads the config only; no weights loaded
        return f"hf model {teacher.model!r} resolves to {t.path} (dimension {t.dim})"
    from armada_ray.teachers.diffusion import SHAPES

    model = teacher.model
    if model in SHAPES:
        return f"diffusion shape {model!r}: random weights built offline (a stand-in, not a trained model)"
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise RuntimeError(f"{local} is not a diffusers pipeline folder (no model_index.json)")
        return f"diffusion pipeline folder {local}"
    from armada_ray.model.hub import is_offline

    if is_offline():
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model, "model_index.json", revision=teacher.revision)
        if not isinstance(hit, str):
            raise RuntimeError(f"diffusion pipeline {model!r} is not in the local Hugging Face cache and "
                               "HF_HUB_OFFLINE is set; download it first or point teacher.model at a folder")
        return f"diffusion pipeline {model!r} found in the local Hugging Face cache"
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(model, revision=teacher.revision, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - gated, missing, no network: all one line for the table
        raise RuntimeError(f"diffusion pipeline {model!r} does not resolve on the hub: {_one_line(exc)}") from None
    return f"diffusion pipeline {model!r} resolves on the hub (revision {str(info.sha)[:12]})"


def _check_cache(cfg: ArmadaConfig, command: str, data: Any, check: Check) -> None:
    from armada_ray.cache import open_cache_for
    from armada_ray.train.data import cache_coverage

    if cfg.loss.mode != "armada" and command in _TRAINS:
        check.set(SKIP, "loss.mode=baseline reads no teacher vectors")
        return
    if data is None:
        check.set(SKIP, "the task did not load (check 2)")
        return
    try:
        cache = open_cache_for(cfg)
    except Exception as exc:  # noqa: BLE001 - e.g. the teacher's config cannot be read (check 3 says why)
        check.set(FAIL if command in _TRAINS else SKIP, f"cannot open the teacher cache: {_one_line(exc)}")
        return
    counts = {split: cache_coverage(cfg, cache, data, split) for split in ("train", "dev", "test")}
    text = ", ".join(f"{split} {have}/{total}" for split, (have, total) in counts.items())
    where = cache.path if cache is not None else cfg.cache_root
    data_out = {f"cache_{s}_cached": have for s, (have, _) in counts.items()}
    data_out.update({f"cache_{s}_prompts": total for s, (_, total) in counts.items()})
    if command not in _TRAINS:
        left = sum(total - have for have, total in counts.values())
        check.set(OK, f"{text} unique prompts cached under {where}; {left} left to query", **data_out)
        return
    missing = [s for s in ("train", "dev") if counts[s][0] < counts[s][1]]
    problems = []
    if missing:
        problems.append(f"{text} unique prompts cached under {where}: training needs every train and dev row; "
                        f"run `armada embed` with this config first")
    declared = getattr(cfg.teacher, "dim", None)
    if cache is not None and declared is not None and declared != cache.dim:
        problems.append(f"teacher.dim={declared} but the cached vectors have dimension {cache.dim}")
    if problems:
        check.set(FAIL, "; ".join(problems), **data_out)
        return
    check.set(OK, f"{text} unique prompts cached under {where} (dimension {cache.dim}); {_probe(cfg, data_out)}",
              **data_out)


def _probe(cfg: ArmadaConfig, data_out: dict[str, Any]) -> str:
    """The teacher's ceiling on this task (``armada probe``), when the train and dev vectors are all cached."""
    from armada_ray.probe import try_probe

    result, line = try_probe(cfg)
    if result is not None:
        data_out.update({k: result[k] for k in ("probe_dev_metric", "floor_dev_metric", "teacher_signal")})
    return line


def student_memory(cfg: ArmadaConfig, available_gib: float, device: str) -> Any:
    """``armada_ray.train.memory`` estimate for this config's student, LoRA, ZeRO stage and batch."""
    from armada_ray.model.hub import resolve_model_path
    from armada_ray.tasks import task_spec
    from armada_ray.train import memory

    shape = memory.model_shape(resolve_model_path(cfg.student.model, cfg.student.revision, field="student.model"),
                               causal_lm=task_spec(cfg.task).kind == "generative")
    return memory.estimate_for_config(cfg, shape, available_gib, device)


def _check_memory(cfg: ArmadaConfig, res: dict[str, Any] | None, check: Check) -> None:
    s = cfg.scaling
    if s.use_gpu:
        available = s.gpu_memory_gb * s.memory_headroom
        accel = {n.get("accelerator") for n in (res or {}).get("nodes", []) if n.get("accelerator")}
        device = (f"GPU memory per worker: scaling.gpu_memory_gb={s.gpu_memory_gb:g} x headroom "
                  f"{s.memory_headroom:g}" + (f"; cluster GPUs: {', '.join(sorted(accel))}" if accel else ""))
    else:
        if res is None:
            check.set(SKIP, "cluster resources unknown (check 6)")
            return
        nodes = res["nodes"]
        counts = place_workers(nodes, s.num_workers, s.cpus_per_worker, 0.0)
        used = [(nodes[i], c) for i, c in enumerate(counts) if c > 0] or [(max(nodes, key=lambda n: n["memory_gib"]),
                                                                           s.num_workers)]
        available = min(n["memory_gib"] / c for n, c in used) * s.memory_headroom
        device = (f"CPU memory per worker: node memory / workers on it x headroom {s.memory_headroom:g}, "
                  f"{res['source']}")
    try:
        est = student_memory(cfg, available, device)
    except Exception as exc:  # noqa: BLE001 - e.g. an offline hub id: the user fixes the model name
        check.set(FAIL, f"cannot read the config of student.model={cfg.student.model!r}: {_one_line(exc)}")
        return
    figures = (f"{cfg.student.model} ({est.params / 1e6:,.0f}M params, {est.trainable_params / 1e6:,.1f}M "
               f"trainable) at ZeRO-{cfg.train.zero_stage}{' + offload' if cfg.train.offload else ''}, "
               f"{cfg.scaling.num_workers} worker(s), batch {cfg.train.batch_size} x seq {cfg.student.max_length}: "
               f"~{est.total_gib:.1f} GiB per worker (weights {est.weights_gib:.1f}, grads {est.grads_gib:.1f}, "
               f"optimizer {est.optimizer_gib:.1f}, activations {est.activations_gib:.1f})")
    data = {"memory_gib_per_worker": round(est.total_gib, 3), "memory_available_gib": round(est.available_gib, 3)}
    if est.fits:
        check.set(OK, f"{figures} <= {est.available_gib:.1f} GiB available ({device})", **data)
    else:
        check.set(FAIL, f"{figures} > {est.available_gib:.1f} GiB available ({device}); try more workers, "
                        "train.zero_stage=3, train.offload=true (GPU), LoRA, student.gradient_checkpointing=true "
                        "or a smaller batch / student.max_length", **data)


def _check_cluster(cfg: ArmadaConfig, command: str, res: dict[str, Any], check: Check) -> None:
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
            check.set(FAIL, f"not even one teacher actor fits ({need}); {have}", **data)
        elif sum(counts) < e.concurrency:
            check.set(OK, f"{need}: only {sum(counts)} fit at once, the pool will be smaller; {have}", **data)
        else:
            check.set(OK, f"{need} fit; {have}", **data)
        return
    s = cfg.scaling
    gpus = s.gpus_per_worker if s.use_gpu else 0.0
    need = f"{s.num_workers} worker(s) x ({s.cpus_per_worker:g} CPU, {gpus:g} GPU)"
    counts = place_workers(nodes, s.num_workers, s.cpus_per_worker, gpus)
    data["workers_per_node"] = [c for c in counts if c]
    if sum(counts) < s.num_workers:
        check.set(FAIL, f"{need} do not fit: {sum(counts)} of {s.num_workers} can be placed (a worker never "
                        f"spans nodes); {have}", **data)
        return
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
    check.set(OK, f"{need} fit ({placed} per node){extra}; {have}", **data)


def _check_tracking(cfg: ArmadaConfig, check: Check) -> None:
    if not cfg.tracking.enabled:
        check.set(SKIP, "tracking.enabled=false")
        return
    uri = cfg.tracking_uri
    try:
        check_tracking_store(uri)
    except ConfigError as exc:
        check.set(FAIL, exc.problems[0])
        return
    how = "answered GET /health" if uri.startswith(("http://", "https://")) else "is writable"
    check.set(OK, f"{redact_url_credentials(uri)} {how}")


# ------------------------------------------------------------------------------------------ driver


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_table(checks: list[Check]) -> str:
    rows = [("#", "check", "status", "detail")] + [
        (str(i), c.name, c.status, c.detail) for i, c in enumerate(checks, 1)
    ]
    w = [max(len(r[k]) for r in rows) for k in range(3)]
    lines = [f"{r[0]:>{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}" for r in rows]
    lines.insert(1, f"{'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}  {'-' * 6}")
    return "\n".join(lines)


def run_preflight(cfg: ArmadaConfig, command: str = "train", *, resources: dict[str, Any] | None = None,
                  out: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the checks ``command`` needs, print one table, raise :class:`ConfigError` if any failed.

    ``resources`` (tests, or a caller that already knows them) replaces :func:`cluster_resources`.
    Returns ``{"preflight": "ok", "command", "checks": [...], ...figures}``.
    """
    out = out or (lambda s: print(s, flush=True))
    needs = NEEDS.get(command, ("config", "tracking"))
    checks = {name: Check(name) for name in _ALL}
    for name in _ALL:
        if name not in needs:
            checks[name].detail = f"not used by `armada {command}`"

    def guarded(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            checks[name].set(FAIL, f"check failed: {type(exc).__name__}: {_one_line(exc)}")
            return None

    guarded("config", lambda: _check_config(cfg, command, checks["config"]))
    data = guarded("task", lambda: _check_task(cfg, checks["task"])) if "task" in needs else None
    teacher_error: str | None = None
    if command == "demo":
        checks["teacher"].set(SKIP, "the demo starts its own loopback teacher server")
    elif "teacher" in needs:
        try:
            checks["teacher"].set(OK, _probe_teacher(cfg.teacher))
        except Exception as exc:  # noqa: BLE001
            teacher_error = _one_line(exc)
            checks["teacher"].set(FAIL, teacher_error)
    if "cache" in needs:
        guarded("cache", lambda: _check_cache(cfg, command, data, checks["cache"]))
    if teacher_error is not None and command in _TRAINS:
        # training reads only the cache: an unreachable teacher matters only when rows are missing
        if cfg.loss.mode != "armada" or checks["cache"].status == OK:
            checks["teacher"].set(SKIP, f"not needed by `armada {command}` (cache complete or baseline); "
                                        f"probe: {teacher_error}")
    res = None
    if "cluster" in needs or "memory" in needs:
        try:
            if resources is not None:
                res = resources
            elif cfg.scaling.cluster_spec:  # GPU groups that scale from zero count at their maximum (issue 15)
                from armada_ray.cluster_spec import nodes_from_spec

                res = nodes_from_spec(cfg.scaling.cluster_spec)
            else:
                res = cluster_resources()
        except Exception as exc:  # noqa: BLE001 - e.g. RAY_ADDRESS points nowhere
            checks["cluster"].set(FAIL, f"cannot read the cluster's resources: {_one_line(exc)}")
    if "cluster" in needs and res is not None:
        guarded("cluster", lambda: _check_cluster(cfg, command, res, checks["cluster"]))
    if "memory" in needs:
        guarded("memory", lambda: _check_memory(cfg, res, checks["memory"]))
    if "tracking" in needs:
        guarded("tracking", lambda: _check_tracking(cfg, checks["tracking"]))

    ordered = [checks[n] for n in _ALL]
    out(f"[armada] preflight for `armada {command}` (config {cfg.name}):")
    out(format_table(ordered))
    failed = [(i, c) for i, c in enumerate(ordered, 1) if c.status == FAIL]
    if failed:
        raise ConfigError(
            [f"preflight refused `armada {command}`: {len(failed)} of {len(ordered)} checks failed "
             f"({', '.join(str(i) for i, _ in failed)})"]
            + [f"  check {i} {c.name}: {c.detail}" for i, c in failed]
        )
    result: dict[str, Any] = {"preflight": "ok", "command": command,
                              "checks": [{"n": i, "check": c.name, "status": c.status, "detail": c.detail}
                                         for i, c in enumerate(ordered, 1)]}
    for c in ordered:
        result.update({k: v for k, v in c.data.items() if not isinstance(v, (list, dict))})
    return result


def submitted_job_id() -> str | None:
    """The submission id when this process is the entrypoint of a ``ray job submit`` job, else None.

    Ray's job supervisor hands the entrypoint ``RAY_JOB_CONFIG_JSON_ENV_VAR`` (runtime env + metadata with
    ``job_submission_id``); a plain driver or a Ray worker does not have it.
    """
    if submitted_job_config() is None:
        return None
    return submission_id() or "submitted"


def preflight_if_submitted(cfg: ArmadaConfig, command: str) -> dict[str, Any] | None:
    """Run the preflight when this process is a submitted job's entrypoint (``ARMADA_SKIP_PREFLIGHT=1``
    skips it); raises :class:`ConfigError` (exit code 2) when the plan is refused."""
    if os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes"):
        return None
    job = submitted_job_id()
    if job is None:
        return None
    print(f"[armada] submitted job {job}: preflight before `armada {command}` starts work "
          f"({SKIP_ENV}=1 skips it)", flush=True)
    return run_preflight(cfg, command)
