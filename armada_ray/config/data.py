"""Sections of the data a run reads: where it lives (paths, cache), the teacher that embeds it, the task."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from armada_ray.config.base import AbsPath, ModelRef, Section, StorageLocation
from armada_ray.config.redact import redact_url_credentials


class PathsConfig(Section):
    work_dir: AbsPath = Field(Path("./armada_runs"), validate_default=True,
                              description="Root of cache, runs and the embedded MLflow store (made absolute on load).")

    @field_validator("work_dir")
    @classmethod
    def _a_folder(cls, v: Path) -> Path:
        # issue 13: an existing file here surfaced as NotADirectoryError from the first mkdir, exit 1
        if v.exists() and not v.is_dir():
            raise ValueError(f"{str(v)!r} is a file; paths.work_dir must be a folder (it is created if missing)")
        return v
    storage: StorageLocation = Field(
        None, description="Where Ray Train keeps checkpoints: a folder or a pyarrow URI (s3://bucket/prefix, gs://..., "
                          "hdfs://...), shared by every node; default <work_dir>/runs. work_dir keeps everything else.")


class _TeacherBase(Section):
    prompt_template: str = Field(
        "{text}", description="Format string applied to the prompt (the paper's lower-cased joined text fields): "
                              "one {text} field; write {{ and }} for literal braces."
    )

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        # issue 13: an unknown {field} or an unclosed brace was met only at the first prompt, as exit 1
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
        if self.api_key_env and (urlsplit(self.endpoint).username or urlsplit(self.endpoint).password):
            raise ValueError("teacher.endpoint carries credentials (user:key@) and teacher.api_key_env is set too; "
                             "give the key one way: through the environment variable (sent as a Bearer header)")
        return self


TeacherConfig = Annotated[
    Union[HFTeacherConfig, DiffusionTeacherConfig, HttpTeacherConfig], Field(discriminator="kind")
]


class CacheConfig(Section):
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


class HubDatasetConfig(Section):
    path: str = Field(..., min_length=1, description="Hugging Face dataset id, e.g. imdb or owner/name.")
    name: str | None = Field(None, description="The dataset's configuration name, if it has several.")
    splits: dict[Literal["train", "dev", "test"], str] = Field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"},
        description="Our split -> the dataset's split; a split the dataset lacks is carved from train.")


class TaskConfig(Section):
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
