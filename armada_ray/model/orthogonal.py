"""The orthogonal parametrisation shared by the aligner's ``p_t`` and the student's optional ``p_s``.

``orthogonal_linear`` builds ``Linear(in→out, bias=False)`` constrained to orthonormal rows (or columns) with the
Cayley map (:class:`CayleyOrthogonal`), computed in float32 whatever the stored dtype;
``orthogonality_error`` measures how far a weight is from that constraint.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class CayleyOrthogonal(nn.Module):
    """Parametrization ``W = B·cayley(A)[:, :k]`` of a matrix with orthonormal rows or columns.

    The map and the state (a ``base`` buffer next to the ``original`` parameter) are those of
    ``torch.nn.utils.parametrizations.orthogonal(..., orthogonal_map="cayley")``; we write it out because
    torch's computes in the stored dtype, and the Cayley map's LU solve has no bf16/fp16 kernel
    (``"lu_cpu" not implemented for 'BFloat16'``; CUDA refuses low precision too), while DeepSpeed's bf16 mode
    casts every parameter and buffer of the student to bf16. Here the map runs in float32 and the result is
    returned in the stored dtype.
    """

    base: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("base", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        transposed = x.shape[-2] < x.shape[-1]
        if transposed:
            x = x.mT
        n, k = x.shape[-2:]
        x = x.tril()
        if n != k:  # embed the tall matrix in a square one: only n·k − k(k−1)/2 entries are free
            x = torch.cat([x, x.new_zeros(n, n - k)], dim=-1)
        a = x - x.mT  # skew-symmetric
        eye = torch.eye(n, device=x.device)
        q = torch.linalg.solve(eye - 0.5 * a, eye + 0.5 * a)[..., :k]
        if self.base is not None:
            q = self.base.float() @ q
        return (q.mT if transposed else q).to(dtype)

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Store the orthogonalised ``w`` (completed to n×n) as the base; the free parameter starts at 0."""
        q = w.mT if w.shape[-2] < w.shape[-1] else w
        n, k = q.shape[-2:]
        if n != k:
            q = torch.cat([q, torch.randn(n, n - k, dtype=q.dtype, device=q.device)], dim=-1)
        qq, r = torch.linalg.qr(q.float())
        self.base = (qq * r.diagonal().sign()).to(w.dtype)
        return torch.zeros_like(w)


def orthogonal_linear(in_features: int, out_features: int) -> nn.Module:
    """``Linear(in→out, bias=False)`` constrained to orthonormal rows (or columns when out > in).

    Uses the Cayley map (:class:`CayleyOrthogonal`). torch's default for a non-square weight, the Householder
    map, reads the sign of the stored diagonal through ``.int()``: AdamW's decoupled weight decay turns -1 into
    -0.9999, which truncates to 0, and the weight silently collapses to zero after the first step. The Cayley
    (and matrix-exp) maps ignore the diagonal, so weight decay is harmless; Cayley was also the fastest here
    (about 0.14 s for a 1024×1024 forward+backward on 2 CPU cores against 2 s for matrix_exp and 13 s for
    Householder).
    """
    linear = nn.Linear(in_features, out_features, bias=False)
    parametrize.register_parametrization(linear, "weight", CayleyOrthogonal(), unsafe=True)
    return linear


def orthogonality_error(weight: torch.Tensor) -> float:
    """max |W Wᵀ − I| (rows orthonormal) for P ≤ D, max |Wᵀ W − I| otherwise."""
    w = weight.detach().float()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return float((gram - torch.eye(gram.shape[0])).abs().max())


__all__ = ["CayleyOrthogonal", "orthogonal_linear", "orthogonality_error"]
