"""Fitting the teacher-side aligner on cached vectors until its dev metric stops improving.

The aligner is a small MLP over fixed vectors: a pass over the train split costs milliseconds, so it can be
fitted to convergence (early-stopped on dev) before the student relies on its soft outputs. One aligner
epoch per outer epoch (the paper's schedule) leaves it near chance on small data (issue 12: dev accuracy
0.45 / 0.69 after 20 / 40 steps, against a linear probe's 0.92 on the same vectors).

Plain torch on in-memory tensors: no data loader, no tokenizer, no Ray.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from armada_ray.model.aligner import TeacherAligner, aligner_loss


@dataclass
class AlignerFit:
    """Outcome of :func:`fit_aligner`: the states kept and the per-pass curve."""

    best_state: dict[str, torch.Tensor]
    latest_state: dict[str, torch.Tensor]
    best_metric: float
    best_epoch: int
    epochs_run: int
    curve: list[dict[str, float]] = field(default_factory=list)


def fit_aligner(
    aligner: TeacherAligner,
    optimizer: torch.optim.Optimizer,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    dev_x: torch.Tensor,
    score: Callable[[torch.Tensor], float],
    *,
    gamma: float = 1.0,
    regression: bool = False,
    batch_size: int = 32,
    max_epochs: int = 300,
    patience: int = 25,
    seed: int = 0,
    higher_is_better: bool = True,
    clip: float = 1.0,
    log: Callable[[str], None] | None = None,
) -> AlignerFit:
    """Train ``aligner`` on (train_x, train_y) with ``CE(t1,y) + γ·CE(t2,y)`` (MSE for regression) until
    ``score`` (dev metric of branch A's outputs on ``dev_x``) has not improved for ``patience`` passes.

    ``score`` receives branch A's dev outputs (logits, or values for regression) in eval mode and returns the
    task metric. The aligner is left holding the latest state; the caller picks best or latest.
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(train_x)
    best_metric, best_epoch = -math.inf if higher_is_better else math.inf, 0
    best_state = copy.deepcopy(aligner.state_dict())
    curve: list[dict[str, float]] = []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        aligner.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = aligner_loss(aligner(train_x[idx]), train_y[idx], gamma=gamma, regression=regression)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(aligner.parameters(), clip)
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        metric = _dev_score(aligner, dev_x, score)
        curve.append({"epoch": epoch, "loss": total / max(n, 1), "dev_metric": metric})
        better = metric > best_metric if higher_is_better else metric < best_metric
        if better and not math.isnan(metric):
            best_metric, best_epoch = metric, epoch
            best_state = copy.deepcopy(aligner.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if log is not None:
        log(f"aligner fitted: best dev metric {best_metric:.4f} at pass {best_epoch} of {epoch} "
            f"(stopped after {patience} passes without improvement or at {max_epochs}); "
            f"train loss {curve[-1]['loss']:.4f}")
    return AlignerFit(best_state, copy.deepcopy(aligner.state_dict()), best_metric, best_epoch, epoch, curve)


def _dev_score(aligner: TeacherAligner, dev_x: torch.Tensor, score: Callable[[torch.Tensor], float]) -> float:
    aligner.eval()
    with torch.no_grad():
        out: Any = aligner(dev_x)
    return float(score(out.t1))


__all__ = ["AlignerFit", "fit_aligner"]
