"""Sections of the other commands: tune, report, tracking, embed, server, export, eval."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from armada_ray.config.base import AbsPath, Section, StorageLocation, default_kind
from armada_ray.config.data import DiffusionTeacherConfig, HFTeacherConfig
from armada_ray.config.redact import redact_url_credentials


class SearchDomain(Section):
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


class TuneConfig(Section):
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


class ReportSetup(Section):
    name: str = Field(..., description="A row group of the report, e.g. bbc-smollm2.")
    overrides: list[str] = Field(default_factory=list, description="a.b=c overrides on the config for this setup.")
    self_distillation: bool = Field(
        False, description="True when the student is (a copy of) the teacher model: marked in the report."
    )


class ReportConfig(Section):
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


class TrackingConfig(Section):
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


class EmbedConfig(Section):
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


class ServerConfig(Section):
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
        return default_kind(data, "teacher", "hf")


class ExportConfig(Section):
    merge: bool = Field(True, description="Merge LoRA into the base weights (False: save the adapter).")
    dir: AbsPath | None = None


class EvalConfig(Section):
    split: Literal["dev", "test"] = "dev"
    checkpoint: StorageLocation = Field(
        None, description="A checkpoint or export folder, or a checkpoint's storage URI (default: the run's best).")
    max_new_tokens: int = Field(
        32, ge=1, le=4096, description="Generative tasks: tokens generated per answer (greedy), in dev eval too."
    )
    batch_size: int = Field(16, ge=1, description="Rows per forward/generate call in `armada eval`.")
