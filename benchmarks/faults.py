"""The fault suite's counts (issue 13): nothing lost, nothing answered twice, every bad input a clear answer,
no secret leaked.

Five parts, all on loopback with real ``armada serve-teacher`` processes (MiniLM stand-in, max_length 32):

a. **Bad inputs**: every case of ``benchmarks/fault_cases.py`` (malformed configs, values, overrides, data files
   and rows) through ``armada_ray.cli.main`` in this process, before any Ray: ``bad_inputs_clear`` counts exit 2
   with at most three stderr lines naming the key/file and no traceback, or a bad row written to the skipped file
   with file, row, field and reason.
b. **Teacher API faults**: ``armada embed`` (in this process) against a server injecting, per request, 8 % 500/503,
   7 % 429 (Retry-After from its limiter), 5 % a 200 with an HTML body (``fault_rate`` = 0.20), plus 2 % of rows
   answered with a NaN or half-length vector, on the rows of task tweet_sentiment. ``lost`` = unique prompts neither
   cached nor quarantined; ``duplicates`` = texts the server answered (200) more than once; ``answered_then_lost``
   = lost prompts the server had answered.
c. **Kill**: ``armada embed`` as a CLI child (own local Ray) against a server with 0.25 s latency, SIGKILLed (its
   process group) once >= 30 % of the rows are in shards, then rerun here. Passed when the cache verifies at the
   kill and after, the rerun leaves nothing lost, and texts answered twice / answered before the kill and asked
   again are at most the requests on the wire (teacher.max_in_flight x teacher.batch_size).
d. **Secrets**: ``fault_cases.secrets_check``: a key through ``teacher.api_key_env`` (to a server that checks it),
   one inside ``teacher.endpoint``, a wrong one; a full ``armada tune`` (a trial, the undistilled baseline, the
   export) on the URL-key cache with both keys set; grep of every file written (work dirs, caches, MLflow stores
   and artifacts, every Ray session's logs), everything printed, a saved config.yaml and its MLflow params/tags.
e. **Kills and protocol junk, as tests**: ``tests/faults/test_kills.py`` (a Ray Train worker SIGKILLed mid-epoch;
   the ``armada tune`` driver SIGKILLed mid-trial and the sweep resumed) and ``tests/faults/test_protocol_junk.py``
   (a raw-socket server's junk replies), run by pytest in a child process and counted from its JUnit report.

value = rows lost (b + c). Full: 2,000 rows in (b) and (c), saved to benchmarks/results/faults.json.
--quick: 200 rows, printed only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, embed_killed_midway  # noqa: E402
from benchmarks.fault_cases import (  # noqa: E402
    ROOT,
    SERVER_TOKEN_ENV,
    Server,
    child_env,
    run_all,
    secrets_check,
)

# per request (server.error_rate + rate_limit_error_rate + malformed_rate); bad vectors are per row on top
FAULTS = {"error_rate": 0.08, "rate_limit_error_rate": 0.07, "malformed_rate": 0.05}
BAD_VECTOR_RATE = 0.02
KILL_IN_FLIGHT = 4  # teacher.max_in_flight of the kill case
KILL_BATCH = 2  # teacher.batch_size of the kill case


class _Tee(io.TextIOBase):
    """Writes through to ``stream`` and keeps a copy (the CLI's stderr, for the reason a run stopped)."""

    def __init__(self, stream: Any):
        self.stream, self.buf = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.buf.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        return self.buf.getvalue()


def task_overrides(name: str, rows: int) -> list[str]:
    dev = test = max(1, rows // 10)
    return [f"task.name={name}", f"task.max_train={rows - dev - test}", f"task.max_dev={dev}", f"task.max_test={test}"]


def _accounting(cfg: Any, answered: dict[str, int]) -> dict[str, Any]:
    """Unique prompts of ``cfg``'s task split into cached / quarantined / lost; which lost ones were answered."""
    from armada_ray.cache import cache_key, open_cache_for
    from armada_ray.embed import task_prompts
    from armada_ray.teachers.factory import teacher_fingerprint
    from armada_ray.teachers.server import text_digest

    prompts = {r["prompt"] for r in task_prompts(cfg)[0]}
    cache = open_cache_for(cfg)
    fid = cache.fingerprint_id if cache is not None else None
    if fid is None:
        from armada_ray.fingerprint import fingerprint_id

        fid = fingerprint_id(teacher_fingerprint(cfg.teacher, device=cfg.embed.teacher_device))
    quarantined: set[str] = set()
    unreadable = 0
    if cache is not None and (cache.path / "quarantine.jsonl").is_file():
        # split on "\n" only: the records are JSON lines, and a prompt may hold U+0085 or U+2028, where
        # str.splitlines (TeacherCache.quarantined) also splits
        lines = [ln for ln in (cache.path / "quarantine.jsonl").read_text(encoding="utf-8").split("\n") if ln]
        quarantined = {json.loads(ln).get("key") for ln in lines}
        unreadable = len(lines) - len(cache.quarantined())
    cached = lost = 0
    answered_lost = 0
    for p in prompts:
        k = cache_key(fid, p)
        if cache is not None and k in cache:
            cached += 1
        elif k in quarantined:
            pass
        else:
            lost += 1
            answered_lost += answered.get(text_digest(p), 0) > 0
    return {"unique_prompts": len(prompts), "cached": cached, "quarantined": len(prompts) - cached - lost,
            "lost": lost, "answered_then_lost": answered_lost, "quarantine_records_cache_cannot_read": unreadable,
            "verify_ok": bool(cache is not None and cache.verify()["ok"])}


def api_faults(server: Server, work: Path, rows: int) -> dict[str, Any]:
    from armada_ray.cli import main
    from armada_ray.config import load_config

    over = [f"paths.work_dir={work}", "teacher.kind=http", f"teacher.endpoint={server.url}", "teacher.model=teacher",
            "teacher.stand_in=true", "teacher.dim=384", "teacher.batch_size=4", "teacher.requests_per_s=60",
            "teacher.max_in_flight=8", "teacher.max_retries=8", "teacher.backoff_base_s=0.05",
            "teacher.backoff_max_s=2", "embed.concurrency=2", "embed.batch_size=16",
            *task_overrides("tweet_sentiment", rows)]
    server.reset()
    t0 = time.monotonic()
    failures = []
    for _ in range(3):  # as a user would: a run that stops is run again (it resumes from the cache)
        err = _Tee(sys.stderr)
        with contextlib.redirect_stderr(err):
            rc = main(["embed", *over])
        if rc == 0:
            break
        failures.append((err.text().strip().splitlines() or ["?"])[-1][:300])
    wall = time.monotonic() - t0
    srv = server.stats(texts=True)
    texts = srv.pop("texts")
    srv.pop("admitted_times", None)
    acc = _accounting(load_config(None, over), texts)
    injected = srv["injected_5xx"] + srv["injected_429"] + srv["injected_malformed"]
    return {"rc": rc, "runs": len(failures) + (rc == 0), "runs_failed": failures, "wall_s": round(wall, 1), **acc,
            "duplicates": sum(c - 1 for c in texts.values() if c > 1),
            "server_requests": srv["requests"], "server_admitted": srv["admitted"],
            "injected_5xx": srv["injected_5xx"], "injected_429": srv["injected_429"],
            "injected_malformed": srv["injected_malformed"], "injected_bad_vectors": srv["injected_bad_vectors"],
            "fault_rate_measured": round(injected / srv["admitted"], 4) if srv["admitted"] else None}


def kill_case(server: Server, work: Path, rows: int) -> dict[str, Any]:
    """The driver of `armada embed` SIGKILLed mid-run, then rerun (test_embed.py's kill test, counted)."""
    from armada_ray.cache import TeacherCache, open_cache_for
    from armada_ray.cli import main
    from armada_ray.config import load_config
    from armada_ray.teachers.server import text_digest

    over = [f"paths.work_dir={work}", "teacher.kind=http", f"teacher.endpoint={server.url}", "teacher.model=teacher",
            "teacher.stand_in=true", "teacher.dim=384", f"teacher.batch_size={KILL_BATCH}",
            "teacher.requests_per_s=40", f"teacher.max_in_flight={KILL_IN_FLIGHT}", "embed.batch_size=4",
            "embed.flush_every_s=0.5", "cache.shard_rows=8", *task_overrides("tweet_sentiment", rows)]
    server.reset()
    ray_tmp = Path(tempfile.mkdtemp(prefix="afk", dir="/tmp"))
    killed_running, _ = embed_killed_midway(over, work / "cache", max(24, int(rows * 0.3)),
                                            child_env(RAY_TMPDIR=str(ray_tmp)))
    at_kill = server.stats(texts=True)["texts"]
    cfg = load_config(None, over)
    cache = open_cache_for(cfg)
    tmp_files = sorted(p.name for p in cache.path.glob(".tmp-*")) if cache is not None else []
    verify_at_kill = bool(cache is not None and TeacherCache.verify(cache)["ok"])
    kept = len(cache) if cache is not None else 0
    t0 = time.monotonic()
    rc = main(["embed", *over])
    rerun_s = time.monotonic() - t0
    after = server.stats(texts=True)["texts"]
    acc = _accounting(cfg, after)
    asked_again = sum(1 for d, c in after.items() if c > 1 and d in at_kill)
    duplicates = sum(c - 1 for c in after.values() if c > 1)
    on_wire = KILL_IN_FLIGHT * KILL_BATCH
    passed = (killed_running and rc == 0 and verify_at_kill and acc["verify_ok"] and acc["lost"] == 0
              and asked_again <= on_wire and duplicates <= on_wire)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"killed_while_running": killed_running, "cached_at_kill": kept, "answered_at_kill": len(at_kill),
            "tmp_files_at_kill": len(tmp_files), "verify_at_kill": verify_at_kill, "rerun_rc": rc,
            "rerun_s": round(rerun_s, 1), **acc, "duplicates": duplicates, "answered_then_lost": asked_again,
            "requests_on_the_wire_limit_texts": on_wire, "passed": passed}


# the kill cases and the raw-socket protocol junk live as tests (tests/faults); the benchmark runs and counts them
PYTEST_PARTS = {
    "kill_train_worker": "tests/faults/test_kills.py::test_a_killed_train_worker_resumes_to_the_same_next_step_loss"
                         "_in_one_mlflow_run",
    "kill_sweep_driver": "tests/faults/test_kills.py::test_a_killed_sweep_driver_is_restored_with_no_duplicate_trial"
                         "_runs",
    "protocol_junk": "tests/faults/test_protocol_junk.py",
}


def pytest_part(target: str, scratch: Path) -> dict[str, Any]:
    """Run ``target`` with pytest in a child process; its cases, outcomes and wall time from the JUnit report."""
    import xml.etree.ElementTree as ET

    report = scratch / f"junit-{abs(hash(target))}.xml"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", target, "-q", "-p", "no:cacheprovider",
                           f"--junitxml={report}"], cwd=ROOT, env=child_env(), capture_output=True, text=True)
    cases, reasons = {}, {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
            cases[case.get("name")] = bad[0].tag if bad else "passed"
            if bad:  # the assertion that failed, which the output's tail does not hold
                reasons[case.get("name")] = (bad[0].get("message") or "")[:1000]
    passed = proc.returncode == 0 and bool(cases) and all(v == "passed" for v in cases.values())
    out = {"cases": cases, "passed": passed, "wall_s": round(time.monotonic() - t0, 1)}
    if reasons:
        out["reasons"] = reasons
    if not passed:
        out["tail"] = (proc.stdout + proc.stderr)[-1500:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 rows, print only")
    ap.add_argument("--rows", type=int, default=None)
    args = ap.parse_args()
    rows = args.rows or (200 if args.quick else 2000)
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                 "MLFLOW_ENABLE_ASYNC_LOGGING": "false", "OMP_NUM_THREADS": "1"}.items():
        os.environ.setdefault(k, v)
    scratch = Path(tempfile.mkdtemp(prefix="armada-faults-"))
    token = f"sk-env-{os.urandom(8).hex()}"
    t_all = time.monotonic()
    # every server loads its teacher at once
    faulty = Server([f"server.{k}={v}" for k, v in FAULTS.items()]
                    + [f"server.bad_vector_rate={BAD_VECTOR_RATE}", "server.fault_seed=13", "server.latency_s=0.02"])
    slow = Server(["server.latency_s=0.25"])
    token_server = Server([f"server.token_env={SERVER_TOKEN_ENV}"], env=child_env(**{SERVER_TOKEN_ENV: token}),
                          token=token)
    open_server = Server(["server.latency_s=0.05"])
    servers = [faulty, slow, token_server, open_server]
    result: dict[str, Any] = {"name": "faults", "unit": "rows", "rows": rows,
                              "fault_rate": round(sum(FAULTS.values()), 4)}
    parts: dict[str, Any] = {}
    notes: list[str] = []
    try:
        # a. bad inputs, before anything starts Ray in this process
        t0 = time.monotonic()
        bad = run_all(scratch / "inputs")
        parts["bad_inputs"] = {**bad, "wall_s": round(time.monotonic() - t0, 1)}
        for s in servers:
            s.ready()
        # b. teacher API faults
        try:
            parts["api_faults"] = api_faults(faulty, scratch / "api", rows)
        except Exception as exc:  # noqa: BLE001 - a failed part is a result
            parts["api_faults"] = {"error": f"{type(exc).__name__}: {exc}"}
        # c. kill the embed driver mid-run
        try:
            parts["kill_embed_driver"] = kill_case(slow, scratch / "kill", rows)
        except Exception as exc:  # noqa: BLE001
            parts["kill_embed_driver"] = {"error": f"{type(exc).__name__}: {exc}", "passed": False}
        # d. secrets
        try:
            sec = secrets_check(scratch / "secrets", token_server, open_server)
            for root in sec.get("ray_roots", []):
                shutil.rmtree(root, ignore_errors=True)
            parts["secrets"] = {k: v for k, v in sec.items() if k not in ("ray_roots",)}
        except Exception as exc:  # noqa: BLE001
            parts["secrets"] = {"error": f"{type(exc).__name__}: {exc}", "secrets_leaked": None}
    finally:
        for s in servers:
            s.stop()
    # e. the Ray Train worker kill, the sweep driver kill and the protocol junk server (tests/faults)
    for part, target in PYTEST_PARTS.items():
        if not args.quick:
            parts[part] = pytest_part(target, scratch)
    api, kill, sec = parts.get("api_faults", {}), parts.get("kill_embed_driver", {}), parts.get("secrets", {})

    kills = [kill] + [parts[p] for p in ("kill_train_worker", "kill_sweep_driver") if p in parts]

    def total(key: str) -> int | None:
        vals = [p.get(key) for p in (api, kill)]
        return None if any(v is None for v in vals) else int(sum(vals))

    result.update({
        "value": total("lost"),
        "duplicates": total("duplicates"),
        "answered_then_lost": total("answered_then_lost"),
        "fault_rate_measured": api.get("fault_rate_measured"),
        "bad_inputs_tried": parts["bad_inputs"]["tried"],
        "bad_inputs_clear": parts["bad_inputs"]["clear"],
        "secrets_leaked": sec.get("secrets_leaked"),
        "kill_cases_tried": len(kills),
        "kill_cases_passed": sum(bool(k.get("passed")) for k in kills),
        "wall_s": round(time.monotonic() - t_all, 1),
        "parts": parts,
    })
    notes.append("duplicates/answered_then_lost sum parts b and c; in c, up to "
                 f"{KILL_IN_FLIGHT * KILL_BATCH} texts (the requests on the wire at the kill) are allowed")
    notes.append("kill cases: the embed driver (part c, counted here), a Ray Train worker and a sweep driver "
                 "(tests/faults/test_kills.py, run by pytest; --quick skips them and the protocol junk tests)")
    result["notes"] = notes
    shutil.rmtree(scratch, ignore_errors=True)
    result = {"name": result.pop("name"), "value": result.pop("value"), "unit": result.pop("unit"), **result}
    emit(result, args.quick)


if __name__ == "__main__":
    main()
