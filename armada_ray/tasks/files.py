"""``task.name=files``: your own data in one config block (JSONL, JSON, CSV, TSV, Parquet, or a Hub dataset).

The registered tasks each know their own file layout; this one is told it by the config: ``task.files`` (a
path or glob per split) or ``task.hub``, ``task.text_fields``, ``task.label_field`` (+ ``task.labels``, else
inferred from train), ``task.kind`` and for generative tasks ``task.answer_field``. Rows go through the same
conversion as every file-backed task (:func:`~armada_ray.tasks.sources.convert_rows`): a row that cannot be
used is recorded in ``TaskData.skipped`` (file, row, field, reason) and the load goes on; a split with no
usable row is a :class:`~armada_ray.config.ConfigError` naming the first problem. Unlabelled train rows
feed the transfer set when ``task.transfer_rows`` is set, and are skipped otherwise.
"""

from __future__ import annotations

import csv
import glob
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from armada_ray.config import FILE_TASK_METRICS, SPLIT_NAMES, ConfigError
from armada_ray.tasks.base import Example, TaskData, TaskSpec, check_usable, dedupe_splits, fill_missing_splits, \
    finalize, skip_record
from armada_ray.tasks.sources import Columns, FileSource, Row, is_blank, convert_rows, read_rows

if TYPE_CHECKING:
    from armada_ray.config import TaskConfig

NAME = "files"
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
_EXTRA = {"classification": ["macro_f1"], "regression": ["spearman"], "generative": []}


def placeholder_spec() -> TaskSpec:
    """The registry's entry (``armada tasks`` lists it); a loaded file task carries its own spec."""
    return TaskSpec(name=NAME, kind="classification", text_fields=["(task.text_fields)"], labels=None,
                    answer_format=None, metric="(task.metric)", loader=load_files_task,
                    description="your own JSONL/CSV/TSV/Parquet files or a Hub dataset (task.files or task.hub)",
                    source="task.files / task.hub")


def spec_for(cfg: "TaskConfig", labels: list[str] | None = None) -> TaskSpec:
    """The spec a file task's config declares (``labels``: the inferred class names when not given)."""
    metric = cfg.metric or FILE_TASK_METRICS[cfg.kind][0]
    extra = [m for m in _EXTRA[cfg.kind] if m != metric]
    where = ", ".join(f"{k}: {v}" for k, v in cfg.files.items()) if cfg.files else f"hub {cfg.hub.path}"
    return TaskSpec(name=NAME, kind=cfg.kind, text_fields=list(cfg.text_fields or []),
                    labels=list(cfg.labels or labels or []) or None if cfg.kind == "classification" else None,
                    answer_format="text" if cfg.kind == "generative" else None, metric=metric, extra_metrics=extra,
                    description=f"your data ({where})", loader=load_files_task, source=where)


# ------------------------------------------------------------------------------------------------ reading

def _expand(split: str, pattern: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
    found = [p for p in paths if p.is_file()]
    if not found:
        what = "no file matches" if glob.has_magic(pattern) else "no such file"
        raise ConfigError(f"config error: task.files.{split}={pattern!r}: {what}")
    bad = [p for p in found if p.suffix.lower() not in SUFFIXES]
    if bad:
        raise ConfigError(f"config error: task.files.{split}: {bad[0]} is not a data file; allowed suffixes: "
                          f"{', '.join(SUFFIXES)}")
    return found


def _read_delimited(path: Path, delimiter: str) -> list[Row]:
    rows: list[Row] = []
    # surrogateescape: one bad byte spoils its row (reported), not the whole file
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for rec in reader:
            no = reader.line_num
            bad = next((k for k, v in rec.items() if isinstance(v, str) and _has_surrogates(v)), None)
            if bad is not None:
                rows.append((no, f"not valid UTF-8 (column {bad!r})"))
            elif None in rec:  # more cells than the header names
                rows.append((no, f"{len(rec) - 1 + len(rec[None])} cells for {len(rec) - 1} header columns"))
            else:
                rows.append((no, {k: v for k, v in rec.items()}))
    return rows


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure means the same to the user
        raise ConfigError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    return [(i, r) for i, r in enumerate(table.to_pylist(), 1)]


def read_file(path: Path, columns: Columns) -> list[Row]:
    """(row number, row or why it is unusable) of one data file; an unreadable file is a ConfigError."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return _read_parquet(path)
        if suffix in (".csv", ".tsv"):
            return _read_delimited(path, "," if suffix == ".csv" else "\t")
        return read_rows(path, columns)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except csv.Error as exc:
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()} ({exc})") from None


def _hub_rows(cfg: "TaskConfig") -> tuple[dict[str, list[tuple[str, list[Row]]]], list[str] | None]:
    """Rows of each mapped split of ``task.hub`` and the label column's ClassLabel names, if it has them."""
    hub = cfg.hub
    try:
        import datasets

        loaded = datasets.load_dataset(hub.path, hub.name)
    except Exception as exc:  # noqa: BLE001 - no network, unknown repo, ...: the user's fix is the same
        cause = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"config error: task.hub.path={hub.path!r}: could not load it from the Hugging Face Hub "
                          f"({type(exc).__name__}: {cause}); without internet access use task.files") from None
    raw, names = {}, None
    for split, hub_split in hub.splits.items():
        if hub_split not in loaded:
            continue
        feature = loaded[hub_split].features.get(cfg.label_field)
        names = names or list(getattr(feature, "names", None) or []) or None
        ref = f"{hub.path}{':' + hub.name if hub.name else ''}/{hub_split}"
        raw[split] = [(ref, [(i, r) for i, r in enumerate(loaded[hub_split].to_list(), 1)])]
    if "train" not in raw:
        raise ConfigError(f"config error: task.hub.splits.train={hub.splits.get('train')!r}: the dataset has splits "
                          f"{', '.join(loaded)}")
    return raw, names


# --------------------------------------------------------------------------------------------- labels

def _blank(v: Any) -> bool:
    return is_blank(v) or (isinstance(v, float) and math.isnan(v))  # Parquet/pandas nulls may arrive as NaN


def _type_name(v: Any) -> str:
    return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__


def _label_types(raw: dict[str, list[tuple[str, list[Row]]]], field: str) -> str | None:
    """The label column's type across train (the majority of its non-blank values)."""
    counts = Counter(_type_name(r[field]) for _, rows in raw["train"] for _, r in rows
                     if isinstance(r, dict) and not _blank(r.get(field)))
    return counts.most_common(1)[0][0] if counts else None


def _infer_labels(raw: dict[str, list[tuple[str, list[Row]]]], field: str, major: str | None) -> list[str]:
    values = {_token(r[field]) for _, rows in raw["train"] for _, r in rows
              if isinstance(r, dict) and not _blank(r.get(field)) and _type_name(r[field]) == major}
    if len(values) < 2:
        origin = raw["train"][0][0]
        raise ConfigError(f"config error: task.label_field={field!r}: {origin} holds "
                          f"{'one label value ' + repr(next(iter(values))) if values else 'no label values'}; "
                          "a classifier needs at least two classes (or set task.kind)")
    return sorted(values, key=lambda v: (float(v), v) if _is_number(v) else (math.inf, v))


def _token(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ loading

def load_files_task(_spec: TaskSpec, cfg: "TaskConfig") -> TaskData:
    """The loader of ``task.name=files`` (registered under that name; builds its spec from ``cfg``)."""
    label_col = cfg.answer_field if cfg.kind == "generative" else cfg.label_field
    text_cols = list(cfg.text_fields or [])
    columns = Columns(fields={f: (f,) for f in text_cols}, label=(label_col,),
                      ids=(cfg.id_field,) if cfg.id_field else ())
    names: list[str] | None = None
    if cfg.files is not None:
        raw = {split: [(str(p), read_file(p, columns)) for p in _expand(split, pattern)]
               for split, pattern in cfg.files.items()}
    else:
        raw, names = _hub_rows(cfg)
    for parts in raw.values():
        for origin, rows in parts:
            if not rows:
                raise ConfigError(f"task.name=files: {origin} has no rows")
    major = _label_types(raw, label_col) if cfg.kind == "classification" else None
    labels = cfg.labels or names or (_infer_labels(raw, label_col, major) if cfg.kind == "classification" else None)
    spec = spec_for(cfg, labels)
    # integer labels index task.labels (or a Hub ClassLabel) unless the names are themselves numbers
    index_ints = cfg.kind == "classification" and bool(cfg.labels or names) and \
        not all(_is_number(x) for x in (labels or []))
    source = FileSource(files={}, required=(), columns=columns)
    skipped: list[dict[str, Any]] = []
    splits: dict[str, list[Example] | None] = {}
    origins: dict[str, str] = {}
    where: dict[str, tuple[str, int]] = {}  # uid -> (file, row): for the duplicate records
    unlabelled: list[Example] = []
    for split in SPLIT_NAMES:
        if split not in raw:
            continue
        examples: list[Example] = []
        for origin, rows in raw[split]:
            ready, n_unlabelled = [], 0
            for no, row in rows:
                if isinstance(row, dict):
                    value = row.get(label_col)
                    if split == "train" and cfg.transfer_rows and _blank(value) and \
                            all(not _blank(row.get(c)) for c in text_cols):
                        unlabelled.append(Example(f"files:transfer:{Path(origin).name}:{no}",
                                                  {c: str(row[c]) for c in text_cols}))
                        n_unlabelled += 1
                        continue
                    if cfg.kind == "classification" and not _blank(value):
                        if major is not None and _type_name(value) != major:
                            skipped.append(skip_record(origin, no, label_col, f"label {value!r} is a "
                                                       f"{_type_name(value)} in a column of {major} values"))
                            continue
                        if index_ints and isinstance(value, int) and not isinstance(value, bool):
                            if not 0 <= value < len(labels):
                                skipped.append(skip_record(origin, no, label_col, f"label index {value} outside "
                                                           f"task.labels (0..{len(labels) - 1})"))
                                continue
                            row = {**row, label_col: labels[value]}
                ready.append((no, row))
            found: dict[str, tuple[str, int]] = {}
            got, problems = convert_rows(spec, source, columns, ready, origin, split, found)
            check_usable(spec, origin, len(rows), len(got) + n_unlabelled, problems)
            skipped.extend(problems)
            for ex in got:  # uids name the file: several files make one split
                place = found[ex.uid]
                ex.uid = f"files:{split}:{Path(origin).name}:{ex.uid.split(':', 2)[2]}"
                where[ex.uid] = place
            examples.extend(got)
        origins[split] = raw[split][0][0] if len(raw[split]) == 1 else f"{len(raw[split])} {split} files"
        splits[split] = examples
    splits = dedupe_splits(spec, splits, where, skipped)
    for split, rows in splits.items():
        if rows is not None and not rows:
            raise ConfigError(f"task.name=files: the {split} split has no usable row ({origins[split]}); "
                              f"see the skipped rows")
    train, dev, test, notes = fill_missing_splits(spec, splits, cfg.seed, origins)
    if labels and cfg.kind == "classification" and not cfg.labels:
        notes.append(f"labels {labels} ({'from the dataset' if names else 'inferred from train, sorted'})")
    return finalize(spec, cfg, train, dev, test, skipped, notes, unlabelled=unlabelled)
