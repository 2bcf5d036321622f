"""Training data: task examples + cached teacher vectors -> tokenized torch datasets.

Sharding choice: a ``DistributedSampler`` over an in-memory dataset, not Ray Data shards. The task
splits are small next to the model (thousands to a few hundred thousand short texts), the alternating
schedule walks the same examples twice per epoch (aligner epoch over teacher vectors, then student
epoch), and a sampler seeded by (seed, epoch) makes every epoch's order reproducible, which is what lets
a resumed run see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from armada_ray.config import ArmadaConfig, ConfigError


@dataclass
class SplitArrays:
    """One split, ready to tokenize: prompts, labels, teacher vectors (or None for the baseline)."""

    uids: list[str]
    prompts: list[str]
    labels: np.ndarray
    teacher: np.ndarray | None


class ArmadaDataset(Dataset):
    """Pre-tokenized examples; the collate function pads each batch to its own longest row."""

    def __init__(self, split: SplitArrays, tokenizer: Any, max_length: int):
        enc = tokenizer(split.prompts, truncation=True, max_length=max_length, add_special_tokens=True)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.labels = split.labels
        self.teacher = split.teacher
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"index": i, "input_ids": self.input_ids[i], "label": self.labels[i]}
        if self.teacher is not None:
            item["teacher"] = self.teacher[i]
        return item

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):  # right padding; decoder pooling finds the last real token
            ids[j, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[j, : len(r["input_ids"])] = 1
        labels = np.asarray([r["label"] for r in rows])
        out = {
            "index": torch.tensor([r["index"] for r in rows]),
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.as_tensor(labels, dtype=torch.float32 if labels.dtype.kind == "f" else torch.long),
        }
        if "teacher" in rows[0]:
            out["teacher"] = torch.as_tensor(np.stack([r["teacher"] for r in rows]), dtype=torch.float32)
        return out


def teacher_vectors_for(cfg: ArmadaConfig, split_name: str, prompts: list[str]) -> np.ndarray:
    """Look up the teacher vector of every prompt; a gap is a ConfigError naming how many and which task."""
    from armada_ray.cache import open_cache_for

    cache = open_cache_for(cfg)
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
    """Ablation control ``teacher.shuffle``: the same vectors, permuted across examples (fixed seed)."""
    return vectors[np.random.default_rng(seed).permutation(len(vectors))]


def build_splits(cfg: ArmadaConfig, with_teacher: bool) -> tuple[Any, dict[str, SplitArrays]]:
    """Load the task and return (spec, {"train", "dev", "test"} arrays)."""
    from armada_ray.tasks import load_task
    from armada_ray.teachers.prompts import teacher_prompt

    data = load_task(cfg.task)
    spec = data.spec
    if spec.kind == "generative":
        raise ConfigError(
            f"task.name={cfg.task.name!r} is a generative task; `armada train` trains classification and "
            "regression tasks in this release (generative ARMADA training is not available yet)"
        )
    splits: dict[str, SplitArrays] = {}
    for name in ("train", "dev", "test"):
        rows = getattr(data, name)
        if not rows:
            if name == "test":
                continue
            raise ConfigError(f"task {cfg.task.name!r}: the {name} split is empty")
        from armada_ray.tasks import example_prompt

        prompts = [example_prompt(spec, ex) for ex in rows]
        labels = np.asarray([ex.label for ex in rows], dtype=np.float32 if spec.kind == "regression" else np.int64)
        teacher = None
        if with_teacher and name in ("train", "dev"):
            teacher = teacher_vectors_for(cfg, name, [teacher_prompt(cfg.teacher, spec, ex) for ex in rows])
            if name == "train" and cfg.teacher.shuffle:
                teacher = shuffle_teacher(teacher, cfg.teacher.shuffle_seed)
        splits[name] = SplitArrays([ex.uid for ex in rows], prompts, labels, teacher)
    return spec, splits
