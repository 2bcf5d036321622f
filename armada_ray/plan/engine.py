"""Run the plan checks a command needs over its views; ``check_plan`` refuses with every failure listed.

The preflight (``armada <command> --preflight``, and a submitted job's entrypoint) renders the same checks as a
table, adding the probes that need the network (teacher, tracking store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from armada_ray.config import ArmadaConfig, ConfigError
from armada_ray.plan.cache import cache_view, check_cache
from armada_ray.plan.checks import (ALL_CHECKS, FAIL, NEEDS, TRAINS, Check, check_config, check_task, one_line,
                                    student_problems)
from armada_ray.plan.cluster import check_cluster, machine_resources
from armada_ray.plan.memory import check_memory, student_shape
from armada_ray.plan.resume import resumed_checkpoint, resumed_heads_problems, resumed_teacher_dim
from armada_ray.tasks import load_task, task_spec
from armada_ray.tasks.base import write_skipped

# What ``check_plan`` runs: the checks that need neither the teacher nor the tracking store.
PLAN_CHECKS = ("config", "task", "cache", "memory", "cluster")


@dataclass
class PlanResult:
    """Every check (in table order) and the task the checks loaded (None when it did not load)."""

    checks: dict[str, Check]
    data: Any = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks.values() if c.status == FAIL]


def _guarded(check: Check, fn: Any) -> Check:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        return check.set(FAIL, f"check failed: {type(exc).__name__}: {one_line(exc)}")


def run_checks(cfg: ArmadaConfig, command: str, cluster: dict[str, Any] | None, *, cluster_error: str | None = None,
               only: tuple[str, ...] | None = None, write_skipped_rows: bool = False) -> PlanResult:
    """The checks ``command`` needs (``only``: a subset of them) over ``cluster`` (a cluster view; None with
    ``cluster_error`` when it could not be read). The teacher and tracking rows are left for the caller.
    ``write_skipped_rows``: a command is about to run on this plan, so the task's unusable source rows are
    written under the work dir for the user (``skipped_rows_file`` in the facts)."""
    needs = [n for n in NEEDS.get(command, ("config", "tracking")) if only is None or n in only]
    checks = {name: Check(name) for name in ALL_CHECKS}
    for name in ALL_CHECKS:
        if name not in needs:
            checks[name].detail = f"not used by `armada {command}`"
    checks["config"] = _guarded(Check("config"), lambda: check_config(cfg, command))
    data, facts = None, {}
    if "task" in needs:
        try:
            data = load_task(cfg.task)
        except Exception as exc:  # noqa: BLE001 - reported in the table, the user fixes data_dir/network
            checks["task"] = check_task(cfg, None, one_line(exc))
        else:
            checks["task"] = check_task(cfg, data)
            facts = {"task": cfg.task.name, "task_kind": data.spec.kind, "train_rows": len(data.train),
                     "dev_rows": len(data.dev), "test_rows": len(data.test), "skipped_rows": len(data.skipped)}
            skipped = write_skipped(data, cfg.work_dir) if write_skipped_rows else None
            if skipped is not None:
                facts["skipped_rows_file"] = str(skipped)
    trains = "memory" in needs
    latest = None
    if trains and command == "train" and data is not None:
        try:
            latest = resumed_checkpoint(cfg)
            problems = resumed_heads_problems(cfg, data.spec, latest)
        except ConfigError as exc:
            problems = exc.problems
        if problems:
            checks["task"].fail(checks["task"].problems + problems)
    shape, shape_problems = None, []
    if trains:
        try:
            shape = student_shape(cfg, (data.spec if data is not None else task_spec(cfg.task)).kind)
        except ConfigError as exc:  # e.g. a model name that is no alias, folder or hub id: it says what to give
            shape_problems = exc.problems
        except Exception as exc:  # noqa: BLE001 - e.g. a config transformers cannot read
            shape_problems = [f"cannot read the config of student.model={cfg.student.model!r}: {one_line(exc)}"]
        if shape is not None and data is not None:
            problems = student_problems(cfg, data.spec.kind, shape)
            if problems:
                checks["task"].fail(checks["task"].problems + problems)
    if "cache" in needs:
        def cache() -> Check:
            if data is None or cfg.loss.mode != "armada" and command in TRAINS:
                return check_cache(cfg, command, None)  # skips, saying why
            return check_cache(cfg, command, cache_view(cfg, data), resumed_teacher_dim(latest))

        checks["cache"] = _guarded(Check("cache"), cache)
    if "cluster" in needs:
        if cluster is not None:
            checks["cluster"] = _guarded(Check("cluster"), lambda: check_cluster(cfg, command, cluster))
        elif cluster_error is not None:
            checks["cluster"].set(FAIL, f"cannot read the cluster's resources: {cluster_error}")
    if trains:
        checks["memory"] = _guarded(Check("memory"), lambda: check_memory(cfg, cluster, shape, shape_problems))
        if "memory" in checks["memory"].data:
            facts["memory"] = checks["memory"].data["memory"]
    return PlanResult(checks, data, facts)


def check_plan(cfg: ArmadaConfig, cluster: dict[str, Any] | None = None, command: str = "train") -> dict[str, Any]:
    """Everything that can be refused before cluster time: config conflicts, task/student mismatch, cache
    coverage and dimension, the workers' fit on ``cluster`` (default: this machine) and their memory.
    Raises one ConfigError listing every problem; returns the plan's facts (rows, memory estimate)."""
    result = run_checks(cfg, command, cluster if cluster is not None else machine_resources(), only=PLAN_CHECKS,
                        write_skipped_rows=True)
    problems = [p for c in result.failed for p in c.problems]
    if problems:
        raise ConfigError(problems)
    return result.facts
