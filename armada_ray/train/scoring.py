"""Scoring one training worker's student and aligner on a split (the dev evaluation of every epoch, and test).

Predictions are made on each rank's shard of the split (the distributed sampler of the worker's loader; under
ZeRO-3 every rank must run the forward passes) and gathered on every rank, where the task's metric is computed.
Generative tasks are scored on greedy answers. The aligner is scored on the full split on every rank: it is a
small module over fixed vectors.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from armada_ray.config import ArmadaConfig
from armada_ray.evaluate import generate_answers
from armada_ray.model.outputs import AlignerOutput
from armada_ray.probe import class_targets, score_predictions
from armada_ray.tasks import compute_metrics


def aligner_outputs(aligner: torch.nn.Module, teacher: torch.Tensor) -> AlignerOutput:
    """The aligner's outputs for ``teacher`` in eval mode without gradients (its train/eval mode is restored)."""
    was_training = aligner.training
    aligner.eval()
    with torch.no_grad():
        out = aligner(teacher)
    aligner.train(was_training)
    return out


def gather(local: list[Any], world: int) -> list[Any]:
    """Every rank's ``local`` rows, concatenated in rank order, on every rank."""
    if world == 1:
        return local
    everything: list[list[Any]] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(everything, local)
    return [x for part in everything for x in part]


class Scorer:
    """The student (engine) and aligner of one worker scored on a split with the task's metric."""

    def __init__(self, cfg: ArmadaConfig, spec: Any, splits: dict[str, Any], engine: Any, tokenizer: Any,
                 aligner: torch.nn.Module | None, loader: Callable[[str], DataLoader], device: torch.device,
                 rank: int, world: int, log: Callable[[str], None]):
        self.cfg, self.spec, self.splits = cfg, spec, splits
        self.engine, self.tokenizer = engine, tokenizer
        self.aligner = aligner  # unwrapped (no DDP): scoring runs the same forward on every rank
        self.loader = loader  # split -> the worker's unshuffled loader over this rank's shard
        self.device, self.rank, self.world, self.log = device, rank, world, log
        self.regression = spec.kind == "regression"
        self.generative = spec.kind == "generative"

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def evaluate(self, split: str = "dev") -> dict[str, Any]:
        """Student (and aligner) predictions on ``split``, gathered from every rank (ZeRO-3 needs all)."""
        if self.generative:
            return self.evaluate_generative(split)
        self.engine.eval()
        rows: list[tuple[int, float, list[float]]] = []
        with torch.no_grad():
            for batch in self.loader(split):
                batch = self._to_device(batch)
                out = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  token_type_ids=batch.get("token_type_ids"))
                s1 = out.s1.float()
                pred = s1.squeeze(-1) if self.regression else s1.argmax(-1)
                for j, idx in enumerate(batch["index"].tolist()):
                    rows.append((idx, float(pred[j]), out.p_s[j].float().cpu().tolist()))
        by_index = {idx: (pred, p_s) for idx, pred, p_s in gather(rows, self.world)}  # sampler padding dedups here
        order = sorted(by_index)
        preds = [by_index[i][0] if self.regression else int(by_index[i][0]) for i in order]
        refs = self.splits[split].labels[order].tolist()
        metrics = compute_metrics(self.spec, preds, refs)
        result: dict[str, Any] = {"metrics": metrics, "dev_metric": metrics[self.spec.metric],
                                  "preds": preds, "p_s": np.asarray([by_index[i][1] for i in order])}
        if self.aligner is not None and self.splits[split].teacher is not None:
            result.update(self.evaluate_aligner(split))
        return result

    def evaluate_generative(self, split: str = "dev") -> dict[str, Any]:
        """Greedy answers to ``split``'s prompts scored with the task's metric, gathered from every rank.

        Under ZeRO-3 each forward gathers parameter shards from all ranks, so generation runs with
        ``synced_gpus``: a rank that has finished keeps stepping until every rank has. The sampler pads the
        split so every rank runs the same number of batches.
        """
        self.engine.eval()
        student = self.engine.module
        synced = self.world > 1 and self.cfg.train.zero_stage == 3
        prompts = self.splits[split].prompts
        rows: list[tuple[int, str, list[float]]] = []
        with torch.no_grad():
            for batch in self.loader(split):
                index = batch["index"].tolist()
                texts = generate_answers(student, self.tokenizer, [prompts[i] for i in index],
                                         self.cfg.eval.max_new_tokens, batch_size=len(index), synced_gpus=synced)
                batch = self._to_device(batch)
                out = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  labels=batch["lm_labels"])  # p_s of the pooled prompt, for the embedding map
                for j, idx in enumerate(index):
                    rows.append((idx, texts[j], out.p_s[j].float().cpu().tolist()))
        by_index = {idx: (text, p_s) for idx, text, p_s in gather(rows, self.world)}
        order = sorted(by_index)
        preds = [by_index[i][0] for i in order]
        refs = [self.splits[split].answers[i] for i in order]
        metrics = compute_metrics(self.spec, preds, refs)
        result: dict[str, Any] = {"metrics": metrics, "dev_metric": metrics[self.spec.metric], "preds": preds,
                                  "p_s": np.asarray([by_index[i][1] for i in order])}
        if self.rank == 0:
            for i in order[:2]:
                self.log(f"{split} sample: {prompts[i][-80:]!r} -> {by_index[i][0][:80]!r} "
                         f"(reference {self.splits[split].answers[i][:80]!r})")
        if self.aligner is not None and self.splits[split].teacher is not None:
            result.update(self.evaluate_aligner(split))
        return result

    def evaluate_aligner(self, split: str = "dev") -> dict[str, Any]:
        """The aligner's own metric on ``split`` (every rank computes it on the full split: it is tiny)."""
        t = torch.as_tensor(self.splits[split].teacher, device=self.device)
        a_out = aligner_outputs(self.aligner, t)
        result: dict[str, Any] = {"p_t": a_out.p_t.float().cpu().numpy()}
        if a_out.t1 is None:  # open-answer generative task: no class head to score
            return result
        keep, refs = class_targets(self.spec, self.splits[split].labels)
        result["aligner_metric"] = self.aligner_score(a_out.t1[torch.as_tensor(keep, device=a_out.t1.device)], refs)
        return result

    def aligner_score(self, t1: torch.Tensor, refs: np.ndarray) -> float:
        """The task metric of branch A's outputs (answer-class accuracy for generative tasks)."""
        pred = t1.squeeze(-1).float() if self.regression else t1.argmax(-1)
        return score_predictions(self.spec, pred.cpu().numpy(), refs)
