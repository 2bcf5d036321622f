"""The bad-input table of the fault suite (issue 13), shared by ``tests/faults/test_bad_inputs.py`` and
``benchmarks/faults.py``.

Two kinds of case:

- :class:`Refusal`: argv for the real ``armada`` entry (:func:`armada_ray.cli.main`, in-process) holding one
  malformed config, override or data file. The clear answer is exit code 2, at most three lines on stderr, no
  traceback anywhere, every string of ``names`` (the key, value or file at fault) on stderr, no secret echoed,
  and Ray never started.
- :class:`BadRow`: a ``task.name=files`` data file whose other rows are fine. The clear answer is a load that
  goes on, with the row written to ``<work_dir>/skipped/<task>.jsonl`` (file, row, field, reason), through the
  same calls ``armada embed`` and ``armada train`` make (``load_task`` + ``write_skipped``), without Ray.

Each case writes what it needs into a scratch folder given to it (``tmp``) and points ``paths.work_dir`` there.
A case whose clear answer is a known defect carries it in ``defect`` (the test marks it ``xfail(strict=True)``).

Also shared: :class:`Server` (``armada serve-teacher`` as a loopback subprocess, stopped by PID) and
:func:`secrets_check` (the secrets grep of ``tests/faults/test_secrets.py`` and part d of the benchmark).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# a key handed to cases that put credentials somewhere: it must never be echoed
SECRET = "sk-faultsuite-0c7e1d2b9a"
MAX_LINES = 3
# an http teacher that refuses connections at once: a case that gets past its refusal fails fast, and never
# reaches a real server on the default port
NOWHERE = "teacher.endpoint=http://127.0.0.1:9/v1"
# a notice a task load prints once per process (the packaged tasks' own skipped rows): not part of a refusal
_NOTICE = re.compile(r"^task \S+: \d+ source rows skipped")


# --------------------------------------------------------------------------------------------- data files

def review_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    """Distinct two-class rows (text, label) such as a user's own JSONL holds."""
    words = {"pos": ["great", "lovely", "superb", "wonderful", "fine"],
             "neg": ["awful", "bad", "dreadful", "poor", "grim"]}
    out = []
    for i in range(offset, offset + n):
        label = "pos" if i % 2 else "neg"
        out.append({"text": f"review {i}: a {words[label][i % 5]} film, truly {words[label][(i + 2) % 5]}",
                    "label": label})
    return out


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One line per row: a dict as JSON, a str as given (to plant a bad line), bytes raw."""
    path.write_bytes(b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode())
                              + b"\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict[str, Any]], extra_lines: list[bytes] = ()) -> Path:
    lines = [b"text,label"] + [f'"{r["text"]}",{r["label"]}'.encode() for r in rows] + list(extra_lines)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def files_task(train: Path | str, *more: str) -> list[str]:
    """Overrides of a two-class ``task.name=files`` task reading ``train``."""
    return ["task.name=files", "task.text_fields=[text]", f"task.files={{train: '{train}'}}", NOWHERE, *more]


def _file(tmp: Path, name: str, content: str | bytes) -> Path:
    p = tmp / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return p


def _config(tmp: Path, content: str | bytes, name: str = "bad.yaml") -> list[str]:
    return ["--config", str(_file(tmp, name, content))]


def _checkpoint_like(tmp: Path, config: str, task: str) -> Path:
    d = tmp / "ckpt"
    d.mkdir(exist_ok=True)
    (d / "config.yaml").write_text(config + "\n")
    (d / "task.json").write_text(task)
    return d


# --------------------------------------------------------------------------------------------- refusals

@dataclass(frozen=True)
class Refusal:
    id: str
    what: str  # the malformed input, in a user's words
    argv: Callable[[Path], list[str]]  # `armada ...` arguments; the case writes its files into tmp
    names: tuple[str, ...]  # each must appear on stderr: the key / value / file at fault
    defect: str | None = None  # a known defect of the project (xfail strict in the test)


def _work(tmp: Path) -> str:
    return f"paths.work_dir={tmp / 'work'}"


def _cmd(command: str, *overrides: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [command, _work(tmp), *overrides]


def _embed_files(make: Callable[[Path], Path | str]) -> Callable[[Path], list[str]]:
    """`armada embed` on a files task whose train file ``make`` writes into tmp (or names)."""
    return lambda tmp: ["embed", _work(tmp), *files_task(make(tmp))]


_SPACE = "tune.search_space={{'loss.alpha': {0}}}"

REFUSALS: list[Refusal] = [
    # ---- config files
    Refusal("yaml-syntax", "--config that is not YAML (an unclosed list)",
            lambda t: ["train", *_config(t, "loss:\n  alpha: [0.1, 0.2\ntrain:\n  epochs: 1\n"), _work(t)],
            ("bad.yaml", "line")),
    Refusal("yaml-duplicate-key", "a key given twice in one mapping",
            lambda t: ["train", *_config(t, "loss:\n  alpha: 0.3\n  alpha: 0.7\n"), _work(t)],
            ("alpha", "twice", "lines 2 and 3")),
    Refusal("yaml-empty", "an empty --config file",
            lambda t: ["train", *_config(t, ""), _work(t)], ("bad.yaml", "empty")),
    Refusal("yaml-binary", "a binary --config file",
            lambda t: ["train", *_config(t, bytes(range(256)) * 4, "model.bin"), _work(t)], ("model.bin", "UTF-8")),
    Refusal("yaml-folder", "a folder as --config",
            lambda t: ["train", "--config", str(t), _work(t)], ("directory",)),
    Refusal("yaml-missing", "a --config that does not exist",
            lambda t: ["train", "--config", str(t / "nope.yaml"), _work(t)], ("nope.yaml", "no such file")),
    Refusal("yaml-tab-indent", "a --config indented with a tab",
            lambda t: ["train", *_config(t, "loss:\n\talpha: 0.3\n"), _work(t)], ("bad.yaml", "line 2")),
    Refusal("yaml-top-list", "a --config whose top level is a list",
            lambda t: ["train", *_config(t, "- loss\n- train\n"), _work(t)], ("bad.yaml", "mapping")),
    Refusal("yaml-section-scalar", "a section given as a number (loss: 3)",
            lambda t: ["train", *_config(t, "loss: 3\n"), _work(t)], ("loss",)),
    Refusal("unknown-section", "an unknown top-level section (trainn:)",
            lambda t: ["train", *_config(t, "trainn:\n  epochs: 1\n"), _work(t)], ("trainn", "did you mean train")),
    Refusal("unknown-key", "a misspelled key inside a section (loss.alpah)",
            lambda t: ["train", *_config(t, "loss:\n  alpah: 0.3\n"), _work(t)], ("loss.alpah", "loss.alpha")),
    # ---- values
    Refusal("wrong-type-int", "a word for an integer", _cmd("train", "train.epochs=two"), ("train.epochs", "two")),
    Refusal("wrong-type-list", "a string for a list", _cmd("train", "student.lora.target_modules=5"),
            ("student.lora.target_modules",)),
    Refusal("out-of-range", "loss.alpha above 1", _cmd("train", "loss.alpha=1.5"), ("loss.alpha", "1.5")),
    Refusal("zero-batch", "a batch size of 0", _cmd("train", "train.batch_size=0"), ("train.batch_size",)),
    Refusal("negative-lr", "a negative learning rate", _cmd("train", "train.lr=-0.1"), ("train.lr",)),
    Refusal("inf-yaml", "loss.beta=.inf", _cmd("train", "loss.beta=.inf"), ("loss.beta",)),
    Refusal("inf-word", "train.lr=inf", _cmd("train", "train.lr=inf"), ("train.lr",)),
    Refusal("nan", "train.lr=.nan", _cmd("train", "train.lr=.nan"), ("train.lr",)),
    Refusal("inf-preflight", "train.lr=inf with --preflight", _cmd("train", "--preflight", "train.lr=inf"),
            ("train.lr",)),
    Refusal("bool-for-int", "train.epochs=true", _cmd("train", "train.epochs=true"), ("train.epochs", "boolean")),
    Refusal("bool-for-float", "loss.alpha=false", _cmd("train", "loss.alpha=false"), ("loss.alpha", "boolean")),
    Refusal("enum-manifold", "loss.manifold=cosin", _cmd("train", "loss.manifold=cosin"),
            ("loss.manifold", "cosine")),
    Refusal("enum-zero-stage", "train.zero_stage=4", _cmd("train", "train.zero_stage=4"), ("train.zero_stage",)),
    Refusal("enum-eval-split", "eval.split=train", _cmd("eval", "eval.split=train"), ("eval.split",)),
    Refusal("enum-teacher-kind", "teacher.kind=grpc", _cmd("embed", "teacher.kind=grpc"), ("teacher.kind", "grpc")),
    Refusal("unknown-task", "task.name=no_such_task", _cmd("embed", "task.name=no_such_task"),
            ("no_such_task", "bbc_topics")),
    Refusal("files-key-other-task", "task.labels on a registered task", _cmd("train", "task.labels=[a, b]"),
            ("task.labels",)),
    Refusal("files-no-text-fields", "task.name=files without task.text_fields",
            lambda t: ["embed", _work(t), f"task.files={{train: {write_jsonl(t / 'd.jsonl', review_rows(20))}}}",
                       "task.name=files"], ("task.text_fields",)),
    # ---- tune.search_space
    Refusal("tune-domain-type", "a search domain of type normal", _cmd("tune", _SPACE.format("{type: normal}")),
            ("tune.search_space", "normal")),
    Refusal("tune-uniform-order", "uniform with low >= high",
            _cmd("tune", _SPACE.format("{type: uniform, low: 0.9, high: 0.1}")), ("tune.search_space", "low < high")),
    Refusal("tune-loguniform-zero", "loguniform from 0",
            lambda t: ["tune", _work(t), "tune.search_space={'train.lr': {type: loguniform, low: 0, high: 0.1}}"],
            ("tune.search_space", "low > 0")),
    Refusal("tune-choice-empty", "a choice without values", _cmd("tune", _SPACE.format("{type: choice, values: []}")),
            ("tune.search_space", "values")),
    Refusal("tune-choice-out-of-range", "a choice whose second value is out of range (alpha: [0.5, 2])",
            _cmd("tune", _SPACE.format("{type: choice, values: [0.5, 2]}")), ("loss.alpha", "2")),
    Refusal("tune-uniform-high-out-of-range", "a uniform range reaching past alpha's bound",
            _cmd("tune", _SPACE.format("{type: uniform, low: 0.5, high: 1.5}")), ("loss.alpha", "1.5")),
    Refusal("tune-unknown-path", "a search space over a misspelled key",
            lambda t: ["tune", _work(t), "tune.search_space={'loss.alpah': {type: choice, values: [0.1, 0.2]}}"],
            ("loss.alpah",)),
    Refusal("tune-metric", "tune.metric that training does not report",
            _cmd("tune", "tune.metric=dev_bleu", _SPACE.format("{type: choice, values: [0.1]}")),
            ("tune.metric", "dev_bleu")),
    # ---- cross-field and plan
    Refusal("lora-and-freeze", "LoRA together with student.freeze_layers_below",
            _cmd("train", "student.freeze_layers_below=2"), ("student.freeze_layers_below", "lora")),
    Refusal("workers-1000", "scaling.num_workers=1000 on this machine",
            _cmd("train", "scaling.num_workers=1000", "loss.mode=baseline"), ("scaling.num_workers=1000",)),
    Refusal("fractional-gpu", "scaling.gpus_per_worker=0.5", _cmd("train", "scaling.gpus_per_worker=0.5"),
            ("scaling.gpus_per_worker", "0.5")),
    Refusal("student-bad-hub-id", "student.model=a//b", _cmd("train", "student.model=a//b", "loss.mode=baseline"),
            ("student.model", "a//b")),
    Refusal("student-missing-folder", "student.model=./no/such/folder",
            lambda t: ["train", _work(t), f"student.model={t}/no/such/folder", "loss.mode=baseline"],
            ("student.model", "no such folder")),
    # ---- teacher endpoint
    Refusal("endpoint-not-url", "teacher.endpoint=not-a-url", _cmd("embed", "teacher.endpoint=not-a-url"),
            ("teacher.endpoint", "not-a-url")),
    Refusal("endpoint-ftp", "teacher.endpoint=ftp://host/v1", _cmd("embed", "teacher.endpoint=ftp://host/v1"),
            ("teacher.endpoint", "ftp://host/v1")),
    Refusal("endpoint-no-host", "teacher.endpoint=http:///v1", _cmd("embed", "teacher.endpoint=http:///v1"),
            ("teacher.endpoint",)),
    Refusal("endpoint-credentials-and-env", "a key in the URL and teacher.api_key_env too",
            _cmd("embed", f"teacher.endpoint=http://user:{SECRET}@127.0.0.1:9/v1", "teacher.api_key_env=ARMADA_KEY"),
            ("teacher.endpoint", "api_key_env")),
    Refusal("endpoint-ipv6-broken", "teacher.endpoint=http://[::1/v1 (an unclosed IPv6 host)",
            _cmd("embed", "teacher.endpoint=http://[::1/v1"), ("teacher.endpoint", "IPv6")),
    Refusal("endpoint-bad-port", "teacher.endpoint with port 99999",
            _cmd("embed", "teacher.endpoint=http://127.0.0.1:99999/v1"), ("teacher.endpoint",)),
    Refusal("api-key-env-unset", "teacher.api_key_env naming an unset variable",
            _cmd("embed", NOWHERE, "teacher.api_key_env=ARMADA_FAULTS_NO_SUCH_VAR"),
            ("teacher.api_key_env", "ARMADA_FAULTS_NO_SUCH_VAR")),
    Refusal("prompt-template-unknown-field", "teacher.prompt_template with an unknown placeholder",
            _cmd("embed", NOWHERE, "teacher.prompt_template='{nope}'"), ("teacher.prompt_template", "nope")),
    Refusal("prompt-template-unclosed", "teacher.prompt_template with an unclosed brace",
            _cmd("embed", NOWHERE, "teacher.prompt_template='{text'"), ("teacher.prompt_template",)),
    Refusal("teacher-bad-hub-id", "teacher.kind=hf with teacher.model=a//b",
            _cmd("embed", "teacher.kind=hf", "teacher.model=a//b"), ("teacher.model", "a//b")),
    Refusal("server-teacher-bad-hub-id", "serve-teacher with server.teacher.model=a//b",
            _cmd("serve-teacher", "server.port=0", "server.teacher.model=a//b"), ("server.teacher.model", "a//b")),
    Refusal("diffusion-missing-model", "teacher.kind=diffusion with a model that is neither cached nor a folder",
            _cmd("embed", "teacher.kind=diffusion", "teacher.model=no-such-pipeline"),
            ("teacher.model", "no-such-pipeline")),
    # ---- paths and stores
    Refusal("work-dir-is-a-file", "paths.work_dir naming an existing file",
            lambda t: ["embed", f"paths.work_dir={_file(t, 'afile', 'x')}", NOWHERE], ("paths.work_dir", "afile")),
    Refusal("tracking-uri-ftp", "tracking.uri=ftp://host (no MLflow store)",
            _cmd("train", "--preflight", "tracking.uri=ftp://x", "loss.mode=baseline"), ("tracking.uri",)),
    Refusal("cluster-spec-missing", "scaling.cluster_spec naming no file",
            lambda t: ["train", _work(t), "--preflight", f"scaling.cluster_spec={t / 'nope.yaml'}",
                       "loss.mode=baseline"], ("scaling.cluster_spec", "nope.yaml")),
    Refusal("storage-bare-s3", "paths.storage='s3://'", _cmd("train", "paths.storage=s3://"),
            ("paths.storage", "s3://")),
    Refusal("eval-not-a-checkpoint", "eval.checkpoint naming a folder that is no checkpoint",
            lambda t: ["eval", _work(t), f"eval.checkpoint={(t / 'plain').mkdir() or t / 'plain'}"],
            ("plain", "not an armada-ray checkpoint")),
    Refusal("eval-missing-checkpoint", "eval.checkpoint naming nothing",
            lambda t: ["eval", _work(t), f"eval.checkpoint={t / 'gone'}"], ("gone",)),
    Refusal("eval-checkpoint-bad-task-json", "a checkpoint folder whose task.json is not JSON",
            lambda t: ["eval", _work(t), f"eval.checkpoint={_checkpoint_like(t, 'name: x', '{not json')}"],
            ("task.json",)),
    Refusal("eval-checkpoint-bad-config", "a checkpoint folder whose config.yaml holds an unknown key",
            lambda t: ["eval", _work(t), f"eval.checkpoint={_checkpoint_like(t, 'lossy: 1', '{}')}"],
            ("config.yaml", "lossy")),
    Refusal("override-files-split", "task.files with a split name that does not exist (validation)",
            lambda t: ["embed", _work(t), "task.name=files", "task.text_fields=[text]",
                       f"task.files={{validation: {t}/v.jsonl}}"], ("task.files", "validation")),
    Refusal("report-variant", "report.variants with an unknown variant", _cmd("report", "report.variants=[foo]"),
            ("report.variants", "foo")),
    Refusal("server-teacher-kind", "serve-teacher with server.teacher.kind=http",
            _cmd("serve-teacher", "server.teacher.kind=http"), ("server.teacher.kind", "http")),
    Refusal("student-offline-unknown", "student.model=no-such-model with the hub offline",
            _cmd("train", "student.model=no-such-model", "loss.mode=baseline"), ("student.model", "no-such-model")),
    # ---- overrides
    Refusal("override-no-equals", "an override without '='", _cmd("train", "loss.alpha"), ("loss.alpha", "key=value")),
    Refusal("override-empty-part", "an override with an empty path part", _cmd("train", "loss..alpha=0.3"),
            ("loss..alpha", "dotted path")),
    Refusal("override-empty-key", "an override with no key", _cmd("train", "=0.3"), ("=0.3",)),
    Refusal("override-section-scalar", "an override replacing a section by a value", _cmd("train", "loss=3"),
            ("loss",)),
    Refusal("override-past-leaf", "an override going below a value (loss.alpha.x=1)",
            _cmd("train", "loss.alpha.x=1"), ("loss.alpha",)),
    Refusal("override-stray-flag", "a flag the command does not take (--alpha=3)", _cmd("train", "--alpha=3"),
            ("--alpha=3",)),
    # ---- data files of task.name=files (fatal: nothing usable)
    Refusal("files-missing", "task.files.train naming no file",
            _embed_files(lambda t: t / "nope.jsonl"), ("task.files.train", "nope.jsonl")),
    Refusal("files-glob-nothing", "a glob matching nothing",
            _embed_files(lambda t: f"{t}/data-*.jsonl"), ("task.files.train", "data-*.jsonl")),
    Refusal("files-wrong-suffix", "a .txt data file",
            _embed_files(lambda t: _file(t, "train.txt", "text,label\na,b\n")), ("train.txt", "suffix")),
    Refusal("files-folder", "task.files.train naming a folder", _embed_files(lambda t: t), ("task.files.train",)),
    Refusal("files-empty", "an empty JSONL file",
            _embed_files(lambda t: _file(t, "empty.jsonl", "")), ("empty.jsonl", "no rows")),
    Refusal("files-bad-parquet", "a .parquet file that is not Parquet",
            _embed_files(lambda t: _file(t, "train.parquet", b"PAR1 not really" * 10)), ("train.parquet", "Parquet")),
    Refusal("files-json-broken", "a .json file that is not JSON",
            _embed_files(lambda t: _file(t, "train.json", '[{"text": "a", "label": ')), ("train.json", "JSON")),
    Refusal("files-json-object", "a .json file holding an object, not an array",
            _embed_files(lambda t: _file(t, "train.json", '{"text": "a", "label": "pos"}')), ("train.json", "array")),
    Refusal("files-csv-header-only", "a CSV with a header and no rows",
            _embed_files(lambda t: _file(t, "train.csv", "text,label\n")), ("train.csv",)),
    Refusal("files-no-text-column", "no row has the text column",
            _embed_files(lambda t: write_jsonl(t / "train.jsonl", [{"body": r["text"], "label": r["label"]}
                                                                  for r in review_rows(20)])),
            ("train.jsonl", "'text'")),
    Refusal("files-one-class", "a label column with a single class",
            _embed_files(lambda t: write_jsonl(t / "train.jsonl", [{**r, "label": "pos"} for r in review_rows(20)])),
            ("task.label_field", "train.jsonl")),
    Refusal("files-all-binary", "a JSONL file of binary garbage",
            _embed_files(lambda t: _file(t, "train.jsonl", bytes(range(128, 256)) * 8)), ("train.jsonl",)),
]


# --------------------------------------------------------------------------------------------- bad rows

@dataclass(frozen=True)
class BadRow:
    id: str
    what: str
    overrides: Callable[[Path], list[str]]  # config overrides; the case writes its file(s) into tmp
    file: str  # the file named by the skipped record
    row: int  # its row number (1-based line for JSONL/CSV, element for JSON/Parquet)
    field: str | None  # the field named
    reason: str  # a substring of the reason
    defect: str | None = None


def _rows_with(tmp: Path, bad: Any, at: int = 5, name: str = "train.jsonl") -> Path:
    rows: list[Any] = list(review_rows(30))
    rows.insert(at - 1, bad)
    return write_jsonl(tmp / name, rows)


BAD_ROWS: list[BadRow] = [
    BadRow("row-missing-text", "a row without the text column",
           lambda t: files_task(_rows_with(t, {"label": "pos"})), "train.jsonl", 5, "text", "missing"),
    BadRow("row-unknown-label", "a label outside task.labels",
           lambda t: files_task(_rows_with(t, {"text": "an odd one", "label": "meh"}), "task.labels=[neg, pos]"),
           "train.jsonl", 5, "label", "meh"),
    BadRow("row-missing-label", "a row without its label",
           lambda t: files_task(_rows_with(t, {"text": "an unlabelled one"})), "train.jsonl", 5, "label", ""),
    BadRow("row-non-utf8-jsonl", "a JSONL line with a non-UTF-8 byte",
           lambda t: files_task(_rows_with(t, b'{"text": "caf\xe9 noir", "label": "pos"}')), "train.jsonl", 5, None,
           "UTF-8"),
    BadRow("row-invalid-json", "a JSONL line that is not JSON",
           lambda t: files_task(_rows_with(t, '{"text": "half a row", "label": ')), "train.jsonl", 5, None,
           "invalid JSON"),
    BadRow("row-not-object", "a JSONL line holding a list",
           lambda t: files_task(_rows_with(t, '["text", "pos"]')), "train.jsonl", 5, None, "not a JSON object"),
    BadRow("row-label-index", "an integer label past the end of task.labels",
           lambda t: files_task(write_jsonl(t / "train.jsonl", [{"text": r["text"], "label": int(r["label"] == "pos")}
                                                                for r in review_rows(30)] + [{"text": "seven",
                                                                                              "label": 7}]),
                                "task.labels=[negative, positive]"), "train.jsonl", 31, "label", "label index 7"),
    BadRow("row-label-type", "a number in a column of string labels",
           lambda t: files_task(_rows_with(t, {"text": "a numbered one", "label": 3})), "train.jsonl", 5, "label",
           "number"),
    BadRow("row-blank-text", "a row whose text is blank",
           lambda t: files_task(_rows_with(t, {"text": "   ", "label": "pos"})), "train.jsonl", 5, "text", ""),
    BadRow("row-duplicate-text", "the same text twice in train",
           lambda t: files_task(_rows_with(t, review_rows(1, 2)[0])), "train.jsonl", 5, "text", "duplicate"),
    BadRow("row-csv-non-utf8", "a CSV row with a non-UTF-8 byte",
           lambda t: files_task(write_csv(t / "train.csv", review_rows(30), [b'"caf\xe9 noir",pos'])),
           "train.csv", 32, None, "UTF-8"),
    BadRow("row-csv-extra-cells", "a CSV row with more cells than the header",
           lambda t: files_task(write_csv(t / "train.csv", review_rows(30), [b'"one too many",pos,extra'])),
           "train.csv", 32, None, "cells"),
]


# --------------------------------------------------------------------------------------------- running

@dataclass
class Outcome:
    rc: int | None
    stdout: str
    stderr: str
    problems: list[str] = field(default_factory=list)  # why the answer is not clear; empty = clear

    @property
    def clear(self) -> bool:
        return not self.problems


def ray_started() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def judge_refusal(case: Refusal, rc: int | None, stdout: str, stderr: str, ray_before: bool = False) -> Outcome:
    """Exit 2, a short stderr naming what is at fault, no traceback, no secret, no Ray (``ray_before``: Ray was
    already up in this process, started by something else; :func:`no_ray` still catches a case reaching it)."""
    out = Outcome(rc, stdout, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not _NOTICE.match(ln)]
    if rc != 2:
        out.problems.append(f"exit code {rc}, not 2")
    if "Traceback" in stdout + stderr:
        out.problems.append("a traceback was printed")
    if not lines:
        out.problems.append("nothing on stderr")
    elif len(lines) > MAX_LINES:
        out.problems.append(f"{len(lines)} lines on stderr (at most {MAX_LINES})")
    for name in case.names:
        if name.lower() not in stderr.lower():
            out.problems.append(f"stderr does not name {name!r}")
    if SECRET in stdout + stderr:
        out.problems.append("the secret was echoed")
    if ray_started() and not ray_before:
        out.problems.append("Ray was started")
    return out


class RayWouldStart(RuntimeError):
    """Raised in place of starting Ray: a refusal that did not come before Ray (the case then fails at once
    instead of training for minutes)."""


@contextlib.contextmanager
def no_ray():
    """``armada_ray.ray_utils.ensure_ray`` (every command's one way into Ray) raises while inside."""
    from armada_ray import ray_utils

    def refuse(*_a: Any, **_k: Any) -> None:
        raise RayWouldStart("the fault suite stopped Ray from starting: this input was not refused before Ray")

    saved = ray_utils.ensure_ray
    ray_utils.ensure_ray = refuse
    try:
        yield
    finally:
        ray_utils.ensure_ray = saved


def call_cli(argv: list[str]) -> int:
    """:func:`armada_ray.cli.main` with Ray kept off; argparse's SystemExit becomes its code."""
    from armada_ray.cli import main

    with no_ray():
        try:
            return main(argv)
        except SystemExit as exc:  # argparse's own refusals
            return exc.code if isinstance(exc.code, int) else 2


def run_refusal(case: Refusal, tmp: Path) -> Outcome:
    """``armada <argv>`` in this process, its stdout/stderr captured (the benchmark's way; the test uses capfd)."""
    argv = case.argv(tmp)
    before = ray_started()
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        rc = call_cli(argv)
    return judge_refusal(case, rc, so.getvalue(), se.getvalue(), ray_before=before)


def run_bad_row(case: BadRow, tmp: Path) -> Outcome:
    """Load the task as ``armada embed``/``train`` do and check the skipped file names the row."""
    from armada_ray.config import ConfigError, load_config
    from armada_ray.tasks import load_task
    from armada_ray.tasks.base import write_skipped

    work = tmp / "work"
    out = Outcome(None, "", "")
    before = ray_started()
    try:
        cfg = load_config(None, [f"paths.work_dir={work}", *case.overrides(tmp)])
        data = load_task(cfg.task)
        path = write_skipped(data, cfg.work_dir)
    except ConfigError as exc:
        out.problems.append(f"the load was refused ({exc}); one bad row should be skipped")
        return out
    except Exception as exc:  # noqa: BLE001 - a library's exception is the finding
        out.problems.append(f"{type(exc).__name__}: {exc}")
        return out
    expected = work / "skipped" / f"{data.spec.name}.jsonl"
    if path is None or Path(path) != expected or not expected.is_file():
        out.problems.append(f"no skipped file at {expected}")
        return out
    records = [json.loads(line) for line in expected.read_text().splitlines() if line.strip()]
    hit = [r for r in records if Path(str(r.get("file"))).name == case.file and r.get("row") == case.row]
    if not hit:
        out.problems.append(f"no record for {case.file} row {case.row} in {records}")
    else:
        rec = hit[0]
        if set(rec) < {"file", "row", "field", "reason"}:
            out.problems.append(f"record lacks file/row/field/reason: {rec}")
        if case.field is not None and rec.get("field") != case.field:
            out.problems.append(f"field {rec.get('field')!r}, not {case.field!r}")
        if case.reason.lower() not in str(rec.get("reason", "")).lower():
            out.problems.append(f"reason {rec.get('reason')!r} does not say {case.reason!r}")
    if len(data.train) + len(data.dev) + len(data.test) < 25:
        out.problems.append("the good rows were not kept")
    if ray_started() and not before:
        out.problems.append("Ray was started")
    return out


def run_all(scratch: Path) -> dict[str, Any]:
    """Every case once, each in its own folder under ``scratch``: counts and the unclear ones."""
    tried, unclear = 0, {}
    for case in REFUSALS:
        d = scratch / case.id
        d.mkdir(parents=True)
        o = run_refusal(case, d)
        tried += 1
        if not o.clear:  # what it printed too (the test secret masked), to see why
            unclear[case.id] = [*o.problems, *o.stderr.replace(SECRET, "***").splitlines()[:20]]
    for case in BAD_ROWS:
        d = scratch / case.id
        d.mkdir(parents=True)
        o = run_bad_row(case, d)
        tried += 1
        if not o.clear:
            unclear[case.id] = o.problems
    return {"tried": tried, "clear": tried - len(unclear), "unclear": unclear}


# --------------------------------------------------------------------------------------------- secrets

ROOT = Path(__file__).resolve().parents[1]
SERVER_TOKEN_ENV = "ARMADA_FAULTS_SERVER_TOKEN"  # serve-teacher's bearer token
CLIENT_KEY_ENV = "ARMADA_FAULTS_KEY"  # teacher.api_key_env of the embed runs
# 32 rows of a packaged offline task, 4 texts a request
SMALL_EMBED = ["teacher.kind=http", "teacher.model=teacher", "teacher.dim=384", "teacher.batch_size=4",
               "teacher.requests_per_s=50", "teacher.backoff_base_s=0.05", "embed.concurrency=1",
               "embed.batch_size=8", "task.name=pang_lee_polarity", "task.max_train=16", "task.max_dev=8",
               "task.max_test=8"]


# a one-trial sweep with the undistilled baseline on tiny shapes (the secrets check's train + tune)
SMALL_SWEEP = ["student.model=tiny-llama", "student.lora.layers_to_transform=null", "student.max_length=32",
               "aligner.hidden=32", "aligner.proj_dim=16", "train.epochs=1", "train.batch_size=8",
               "scaling.cpus_per_worker=0.9", "tune.num_samples=1", "tune.max_concurrent_trials=1",
               "tune.scheduler=fifo", "tune.seeds=[]", "tune.include_baseline=true",
               "tune.search_space={loss.alpha: {type: choice, values: [0.5]}}", "name=faults-secrets-sweep"]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for an `armada` child: offline hub, no Ray address (a private local Ray)."""
    from armada_ray import environ

    env = {**environ.snapshot(), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


class Server:
    """``armada serve-teacher`` as a subprocess on loopback (own process group), stopped by PID. Started
    without waiting, so several load their teacher at once; :meth:`ready` waits for the banner."""

    def __init__(self, overrides: list[str], env: dict[str, str] | None = None, token: str | None = None):
        import socket
        import subprocess

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.token = token
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.base = f"http://127.0.0.1:{self.port}"
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "armada_ray.cli", "serve-teacher", f"server.port={self.port}",
             "server.model_name=teacher", "server.teacher.max_length=32", "server.teacher.stand_in=true", *overrides],
            cwd=ROOT, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)

    def ready(self, timeout: float = 240) -> "Server":
        import time

        deadline = time.time() + timeout
        assert self.proc.stdout is not None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"serve-teacher exited before serving: {''.join(self.output)[-2000:]}")
            self.output.append(line)
            if line.startswith("serving "):
                return self
        raise RuntimeError("serve-teacher did not start in time")

    def _call(self, path: str, body: Any = None) -> Any:
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def stats(self, texts: bool = False) -> dict[str, Any]:
        return self._call("/stats" + ("?texts=1" if texts else ""))

    def reset(self) -> None:
        self._call("/stats/reset", {})

    def stop(self) -> str:
        """SIGTERM by PID (SIGKILL of its group if it lingers); returns everything it printed."""
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                rest, _ = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                rest, _ = self.proc.communicate(timeout=10)
            self.output.append(rest or "")
        return "".join(self.output)


def armada_child(args: list[str], env: dict[str, str], timeout: float = 240) -> Any:
    """``python -m armada_ray.cli <args>`` to completion (its own session; killed by group on timeout)."""
    import signal
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "armada_ray.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def grep_tree(root: Path, needles: dict[str, bytes]) -> tuple[list[tuple[str, str]], int]:
    """(needle name, file) for every file under ``root`` holding a needle, and how many files were read."""
    hits: list[tuple[str, str]] = []
    n = 0
    if not root.exists():
        return hits, n
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        try:
            data = p.read_bytes()
        except OSError:
            continue
        n += 1
        hits += [(name, str(p)) for name, needle in needles.items() if needle in data]
    return hits, n


def _needles(secrets: dict[str, str]) -> dict[str, bytes]:
    """Each secret as written in clear, and its forms on the wire (base64 Basic auth of user:key)."""
    import base64

    out = {name: s.encode() for name, s in secrets.items()}
    for name, s in secrets.items():
        out[f"{name} (basic-auth base64)"] = base64.b64encode(f"user:{s}".encode())
    return out


def _mlflow_texts(db: Path) -> tuple[list[str], list[Path]]:
    """Every param and tag (as 'run key=value') of every run in a sqlite store, and local artifact folders."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    texts, folders = [], []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            texts += [f"{run.info.run_id} param {k}={v}" for k, v in run.data.params.items()]
            texts += [f"{run.info.run_id} tag {k}={v}" for k, v in run.data.tags.items()]
            uri = run.info.artifact_uri or ""
            if uri.startswith("file://") or uri.startswith("/"):
                folders.append(Path(uri.removeprefix("file://")))
    return texts, folders


def secrets_check(scratch: Path, token_server: Server, open_server: Server) -> dict[str, Any]:
    """A key given through the environment and one inside the endpoint URL, end to end through `armada embed`
    and, on the URL-key cache, `armada tune` (a trial and the baseline: two training runs, the sweep's parent, the
    export; each CLI child with its own Ray under a private RAY_TMPDIR), plus the saved config.yaml and MLflow
    params/tags/artifacts of a run whose teacher URL holds the key. Greps everything written and printed.

    ``token_server`` requires ``Bearer <token_server.token>``; ``open_server`` takes anyone (aiohttp sends a
    URL's user:key as Basic auth, which a bearer-token server refuses)."""
    import tempfile
    import uuid

    env_key = token_server.token or ""
    url_key = f"sk-url-{uuid.uuid4().hex[:16]}"
    wrong_key = f"sk-wrong-{uuid.uuid4().hex[:16]}"
    secrets = {"env key": env_key, "url key": url_key, "wrong key": wrong_key}
    report: dict[str, Any] = {"runs": {}, "leaks": [], "places": {}, "masked_in_mlflow": 0}
    texts: dict[str, str] = {}  # what each child printed, by name
    folders: list[Path] = []
    ray_roots: list[Path] = []

    def run(name: str, argv: list[str], env_extra: dict[str, str], timeout: float) -> Any:
        """An `armada` child under its own RAY_TMPDIR; what it printed and its exit code kept under ``name``."""
        ray_tmp = Path(tempfile.mkdtemp(prefix="af", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        ray_roots.append(ray_tmp)
        out = armada_child([*argv, "--json"], child_env(RAY_TMPDIR=str(ray_tmp), **env_extra), timeout=timeout)
        texts[f"{name} stdout"], texts[f"{name} stderr"] = out.stdout, out.stderr
        report["runs"][name] = {"rc": out.returncode, "stderr_tail": out.stderr.strip().splitlines()[-3:]}
        return out

    def embed(name: str, extra: list[str], env_extra: dict[str, str], timeout: float = 240) -> Any:
        work = scratch / name
        folders.append(work)
        return run(name, ["embed", f"paths.work_dir={work}", *SMALL_EMBED, *extra], env_extra, timeout)

    # 1. the key through the environment, to a server that checks it
    embed("env-key", [f"teacher.endpoint={token_server.url}", f"teacher.api_key_env={CLIENT_KEY_ENV}"],
          {CLIENT_KEY_ENV: env_key})
    # 2. the key inside the endpoint URL
    embed("url-key", [f"teacher.endpoint=http://user:{url_key}@127.0.0.1:{open_server.port}/v1"], {})
    # 2b. a full sweep on that cache (a trial and the undistilled baseline: two `armada train` runs, the sweep's
    # parent, its export), the teacher URL with the key in every config it saves and logs, and the env key set too
    run("url-key tune", ["tune", f"paths.work_dir={scratch / 'url-key'}", *SMALL_EMBED, *SMALL_SWEEP,
                         f"teacher.endpoint=http://user:{url_key}@127.0.0.1:{open_server.port}/v1"],
        {CLIENT_KEY_ENV: env_key}, timeout=600)
    # 3. a wrong key through the environment: refused with 401 before Ray; the message must not hold it
    embed("wrong-key", [f"teacher.endpoint={token_server.url}", f"teacher.api_key_env={CLIENT_KEY_ENV}"],
          {CLIENT_KEY_ENV: wrong_key}, timeout=120)
    # 4. a URL key where a config is saved and logged (as `armada train` does before Ray): config.yaml, MLflow
    from armada_ray.config import ConfigError, load_config, save_config
    from armada_ray.tracking import KIND_TRAIN, RunTracker, standard_tags

    work = scratch / "saved"
    folders.append(work)
    cfg = load_config(None, [f"paths.work_dir={work}", "teacher.kind=http",
                             f"teacher.endpoint=https://user:{url_key}@api.example.com/v1", "name=faults-secrets"])
    save_config(cfg, work / "run")
    tracker = RunTracker.start(cfg, run_name="secrets", kind=KIND_TRAIN, tags=standard_tags(cfg, None))
    tracker.log_config(cfg)
    tracker.log_params({"teacher.endpoint": cfg.teacher.endpoint})
    tracker.end("FINISHED")
    # 5. exception messages: a refused config holding the URL key
    try:
        load_config(None, [f"teacher.endpoint=http://user:{url_key}@h/v1", "teacher.api_key_env=X", "loss.alpha=9"])
    except ConfigError as exc:
        texts["ConfigError message"] = str(exc)

    needles = _needles(secrets)
    places = 0
    for name, text in {**texts, "serve-teacher (token) output": token_server.stop(),
                       "serve-teacher (open) output": open_server.stop()}.items():
        places += 1
        report["leaks"] += [f"{n} in {name}" for n, needle in needles.items() if needle.decode() in text]
    for root in folders + ray_roots:
        hits, n = grep_tree(root, needles)
        places += n
        report["places"][str(root)] = n
        report["leaks"] += [f"{n_} in {path}" for n_, path in hits]
    for db in [f / "mlflow.db" for f in folders if (f / "mlflow.db").is_file()]:
        lines, art = _mlflow_texts(db)
        places += len(lines)
        report["leaks"] += [f"{n} in MLflow {ln.split('=')[0]}" for ln in lines for n, needle in needles.items()
                            if needle.decode() in ln]
        for a in art:
            if not any(a.is_relative_to(f) for f in folders):  # outside the work dirs: grep it too
                hits, n = grep_tree(a, needles)
                places += n
                report["leaks"] += [f"{n_} in {path}" for n_, path in hits]
        report["places"][f"{db} params/tags"] = len(lines)
        report["masked_in_mlflow"] = report.get("masked_in_mlflow", 0) + sum(":***@" in ln for ln in lines)
    report["ray_session_logs"] = [str(p) for r in ray_roots for p in (r / "ray").glob("session_2*")]
    report["places_checked"] = places
    report["secrets_leaked"] = len(report["leaks"])
    report["ray_roots"] = [str(r) for r in ray_roots]
    return report
