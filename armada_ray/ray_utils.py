"""Ray start-up shared by the orchestration modules (embed, train, tune).

``ensure_ray()`` connects once per process: to ``$RAY_ADDRESS`` when set (a cluster, or the one a
``ray job submit`` driver runs in), else to a private local instance started with
``ray.init(address="local")`` (dashboard on loopback: the state API needs it). A bare ``ray.init()`` would join whatever
``/tmp/ray/ray_current_cluster`` points to, and hangs when that cluster was killed (see NOTES.md).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from armada_ray.environ import job_config_section, submitted_job_config
from armada_ray.train.env import worker_env


def ensure_ray(num_cpus: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Initialise Ray unless it already is; returns ``{"address", "started_local"}``."""
    import ray

    if ray.is_initialized():
        return {"address": os.environ.get("RAY_ADDRESS") or "local", "started_local": False}
    kwargs.setdefault("configure_logging", False)
    kwargs.setdefault("log_to_driver", True)
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address and address != "local":
        if "runtime_env" in kwargs:
            kwargs["runtime_env"] = without_job_env_vars(kwargs["runtime_env"])
        ray.init(address=address, **kwargs)
        return {"address": address, "started_local": False}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    # The dashboard's API server backs the state API, which Ray Train V2's PlacementGroupCleaner uses to see
    # that a controller died (e.g. a Tune trial stopped by ASHA); without it the trial's placement group is
    # never released and later trials wait forever. Loopback only.
    kwargs.setdefault("include_dashboard", True)
    kwargs.setdefault("dashboard_host", "127.0.0.1")
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env.setdefault("worker_process_setup_hook", "armada_ray.ray_utils.pin_ray_address")
    ray.init(address="local", runtime_env=runtime_env, **kwargs)
    return {"address": "local", "started_local": True}


def without_job_env_vars(runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """Drop env vars that a submitted job's own runtime env already sets.

    In a ``ray job submit`` entrypoint, Ray merges ``ray.init(runtime_env=...)`` into the job's runtime env and
    refuses any env var named in both ("Failed to merge the Job's runtime env ... because of a conflict"). The
    job's values are already this process's environment, so they are the ones the workers get anyway.
    """
    job = submitted_job_config()
    if not job or not runtime_env or not runtime_env.get("env_vars"):
        return runtime_env
    job_vars = job_config_section(job_config_section(job, "runtime_env"), "env_vars")
    env_vars = {k: v for k, v in runtime_env["env_vars"].items() if k not in job_vars}
    return {**runtime_env, "env_vars": env_vars} if env_vars else {k: v for k, v in runtime_env.items()
                                                                   if k != "env_vars"}


def pin_ray_address() -> None:
    """Worker setup hook: point the worker's state-API clients at its own cluster.

    Without it, ``ray.util.state`` inside a worker auto-detects clusters from the running processes and fails
    with "Found multiple active Ray instances" when two local instances share the machine.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def unwrap_ray_error(exc: BaseException) -> BaseException:
    """The user-level exception inside Ray's wrappers (RayTaskError, UserCodeException, ...)."""
    seen = set()
    cur: BaseException | None = exc
    best = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if not type(cur).__module__.startswith("ray"):
            best = cur
        nxt = getattr(cur, "cause", None)
        if not isinstance(nxt, BaseException):
            nxt = cur.__cause__ or cur.__context__
        cur = nxt
    return best


def run_with_student_resources(cfg: Any, fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
                               ) -> dict[str, Any]:
    """``fn(*args, **kwargs)`` as a Ray task holding one training rank's resources (``scaling.cpus_per_worker``,
    a whole GPU with ``scaling.use_gpu``), in the training workers' environment; returns its result dict with
    ``ran_in`` (node id, pid, GPU ids of the task) added.

    ``armada eval`` and ``armada export`` run here instead of in the driver: on a cluster the driver is the head
    (no GPU, a few GiB), while an 8B export holds the model, its consolidated state dict and a merged copy
    (issue 15). Errors come back as the task's own exception (a ConfigError stays a ConfigError).

    Without a cluster (no ``RAY_ADDRESS``: the local instance this process starts) the driver *is* the machine the
    task would land on, so ``fn`` runs here, on all its cores: a task holding a training rank's 0.9 CPU would score
    on one thread (about 1.5x slower in the demo) and pay a worker start. ``ran_in`` says which.
    """
    if not os.environ.get("RAY_ADDRESS", "").strip() or os.environ.get("RAY_ADDRESS") == "local":
        return {**fn(*args, **kwargs), "ran_in": {"ray_task": False, "pid": os.getpid(),
                                                  "why": "no cluster (RAY_ADDRESS unset): this machine"}}
    import ray

    ensure_ray(runtime_env={"env_vars": worker_env(cfg)})  # the job's env: every task and worker gets it
    gpus = cfg.scaling.gpus_per_worker if cfg.scaling.use_gpu else 0
    task = ray.remote(num_cpus=cfg.scaling.cpus_per_worker, num_gpus=gpus, max_retries=0)(_call_in_task)
    try:
        result, printed = ray.get(task.remote(fn, args, kwargs))
    except ray.exceptions.RayTaskError as exc:
        raise unwrap_ray_error(exc) from None
    print(printed, end="", flush=True)
    return result


def _call_in_task(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[dict[str, Any], str]:
    """Run ``fn`` and hand back (its result with ``ran_in``, what it printed). The driver prints those lines
    itself: Ray forwards a task's stdout asynchronously, so they could land after a ``--json`` line."""
    import contextlib
    import io

    import ray

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = fn(*args, **kwargs)
    where = {"ray_task": True, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
             "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    return {**result, "ran_in": where}, out.getvalue()
