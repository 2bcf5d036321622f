"""ARMADA's losses as pure functions (DESIGN §2). Every function returns a scalar tensor.

Notation: student heads ``s1, s2`` (B, C) and projection ``p_s`` (B, P); aligner outputs ``t1, t2`` (B, C) and
``p_t`` (B, P); labels ``y`` (B,) (class ids, or float targets for regression where C = 1); temperature T.

- ``task_loss``     = CE(s1,y) + γ·CE(s2,y)                         (MSE for regression)
- ``soft_loss``     = T²·[MSE(softmax(t1/T), softmax(s1/T)) + γ·MSE(softmax(t2/T), softmax(s2/T))]
                      ``kind="kl"``: T²·[KL(softmax(t1/T) ‖ softmax(s1/T)) + γ·KL(…t2‖…s2)], batch mean.
                      Regression: softmax over a single output is constant 1, so the soft loss is
                      MSE(t1,s1) + γ·MSE(t2,s2) on the raw outputs, with no temperature (T² would only rescale).
- ``manifold_loss`` cosine    = 1 − cos(mean_B p_t, mean_B p_s)   (default)
                    euclid    = MSE(mean_B p_t, mean_B p_s)
                    pointwise = MSE(p_t, p_s) over the B×P entries (each sample against its own teacher)
- ``armada_loss``   = α·L_soft + (1−α)·L_task + β·L_manifold, with the aligner outputs detached (the caller
                      computes them in eval mode under ``torch.no_grad``).
- ``baseline_loss`` = CE(s1,y) (MSE for regression): the undistilled student.
- ``causal_lm_loss``= token-mean CE over the supervised (label ≠ −100) positions.

Every loss takes an optional boolean ``mask`` (B,) of the rows to use (e.g. rows whose teacher vector is
missing). An empty or fully masked batch gives 0, connected to the graph (so backward and DeepSpeed's gradient
hooks still run). Losses are computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from armada_ray.model.outputs import AlignerOutput, GenerativeOutput, StudentOutput

if TYPE_CHECKING:  # pragma: no cover
    from armada_ray.config import LossConfig

IGNORE_INDEX = -100


def _zero(*like: torch.Tensor | None) -> torch.Tensor:
    """A 0 that stays connected to the inputs' graph."""
    for t in like:
        if t is not None:
            return t.float().sum() * 0.0
    return torch.zeros(())


def _select(mask: torch.Tensor | None, *tensors: torch.Tensor | None) -> tuple:
    if mask is None:
        return tensors
    m = mask.to(torch.bool).reshape(-1)
    return tuple(None if t is None else t[m] for t in tensors)


def _hard(logits: torch.Tensor, y: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.float().reshape(-1), y.float().reshape(-1))
    return F.cross_entropy(logits.float(), y.long().reshape(-1))


def task_loss(
    s1: torch.Tensor,
    s2: torch.Tensor,
    y: torch.Tensor,
    gamma: float = 1.0,
    regression: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """CE(s1,y) + γ·CE(s2,y); MSE(s1,y) + γ·MSE(s2,y) for regression."""
    s1, s2, y = _select(mask, s1, s2, y)
    if s1.shape[0] == 0:
        return _zero(s1, s2)
    return _hard(s1, y, regression) + gamma * _hard(s2, y, regression)


def baseline_loss(
    s1: torch.Tensor | StudentOutput, y: torch.Tensor, regression: bool = False, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """CE(s1,y) (MSE for regression): the undistilled student's loss. ``s1`` may be the ``StudentOutput``."""
    s1 = getattr(s1, "s1", s1)
    s1, y = _select(mask, s1, y)
    if s1.shape[0] == 0:
        return _zero(s1)
    return _hard(s1, y, regression)


def _soft_pair(t: torch.Tensor, s: torch.Tensor, temperature: float, kind: str) -> torch.Tensor:
    t, s = t.float() / temperature, s.float() / temperature
    if kind == "mse":
        return F.mse_loss(F.softmax(s, dim=-1), F.softmax(t, dim=-1))
    if kind == "kl":
        # KL(teacher ‖ student) = Σ p_t (log p_t − log p_s), averaged over the batch.
        return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
    raise ValueError(f"soft loss kind {kind!r}: allowed 'mse', 'kl'")


def soft_loss(
    t1: torch.Tensor,
    t2: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    temperature: float = 5.0,
    gamma: float = 1.0,
    kind: Literal["mse", "kl"] = "mse",
    regression: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T²·[D(t1,s1) + γ·D(t2,s2)] on temperature-softened distributions (see the module docstring)."""
    t1, t2, s1, s2 = _select(mask, t1, t2, s1, s2)
    if s1.shape[0] == 0:
        return _zero(s1, s2)
    t1, t2 = t1.detach(), t2.detach()
    if regression:
        return F.mse_loss(s1.float(), t1.float()) + gamma * F.mse_loss(s2.float(), t2.float())
    scale = temperature**2
    return scale * (_soft_pair(t1, s1, temperature, kind) + gamma * _soft_pair(t2, s2, temperature, kind))


def manifold_loss(
    p_t: torch.Tensor,
    p_s: torch.Tensor,
    kind: Literal["cosine", "euclid", "pointwise"] = "cosine",
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Match the student's projected space to the aligner's (see the module docstring)."""
    if p_t.shape[-1] != p_s.shape[-1]:
        raise ValueError(f"manifold_loss: p_t has dimension {p_t.shape[-1]} but p_s has {p_s.shape[-1]}")
    p_t, p_s = _select(mask, p_t, p_s)
    if p_s.shape[0] == 0:
        return _zero(p_s)
    p_t, p_s = p_t.detach().float(), p_s.float()
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(p_t.mean(0), p_s.mean(0), dim=0, eps=eps)
    if kind == "euclid":
        return F.mse_loss(p_s.mean(0), p_t.mean(0))
    if kind == "pointwise":
        return F.mse_loss(p_s, p_t)
    raise ValueError(f"manifold loss kind {kind!r}: allowed 'cosine', 'euclid', 'pointwise'")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy over positions whose label is not −100.

    ``logits`` (B, T, V) with ``labels`` (B, T) are shifted (position i predicts token i+1), as in a causal LM;
    ``logits`` (N, V) with ``labels`` (N,) are taken as already aligned (``GenerativeStudent`` computes the LM
    head on the supervised positions only).
    """
    if logits.dim() == 3:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    if not bool(keep.any()):
        return _zero(logits)
    return F.cross_entropy(logits[keep].float(), labels[keep].long())


def armada_loss(
    student_out: StudentOutput,
    aligner_out: AlignerOutput | None,
    y: torch.Tensor,
    cfg: "LossConfig",
    regression: bool = False,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``α·L_soft + (1−α)·L_task + β·L_manifold`` (or the baseline when ``cfg.mode == "baseline"``).

    Returns the total and detached components ``{"loss", "task", "soft", "manifold"}`` for logging.
    """
    s1, s2, p_s = student_out.s1, student_out.s2, student_out.p_s
    if cfg.mode == "baseline":
        total = baseline_loss(s1, y, regression=regression, mask=mask)
        return total, {"loss": total.detach(), "task": total.detach()}
    if aligner_out is None or aligner_out.t1 is None or aligner_out.t2 is None:
        raise ValueError("armada_loss: mode 'armada' needs the aligner's outputs t1, t2, p_t")
    a = aligner_out.detach()
    l_task = task_loss(s1, s2, y, gamma=cfg.gamma, regression=regression, mask=mask)
    l_soft = soft_loss(
        a.t1, a.t2, s1, s2, temperature=cfg.temperature, gamma=cfg.gamma, kind=cfg.soft, regression=regression,
        mask=mask,
    )
    l_man = manifold_loss(a.p_t, p_s, kind=cfg.manifold, mask=mask)
    total = cfg.alpha * l_soft + (1.0 - cfg.alpha) * l_task + cfg.beta * l_man
    parts = {"loss": total, "task": l_task, "soft": l_soft, "manifold": l_man}
    return total, {k: v.detach() for k, v in parts.items()}


def generative_loss(
    out: GenerativeOutput,
    aligner_out: AlignerOutput | None,
    cfg: "LossConfig",
    y: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generative-task loss (see ``students.GenerativeStudent`` for why it is built this way).

    - baseline: ``L_lm`` (causal-LM loss on the answer tokens).
    - finite answer set (``y`` given, the student and aligner have class heads):
      ``L_task = L_lm + CE(s1,y) + γ·CE(s2,y)`` and ``L = α·L_soft + (1−α)·L_task + β·L_manifold``.
    - open answer set (no ``y``): no soft target exists, so ``L = L_lm + β·L_manifold`` (α has nothing to mix).
    """
    l_lm = causal_lm_loss(out.answer_logits, out.answer_labels)
    if cfg.mode == "baseline":
        return l_lm, {"loss": l_lm.detach(), "lm": l_lm.detach(), "task": l_lm.detach()}
    if aligner_out is None:
        raise ValueError("generative_loss: mode 'armada' needs the aligner's outputs (at least p_t)")
    a = aligner_out.detach()
    l_man = manifold_loss(a.p_t, out.p_s, kind=cfg.manifold, mask=mask)
    finite = y is not None and out.s1 is not None and a.t1 is not None
    if not finite:
        total = l_lm + cfg.beta * l_man
        parts = {"loss": total, "lm": l_lm, "task": l_lm, "manifold": l_man}
    else:
        l_task = l_lm + task_loss(out.s1, out.s2, y, gamma=cfg.gamma, mask=mask)
        l_soft = soft_loss(a.t1, a.t2, out.s1, out.s2, temperature=cfg.temperature, gamma=cfg.gamma, kind=cfg.soft,
                           mask=mask)
        total = cfg.alpha * l_soft + (1.0 - cfg.alpha) * l_task + cfg.beta * l_man
        parts = {"loss": total, "lm": l_lm, "task": l_task, "soft": l_soft, "manifold": l_man}
    return total, {k: v.detach() for k, v in parts.items()}


__all__ = [
    "IGNORE_INDEX",
    "armada_loss",
    "baseline_loss",
    "causal_lm_loss",
    "generative_loss",
    "manifold_loss",
    "soft_loss",
    "task_loss",
]
