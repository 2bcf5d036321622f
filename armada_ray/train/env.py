"""The environment every training worker (and every task holding a training rank's resources) gets: set on the
driver before Ray starts and passed in the runtime env."""

from __future__ import annotations

from armada_ray import console, environ
from armada_ray.config import ArmadaConfig
from armada_ray.train import ops

# Worker processes inherit these from the driver.
PASS_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ARMADA_CACHE_DIR", "TORCH_EXTENSIONS_DIR",
            "HF_HOME", "MLFLOW_TRACKING_URI")


def worker_env(cfg: ArmadaConfig) -> dict[str, str]:
    now = environ.snapshot()
    env = {k: now[k] for k in PASS_ENV if k in now}
    env["DS_ACCELERATOR"] = "cuda" if cfg.scaling.use_gpu else "cpu"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ops.DEFAULT_EXTENSIONS_DIR))
    # Ray Train V2 patches print() in its workers to log through the root logger *and* (when Ray has wrapped
    # sys.stdout) print as well, so every "[armada rank N]" line reached the console twice (issue 16)
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    for k, v in console.worker_env().items():  # library warnings off the console unless --verbose
        env.setdefault(k, v)
    return env
