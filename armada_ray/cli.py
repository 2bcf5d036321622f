"""The ``armada`` command line.

Every subcommand takes ``--config FILE`` plus ``key=value`` overrides and ``--json``; it prints
progress while it works and ends with where its outputs went. With ``--json`` the last stdout line is
one JSON object with the same facts. Exit codes: 0 success, 2 a config/input problem the user can fix,
1 anything else (with its cause, never a bare traceback; ``ARMADA_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from typing import Any, Callable

from armada_ray import console
from armada_ray.config import ArmadaConfig, ConfigError, load_config


CHECKED_WHEN_SUBMITTED = ("embed", "train", "tune")  # commands whose submitted jobs run the preflight first


# name -> (implementation "module:function", one-line help, longer description)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "embed": (
        "armada_ray.embed:run_embed",
        "query the teacher once per example into the teacher cache (Ray Data fan-out)",
        "Reads the task, drops prompts already in the content-addressed cache, fans the rest out to teacher "
        "actors (GPU models or a rate-limited API) and writes Parquet shards as batches finish. Main options: "
        "teacher.kind (hf|diffusion|http), teacher.endpoint, teacher.requests_per_s, embed.concurrency, "
        "task.name, task.max_train.",
    ),
    "train": (
        "armada_ray.train.trainer:run_train",
        "train aligner + student with the ARMADA loss on Ray Train + DeepSpeed ZeRO",
        "Runs the alternating (or joint) ARMADA schedule with a TorchTrainer; reports the dev metric per epoch "
        "and keeps the best checkpoint. Main options: student.model, student.lora.*, loss.alpha/beta/gamma/"
        "temperature, loss.mode (armada|baseline), train.epochs, train.zero_stage, scaling.num_workers, resume.",
    ),
    "tune": (
        "armada_ray.tune:run_tune",
        "Ray Tune sweep over the alignment weights; every trial is a Ray Train run",
        "Samples tune.search_space (dotted config paths with choice/uniform/loguniform/grid) with ASHA or "
        "Optuna; every trial reads the one teacher cache. Main options: tune.num_samples, tune.scheduler, "
        "tune.searcher, tune.metric, tune.max_concurrent_trials.",
    ),
    "probe": (
        "armada_ray.probe:run_probe",
        "the teacher's ceiling: a linear probe on the cached vectors beside the majority-class floor",
        "Fits a logistic-regression probe (ridge for regression) on the cached train vectors and scores dev with "
        "the task's metric; warns when it is within 2 points of the floor (no task signal in the teacher). "
        "Needs `armada embed` first. Logged to MLflow as a run of kind probe.",
    ),
    "report": (
        "armada_ray.report:run_report",
        "the seeded study: probe, baseline, ARMADA variants and controls with intervals and paired tests",
        "For each report.setups entry (task x student x teacher) and each of report.seeds: the linear probe, the "
        "undistilled baseline, ARMADA with cosine/euclid/pointwise, both shuffle controls, a random frozen aligner, "
        "alpha=0 and beta=0, run in this process (no Ray start-up per run). Writes report.md and report.json "
        "under <work_dir>/reports/<name> and a parent MLflow run with the plot.",
    ),
    "eval": (
        "armada_ray.evaluate:run_eval",
        "score a checkpoint or an export on a task split and write predictions",
        "Main options: eval.split (dev|test), eval.checkpoint (a checkpoint or export folder).",
    ),
    "export": (
        "armada_ray.export:run_export",
        "export the best checkpoint as a Hugging Face folder with the aligner beside it",
        "Main options: export.merge (merge LoRA, or keep the adapter), export.dir.",
    ),
    "serve-teacher": (
        "armada_ray.teachers.server:run_server",
        "serve a local teacher as an OpenAI-compatible /v1/embeddings API on loopback",
        "Hosts server.teacher behind /v1/embeddings, /v1/models and /health. Main options: server.port, "
        "server.token_env, server.rate_limit_rps, server.error_rate, server.latency_s, server.malformed_rate.",
    ),
    "demo": (
        "armada_ray.demo:run_demo",
        "the embedded default end to end on one box (local Ray, loopback teacher, sweep, export)",
        "Starts local Ray and the loopback teacher server with a real stand-in teacher, embeds an offline task, "
        "trains and evaluates, and prints a summary table.",
    ),
    "ui": (
        "armada_ray.tracking:run_ui",
        "start the MLflow UI on 127.0.0.1 over the project's tracking store",
        "Main options: tracking.uri, server.port is not used; --port picks the UI port.",
    ),
    "tasks": (
        "armada_ray.tasks:run_list_tasks",
        "list the registered tasks (loaders, labels, metrics)",
        "Lists every task in the registry with its kind, text fields, labels or answer format and metric.",
    ),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="armada",
        description="armada-ray: ARMADA cross-modal distillation from black-box teachers on Ray.",
        epilog="Every subcommand takes --config FILE, key=value overrides (e.g. loss.alpha=0.3) and --json.",
    )
    sub = p.add_subparsers(dest="command", metavar="<command>")
    for name, (_, short, long) in COMMANDS.items():
        sp = sub.add_parser(name, help=short, description=f"{short}. {long}")
        sp.add_argument("--config", "-c", help="YAML config (e.g. jobs/demo.yaml); defaults when omitted")
        sp.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
        sp.add_argument("--preflight", action="store_true", help="only check the plan and print it")
        sp.add_argument("--verbose", "-v", action="store_true",
                        help="also show Ray's internals and library warnings (kept in Ray's logs otherwise)")
        if name == "ui":
            sp.add_argument("--port", type=int, default=5000, help="UI port on 127.0.0.1")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=1")
    return p


def _resolve(target: str) -> Callable[..., dict[str, Any]]:
    module_name, fn_name = target.split(":")
    return getattr(importlib.import_module(module_name), fn_name)


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    print("", flush=True)
    for key, value in result.items():
        if isinstance(value, (dict, list)):
            continue
        print(f"  {key}: {value}")
    if as_json:
        print(json.dumps(result, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # overrides may stand before and after --config: argparse leaves the later ones unparsed
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "overrides", None) is not None:
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help()
        return 2
    stray = [o for o in args.overrides if o.startswith("-")]
    if stray:
        print(f"armada {args.command}: unknown option {stray[0]!r}; accepted: --config FILE, --json, "
              f"--preflight, --verbose, key=value overrides", file=sys.stderr)
        return 2
    console.set_verbose(args.verbose or console.verbose())
    console.quiet_driver()
    try:
        cfg: ArmadaConfig = load_config(args.config, args.overrides)
        if args.command in ("embed", "train", "tune", "eval", "demo", "probe", "report"):
            from armada_ray.tasks import task_spec  # lazy: the registry (~40 ms) stays out of --help and `ui`

            task_spec(cfg.task)  # an unknown task is refused before any stage starts
        fn = _resolve(COMMANDS[args.command][0])
        kwargs: dict[str, Any] = {}
        if args.command == "ui":
            kwargs["port"] = args.port
        # lazy: the preflight loads the plan engine, the cache, the teachers and tracking (~0.3 s), which
        # `armada ui`, `armada tasks` and the other commands never need
        if args.preflight:
            from armada_ray.preflight import run_preflight

            result = run_preflight(cfg, command=args.command)
        else:
            if args.command in CHECKED_WHEN_SUBMITTED:
                from armada_ray.preflight import preflight_if_submitted

                # a `ray job submit` entrypoint checks its plan once, here, before any work; train and tune take
                # its facts instead of checking again
                verdict = preflight_if_submitted(cfg, args.command)
                if verdict is not None and args.command in ("train", "tune"):
                    kwargs["plan"] = verdict["plan"]
            result = fn(cfg, **kwargs)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"armada {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: a cause line, not a traceback
        if os.environ.get("ARMADA_DEBUG"):
            traceback.print_exc()
        print(f"armada {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _print_result(result or {}, args.json)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
