"""ARMADA's model components: teacher-side aligner, student wrappers, losses, model resolution.

Plain torch + transformers + peft: nothing here imports Ray, DeepSpeed or MLflow (a test checks it), so every
component runs and is tested on its own. transformers and peft are imported lazily, when a model is built.

Layout, bottom up: ``outputs`` (the output records) and ``orthogonal`` (the Cayley parametrisation); ``losses``;
``aligner`` (and ``aligner_fit``); ``pooling`` and ``heads``; ``students`` (the two student wrappers); ``build``
(loading, LoRA, freezing, export loading); ``hub`` (model resolution and the offline model cache).
"""

from armada_ray.model.aligner import (
    TeacherAligner,
    aligner_loss,
    build_aligner,
    freeze,
    load_aligner,
    save_aligner,
)
from armada_ray.model.build import build_student, is_generative, load_student_export, trainable_parameters
from armada_ray.model.hub import (
    ALIASES,
    ModelUnavailableError,
    build_from_config,
    cache_root,
    load_model,
    load_model_config,
    load_tokenizer,
    resolve_model_path,
)
from armada_ray.model.losses import (
    armada_loss,
    baseline_loss,
    causal_lm_loss,
    generative_loss,
    manifold_loss,
    soft_loss,
    task_loss,
)
from armada_ray.model.outputs import AlignerOutput, GenerativeOutput, StudentOutput
from armada_ray.model.pooling import pool_hidden
from armada_ray.model.students import ArmadaStudent, GenerativeStudent

__all__ = [
    "ALIASES",
    "AlignerOutput",
    "ArmadaStudent",
    "GenerativeOutput",
    "GenerativeStudent",
    "ModelUnavailableError",
    "StudentOutput",
    "TeacherAligner",
    "aligner_loss",
    "armada_loss",
    "baseline_loss",
    "build_aligner",
    "build_from_config",
    "build_student",
    "cache_root",
    "causal_lm_loss",
    "freeze",
    "generative_loss",
    "is_generative",
    "load_aligner",
    "load_model",
    "load_model_config",
    "load_student_export",
    "load_tokenizer",
    "manifold_loss",
    "pool_hidden",
    "resolve_model_path",
    "save_aligner",
    "soft_loss",
    "task_loss",
    "trainable_parameters",
]
