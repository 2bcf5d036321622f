"""What a run is tagged with: the run kinds, our tag names and MLflow's, and :func:`standard_tags`.

Every run of a config carries the same standard tags (config, task, student, loss mode, teacher, git commit,
Ray job ids), so a sweep's parent and its trials, an eval or an export of them can be found together.
``armada.kind`` says what the run is, always one of the ``KIND_*`` names below.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

from armada_ray.config import ArmadaConfig
from armada_ray.environ import submission_id

# The run kinds (the ``armada.kind`` tag): one vocabulary for every command that opens a run.
KIND_TRAIN = "train"  # `armada train`: one training run
KIND_SWEEP = "sweep"  # `armada tune`: the parent run of a sweep
KIND_TRIAL = "trial"  # one trial of a sweep, a child of its sweep run
KIND_EVAL = "eval"  # `armada eval`
KIND_PROBE = "probe"  # `armada probe`
KIND_EMBED = "embed"  # `armada embed`: filling the teacher cache
KIND_REPORT = "report"  # `armada report`
RUN_KINDS = (KIND_TRAIN, KIND_SWEEP, KIND_TRIAL, KIND_EVAL, KIND_PROBE, KIND_EMBED, KIND_REPORT)

# Our tags (every run of a sweep carries the same ones) and the MLflow ones we set.
TAG_KIND = "armada.kind"
TAG_CONFIG = "armada.config"
TAG_TASK = "armada.task"
TAG_STUDENT = "armada.student"
TAG_LOSS_MODE = "armada.loss_mode"
TAG_TEACHER_KIND = "armada.teacher_kind"
TAG_TEACHER_MODEL = "armada.teacher_model"
TAG_TEACHER_FINGERPRINT = "armada.teacher_fingerprint"
TAG_STAND_IN = "armada.teacher_stand_in"
TAG_GIT_COMMIT = "armada.git_commit"
TAG_RAY_JOB_ID = "armada.ray_job_id"
TAG_RAY_SUBMISSION_ID = "armada.ray_submission_id"
MLFLOW_PARENT_TAG = "mlflow.parentRunId"
MLFLOW_RUN_NAME_TAG = "mlflow.runName"
MLFLOW_GIT_TAG = "mlflow.source.git.commit"
MLFLOW_NOTE_TAG = "mlflow.note.content"

# MLflow 3 opens an experiment without a kind on its GenAI overview; ours hold training runs
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the armada-ray checkout (else of the working directory), or None outside git."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(
                ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            continue
        commit = out.stdout.strip()
        if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit):
            return commit
    return None


def ray_job_ids() -> dict[str, str]:
    """Ray job id / submission id of this process, found without importing Ray.

    ``ray job submit`` hands the driver its submission id in ``RAY_JOB_CONFIG_JSON_ENV_VAR``; Ray
    workers see ``RAY_JOB_ID``; a driver that has already imported and initialised Ray is asked.
    """
    ids: dict[str, str] = {}
    sub = submission_id()
    if sub:
        ids[TAG_RAY_SUBMISSION_ID] = sub
    job = os.environ.get("RAY_JOB_ID")
    ray = sys.modules.get("ray")
    if not job and ray is not None:
        try:
            if ray.is_initialized():
                job = ray.get_runtime_context().get_job_id()
        except Exception:  # noqa: BLE001 - best effort: a tag, never a failure
            job = None
    if job:
        ids[TAG_RAY_JOB_ID] = str(job)
    return ids


def standard_tags(cfg: ArmadaConfig, teacher_fingerprint_id: str | None) -> dict[str, str]:
    """The tags every run of this config carries (a sweep's parent and trials alike)."""
    teacher = cfg.teacher
    teacher_model = f"{teacher.model}@{teacher.endpoint}" if teacher.kind == "http" else teacher.model
    tags = {
        TAG_CONFIG: cfg.name,
        TAG_TASK: cfg.task.name,
        TAG_STUDENT: cfg.student.model,
        TAG_LOSS_MODE: cfg.loss.mode,
        TAG_TEACHER_KIND: teacher.kind,
        TAG_TEACHER_MODEL: teacher_model,
        TAG_STAND_IN: str(bool(teacher.stand_in)).lower(),
    }
    if teacher_fingerprint_id:
        tags[TAG_TEACHER_FINGERPRINT] = teacher_fingerprint_id
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
        tags[MLFLOW_GIT_TAG] = commit
    tags.update(ray_job_ids())
    return tags
