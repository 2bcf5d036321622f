"""The teacher-side aligner of ARMADA (DESIGN §2).

It maps a fixed teacher vector ``x_t`` (dimension D) into a task-aware space, supervised by the task labels:

- branch A: ``Linear(D→d) → ReLU → Dropout → Linear(d→d) → ReLU → Dropout → Linear(d→C)`` gives ``t1``;
- branch B: ``p_t`` = orthogonal ``Linear(D→P, bias=False)`` (the Cayley map of
  ``torch.nn.utils.parametrizations.orthogonal``, computed in float32, see :func:`orthogonal.orthogonal_linear`:
  rows orthonormal when P ≤ D, columns when P > D), then
  ``Dropout → Linear(P→C)`` gives ``t2``.

Keep the aligner in float32 (it is small): the orthogonal parametrization solves an n×n system each forward.

Loss: ``CE(t1,y) + γ·CE(t2,y)``; MSE on the single output for regression (``num_classes=1``).

``num_classes=0`` builds branch B's projection only (``t1``/``t2`` are None): the mode for generative tasks with
an open answer set, where there are no labels to supervise it (see ``students.GenerativeStudent``).

The aligner is its own module, trained and checkpointed beside the student (never registered inside it), and
exported as ``armada_aligner.safetensors`` + ``armada_aligner.json`` next to the student's export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from armada_ray.model.losses import task_loss
from armada_ray.model.orthogonal import orthogonal_linear
from armada_ray.model.outputs import AlignerOutput

ALIGNER_WEIGHTS = "armada_aligner.safetensors"
ALIGNER_META = "armada_aligner.json"


class TeacherAligner(nn.Module):
    def __init__(
        self,
        teacher_dim: int,
        num_classes: int,
        hidden: int = 768,
        proj_dim: int = 1024,
        dropout: float = 0.1,
        init: str = "torch",
    ):
        super().__init__()
        if teacher_dim < 1 or hidden < 1 or proj_dim < 1 or num_classes < 0:
            raise ValueError(
                f"TeacherAligner: need teacher_dim, hidden, proj_dim >= 1 and num_classes >= 0 "
                f"(got {teacher_dim}, {hidden}, {proj_dim}, {num_classes})"
            )
        self.teacher_dim, self.num_classes, self.hidden, self.proj_dim = teacher_dim, num_classes, hidden, proj_dim
        self.dropout_p = dropout
        self.branch_a: nn.Module | None = None
        self.head_t2: nn.Module | None = None
        if num_classes > 0:
            self.branch_a = nn.Sequential(
                nn.Linear(teacher_dim, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
            self.head_t2 = nn.Sequential(nn.Dropout(dropout), nn.Linear(proj_dim, num_classes))
        self.proj = orthogonal_linear(teacher_dim, proj_dim)
        # per-dimension standardisation of x_t (train-split statistics, set by set_standardization); buffers, so
        # they travel with the state dict into checkpoints and the export and apply at eval time too
        self.register_buffer("input_mean", torch.zeros(teacher_dim))
        self.register_buffer("input_std", torch.ones(teacher_dim))
        if init not in ("torch", "normal"):
            raise ValueError(f"TeacherAligner: init={init!r}; allowed: torch, normal")
        self.init = init
        if init == "normal":  # the reference code's initialisation of its linear layers
            for m in self.modules():
                if isinstance(m, nn.Linear) and not parametrize.is_parametrized(m):
                    nn.init.normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

    @torch.no_grad()
    def set_standardization(self, vectors: torch.Tensor, eps: float = 1e-6) -> None:
        """Standardise inputs with the per-dimension mean/std of ``vectors`` (the train split's teacher vectors).

        Teacher vectors are often tiny and anisotropic (an L2-normalised 384-d sentence vector has entries of
        about ±0.05; SD latents have per-channel offsets): unscaled, the aligner learns slowly from them.
        """
        v = torch.as_tensor(vectors, dtype=torch.float32)
        self.input_mean.copy_(v.mean(0).to(self.input_mean))
        self.input_std.copy_(v.std(0, unbiased=False).clamp_min(eps).to(self.input_std))

    @property
    def has_heads(self) -> bool:
        return self.num_classes > 0

    def forward(self, x: torch.Tensor) -> AlignerOutput:
        x = x.to(self.proj.parametrizations.weight.original.dtype)
        x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        p_t = self.proj(x)
        if self.branch_a is None or self.head_t2 is None:
            return AlignerOutput(None, None, p_t)
        return AlignerOutput(self.branch_a(x), self.head_t2(p_t), p_t)

    def meta(self) -> dict:
        return {
            "teacher_dim": self.teacher_dim,
            "num_classes": self.num_classes,
            "hidden": self.hidden,
            "proj_dim": self.proj_dim,
            "dropout": self.dropout_p,
            "init": self.init,
        }


def build_aligner(aligner_cfg, teacher_dim: int, num_classes: int) -> TeacherAligner:
    """A :class:`TeacherAligner` from an ``AlignerConfig``; frozen at random init when ``freeze_random``."""
    aligner = TeacherAligner(
        teacher_dim, num_classes, hidden=aligner_cfg.hidden, proj_dim=aligner_cfg.proj_dim, dropout=aligner_cfg.dropout,
        init=aligner_cfg.init,
    )
    if aligner_cfg.freeze_random:
        freeze(aligner)
    return aligner


def freeze(module: nn.Module) -> nn.Module:
    """Make every parameter non-trainable (the 'random frozen aligner' ablation) and switch to eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def aligner_loss(out: AlignerOutput, y: torch.Tensor, gamma: float = 1.0, regression: bool = False) -> torch.Tensor:
    """``CE(t1,y) + γ·CE(t2,y)``, or ``MSE(t1,y) + γ·MSE(t2,y)`` for regression. 0 for an empty batch."""
    if out.t1 is None or out.t2 is None:
        raise ValueError("aligner_loss: this aligner has no classification heads (num_classes=0)")
    return task_loss(out.t1, out.t2, y, gamma=gamma, regression=regression)


def save_aligner(aligner: TeacherAligner, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in aligner.state_dict().items()}
    save_file(state, str(out / ALIGNER_WEIGHTS))
    (out / ALIGNER_META).write_text(json.dumps(aligner.meta(), indent=2))
    return out


def load_aligner(folder: str | Path, map_location: str | torch.device = "cpu") -> TeacherAligner:
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / ALIGNER_META).read_text())
    aligner = TeacherAligner(**meta)
    aligner.load_state_dict(load_file(str(folder / ALIGNER_WEIGHTS), device=str(map_location)))
    return aligner.eval()


__all__ = [
    "TeacherAligner",
    "aligner_loss",
    "build_aligner",
    "freeze",
    "load_aligner",
    "save_aligner",
]

