"""One loader for every file-backed task: local TSV/JSONL files or their Hugging Face Hub copy.

A :class:`FileSource` says which files hold which split, which source columns feed which example field
and how the label or answer is read. With ``task.data_dir`` set the files are read from that folder;
without it the task's Hub copy is loaded with ``datasets.load_dataset`` (which needs internet access).

Row handling is the same for both: a row with a missing or empty field, an unknown label or an unreadable
answer is recorded in ``TaskData.skipped`` as ``{"file", "row", "field", "reason"}`` (``row`` is the
1-based line number in the file, or the 1-based row index in a Hub split) and the load goes on; a split
with no usable row is a :class:`~armada_ray.config.ConfigError`. A test (or dev) split without labels is
not used; :func:`~armada_ray.tasks.base.fill_missing_splits` carves the missing split instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from armada_ray.config import ConfigError
from armada_ray.tasks.base import (
    SPLITS,
    BadRow,
    Example,
    MissingPackageError,
    TaskData,
    TaskSpec,
    check_usable,
    dedupe_splits,
    fill_missing_splits,
    finalize,
    skip_record,
)

if TYPE_CHECKING:
    from armada_ray.config import TaskConfig

Row = tuple[int, "dict[str, Any] | str"]  # (row number, the row, or why it could not be read)


@dataclass(frozen=True)
class Columns:
    """Where each example field comes from: the first present of several candidate source columns."""

    fields: dict[str, tuple[str, ...]]
    label: tuple[str, ...]
    optional: tuple[str, ...] = ()  # fields that may be empty
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kept in Example.fields when present
    ids: tuple[str, ...] = ("idx", "index", "id")
    headerless: tuple[str, ...] | None = None  # TSV column names for files without a header row (CoLA)


@dataclass(frozen=True)
class HubSource:
    path: str
    config: str | None
    splits: dict[str, str]  # our split -> Hub split

    def ref(self, split: str | None = None) -> str:
        name = f"{self.path}:{self.config}" if self.config else self.path
        return f"{name}/{split}" if split else name


@dataclass(frozen=True)
class FileSource:
    files: dict[str, tuple[str, ...]]  # split -> candidate file names (.tsv, .jsonl or a .json array)
    required: tuple[str, ...]
    columns: Columns
    hub: HubSource | None = None
    hub_columns: Columns | None = None  # default: the spec's text fields + "label"
    raw_labels: tuple[str, ...] | None = None  # classification: file label tokens, aligned with spec.labels
    answer: Callable[[Any], str] | None = None  # generative: raw answer -> target text (ValueError if unusable)

    def describe_files(self) -> str:
        parts = []
        for split, names in self.files.items():
            shown = " or ".join(names)
            parts.append(shown if split in self.required else f"optional {shown}")
        return ", ".join(parts)


# ------------------------------------------------------------------------------------------ readers


def read_rows(path: Path, columns: Columns) -> list[Row]:
    """Rows of a ``.tsv`` (GLUE: tab-separated, no quoting), ``.jsonl`` or ``.json`` (array) file."""
    if path.suffix == ".tsv":
        return _read_tsv(path, columns)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_bytes())
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # "Extra data": one object per line, i.e. JSONL named .json
                raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        else:
            if not isinstance(data, list):
                raise ConfigError(f"{path}: expected a JSON array of objects")
            return [(i, r if isinstance(r, dict) else "not a JSON object") for i, r in enumerate(data, 1)]
    return _read_jsonl(path)


def _lines(path: Path) -> list[tuple[int, bytes]]:
    out = []
    for no, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        if raw.strip():
            out.append((no, raw))
    return out


def _read_jsonl(path: Path) -> list[Row]:
    rows: list[Row] = []
    for no, raw in _lines(path):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            rows.append((no, f"invalid JSON ({getattr(exc, 'msg', exc)})"))
            continue
        rows.append((no, obj if isinstance(obj, dict) else "not a JSON object"))
    return rows


def _read_tsv(path: Path, columns: Columns) -> list[Row]:
    known = {c for cands in columns.fields.values() for c in cands} | set(columns.label) | set(columns.ids)
    header: list[str] | None = None
    rows: list[Row] = []
    for no, raw in _lines(path):
        try:
            cells = raw.decode("utf-8-sig").split("\t")
        except UnicodeDecodeError:
            rows.append((no, "not valid UTF-8"))
            continue
        if header is None:
            if columns.headerless and not set(cells) & known:
                header = list(columns.headerless)  # CoLA train/dev: no header row
            else:
                header = cells
                continue
        rows.append((no, dict(zip(header, cells))))
    return rows


# ---------------------------------------------------------------------------------------- rows -> examples


def _first_key(row: dict[str, Any], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if row.get(c) is not None), None)


def is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any, key: str) -> str:
    if isinstance(value, (dict, list)):
        raise BadRow(key, f"expected text, got {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def _label_token(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw).strip().lower()


def has_labels(rows: list[Row], columns: Columns) -> bool:
    for _, row in rows:
        if isinstance(row, dict):
            key = _first_key(row, columns.label)
            if key is not None and not is_blank(row[key]):
                return True
    return False


def convert_rows(spec: TaskSpec, source: FileSource, columns: Columns, rows: list[Row], origin: str,
                 split: str, places: dict[str, tuple[str, int]] | None = None
                 ) -> tuple[list[Example], list[dict[str, Any]]]:
    """Turn source rows into examples; unusable rows come back as skip records. ``places`` (optional) gets
    each example's (file, row number), for records about it later (duplicates)."""
    label_ids: dict[str, int] = {}
    if spec.labels:
        for i, name in enumerate(spec.labels):
            label_ids[name.lower()] = i
        for i, token in enumerate(source.raw_labels or ()):
            label_ids[token.lower()] = i
    examples: list[Example] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    for no, row in rows:
        if isinstance(row, str):
            problems.append(skip_record(origin, no, None, row))
            continue
        try:
            fields: dict[str, str] = {}
            for name, cands in columns.fields.items():
                key = _first_key(row, cands)
                if key is None:
                    raise BadRow("|".join(cands), "missing")
                value = _text(row[key], key)
                if not value.strip() and name not in columns.optional:
                    raise BadRow(key, "empty")
                fields[name] = value
            for name, cands in columns.extra.items():
                key = _first_key(row, cands)
                if key is not None:
                    fields[name] = _text(row[key], key)
            label_key = _first_key(row, columns.label)
            raw = row[label_key] if label_key else None
            where = label_key or "|".join(columns.label)
            if is_blank(raw):
                raise BadRow(where, "missing label" if spec.kind != "generative" else "missing answer")
            label: int | float | None = None
            answer: str | None = None
            if spec.kind == "classification":
                token = _label_token(raw)
                if token not in label_ids:
                    allowed = ", ".join(source.raw_labels or spec.labels or ())
                    raise BadRow(where, f"unknown label {raw!r}; allowed: {allowed}")
                label = label_ids[token]
            elif spec.kind == "regression":
                try:
                    label = float(raw)
                except (TypeError, ValueError):
                    raise BadRow(where, f"not a number: {raw!r}") from None
                if not math.isfinite(label):
                    raise BadRow(where, f"not a finite number: {raw!r}")
            else:
                try:
                    answer = source.answer(raw) if source.answer else _text(raw, where).strip()
                except ValueError as exc:
                    raise BadRow(where, str(exc)) from None
        except BadRow as bad:
            problems.append(skip_record(origin, no, bad.field, bad.reason))
            continue
        id_key = _first_key(row, columns.ids)
        uid = f"{spec.name}:{split}:{row[id_key] if id_key and not is_blank(row[id_key]) else no}"
        if uid in seen:
            uid = f"{uid}#{no}"
        seen.add(uid)
        examples.append(Example(uid, fields, label, answer))
        if places is not None:
            places[uid] = (origin, no)
    return examples, problems


# ------------------------------------------------------------------------------------------- sources


def _local_rows(spec: TaskSpec, source: FileSource, data_dir: Path) -> dict[str, tuple[str, list[Row]]]:
    if not data_dir.is_dir():
        raise ConfigError(f"task.data_dir={str(data_dir)!r}: no such folder (task {spec.name} reads "
                          f"{source.describe_files()})")
    out = {}
    for split, names in source.files.items():
        path = next((data_dir / n for n in names if (data_dir / n).is_file()), None)
        if path is None:
            if split in source.required:
                raise ConfigError(f"task.data_dir={str(data_dir)!r}: missing file {data_dir / names[0]} "
                                  f"(task {spec.name} reads {source.describe_files()})")
            continue
        out[split] = (str(path), read_rows(path, source.columns))
    return out


def _hub_rows(spec: TaskSpec, source: FileSource) -> dict[str, tuple[str, list[Row]]]:
    hub = source.hub
    assert hub is not None
    try:
        import datasets
    except ImportError:
        raise MissingPackageError(f"task {spec.name} loads {hub.ref()} with the `datasets` package, which is "
                                  "not installed: pip install datasets (or set task.data_dir)") from None
    try:
        loaded = datasets.load_dataset(hub.path, hub.config)
    except Exception as exc:  # noqa: BLE001 - no network, unknown repo, ...: the user's fix is the same
        cause = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"task.name={spec.name!r}: could not load {hub.ref()} from the Hugging Face Hub "
            f"({type(exc).__name__}: {cause}); without internet access set task.data_dir to a folder with "
            f"{source.describe_files()}"
        ) from None
    out = {}
    for split, hub_split in hub.splits.items():
        if hub_split not in loaded:
            continue
        rows: list[Row] = []
        for i, row in enumerate(loaded[hub_split].to_list(), 1):
            lab = row.get("label")
            if isinstance(lab, (int, float)) and not isinstance(lab, bool) and lab == -1:
                row["label"] = None  # GLUE/SuperGLUE test splits: label -1 = unlabelled
            elif spec.kind == "classification" and isinstance(lab, int) and not isinstance(lab, bool):
                row["label"] = spec.labels[lab] if spec.labels and 0 <= lab < len(spec.labels) else f"#{lab}"
            rows.append((i, row))
        out[split] = (hub.ref(hub_split), rows)
    return out


def _hub_columns(spec: TaskSpec) -> Columns:
    return Columns(fields={f: (f,) for f in spec.text_fields}, label=("label",))


def load_file_task(source: FileSource, spec: TaskSpec, cfg: "TaskConfig") -> TaskData:
    """The loader of every file-backed task (bind ``source`` with functools.partial)."""
    if cfg.data_dir is None:
        if source.hub is None:
            raise ConfigError(f"task.name={spec.name!r}: no Hugging Face Hub copy is registered for this task; "
                              f"set task.data_dir to a folder with {source.describe_files()}")
        raw, columns = _hub_rows(spec, source), source.hub_columns or _hub_columns(spec)
    else:
        raw, columns = _local_rows(spec, source, Path(cfg.data_dir).expanduser().resolve()), source.columns
    splits: dict[str, list[Example] | None] = {}
    origins: dict[str, str] = {}
    skipped: list[dict[str, Any]] = []
    notes: list[str] = []
    where: dict[str, tuple[str, int]] = {}
    for split in SPLITS:
        if split not in raw:
            continue
        origin, rows = raw[split]
        origins[split] = origin
        if split != "train" and rows and not has_labels(rows, columns):
            notes.append(f"{origin} has no labels, so it is not used as the {split} split")
            continue
        examples, problems = convert_rows(spec, source, columns, rows, origin, split, where)
        check_usable(spec, origin, len(rows), len(examples), problems)
        skipped.extend(problems)
        splits[split] = examples
    # a repeated text is kept once: in a local file it was kept twice and not reported (issue 13)
    splits = dedupe_splits(spec, splits, where, skipped)
    train, dev, test, carved = fill_missing_splits(spec, splits, cfg.seed, origins)
    return finalize(spec, cfg, train, dev, test, skipped, notes + carved)
