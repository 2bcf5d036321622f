"""Will this plan work? Every check is a function over plain data: the config, a cluster view (what Ray reports,
the ``scaling.cluster_spec`` description, or this machine) and a cache view. :func:`check_plan` runs them and
raises one :class:`~armada_ray.config.ConfigError` listing every failure; the preflight
(``armada_ray.preflight``) renders the same checks as a table. Nothing here imports Ray.

Modules: ``checks`` (the rows, config and task/student rules), ``cluster`` (placing workers on nodes),
``memory`` (the estimate per worker), ``cache`` (teacher-cache coverage), ``resume`` (the run a resume
continues), ``sweep`` (a sweep's search space), ``engine`` (running them).
"""

from armada_ray.plan.cache import CacheView, cache_coverage, cache_view, check_cache
from armada_ray.plan.checks import ALL_CHECKS, FAIL, NEEDS, OK, SKIP, TRAINS, Check, check_config, check_task, one_line
from armada_ray.plan.cluster import check_cluster, machine_resources, place_workers
from armada_ray.plan.engine import PLAN_CHECKS, PlanResult, check_plan, run_checks
from armada_ray.plan.memory import check_memory, student_shape, worker_budget
from armada_ray.plan.resume import resolve_run_name
from armada_ray.plan.sweep import REPORTED_METRICS, check_sweep, trial_config

__all__ = [
    "ALL_CHECKS", "FAIL", "NEEDS", "OK", "PLAN_CHECKS", "REPORTED_METRICS", "SKIP", "TRAINS", "CacheView", "Check",
    "PlanResult", "cache_coverage", "cache_view", "check_cache", "check_cluster", "check_config", "check_memory",
    "check_plan", "check_sweep", "check_task", "machine_resources", "one_line", "place_workers", "resolve_run_name",
    "run_checks", "student_shape", "trial_config", "worker_budget",
]
