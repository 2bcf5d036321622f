"""The task data model, the paper's prompt construction and the seeded split helpers.

Everything here is plain Python: an :class:`Example` is one row (its text fields, its label or answer),
a :class:`TaskSpec` describes a registered task, and a :class:`TaskData` is what a loader returns. The
split helpers are deterministic for a given seed (``random.Random(seed)``; no global state) and stratify
by class for classification tasks, so the same ``task.seed`` always yields the same uids in each split.
"""

from __future__ import annotations

import json

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from armada_ray.config import ConfigError

if TYPE_CHECKING:
    from armada_ray.config import TaskConfig

log = logging.getLogger("armada_ray.tasks")
_SKIPS_SAID: set[tuple[str, int]] = set()  # (task, count) already on the console in this process

Kind = Literal["classification", "regression", "generative"]
SPLITS = ("train", "dev", "test")


@dataclass
class Example:
    """One row: ``fields`` are its raw texts (the prompt uses ``spec.text_fields`` of them).

    ``label`` is the class index (classification), a float (regression) or None (generative);
    ``answer`` is the target text of a generative task, None otherwise.
    """

    uid: str
    fields: dict[str, str]
    label: int | float | None = None
    answer: str | None = None


@dataclass
class TaskSpec:
    """A registered task: what its rows hold, how it is scored and how it is loaded.

    ``metric`` is the primary metric (``compute_metrics`` always returns it under that name; training
    selects checkpoints on it); ``extra_metrics`` are reported beside it. ``choices`` lists the answer set
    of a generative task whose answers come from a small fixed set (e.g. WinoGrande's option1/option2),
    so that a trainer can use classification heads there; it is None for open answers.
    """

    name: str
    kind: Kind
    text_fields: list[str]
    labels: list[str] | None
    answer_format: str | None
    metric: str
    description: str
    loader: Callable[["TaskSpec", "TaskConfig"], "TaskData"] = field(repr=False)
    extra_metrics: list[str] = field(default_factory=list)
    choices: list[str] | None = None
    source: str = ""

    @property
    def metrics(self) -> list[str]:
        return [self.metric, *self.extra_metrics]

    @property
    def num_labels(self) -> int:
        """Output width of a prediction head: the class count, or 1 for regression."""
        return len(self.labels) if self.labels else 1

    @property
    def head_width(self) -> int:
        """Outputs of the student's class heads: the classes, 1 for regression, a generative task's fixed
        answer set (0 for open answers: no class heads)."""
        if self.kind == "generative":
            return len(self.choices or [])
        return self.num_labels


@dataclass
class TaskData:
    """The three splits of a task. ``skipped`` lists every unusable source row as
    ``{"file", "row", "field", "reason"}``; ``notes`` says how each split was obtained (e.g. carved)."""

    spec: TaskSpec
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # task.transfer_rows: train rows beyond the labelled cap, used without their labels (the transfer set)
    transfer: list[Example] = field(default_factory=list)

    def split(self, name: str) -> list[Example]:
        if name not in (*SPLITS, "transfer"):
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}, transfer")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        sizes = {name: len(getattr(self, name)) for name in SPLITS}
        return {**sizes, "transfer": len(self.transfer)} if self.transfer else sizes


# ----------------------------------------------------------------------------------------- prompts


def build_prompt(example_fields: dict[str, str], text_fields: Sequence[str]) -> str:
    """The paper's prompt: every text field, lower-cased, joined by single spaces in ``text_fields`` order.

    Each value is stripped first and empty values are left out, so an empty optional field (Dolly's
    ``context``) never produces a double space.
    """
    parts = []
    for name in text_fields:
        if name not in example_fields:
            raise KeyError(f"text field {name!r} is not among the example's fields {sorted(example_fields)}")
        value = str(example_fields[name]).strip()
        if value:
            parts.append(value.lower())
    return " ".join(parts)


def example_prompt(spec: TaskSpec, ex: Example) -> str:
    """:func:`build_prompt` of ``ex`` with the task's text fields."""
    return build_prompt(ex.fields, spec.text_fields)


def student_text(spec: TaskSpec, ex: Example) -> tuple[str, str | None]:
    """What a classification/regression student reads (``student.input=fields``): the task's own fields in
    their own case, as (text_a, text_b) for pair tasks (the second and later fields joined by a newline), as
    the reference code tokenizes them. The teacher keeps the paper's lower-cased joined prompt."""
    values = [str(ex.fields[name]).strip() for name in spec.text_fields]
    rest = "\n".join(v for v in values[1:] if v)
    return values[0], (rest or None) if len(values) > 1 else None


# ------------------------------------------------------------------------------------ row problems


class MissingPackageError(RuntimeError):
    """A task's data ships in a package that is not installed (the message names the pip command)."""


class BadRow(Exception):
    """A source row that cannot be used; the loader records it in ``TaskData.skipped`` and goes on."""

    def __init__(self, field_name: str | None, reason: str):
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def write_skipped(data: "TaskData", work_dir: Path) -> Path | None:
    """Every skipped source row of ``data`` (file, row, field, reason), one JSON line each, in
    ``<work_dir>/skipped/<task>.jsonl``; None when no row was skipped. Counts alone did not let a user find them."""
    if not data.skipped:
        return None
    out = Path(work_dir) / "skipped" / f"{data.spec.name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for rec in data.skipped:
            f.write(json.dumps(rec, default=str) + "\n")
    return out


def skip_record(file: str, row: int, field_name: str | None, reason: str) -> dict[str, Any]:
    return {"file": file, "row": row, "field": field_name, "reason": reason}


def check_usable(spec: TaskSpec, origin: str, n_rows: int, n_ok: int, problems: list[dict[str, Any]]) -> None:
    """A split file with no usable row at all is a user error, not a warning."""
    if n_rows == 0:
        raise ConfigError(f"task.name={spec.name!r}: {origin} has no rows")
    if n_ok == 0:
        first = problems[0] if problems else {"row": "?", "field": None, "reason": "unusable"}
        raise ConfigError(
            f"task.name={spec.name!r}: all {n_rows} rows of {origin} are unusable "
            f"(first: row {first['row']}, field {first['field']!r}: {first['reason']})"
        )


def dedupe(examples: list[Example], spec: TaskSpec, origin: str, skipped: list[dict[str, Any]],
           rows: dict[str, Any]) -> list[Example]:
    """Drop exact repeats of a prompt (they would leak across splits), recording each in ``skipped``."""
    first_seen: dict[str, str] = {}
    out = []
    for ex in examples:
        key = example_prompt(spec, ex)
        if key in first_seen:
            skipped.append(skip_record(origin, rows[ex.uid], spec.text_fields[0],
                                       f"duplicate text (same as {first_seen[key]})"))
            continue
        first_seen[key] = ex.uid
        out.append(ex)
    return out


def dedupe_splits(spec: TaskSpec, splits: dict[str, list[Example] | None], where: dict[str, tuple[str, int]],
                  skipped: list[dict[str, Any]]) -> dict[str, list[Example] | None]:
    """A text repeated within the train split is skipped after its first row, each repeat recorded with its file
    and row (``where``: uid -> (file, row)); a dev split carved from train then holds no copy of a train row.
    Dev and test files stay whole, so a benchmark's evaluation set keeps its official size."""
    out = dict(splits)
    if not splits.get("train"):
        return out
    first: dict[str, str] = {}
    kept = []
    for ex in splits["train"]:
        key = example_prompt(spec, ex)
        if key in first:
            file, row = where.get(ex.uid, ("?", -1))
            skipped.append(skip_record(file, row, spec.text_fields[0], f"duplicate text (same as {first[key]})"))
            continue
        first[key] = ex.uid
        kept.append(ex)
    out["train"] = kept
    return out


# ------------------------------------------------------------------------------------------ splits


def _strata(examples: Sequence[Example], stratify: bool) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex.label if stratify else None].append(i)
    return groups


def _allocate(counts: dict[Any, int], n: int) -> dict[Any, int]:
    """Split ``n`` over the groups in proportion to ``counts`` (largest-remainder rounding)."""
    total = sum(counts.values())
    n = min(n, total)
    quotas = {k: n * c / total for k, c in counts.items()}
    alloc = {k: min(counts[k], int(q)) for k, q in quotas.items()}
    order = sorted(counts, key=lambda k: (-(quotas[k] - int(quotas[k])), str(k)))
    rest = n - sum(alloc.values())
    while rest > 0:
        for k in order:
            if rest and alloc[k] < counts[k]:
                alloc[k] += 1
                rest -= 1
    return alloc


def _take(examples: Sequence[Example], n: int, rng: random.Random, stratify: bool) -> tuple[set[int], set[int]]:
    """Indices of a seeded (stratified) sample of ``n`` rows, and of the rest."""
    groups = _strata(examples, stratify)
    keys = sorted(groups, key=str)
    alloc = _allocate({k: len(groups[k]) for k in keys}, n)
    chosen: set[int] = set()
    for k in keys:
        idx = list(groups[k])
        rng.shuffle(idx)
        chosen.update(idx[: alloc[k]])
    return chosen, set(range(len(examples))) - chosen


def carve(examples: list[Example], n: int, seed: int, stratify: bool) -> tuple[list[Example], list[Example]]:
    """Split off a seeded, stratified sample of ``n`` rows: returns (rest, carved), each in source order."""
    chosen, rest = _take(examples, n, random.Random(seed), stratify)
    return [examples[i] for i in sorted(rest)], [examples[i] for i in sorted(chosen)]


def subsample(examples: list[Example], n: int | None, seed: int, stratify: bool) -> list[Example]:
    """The ``task.max_*`` caps: a seeded (stratified) sample of at most ``n`` rows, kept in order."""
    if n is None or n >= len(examples):
        return examples
    chosen, _ = _take(examples, n, random.Random(seed), stratify)
    return [examples[i] for i in sorted(chosen)]


def split_three(examples: list[Example], seed: int, stratify: bool,
                fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), what: str = "the task"
                ) -> tuple[list[Example], ...]:
    """Fixed train/dev/test split (70/10/20 by default), stratified by class, each split shuffled."""
    n = len(examples)
    n_test = max(1, round(fractions[2] * n))
    n_dev = max(1, round(fractions[1] * n))
    if n - n_test - n_dev < 1:
        raise ConfigError(f"{what}: only {n} usable rows, too few for a train/dev/test split")
    rng = random.Random(seed)
    test_idx, rest = _take(examples, n_test, rng, stratify)
    remaining = sorted(rest)
    dev_local, train_local = _take([examples[i] for i in remaining], n_dev, rng, stratify)
    parts = [[examples[remaining[i]] for i in sorted(train_local)],
             [examples[remaining[i]] for i in sorted(dev_local)],
             [examples[i] for i in sorted(test_idx)]]
    for part in parts:  # interleave classes (sources are often sorted by class)
        rng.shuffle(part)
    return tuple(parts)


def fill_missing_splits(spec: TaskSpec, splits: dict[str, list[Example] | None], seed: int,
                        origins: dict[str, str]) -> tuple[list[Example], list[Example], list[Example], list[str]]:
    """Complete (train, dev, test) when a labelled dev or test split is missing.

    - no labelled test (GLUE/SuperGLUE/WinoGrande test files have no labels): the labelled dev split
      becomes test, and a new dev split (as large as the old one, at most 10% of train) is carved from train;
    - no labelled dev: 10% of train is carved out as dev;
    - neither: train is split 70/10/20.
    All carving is seeded by ``task.seed`` and stratified by class for classification tasks.
    """
    stratify = spec.kind == "classification"
    train, dev, test = splits["train"] or [], splits.get("dev"), splits.get("test")
    notes: list[str] = []
    if test is None and dev is not None:
        n = min(len(dev), max(1, round(0.1 * len(train))))
        test = dev
        train, dev = carve(train, n, seed, stratify)
        notes.append(f"test = {origins['dev']} (no labelled test split); dev = {n} rows carved from "
                     f"{origins['train']} (seed {seed})")
    elif test is None:
        train, dev, test = split_three(train, seed, stratify, what=f"task.name={spec.name!r}")
        notes.append(f"train/dev/test = 70/10/20 split of {origins['train']} (seed {seed})")
    elif dev is None:
        n = max(1, round(0.1 * len(train)))
        train, dev = carve(train, n, seed, stratify)
        notes.append(f"dev = {n} rows carved from {origins['train']} (seed {seed})")
    return train, dev, test, notes


def finalize(spec: TaskSpec, cfg: "TaskConfig", train: list[Example], dev: list[Example], test: list[Example],
             skipped: list[dict[str, Any]], notes: list[str], unlabelled: Sequence[Example] = ()) -> TaskData:
    """Apply the ``task.max_*`` caps, check that no split is empty and report skipped rows.

    ``unlabelled``: rows without a label (a file task's), the first candidates of the transfer set."""
    stratify = spec.kind == "classification"
    out = {}
    for name, rows, cap in (("train", train, cfg.max_train), ("dev", dev, cfg.max_dev), ("test", test, cfg.max_test)):
        out[name] = subsample(rows, cap, cfg.seed, stratify)
        if cap is not None and cap < len(rows):
            notes.append(f"{name} capped at task.max_{name}={cap} of {len(rows)} rows (seed {cfg.seed})")
        if not out[name]:
            raise ConfigError(f"task.name={spec.name!r}: the {name} split is empty")
    transfer: list[Example] = []
    if cfg.transfer_rows:
        kept = {ex.uid for ex in out["train"]}
        pool = [ex for ex in train if ex.uid not in kept]
        # its labels are never read: the aligner labels these rows (train/loop.py)
        transfer = list(unlabelled[: cfg.transfer_rows])
        transfer += subsample(pool, cfg.transfer_rows - len(transfer), cfg.seed + 1, False) \
            if len(transfer) < cfg.transfer_rows else []
        notes.append(f"transfer set: {len(transfer)} rows from {len(unlabelled)} unlabelled rows and the "
                     f"{len(pool)} train rows beyond task.max_train (task.transfer_rows={cfg.transfer_rows})")

    if skipped and (spec.name, len(skipped)) not in _SKIPS_SAID:  # once per process: stages reload the task
        _SKIPS_SAID.add((spec.name, len(skipped)))
        by_place = Counter((Path(str(s["file"])).name, s["field"]) for s in skipped)
        summary = ", ".join(f"{f} field {fld!r}: {c}" for (f, fld), c in by_place.most_common(5))
        first = skipped[0]
        log.warning("task %s: %d source rows skipped (%s); first: %s row %s: %s", spec.name, len(skipped),
                    summary, first["file"], first["row"], first["reason"])
    data = TaskData(spec, out["train"], out["dev"], out["test"], skipped, notes, transfer)
    log.info("task %s: train %d, dev %d, test %d", spec.name, *data.sizes().values())
    return data
