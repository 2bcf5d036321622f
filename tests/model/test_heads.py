"""model/heads.py: the student heads."""

from __future__ import annotations

import torch

from armada_ray.model.heads import StudentHeads


def test_student_heads_dropout_and_reference_init():
    """The reference code's heads: dropout 0.1 on the pooled vector, normal(0, 0.02) init (settings)."""
    torch.manual_seed(0)
    heads = StudentHeads(512, 4, 16, dropout=0.1, init="normal")
    assert abs(float(heads.s1.weight.detach().std()) - 0.02) < 0.003 and float(heads.s1.bias.detach().abs().sum()) == 0
    h = torch.ones(64, 512)
    heads.train()
    assert not torch.equal(heads(h)[0], heads(h)[0])  # dropout is active in training
    heads.eval()
    assert torch.equal(heads(h)[0], heads(h)[0])
