"""What reaches the terminal: the run's story by default; Ray's internals and library warnings with --verbose.

By default a run shows its own lines (one per stage, the workers' per-epoch lines, the summary) and keeps
Ray's and the libraries' chatter in Ray's log files: Ray Data's execution notices, Tune's trial tables,
``FutureWarning``/``UserWarning`` from transformers and friends. ``armada --verbose`` (or
``ARMADA_VERBOSE=1``) shows everything, as before. Ray's C++ core-worker notices (``core_worker.cc ...``) are
left alone: the only switch for them, ``RAY_BACKEND_LOG_LEVEL``, would also empty Ray's own log files.
Plain Python: no Ray import here.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "ARMADA_VERBOSE"
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


def worker_env() -> dict[str, str]:
    """Environment for Ray workers (and a quiet driver): library warnings and C++ notices off unless verbose."""
    if verbose():
        return {VERBOSE_ENV: "1"}
    return {"PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning,ignore::DeprecationWarning",
            "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def quiet_driver() -> None:
    """Apply :func:`worker_env`'s choice in this process (call before Ray starts)."""
    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    if verbose():
        return
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def tune_verbosity() -> int:
    """Ray Tune's ``RunConfig(verbose=...)``: trial tables only when verbose (trials print their own epochs)."""
    return 1 if verbose() else 0
