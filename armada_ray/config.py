"""Typed configuration for every armada-ray command.

One YAML file (see ``jobs/demo.yaml``) plus ``a.b=c`` overrides on the command line build a
:class:`ArmadaConfig`. Every section is a closed pydantic model (``extra="forbid"``), so a typo is an
error with a "did you mean" rather than a silently ignored key. :func:`load_config` collects every
problem and raises one :class:`ConfigError` whose lines each name the key path, the value given and
what is allowed; the CLI prints them and exits with code 2.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config, override or input problem the user can fix (CLI exit code 2)."""

    def __init__(self, problems: list[str] | str):
        # a message never carries a key given inside a URL (user:KEY@host): the lines echo the values given
        self.problems = [redact_url_credentials(p) for p in ([problems] if isinstance(problems, str) else problems)]
        super().__init__("\n".join(self.problems))


def _absolute(path: Path | None) -> Path | None:
    """Resolve a path once, in the process that loads the config (the driver).

    Ray workers and Tune trials run in other working directories (Ray's per-run artifacts folder), so a
    relative ``./armada_runs`` resolved there names another folder (issue 13). Every path field is therefore
    absolute from validation on; the resolved config that travels to the workers holds only absolute paths.
    """
    return None if path is None else path.expanduser().resolve()


AbsPath = Annotated[Path, AfterValidator(_absolute)]


def _model_ref(value: str | None) -> str | None:
    """A model given as a path to an existing local folder (``./my-model``, ``models/bert``, ``~/m``) made absolute,
    like :func:`_absolute`; an alias or hub id as given. A bare folder name stays as given (it reads as an alias)."""
    if value is None or not (value.startswith((".", "~")) or "/" in value):
        return value
    local = Path(value).expanduser()
    return str(local.resolve()) if local.is_dir() else value


ModelRef = Annotated[str, AfterValidator(_model_ref)]


def _storage(value: str | None) -> str | None:
    """A URI (``s3://bucket/prefix``, ``gs://...``, ``file:///...``) as given; a local folder made absolute."""
    if value is None or "://" in value:
        if value is not None and not value.split("://", 1)[1].strip("/"):
            raise ValueError(f"{value!r} names no bucket or folder")
        return value
    return str(Path(value).expanduser().resolve())


def _numeric(annotation: Any) -> bool:
    """True for an int/float field (optionally | None) that does not also accept a bool."""
    import types
    import typing

    args = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return bool(set(args) & {int, float}) and bool not in args


class _Section(BaseModel):
    # inf/nan are refused everywhere (issue 13: loss.beta=.inf and train.lr=inf were accepted)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_as_number(cls, data: Any) -> Any:
        """``train.epochs=true`` became 1: a boolean given for a number fails that field's validation."""
        if isinstance(data, dict):
            bad = {k: _BoolGiven(v) for k, v in data.items() if isinstance(v, bool) and k in cls.model_fields
                   and _numeric(cls.model_fields[k].annotation)}
            if bad:
                data = {**data, **bad}
        return data


class _BoolGiven:
    """Stands in for a boolean given where a number is expected, so the field's own error names key and value."""

    def __init__(self, value: bool):
        self.value = value

    def __repr__(self) -> str:
        return f"{str(self.value).lower()} (a boolean, not a number)"


# ----------------------------------------------------------------------------------------- sections


class PathsConfig(_Section):
    work_dir: AbsPath = Field(Path("./armada_runs"), validate_default=True,
                              description="Root of cache, runs and the embedded MLflow store (made absolute on load).")

    @field_validator("work_dir")
    @classmethod
    def _a_folder(cls, v: Path) -> Path:
        # issue 13: an existing file here surfaced as NotADirectoryError from the first mkdir, exit 1
        if v.exists() and not v.is_dir():
            raise ValueError(f"{str(v)!r} is a file; paths.work_dir must be a folder (it is created if missing)")
        return v
    storage: Annotated[str | None, AfterValidator(_storage)] = Field(
        None, description="Where Ray Train keeps checkpoints: a folder or a pyarrow URI (s3://bucket/prefix, gs://..., "
                          "hdfs://...), shared by every node; default <work_dir>/runs. work_dir keeps everything else.")


class _TeacherBase(_Section):
    prompt_template: str = Field(
        "{text}", description="Format string applied to the prompt (the paper's lower-cased joined text fields): "
                              "one {text} field; write {{ and }} for literal braces."
    )

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        # issue 13: an unknown {field} or an unclosed brace was met only at the first prompt, as exit 1
        import string

        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a format string ({exc}); write {{{{ and }}}} for literal braces") from None
        if fields - {"text"}:
            raise ValueError(f"{v!r} uses {', '.join(sorted('{' + f + '}' for f in fields - {'text'}))}; the only "
                             "field is {text}")
        return v
    stand_in: bool = Field(
        False, description="True when this teacher stands in for a vision-language teacher (tagged in logs/MLflow)."
    )
    shuffle: Literal["none", "pairs", "targets"] = Field(
        "none",
        description="Ablation control. pairs (or true): teacher vectors permuted across train examples before "
                    "anything sees them, so the aligner too learns from mismatched pairs; targets: the aligner "
                    "learns the true pairs, and the student gets the aligner outputs of another example.",
    )
    shuffle_seed: int = Field(1234, description="Seed of the teacher.shuffle permutation.")

    @field_validator("shuffle", mode="before")
    @classmethod
    def _shuffle_bool(cls, v: Any) -> Any:
        return {True: "pairs", False: "none"}.get(v, v) if isinstance(v, bool) else v


class HFTeacherConfig(_TeacherBase):
    kind: Literal["hf"] = "hf"
    model: ModelRef = Field("minilm", description="Hub id, local folder, or an alias: minilm, smollm2-135m.")
    revision: str | None = Field(None, description="Hub revision (part of the fingerprint).")
    pooling: Literal["mean", "cls", "last", "first"] = "mean"
    layer: int = Field(-1, description="Hidden-state layer to pool (-1 = last).")
    normalize: bool = Field(True, description="L2-normalise the pooled vector.")
    max_length: int = Field(256, ge=1, le=32768)
    batch_size: int = Field(32, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bf16 on GPU, fp32 on CPU."
    )


class DiffusionTeacherConfig(_TeacherBase):
    kind: Literal["diffusion"] = "diffusion"
    model: ModelRef = Field(
        "CompVis/stable-diffusion-v1-4",
        description="diffusers pipeline id or folder, or a random-weight offline shape: 'tiny', 'sd-v1-shape'.",
    )
    revision: str | None = None
    lora: ModelRef | None = Field(None, description="Optional LoRA weights (folder or hub id) loaded into the UNet.")
    steps: int = Field(20, ge=1, le=1000)
    image_size: int = Field(128, ge=8, description="Side of the image img2img starts from (the paper: 128).")
    txt2img_size: int | None = Field(
        None, ge=8, description="Side of the txt2img image before the resize (None: the model's default, 512 for SD-v1)."
    )
    strength: float = Field(0.75, gt=0.0, le=1.0)
    guidance_scale: float = Field(7.5, ge=0.0)
    seed: int = 0
    batch_size: int | None = Field(
        None, ge=1, description="Prompts per pipeline call (None: 32 on a GPU, where batch 4-8 leaves it mostly idle; "
                                "4 on CPU). Each row has its own seeded generator, so vectors do not depend on it.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class HttpTeacherConfig(_TeacherBase):
    kind: Literal["http"] = "http"
    endpoint: str = Field("http://127.0.0.1:8765/v1", description="Base URL of an OpenAI-compatible API.")
    model: str = Field("teacher", description="Model name sent in the request body.")
    api: Literal["embeddings", "images"] = "embeddings"
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key.")
    image_encoder: str | None = Field(None, description="Local HF image encoder for api=images.")
    dim: int | None = Field(None, ge=1, description="Expected vector dimension (replies of another size are quarantined).")
    requests_per_s: float = Field(20.0, gt=0, description="Job-wide request rate limit.")
    tokens_per_min: float | None = Field(None, gt=0, description="Job-wide token budget per minute.")
    max_in_flight: int = Field(8, ge=1, description="Job-wide cap on concurrent requests.")
    batch_size: int = Field(16, ge=1, description="Texts per request.")
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_base_s: float = Field(0.25, gt=0)
    backoff_max_s: float = Field(20.0, gt=0)
    price_per_1k_tokens: float | None = Field(None, ge=0)

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        # refused on load with the URL's credentials masked (issue 13: `not-a-url` reached aiohttp's
        # InvalidUrlClientError, and a URL with user:key@ plus api_key_env a raw ValueError)
        from urllib.parse import urlsplit

        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{redact_url_credentials(v)!r} is not an http(s) URL with a host, e.g. "
                             "https://api.example.com/v1")
        try:
            parts.port  # noqa: B018 - urllib raises on a port outside 0-65535 or not a number
        except ValueError:
            raise ValueError(f"{redact_url_credentials(v)!r}: the port must be a number in 1-65535") from None
        return v

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> "HttpTeacherConfig":
        from urllib.parse import urlsplit

        if self.api_key_env and (urlsplit(self.endpoint).username or urlsplit(self.endpoint).password):
            raise ValueError("teacher.endpoint carries credentials (user:key@) and teacher.api_key_env is set too; "
                             "give the key one way: through the environment variable (sent as a Bearer header)")
        return self


def _default_kind(data: Any, key: str, kind: str) -> Any:
    """Let ``teacher.x=...`` overrides (or YAML) omit ``kind``: the section default's kind applies."""
    if isinstance(data, dict) and isinstance(data.get(key), dict) and "kind" not in data[key]:
        data = dict(data)
        data[key] = {"kind": kind, **data[key]}
    return data


TeacherConfig = Annotated[
    Union[HFTeacherConfig, DiffusionTeacherConfig, HttpTeacherConfig], Field(discriminator="kind")
]


class CacheConfig(_Section):
    dtype: Literal["float16", "float32"] = "float16"
    shard_rows: int = Field(512, ge=1, description="Rows per Parquet shard.")
    dir: AbsPath | None = Field(None, description="Cache root (default <work_dir>/cache).")


SPLIT_NAMES = ("train", "dev", "test")
# task.kind -> metrics a file task may be scored with (the first is the default; armada_ray/tasks/metrics.py)
FILE_TASK_METRICS = {"classification": ("accuracy", "macro_f1", "f1", "mcc"),
                     "regression": ("pearson", "spearman"),
                     "generative": ("exact_match", "numeric_em", "rouge_l")}
# the keys of a file task (issue 16): only read with task.name=files
FILE_TASK_KEYS = ("files", "hub", "text_fields", "label_field", "labels", "kind", "answer_field", "metric",
                  "id_field")


def _absolute_globs(files: dict[str, str] | None) -> dict[str, str] | None:
    """task.files paths/globs made absolute on load, like every other path (issue 13)."""
    return None if files is None else {k: str(Path(v).expanduser().absolute()) for k, v in files.items()}


class HubDatasetConfig(_Section):
    path: str = Field(..., min_length=1, description="Hugging Face dataset id, e.g. imdb or owner/name.")
    name: str | None = Field(None, description="The dataset's configuration name, if it has several.")
    splits: dict[Literal["train", "dev", "test"], str] = Field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"},
        description="Our split -> the dataset's split; a split the dataset lacks is carved from train.")


class TaskConfig(_Section):
    name: str = Field("bbc_topics", description="A registered task (armada tasks lists them), or files: your own data.")
    data_dir: AbsPath | None = Field(None, description="Local files for file-backed tasks (GLUE TSV, JSONL).")
    files: Annotated[dict[Literal["train", "dev", "test"], str] | None, AfterValidator(_absolute_globs)] = Field(
        None, description="task.name=files: a path or glob per split (JSONL, JSON, CSV, TSV, Parquet); train is "
                          "required, a missing dev/test is carved from train with task.seed.")
    hub: HubDatasetConfig | None = Field(None, description="task.name=files: a Hugging Face dataset instead of files.")
    text_fields: list[str] | None = Field(
        None, min_length=1, description="task.name=files: the text columns, in prompt order (two = a pair task).")
    label_field: str = Field("label", description="task.name=files: the label column (classification/regression).")
    labels: list[str] | None = Field(
        None, min_length=2, description="task.name=files: the class names (default: inferred from train, sorted); "
                                        "integer labels index this list.")
    kind: Literal["classification", "regression", "generative"] = Field(
        "classification", description="task.name=files: what the label column holds.")
    answer_field: str | None = Field(None, description="task.name=files, kind generative: the answer column.")
    metric: str | None = Field(None, description="task.name=files: the selection metric (default by kind: "
                                                 + "; ".join(f"{k}: {', '.join(v)}" for k, v in
                                                             FILE_TASK_METRICS.items()) + ").")
    id_field: str | None = Field(None, description="task.name=files: a column of row ids (default: the row number).")
    max_train: int | None = Field(None, ge=1, description="Cap on train rows (seeded subsample).")
    max_dev: int | None = Field(None, ge=1)
    max_test: int | None = Field(None, ge=1)
    seed: int = Field(13, description="Seed of the fixed train/dev/test split.")
    transfer_rows: int = Field(
        0, ge=0, description="Transfer set (beyond the paper): this many train rows beyond task.max_train, embedded "
                             "by the teacher and labelled by the aligner; the student learns from them without labels. "
                             "A file task's unlabelled train rows go there first.",
    )

    @model_validator(mode="after")
    def _file_task(self) -> "TaskConfig":
        if self.name != "files":
            # set to anything but its default (a dumped config lists every key, so "was it given" is not enough)
            stray = [k for k in FILE_TASK_KEYS if getattr(self, k) != type(self).model_fields[k].get_default(
                call_default_factory=True)]
            if stray:
                raise ValueError(f"task.{stray[0]} is only read with task.name=files (task.name={self.name!r})")
            return self
        if (self.files is None) == (self.hub is None):
            raise ValueError("task.name=files needs exactly one of task.files (paths or globs per split, e.g. "
                             "{train: data/train.jsonl}) and task.hub ({path: owner/name})")
        if self.files is not None and "train" not in self.files:
            raise ValueError(f"task.files needs a train entry (given: {', '.join(self.files)})")
        if not self.text_fields:
            raise ValueError("task.name=files needs task.text_fields, the text columns, e.g. [text]")
        if self.kind == "generative" and not self.answer_field:
            raise ValueError("task.kind=generative needs task.answer_field, the column of the target answers")
        if self.kind != "classification" and self.labels is not None:
            raise ValueError(f"task.labels applies to kind classification, not {self.kind}")
        allowed = FILE_TASK_METRICS[self.kind]
        if self.metric is not None and self.metric not in allowed:
            raise ValueError(f"task.metric={self.metric!r} for kind {self.kind}: allowed {', '.join(allowed)}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task.labels has a repeated name: {self.labels}")
        return self


class LoraConfig(_Section):
    enabled: bool = True
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    layers_to_transform: list[int] | None = Field(None, description="Only these layers get LoRA (None = all).")


class StudentConfig(_Section):
    model: ModelRef = Field("smollm2-135m", description="Hub id, local folder, or alias: smollm2-135m, minilm, "
                                                        "tiny-llama.")
    revision: str | None = None
    kind: Literal["auto", "encoder", "decoder"] = "auto"
    pooling: Literal["auto", "context", "cls", "pooler", "last", "first"] = Field(
        "auto", description="Encoders: context = a trainable ContextPooler (dense + activation over [CLS], as "
                            "DebertaV2ForSequenceClassification), pooler = the model's pooler_output, cls = the raw "
                            "first token. Decoders: last / first non-padding token. auto = context for DeBERTa(-v2), "
                            "pooler (else cls) for other encoders, last for decoders."
    )
    max_length: int = Field(128, ge=8, le=32768)
    input: Literal["fields", "teacher_prompt"] = Field(
        "fields", description="What a classification/regression student reads: fields = the task's own text fields "
                              "in their own case, pairs through the tokenizer's pair encoding (the reference code); "
                              "teacher_prompt = the teacher's lower-cased joined prompt.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    orthogonal_projection: bool = Field(False, description="Make the student projection p_s orthogonal.")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0,
                                description="Dropout on the pooled vector before the heads (reference code: 0.1).")
    head_init: Literal["torch", "normal"] = Field(
        "torch", description="Heads' init: torch's default, or normal(0, 0.02) as the reference code."
    )
    freeze_layers_below: int | None = Field(
        None, ge=0, description="Full fine-tuning only: freeze embeddings and layers below this index."
    )

    @model_validator(mode="after")
    def _lora_or_freeze(self) -> "StudentConfig":
        # refused on load, not after ~50 s inside the Ray worker (issue 13)
        if self.lora.enabled and self.freeze_layers_below is not None:
            raise ValueError("student.freeze_layers_below applies to full fine-tuning only; set "
                             "student.lora.enabled=false, or place LoRA on the top layers with "
                             "student.lora.layers_to_transform")
        return self


class AlignerConfig(_Section):
    hidden: int = Field(768, ge=1, description="d: width of branch A.")
    proj_dim: int = Field(1024, ge=1, description="P: width of the orthogonal projection p_t (and p_s).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lr: float = Field(1e-3, gt=0)
    freeze_random: bool = Field(False, description="Ablation control: random, frozen aligner.")
    fit: Literal["converge", "per_epoch"] = Field(
        "converge",
        description="converge: before the student's first epoch, fit the aligner on the cached vectors until the "
                    "dev metric stops improving (fit_max_epochs, fit_patience), then keep it fixed; per_epoch: the "
                    "paper's schedule, one aligner pass per outer epoch (alternating) or per step (joint).",
    )
    fit_max_epochs: int = Field(300, ge=1, description="converge: most passes over the train vectors.")
    fit_patience: int = Field(25, ge=1, description="converge: stop after this many passes without a better dev metric.")
    batch_size: int = Field(32, ge=1, description="converge: rows per aligner step (the student's batch in per_epoch).")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay of the aligner.")
    standardize: bool = Field(
        True, description="Standardise teacher vectors per dimension (train-split mean/std, saved with the aligner)."
    )
    init: Literal["torch", "normal"] = Field(
        "torch", description="Linear-layer init: torch's default, or normal(0, 0.02) as the reference code."
    )
    student_targets: Literal["best", "latest"] = Field(
        "best",
        description="Which aligner the student learns against: best = the best-so-far by dev metric (also the one "
                    "exported); latest = the one just trained (the reference code; the best is still kept on disk).",
    )


class LossConfig(_Section):
    mode: Literal["armada", "baseline"] = "armada"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    beta: float = Field(1.0, ge=0.0)
    gamma: float = Field(1.0, ge=0.0)
    temperature: float = Field(5.0, gt=0.0)
    manifold: Literal["cosine", "euclid", "pointwise"] = "cosine"
    soft: Literal["mse", "kl"] = "mse"


class TrainConfig(_Section):
    schedule: Literal["alternating", "joint"] = "alternating"
    epochs: int = Field(
        2, ge=1, description="Outer epochs. 2 fits the CPU demo's budget; the reference code trains 10, and the jobs/ "
                             "GPU configs say their own.")
    batch_size: int = Field(8, ge=1, description="Micro-batch per worker.")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay of the student (reference code: 0.01).")
    clip: float = Field(1.0, gt=0)
    seed: int = 42
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload: bool = Field(False, description="ZeRO CPU offload of optimizer state (and params at stage 3).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU.")
    report_every: int = Field(20, ge=1, description="Steps between progress reports.")
    max_steps_per_epoch: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)


class ScalingConfig(_Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0, description="Whole GPUs per rank: DeepSpeed binds one device per rank.")
    max_failures: int = Field(1, ge=0, description="Automatic restarts from the latest checkpoint.")
    gpu_memory_gb: float = Field(80.0, gt=0, description="Memory per GPU, for the fit check (H100: 80).")
    memory_headroom: float = Field(0.9, gt=0, le=1.0, description="Fraction of memory a plan may use.")
    cluster_spec: str | None = Field(
        None, description="An autoscaling cluster's description (cluster/autoscaler.yaml, cluster/kuberay/*.yaml): "
                          "the preflight sizes plans on it at full scale, not only on the nodes alive now.")

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_gpus(cls, v: float) -> float:
        # Ray would pack two 0.5-GPU ranks onto one device, where DeepSpeed/NCCL ranks cannot share it
        if v != int(v):
            raise ValueError(f"must be a whole number of GPUs (got {v}): DeepSpeed binds one device per rank; "
                             "use 1, or 0 with scaling.use_gpu=false")
        return v


class SearchDomain(_Section):
    type: Literal["choice", "uniform", "loguniform", "grid", "randint"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "SearchDomain":
        if self.type in ("choice", "grid") and not self.values:
            raise ValueError(f"type={self.type} needs a non-empty 'values' list")
        if self.type in ("uniform", "loguniform", "randint"):
            if self.low is None or self.high is None or self.low >= self.high:
                raise ValueError(f"type={self.type} needs low < high (got low={self.low}, high={self.high})")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError("type=loguniform needs low > 0")
        return self


class TuneConfig(_Section):
    search_space: dict[str, SearchDomain] = Field(
        default_factory=dict, description="Dotted config path -> domain; a trial is a set of overrides."
    )
    num_samples: int = Field(4, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    searcher: Literal["random", "optuna"] = "random"
    metric: str = Field("dev_metric", description="A metric training reports.")
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int = Field(2, ge=1)
    grace_period: int = Field(1, ge=1)
    include_baseline: bool = Field(True, description="Also train the undistilled baseline for comparison.")
    seeds: list[int] = Field(
        default_factory=list,
        description="The final comparison: the best trial's config and the undistilled baseline each trained once "
                    "per seed with the same budget, scored on test at their best dev epoch (mean ± 95 % interval, "
                    "paired difference). Empty: one baseline run at train.seed.")


REPORT_VARIANTS = ("baseline", "armada-cosine", "armada-euclid", "armada-pointwise", "shuffle-pairs",
                   "shuffle-targets", "random-aligner", "alpha0", "beta0", "transfer")


class ReportSetup(_Section):
    name: str = Field(..., description="A row group of the report, e.g. bbc-smollm2.")
    overrides: list[str] = Field(default_factory=list, description="a.b=c overrides on the config for this setup.")
    self_distillation: bool = Field(
        False, description="True when the student is (a copy of) the teacher model: marked in the report."
    )


class ReportConfig(_Section):
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1, description="train.seed of each run.")
    variants: list[str] = Field(default_factory=lambda: [v for v in REPORT_VARIANTS if v != "transfer"],
                                description=f"Cells per setup and seed; allowed: {', '.join(REPORT_VARIANTS)}.")
    setups: list[ReportSetup] = Field(default_factory=list,
                                      description="Task x student combinations (empty: the config itself).")
    transfer_rows: int = Field(320, ge=1, description="Variant transfer: task.transfer_rows of its cells.")
    out: AbsPath | None = Field(None, description="Where report.md/report.json go (default <work_dir>/reports/<name>).")

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, v: list[str]) -> list[str]:
        unknown = [x for x in v if x not in REPORT_VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant {unknown[0]!r}; allowed: {', '.join(REPORT_VARIANTS)}")
        return v


TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")


class TrackingConfig(_Section):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI (default sqlite:///<work_dir>/mlflow.db): "
                                              f"a server (http/https), a database ({', '.join(TRACKING_SCHEMES[2:])}) "
                                              "or a local folder.")

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        # issue 13: tracking.uri=ftp://x passed, and the preflight even called it writable
        if v is None or "://" not in v:
            return v
        scheme = v.split("://", 1)[0].split("+", 1)[0].lower()  # postgresql+psycopg2://
        if scheme not in TRACKING_SCHEMES:
            raise ValueError(f"{redact_url_credentials(v)!r}: MLflow cannot track to a {scheme}:// store; allowed: "
                             f"{', '.join(s + '://' for s in TRACKING_SCHEMES)} or a local folder")
        return v
    experiment: str | None = Field(None, description="Experiment name (default: the config name).")
    register_model: bool = True
    registered_model_name: str | None = None


class EmbedConfig(_Section):
    concurrency: int = Field(2, ge=1, description="Actors in the teacher pool.")
    num_gpus_per_actor: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1, description="Rows per map_batches call.")
    max_chars: int = Field(20000, ge=1, description="Longer prompts are quarantined as over-long.")
    flush_every_s: float = Field(
        5.0, gt=0, description="Write a cache shard at least this often (answers are journaled as they arrive, so "
                               "a killed job loses none of them either way).")
    journal_wait_s: float = Field(
        15.0, ge=0, description="At start, wait this long for the actors of a just-killed run to release their "
                                "journals, so their answers are reused rather than asked again.")

    @property
    def teacher_device(self) -> str:
        """Where a local teacher's vectors are computed: a GPU when its actors ask for one (their fingerprint)."""
        return "cuda" if self.num_gpus_per_actor > 0 else "cpu"


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    token_env: str | None = Field(None, description="Env var with the bearer token clients must send.")
    rate_limit_rps: float | None = Field(None, gt=0, description="Requests/s before 429 with Retry-After.")
    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="Injected 5xx fraction.")
    rate_limit_error_rate: float = Field(0.0, ge=0.0, le=1.0, description="Injected 429 fraction.")
    malformed_rate: float = Field(0.0, ge=0.0, le=1.0, description="Injected malformed-body fraction.")
    latency_s: float = Field(0.0, ge=0.0)
    rate_limit_burst: float | None = Field(
        None, ge=1.0, description="Requests the limiter lets through at once (default max(1, rate_limit_rps/4))."
    )
    retry_after_s: float | None = Field(
        None, ge=0.0, description="Retry-After of injected 429s (default: the rate limiter's real wait)."
    )
    bad_vector_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Injected fraction of rows answered with a NaN or wrong-length vector."
    )
    fault_seed: int = Field(0, description="Seed of the fault-injection draws.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger request bodies get a 413.")
    max_inputs_per_request: int = Field(256, ge=1, description="More texts in one request get a 400.")
    max_input_chars: int = Field(100_000, ge=1, description="A longer text in a request gets a 400.")
    model_name: str = Field("teacher", description="Name served in /v1/models.")
    teacher: Annotated[Union[HFTeacherConfig, DiffusionTeacherConfig], Field(discriminator="kind")] = Field(
        default_factory=lambda: HFTeacherConfig(stand_in=True),
        description="The local teacher it hosts (kind hf or diffusion; a diffusion teacher also serves images).",
    )

    @model_validator(mode="before")
    @classmethod
    def _teacher_kind(cls, data: Any) -> Any:
        return _default_kind(data, "teacher", "hf")


class ExportConfig(_Section):
    merge: bool = Field(True, description="Merge LoRA into the base weights (False: save the adapter).")
    dir: AbsPath | None = None


class EvalConfig(_Section):
    split: Literal["dev", "test"] = "dev"
    checkpoint: Annotated[str | None, AfterValidator(_storage)] = Field(
        None, description="A checkpoint or export folder, or a checkpoint's storage URI (default: the run's best).")
    max_new_tokens: int = Field(
        32, ge=1, le=4096, description="Generative tasks: tokens generated per answer (greedy), in dev eval too."
    )
    batch_size: int = Field(16, ge=1, description="Rows per forward/generate call in `armada eval`.")


class ArmadaConfig(_Section):
    name: str = Field("armada", description="Config name; also the MLflow experiment name.")
    resume: bool = Field(False, description="Resume training from the latest checkpoint of this run.")
    run_name: str | None = Field(None, description="Run folder name (default: derived from the config).")
    paths: PathsConfig = Field(default_factory=PathsConfig)
    teacher: TeacherConfig = Field(default_factory=lambda: HttpTeacherConfig(stand_in=True))
    cache: CacheConfig = Field(default_factory=CacheConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    aligner: AlignerConfig = Field(default_factory=AlignerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _teacher_kind(cls, data: Any) -> Any:
        return _default_kind(data, "teacher", "http")

    # ---- derived locations (DESIGN §5)
    @property
    def work_dir(self) -> Path:
        return self.paths.work_dir.expanduser().resolve()

    @property
    def cache_root(self) -> Path:
        return (self.cache.dir.expanduser().resolve() if self.cache.dir else self.work_dir / "cache")

    @property
    def run_dir(self) -> Path:
        return self.work_dir / "runs" / self.experiment / (self.run_name or "train")

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.work_dir / 'mlflow.db'}"


# ------------------------------------------------------------------------------ loading / overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], parsed c). Splits on the first ``=`` only; YAML parses the value."""
    if "=" not in item or item.startswith("-"):
        raise ConfigError(
            f"override {item!r}: expected key=value (e.g. loss.alpha=0.3, train.epochs=2, tune.metric=dev_metric)"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r}: the key must be a dotted path such as loss.alpha")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b=c`` into a nested dict (copy-on-write at each level)."""
    out = dict(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _fields_at(loc: tuple[Any, ...]) -> tuple[list[str], tuple[str, ...]]:
    """Field names of the model addressed by ``loc`` (a pydantic error location) and the clean key path."""
    model: Any = ArmadaConfig
    clean: list[str] = []
    for part in loc:
        if isinstance(part, int):
            clean.append(str(part))
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None:
            clean.append(str(part))
            continue
        if part not in fields:
            # a discriminated-union tag such as teacher.<http>: switch to that member's model
            for member in (HFTeacherConfig, DiffusionTeacherConfig, HttpTeacherConfig):
                if member.model_fields["kind"].default == part:
                    model = member
                    break
            else:
                clean.append(str(part))
            continue
        clean.append(str(part))
        ann = fields[part].annotation
        model = _model_of(ann)
    names = list(getattr(model, "model_fields", {}) or {})
    return names, tuple(clean)


def _model_of(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        names, clean = _fields_at(loc[:-1])
        key = ".".join([*clean, str(loc[-1])])
        near = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
        hint = f"; did you mean {'.'.join([*clean, near[0]])}?" if near else ""
        allowed = ", ".join(names) if names else "no keys"
        return f"config error: unknown key {key}={err.get('input')!r}{hint} (allowed here: {allowed})"
    _, clean = _fields_at(loc)
    key = ".".join(clean) or "<root>"
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error" and "expected" in ctx:
        msg = f"allowed: {ctx['expected']}"
    elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        tag = ctx.get("discriminator", "'kind'").strip("'")
        value = err.get("input", {}).get(tag) if isinstance(err.get("input"), dict) else err.get("input")
        return f"config error: {key}.{tag}={value!r}: allowed: {ctx.get('expected_tags')}"
    if err["type"] == "value_error" and isinstance(err.get("input"), dict):  # a cross-field rule of a section
        return f"config error: {key}: {msg.removeprefix('Value error, ')}"
    return f"config error: {key}={err.get('input')!r}: {msg}"


def build_config(data: dict[str, Any]) -> ArmadaConfig:
    """Validate a nested dict into an :class:`ArmadaConfig`, reporting every problem at once."""
    try:
        return ArmadaConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_format_error(e) for e in exc.errors()]) from None


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> ArmadaConfig:
    """Load YAML ``path`` (or the defaults when None), apply ``a.b=c`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config error: --config {str(p)!r} is a directory; give a YAML file such as "
                              "jobs/demo.yaml")
        if not p.is_file():
            raise ConfigError(f"config error: --config {str(p)!r}: no such file")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config error: --config {str(p)!r} is not UTF-8 text (byte {exc.start}); give a "
                              "YAML file") from None
        try:
            loaded = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config error: {p}: not valid YAML ({_yaml_problem(exc)})") from None
        if loaded is None:
            raise ConfigError(f"config error: {p} is empty; omit --config to run on the defaults, or start from "
                              "jobs/demo.yaml")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config error: {p}: the top level must be a mapping of sections")
        data = loaded
        data.setdefault("name", p.stem)
    return build_config(apply_overrides(data, overrides or []))


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")


def redact_url_credentials(text: str) -> str:
    """``https://user:pass@host`` -> ``https://user:***@host`` (endpoints and tracking URIs in logs)."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url_credentials(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the last silently won)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: what, and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else " ".join(str(exc).split())


def dump_config(cfg: ArmadaConfig) -> str:
    """The resolved config as YAML (saved with every run), with credentials inside URLs masked (issue 13: a
    key in ``teacher.endpoint=http://user:KEY@host/v1`` was saved in clear). Nothing reads a saved config's
    endpoint to reach the teacher: training reads the cache, and the cache fingerprint ignores credentials."""
    return yaml.safe_dump(_redacted(cfg.model_dump(mode="json")), sort_keys=False)


def save_config(cfg: ArmadaConfig, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "config.yaml"
    out.write_text(dump_config(cfg))
    return out


def flatten(cfg: ArmadaConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattened ``a.b -> value`` view (MLflow params). Holds no secrets: keys live only in env vars."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
