"""The whole config: one :class:`ArmadaConfig` of every section, and the locations derived from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from armada_ray.config.base import Section, default_kind
from armada_ray.config.commands import (
    EmbedConfig,
    EvalConfig,
    ExportConfig,
    ReportConfig,
    ServerConfig,
    TrackingConfig,
    TuneConfig,
)
from armada_ray.config.data import CacheConfig, HttpTeacherConfig, PathsConfig, TaskConfig, TeacherConfig
from armada_ray.config.training import (
    AlignerConfig,
    LossConfig,
    ScalingConfig,
    StudentConfig,
    TrainConfig,
)


class ArmadaConfig(Section):
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
        return default_kind(data, "teacher", "http")

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
