"""Training data: task examples + cached teacher vectors -> tokenized torch datasets.

Sharding choice: a ``DistributedSampler`` over an in-memory dataset, not Ray Data shards. The task
splits are small next to the model (thousands to a few hundred thousand short texts), the alternating
schedule walks the same examples twice per epoch (aligner epoch over teacher vectors, then student
epoch), and a sampler seeded by (seed, epoch) makes every epoch's order reproducible, which is what lets
a resumed run see exactly the batches an uninterrupted run would have seen.

Generative tasks (reasoning, instructions) become prompt+answer sequences for a causal-LM student: the
prompt is the task prompt followed by an answer cue (:func:`lm_prompt`), the answer is the target text plus
EOS, and the LM labels are -100 on the prompt and on padding, so the loss covers the answer tokens only.
A task with a fixed answer set (``spec.choices``) also gets a class id per row for the class heads and the
aligner (-1 where the answer is none of the choices: those rows still train the LM loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from armada_ray.cache import TeacherCache
from armada_ray.config import ArmadaConfig, ConfigError
from armada_ray.tasks import example_prompt, load_task, student_text
from armada_ray.tasks.metrics import normalize_text
from armada_ray.teachers.prompts import teacher_prompt


@dataclass
class SplitArrays:
    """One split, ready to tokenize: prompts, labels, teacher vectors (or None for the baseline)."""

    uids: list[str]
    prompts: list[str]
    labels: np.ndarray
    teacher: np.ndarray | None
    answers: list[str] | None = None  # generative tasks: the target texts
    # teacher.shuffle=targets: the vectors whose aligner outputs the student learns from (another example's)
    student_teacher: np.ndarray | None = None
    # student.input=fields on a pair task: the second text of each row (``prompts`` then holds the first)
    pairs: list[str | None] | None = None


def student_inputs(cfg: ArmadaConfig, spec: Any, rows: list[Any]) -> tuple[list[str], list[str | None] | None]:
    """(texts, second texts or None) the student reads for ``rows`` (see ``student.input``)."""
    if spec.kind == "generative" or cfg.student.input == "teacher_prompt":
        return [example_prompt(spec, ex) for ex in rows], None
    texts = [student_text(spec, ex) for ex in rows]
    pairs = [b for _, b in texts]
    return [a for a, _ in texts], pairs if any(b is not None for b in pairs) else None


def encode_texts(tokenizer: Any, texts: list[str], pairs: list[str | None] | None, max_length: int,
                 padding: bool = False) -> dict[str, Any]:
    """Tokenize what the student reads: a pair through the tokenizer's pair encoding where it has segment ids
    (``[SEP]`` + ``token_type_ids`` for BERT/DeBERTa), else joined by a visible newline (decoders)."""
    kw: dict[str, Any] = {"truncation": True, "max_length": max_length, "add_special_tokens": True}
    if padding:
        kw.update(padding=True, return_tensors="pt")
    if pairs is None:
        return tokenizer(texts, **kw)
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        return tokenizer(texts, [b or "" for b in pairs], **kw)
    return tokenizer([a if b is None else f"{a}\n{b}" for a, b in zip(texts, pairs)], **kw)


ANSWER_CUE = "\nanswer:"


def lm_prompt(prompt: str) -> str:
    """What a generative student continues: the task prompt, then an answer cue (training, eval, export)."""
    return f"{prompt}{ANSWER_CUE}"


def choice_label(answer: str, choices: list[str] | None) -> int:
    """The class id of a generative answer in a fixed answer set; -1 when there is no set or no match."""
    if not choices:
        return -1
    norm = [normalize_text(c) for c in choices]
    key = normalize_text(answer)
    return norm.index(key) if key in norm else -1


class ArmadaDataset(Dataset):
    """Pre-tokenized examples; the collate function pads each batch to its own longest row."""

    def __init__(self, split: SplitArrays, tokenizer: Any, max_length: int):
        self.token_type_ids: list[list[int]] | None = None
        self.input_ids: list[list[int]] = self._encode(split, tokenizer, max_length)
        self.labels = split.labels
        self.teacher = split.teacher
        self.student_teacher = split.student_teacher
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _encode(self, split: SplitArrays, tokenizer: Any, max_length: int) -> list[list[int]]:
        enc = encode_texts(tokenizer, split.prompts, split.pairs, max_length)
        if split.pairs is not None and "token_type_ids" in enc:
            self.token_type_ids = enc["token_type_ids"]
        return enc["input_ids"]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"index": i, "input_ids": self.input_ids[i], "label": self.labels[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[i]
        if self.teacher is not None:
            item["teacher"] = self.teacher[i]
        if self.student_teacher is not None:
            item["student_teacher"] = self.student_teacher[i]
        return item

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        segments = torch.zeros((len(rows), width), dtype=torch.long) if "token_type_ids" in rows[0] else None
        for j, r in enumerate(rows):  # right padding; decoder pooling finds the last real token
            ids[j, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[j, : len(r["input_ids"])] = 1
            if segments is not None:
                segments[j, : len(r["token_type_ids"])] = torch.tensor(r["token_type_ids"])
        labels = np.asarray([r["label"] for r in rows])
        out = {
            "index": torch.tensor([r["index"] for r in rows]),
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.as_tensor(labels, dtype=torch.float32 if labels.dtype.kind == "f" else torch.long),
        }
        if segments is not None:
            out["token_type_ids"] = segments
        for key in ("teacher", "student_teacher"):
            if key in rows[0]:
                out[key] = torch.as_tensor(np.stack([r[key] for r in rows]), dtype=torch.float32)
        return out


class GenerativeDataset(ArmadaDataset):
    """Prompt+answer sequences with LM labels on the answer only (see the module docstring).

    Over-long rows: the answer keeps at least half of ``max_length`` (its tail is cut), and the prompt keeps
    its last tokens (the question usually ends a prompt), so every row supervises some answer tokens.
    """

    def _encode(self, split: SplitArrays, tokenizer: Any, max_length: int) -> list[list[int]]:
        if split.answers is None:
            raise ValueError("GenerativeDataset needs the split's answers")
        prompts = tokenizer([lm_prompt(p) for p in split.prompts], add_special_tokens=True)["input_ids"]
        answers = tokenizer([" " + a for a in split.answers], add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        rows, self.answer_len = [], []
        for p, a in zip(prompts, answers):
            a = a + eos
            a = a[: max(max_length - len(p), max_length // 2)]
            p = p[-(max_length - len(a)):]
            rows.append(p + a)
            self.answer_len.append(len(a))
        return rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**super().__getitem__(i), "answer_len": self.answer_len[i]}

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = super().collate(rows)
        lm_labels = torch.full_like(out["input_ids"], -100)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            lm_labels[j, n - r["answer_len"]: n] = out["input_ids"][j, n - r["answer_len"]: n]
        out["lm_labels"] = lm_labels
        return out


def make_dataset(split: SplitArrays, tokenizer: Any, max_length: int) -> ArmadaDataset:
    """The torch dataset of a split: prompt+answer sequences for generative tasks, prompts otherwise."""
    cls = GenerativeDataset if split.answers is not None else ArmadaDataset
    return cls(split, tokenizer, max_length)


def teacher_vectors_for(cfg: ArmadaConfig, cache: TeacherCache | None, split_name: str,
                        prompts: list[str]) -> np.ndarray:
    """Look up the teacher vector of every prompt in ``cache`` (None: never embedded); a gap is a ConfigError
    naming how many and which task."""
    if cache is None:
        raise ConfigError(
            f"teacher cache: no vectors for task {cfg.task.name!r} under {cfg.cache_root} for this teacher "
            f"({cfg.teacher.kind}); run `armada embed --config ...` first (or loss.mode=baseline)"
        )
    keys = [cache.key_for(p) for p in prompts]
    missing = cache.missing(keys)
    if missing:
        raise ConfigError(
            f"teacher cache {cache.path}: {len(set(missing))} of {len(set(keys))} {split_name} prompts of task "
            f"{cfg.task.name!r} have no teacher vector; run `armada embed` for this task (quarantined rows are "
            f"listed in {cache.path / 'quarantine.jsonl'})"
        )
    return np.asarray(cache.lookup(keys), dtype=np.float32)


def shuffle_teacher(vectors: np.ndarray, seed: int) -> np.ndarray:
    """Ablation control ``teacher.shuffle``: the same vectors, permuted across examples (fixed seed).

    ``pairs`` feeds the permuted vectors to the aligner and the student alike: the aligner learns labels from
    mismatched vectors, so what reaches the student is close to label smoothing. ``targets`` keeps the
    aligner on the true pairs and gives the student the aligner's outputs for another example: the stronger
    control, since the student then learns from confident, wrong soft labels. The paper's "shuffled teacher"
    row (−1.8 %) most likely is ``pairs``: its code shuffles the image latents before the aligner sees them.
    """
    return vectors[np.random.default_rng(seed).permutation(len(vectors))]


def build_splits(cfg: ArmadaConfig, with_teacher: bool, cache: TeacherCache | None = None
                 ) -> tuple[Any, dict[str, SplitArrays]]:
    """Load the task and return (spec, {"train", "dev", "test"} arrays).

    ``cache``: where the teacher vectors are (``with_teacher``; None: never embedded, a ConfigError). A worker
    opens it by the driver's identity (``cache.open_cache``), a driver by its config (``cache.open_cache_for``).
    """
    data = load_task(cfg.task)
    spec = data.spec
    generative = spec.kind == "generative"
    splits: dict[str, SplitArrays] = {}
    for name in ("train", "dev", "test"):
        rows = getattr(data, name)
        if not rows:
            if name == "test":
                continue
            raise ConfigError(f"task {cfg.task.name!r}: the {name} split is empty")
        prompts, pairs = student_inputs(cfg, spec, rows)
        if generative:
            labels = np.asarray([choice_label(ex.answer or "", spec.choices) for ex in rows], dtype=np.int64)
        else:
            labels = np.asarray([ex.label for ex in rows],
                                dtype=np.float32 if spec.kind == "regression" else np.int64)
        teacher = None
        if with_teacher and name in ("train", "dev"):
            teacher = teacher_vectors_for(cfg, cache, name, [teacher_prompt(cfg.teacher, spec, ex) for ex in rows])
        student_teacher = None
        if teacher is not None and name == "train" and cfg.teacher.shuffle == "pairs":
            teacher = shuffle_teacher(teacher, cfg.teacher.shuffle_seed)
        elif teacher is not None and name == "train" and cfg.teacher.shuffle == "targets":
            student_teacher = shuffle_teacher(teacher, cfg.teacher.shuffle_seed)
        answers = [ex.answer or "" for ex in rows] if generative else None
        splits[name] = SplitArrays([ex.uid for ex in rows], prompts, labels, teacher, answers, student_teacher, pairs)
    if with_teacher and data.transfer:
        splits["train"] = _with_transfer(cfg, cache, spec, splits["train"], data.transfer)
    return spec, splits


def _with_transfer(cfg: ArmadaConfig, cache: TeacherCache | None, spec: Any, train: SplitArrays,
                   rows: list[Any]) -> SplitArrays:
    """The train split followed by the transfer set: label -1 (the loop labels those rows with the aligner's
    prediction), their own teacher vectors (never shuffled)."""
    if spec.kind != "classification":
        raise ConfigError(f"config error: task.transfer_rows={cfg.task.transfer_rows}: the transfer set needs a "
                          f"classification task; {spec.name!r} is {spec.kind}")
    if cache is not None:  # quarantined rows (listed with their reason by `armada embed`) are left out, counted
        missing = set(cache.missing([cache.key_for(teacher_prompt(cfg.teacher, spec, ex)) for ex in rows]))
        kept = [ex for ex in rows if cache.key_for(teacher_prompt(cfg.teacher, spec, ex)) not in missing]
        if missing and len(kept) >= len(rows) // 2:
            print(f"transfer set: {len(rows) - len(kept)} of {len(rows)} rows have no teacher vector "
                  f"(see {cache.path / 'quarantine.jsonl'}); training on the other {len(kept)}", flush=True)
            rows = kept
    vectors = teacher_vectors_for(cfg, cache, "transfer", [teacher_prompt(cfg.teacher, spec, ex) for ex in rows])
    student = None if train.student_teacher is None else np.concatenate([train.student_teacher, vectors])
    texts, pairs = student_inputs(cfg, spec, rows)
    both = None if train.pairs is None and pairs is None else \
        (train.pairs or [None] * len(train.prompts)) + (pairs or [None] * len(rows))
    return SplitArrays(
        train.uids + [ex.uid for ex in rows], train.prompts + texts,
        np.concatenate([train.labels, np.full(len(rows), -1, dtype=train.labels.dtype)]),
        np.concatenate([train.teacher, vectors]), None, student, both)
