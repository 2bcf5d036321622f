"""Typed configuration for every armada-ray command.

One YAML file (see ``jobs/demo.yaml``) plus ``a.b=c`` overrides on the command line build a
:class:`ArmadaConfig`. Every section is a closed pydantic model (``extra="forbid"``), so a typo is an
error with a "did you mean" rather than a silently ignored key. :func:`load_config` collects every
problem and raises one :class:`ConfigError` whose lines each name the key path, the value given and
what is allowed; the CLI prints them and exits with code 2.

Modules, bottom up: ``redact`` (credentials in URLs masked), ``errors`` (:class:`ConfigError`), ``base``
(the closed section base and path field types), the sections by topic (``data``: paths, teacher, cache,
task; ``training``: student, aligner, loss, train, scaling; ``commands``: tune, report, tracking, embed,
server, export, eval), ``root`` (:class:`ArmadaConfig`), ``load`` (YAML + overrides -> config, error
lines) and ``dump`` (config -> YAML, flat params). Import the names from this package.
"""

from armada_ray.config.commands import (
    REPORT_VARIANTS,
    TRACKING_SCHEMES,
    EmbedConfig,
    EvalConfig,
    ExportConfig,
    ReportConfig,
    ReportSetup,
    SearchDomain,
    ServerConfig,
    TrackingConfig,
    TuneConfig,
)
from armada_ray.config.data import (
    FILE_TASK_KEYS,
    FILE_TASK_METRICS,
    SPLIT_NAMES,
    CacheConfig,
    DiffusionTeacherConfig,
    HFTeacherConfig,
    HttpTeacherConfig,
    HubDatasetConfig,
    PathsConfig,
    TaskConfig,
    TeacherConfig,
)
from armada_ray.config.dump import dump_config, flatten, save_config
from armada_ray.config.errors import ConfigError
from armada_ray.config.load import apply_overrides, build_config, load_config, parse_override
from armada_ray.config.redact import redact_url_credentials
from armada_ray.config.root import ArmadaConfig
from armada_ray.config.training import (
    AlignerConfig,
    LoraConfig,
    LossConfig,
    ScalingConfig,
    StudentConfig,
    TrainConfig,
)

__all__ = [
    "FILE_TASK_KEYS",
    "FILE_TASK_METRICS",
    "REPORT_VARIANTS",
    "SPLIT_NAMES",
    "TRACKING_SCHEMES",
    "AlignerConfig",
    "ArmadaConfig",
    "CacheConfig",
    "ConfigError",
    "DiffusionTeacherConfig",
    "EmbedConfig",
    "EvalConfig",
    "ExportConfig",
    "HFTeacherConfig",
    "HttpTeacherConfig",
    "HubDatasetConfig",
    "LoraConfig",
    "LossConfig",
    "PathsConfig",
    "ReportConfig",
    "ReportSetup",
    "ScalingConfig",
    "SearchDomain",
    "ServerConfig",
    "StudentConfig",
    "TaskConfig",
    "TeacherConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_overrides",
    "build_config",
    "dump_config",
    "flatten",
    "load_config",
    "parse_override",
    "redact_url_credentials",
    "save_config",
]
