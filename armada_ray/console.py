"""What reaches the terminal: the run's story by default; Ray's internals and library warnings with --verbose.

By default a run shows its own lines (one per stage, the workers' per-epoch lines, the summary) and keeps
Ray's and the libraries' chatter in Ray's log files: Ray Data's execution notices (its console handler at
WARNING through ``RAY_DATA_LOGGING_CONFIG``; ``ray-data.log`` keeps them), Tune's trial tables,
Ray Train's resource/worker-group INFO lines (``LoggingConfig``), ``FutureWarning``/``UserWarning`` from
transformers and friends, MLflow's store set-up notices. ``armada --verbose`` (or ``ARMADA_VERBOSE=1``) shows
everything, as before. Ray's C++ notices reach the console through its log forwarding only, where the known
ones are skipped (:data:`RAY_DEDUP_SKIP`); ``RAY_BACKEND_LOG_LEVEL`` is not used: it would also empty Ray's
own log files. The driver's own core worker writes one such notice straight to stderr when Ray Data starts
its teacher actors; it stays.
Plain Python: no Ray import here.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

VERBOSE_ENV = "ARMADA_VERBOSE"
# Ray Data configures its logger when ray.data is imported, resetting any level set before; its documented
# knob is a logging config file, read at that import
RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
# library loggers whose INFO lines are internals to a user of armada (kept at WARNING)
_CHATTY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "deepspeed", "DeepSpeed", "transformers",
                   "mlflow", "alembic", "urllib3", "httpx")


def verbose() -> bool:
    """True when the user asked for every library's output (``--verbose`` sets the variable)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    """Record the choice in the environment, so Ray workers and subprocesses make the same one."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


# Ray's documented log-forwarding knobs (read when ray is imported): our own lines ("[armada ...") are never
# merged by Ray's dedup (it strips digits, so two trials' epoch lines would read as one "[repeated 2x]"), and
# notices a user cannot act on are skipped (they stay in the workers' log files): the core worker's
# "constructor arguments in the object store and max_restarts > 0" (Ray Data and Ray Train actors) and the
# raylet's "N PYTHON worker processes have been started ... startup concurrency" (every trial starts some);
# DeepSpeed's "... built successfully" is a print of every rank that loads the (prebuilt) collectives
RAY_DEDUP_ALLOW = r"\[armada "
RAY_DEDUP_SKIP = (r"has constructor arguments in the object store and max_restarts|"
                  r"PYTHON worker processes have been started on node|"
                  r"DeepSpeed \S+ built successfully|"  # DeepSpeed's print at every rank's start, built or not
                  # Ray Train INFO lines from loggers outside "ray.train" (its LoggingConfig misses them): a
                  # rank's report, and the cleaner's notice when the scheduler stops a trial
                  r"Reporting training result \d+: TrainingReport|"
                  r"Detected that the Ray Train controller actor \(\w+\) is dead")


def worker_env() -> dict[str, str]:
    """Environment for Ray workers (and a quiet driver): library warnings and C++ notices off unless verbose."""
    if verbose():
        return {VERBOSE_ENV: "1"}
    return {"PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning,ignore::DeprecationWarning",
            "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
            "RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING), "MLFLOW_LOGGING_LEVEL": "WARNING"}


def driver_env() -> dict[str, str]:
    """:func:`worker_env` plus what only the driver reads: Ray's log forwarding and Tune's console output
    (``RAY_AIR_NEW_OUTPUT=0``: Tune's classic reporter, silent at ``verbose=0``; the new one prints its
    experiment box and a TensorBoard hint at every verbosity)."""
    env = worker_env()
    if not verbose():
        env.update({"RAY_DEDUP_LOGS_ALLOW_REGEX": RAY_DEDUP_ALLOW, "RAY_DEDUP_LOGS_SKIP_REGEX": RAY_DEDUP_SKIP,
                    "RAY_AIR_NEW_OUTPUT": "0"})
    return env


def quiet_driver() -> None:
    """Apply :func:`driver_env`'s choice in this process (call before ray is imported)."""
    for key, value in driver_env().items():
        os.environ.setdefault(key, value)
    if verbose():
        return
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def train_log_level() -> str:
    """Ray Train's ``LoggingConfig(log_level=...)`` for its console (its system log files keep every level)."""
    return "INFO" if verbose() else "WARNING"


def tune_verbosity() -> int:
    """Ray Tune's ``RunConfig(verbose=...)``: trial tables only when verbose (trials print their own epochs)."""
    return 1 if verbose() else 0
