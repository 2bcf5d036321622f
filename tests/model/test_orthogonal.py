"""model/orthogonal.py: the Cayley-parametrised orthogonal projection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from armada_ray.model.orthogonal import orthogonal_linear, orthogonality_error


@pytest.mark.parametrize("shape", [(8, 12), (12, 12), (20, 12)])
def test_cayley_projection_matches_torch_and_runs_in_bf16(shape):
    """Our Cayley parametrization is torch's orthogonal(cayley) map, and it also works on bf16 weights
    (DeepSpeed's bf16 mode casts the student's p_s to bf16; torch's own map has no bf16 LU solve)."""
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    ours = orthogonal_linear(shape[1], shape[0])
    ref = parametrizations.orthogonal(nn.Linear(shape[1], shape[0], bias=False), orthogonal_map="cayley")
    with torch.no_grad():
        ours.parametrizations.weight.original.normal_(0, 0.3)
        ref.parametrizations.weight.original.copy_(ours.parametrizations.weight.original)
        ref.parametrizations.weight[0].base.copy_(ours.parametrizations.weight[0].base)
    torch.testing.assert_close(ours.weight, ref.weight, atol=1e-5, rtol=1e-5)
    assert set(ours.state_dict()) == set(ref.state_dict())  # same checkpoint keys as torch's

    low = ours.bfloat16()
    x = torch.randn(4, shape[1], dtype=torch.bfloat16, requires_grad=True)
    y = low(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and low.parametrizations.weight.original.grad is not None
    assert orthogonality_error(low.weight.float()) < 3e-2  # bf16 storage of the base: ~1e-2 error
