"""``armada <command> --preflight``: will this plan work here? One table, and a refusal with the reason.

The checks themselves live in ``armada_ray.plan`` (the same ones ``check_plan`` runs before every training);
this module gathers the cluster view, adds the probes that need the network (teacher, tracking store) and
renders one table. The CLI runs it once before ``armada embed|train|tune`` starts when the process is the
entrypoint of a ``ray job submit`` job (:func:`preflight_if_submitted`), so a job that cannot work stops in
seconds instead of after the cluster has pulled models and started workers.

Checks (numbered in the table; a refusal names the failing numbers):

1. ``config``   the config validates (it did, to get here), DeepSpeed settings agree with the hardware, the
                task kind suits the command, a sweep's search space and metric are usable.
2. ``task``     the task loads with its caps: rows per split; the student suits the task (encoder/decoder,
                pooling, layer indices) and a resumed checkpoint's heads were built for it.
3. ``teacher``  http: ``GET {endpoint}/models`` answers (else a one-text ``/embeddings`` probe) within a short
                timeout, with the key from ``teacher.api_key_env``; hf: the model id resolves and its config
                reads; diffusion: an offline shape, a local pipeline folder, or a hub id found in the HF cache
                (offline) / on the hub (online).
4. ``cache``    rows of train/dev/test that already have a vector for this teacher fingerprint. Training
                needs every train and dev row (and ``teacher.dim``, a resumed aligner, their dimension); for
                ``embed`` the figures only say how much work is left.
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
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from armada_ray.config import ArmadaConfig, ConfigError, redact_url_credentials
from armada_ray.plan import ALL_CHECKS, FAIL, NEEDS, OK, SKIP, TRAINS, Check, one_line, run_checks
from armada_ray.probe import try_probe
from armada_ray.environ import submission_id, submitted_job_config
from armada_ray.resources import cluster_view
from armada_ray.teachers.http import sanitize_endpoint
from armada_ray.teachers.diffusion import SHAPES
from armada_ray.teachers.hf import HFTeacher
from armada_ray.tracking import check_tracking_store

PROBE_TIMEOUT_S = 5.0
SKIP_ENV = "ARMADA_SKIP_PREFLIGHT"  # set to 1 to start a submitted job without its preflight


# ------------------------------------------------------------------------------------------ probes


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


def probe_teacher(teacher: Any) -> str:
    if teacher.kind == "http":
        return probe_http_teacher(teacher)
    if teacher.kind == "hf":
        t = HFTeacher(teacher, device="cpu")  # reads the config only; no weights loaded
        return f"hf model {teacher.model!r} resolves to {t.path} (dimension {t.dim})"
    model = teacher.model
    if model in SHAPES:
        return f"diffusion shape {model!r}: random weights built offline (a stand-in, not a trained model)"
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise RuntimeError(f"{local} is not a diffusers pipeline folder (no model_index.json)")
        return f"diffusion pipeline folder {local}"
    from armada_ray.model.hub import is_offline  # lazy: model.hub imports torch

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
        raise RuntimeError(f"diffusion pipeline {model!r} does not resolve on the hub: {one_line(exc)}") from None
    return f"diffusion pipeline {model!r} resolves on the hub (revision {str(info.sha)[:12]})"


def check_tracking(cfg: ArmadaConfig) -> Check:
    """The MLflow tracking store answers (``GET /health``) or its sqlite folder is writable."""
    check = Check("tracking")
    if not cfg.tracking.enabled:
        return check.set(SKIP, "tracking.enabled=false")
    uri = cfg.tracking_uri
    try:
        check_tracking_store(uri)
    except ConfigError as exc:
        return check.set(FAIL, exc.problems[0])
    how = "answered GET /health" if uri.startswith(("http://", "https://")) else "is writable"
    return check.set(OK, f"{redact_url_credentials(uri)} {how}")


# ------------------------------------------------------------------------------------------ driver


def format_table(checks: list[Check]) -> str:
    rows = [("#", "check", "status", "detail")] + [
        (str(i), c.name, c.status, c.detail) for i, c in enumerate(checks, 1)
    ]
    w = [max(len(r[k]) for r in rows) for k in range(3)]
    lines = [f"{r[0]:>{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}" for r in rows]
    lines.insert(1, f"{'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}  {'-' * 6}")
    return "\n".join(lines)


def _teacher_row(cfg: ArmadaConfig, command: str, checks: dict[str, Check]) -> None:
    """Probe the teacher; training reads only the cache, so an unreachable teacher matters only when rows are
    missing."""
    if command == "demo":
        checks["teacher"].set(SKIP, "the demo starts its own loopback teacher server")
        return
    try:
        checks["teacher"].set(OK, probe_teacher(cfg.teacher))
    except Exception as exc:  # noqa: BLE001 - one line in the table
        error = one_line(exc)
        checks["teacher"].set(FAIL, error)
        if command in TRAINS and (cfg.loss.mode != "armada" or checks["cache"].status == OK):
            checks["teacher"] = Check("teacher").set(
                SKIP, f"not needed by `armada {command}` (cache complete or baseline); probe: {error}")


def _add_probe(cfg: ArmadaConfig, check: Check) -> None:
    """The teacher's ceiling on this task (``armada probe``) beside a complete cache."""
    result, line = try_probe(cfg)
    if result is not None:
        check.data.update({k: result[k] for k in ("probe_dev_metric", "floor_dev_metric", "teacher_signal")})
    check.detail = f"{check.detail}; {line}"


def run_preflight(cfg: ArmadaConfig, command: str = "train", *, resources: dict[str, Any] | None = None,
                  out: Callable[[str], None] | None = None, write_skipped_rows: bool = False) -> dict[str, Any]:
    """Run the checks ``command`` needs, print one table, raise :class:`ConfigError` if any failed.

    ``resources`` (tests, or a caller that already knows them) replaces :func:`armada_ray.resources.cluster_view`;
    ``write_skipped_rows``: the command runs next on this verdict (see :func:`armada_ray.plan.run_checks`).
    Returns ``{"preflight": "ok", "command", "checks": [...], "plan": {...facts}, ...figures}``.
    """
    out = out or (lambda s: print(s, flush=True))
    needs = NEEDS.get(command, ("config", "tracking"))
    res, res_error = resources, None
    if res is None and ("cluster" in needs or "memory" in needs):
        try:
            res = cluster_view(cfg)
        except Exception as exc:  # noqa: BLE001 - e.g. RAY_ADDRESS points nowhere
            res_error = one_line(exc)
    plan = run_checks(cfg, command, res, cluster_error=res_error, write_skipped_rows=write_skipped_rows)
    checks = plan.checks
    if "teacher" in needs:
        _teacher_row(cfg, command, checks)
    if checks["cache"].status == OK and command in TRAINS:
        _add_probe(cfg, checks["cache"])
    if "tracking" in needs:
        try:
            checks["tracking"] = check_tracking(cfg)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            checks["tracking"].set(FAIL, f"check failed: {type(exc).__name__}: {one_line(exc)}")

    ordered = [checks[n] for n in ALL_CHECKS]
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
    result["plan"] = plan.facts
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
    """Run the preflight when this process is a submitted job's entrypoint (``ARMADA_SKIP_PREFLIGHT=1`` skips
    it); raises :class:`ConfigError` (exit code 2) when the plan is refused. Called once, by the CLI, before the
    command starts (``armada_ray.cli.CHECKED_WHEN_SUBMITTED``); its ``plan`` facts stand for the command's own
    ``check_plan``."""
    if os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes"):
        return None
    job = submitted_job_id()
    if job is None:
        return None
    print(f"[armada] submitted job {job}: preflight before `armada {command}` starts work "
          f"({SKIP_ENV}=1 skips it)", flush=True)
    return run_preflight(cfg, command, write_skipped_rows=True)
