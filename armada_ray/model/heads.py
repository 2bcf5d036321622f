"""ARMADA's student heads on the pooled vector ``h_s`` (hidden H) (DESIGN §2).

``s1 = Linear(H→C)``, ``p_s = Linear(H→P, bias=False)`` (orthogonal when ``student.orthogonal_projection``),
``s2 = Linear(P→C)``. The heads, and the context pooler when there is one, live on the student outside the
(peft-wrapped) backbone: they are always trainable, also under LoRA.
"""

from __future__ import annotations

import torch
from torch import nn

from armada_ray.model.orthogonal import orthogonal_linear


class StudentHeads(nn.Module):
    """``s1 = Linear(H→C)``, ``p_s = Linear(H→P, bias=False)`` (optionally orthogonal), ``s2 = Linear(P→C)``.

    Built in float32 whatever the backbone's dtype; the pooled vector is cast to the heads' dtype. With
    ``num_classes=0`` only ``p_s`` exists (generative tasks with open answers).
    """

    def __init__(self, hidden_size: int, num_classes: int, proj_dim: int, orthogonal_projection: bool = False,
                 dropout: float = 0.0, init: str = "torch"):
        super().__init__()
        self.hidden_size, self.num_classes, self.proj_dim = hidden_size, num_classes, proj_dim
        self.orthogonal_projection = orthogonal_projection
        self.dropout = nn.Dropout(dropout)  # on the pooled vector (the reference code: 0.1); a no-op in eval
        self.s1 = nn.Linear(hidden_size, num_classes) if num_classes > 0 else None
        if orthogonal_projection:
            self.p_s = orthogonal_linear(hidden_size, proj_dim)
        else:
            self.p_s = nn.Linear(hidden_size, proj_dim, bias=False)
        self.s2 = nn.Linear(proj_dim, num_classes) if num_classes > 0 else None
        if init not in ("torch", "normal"):
            raise ValueError(f"StudentHeads: init={init!r}; allowed: torch, normal")
        if init == "normal":  # the reference code's (Hugging Face's) initialisation of classifier heads
            for m in (self.s1, self.s2, None if orthogonal_projection else self.p_s):
                if m is not None:
                    nn.init.normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        h = self.dropout(h.to(self.dtype))
        p_s = self.p_s(h)
        if self.s1 is None or self.s2 is None:
            return None, None, p_s
        return self.s1(h), self.s2(p_s), p_s


__all__ = ["StudentHeads"]
