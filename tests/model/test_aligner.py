"""model/aligner.py: the teacher aligner's shapes, branches, loss, freezing and save/load."""

from __future__ import annotations

import pytest
import torch

from armada_ray.model.aligner import TeacherAligner, aligner_loss, build_aligner, load_aligner, save_aligner
from armada_ray.model.losses import task_loss
from armada_ray.model.orthogonal import orthogonality_error


@pytest.mark.parametrize("proj_dim", [8, 12, 20])
def test_aligner_shapes_and_orthogonal_projection(proj_dim):
    torch.manual_seed(0)
    aligner = TeacherAligner(teacher_dim=12, num_classes=3, hidden=16, proj_dim=proj_dim, dropout=0.1)
    out = aligner(torch.randn(5, 12))
    assert out.t1.shape == (5, 3) and out.t2.shape == (5, 3) and out.p_t.shape == (5, proj_dim)
    w = aligner.proj.weight
    assert w.shape == (proj_dim, 12)
    assert orthogonality_error(w) < 1e-5  # W Wᵀ = I for P <= D (Wᵀ W = I for P > D)
    if proj_dim <= 12:
        assert torch.allclose(w @ w.T, torch.eye(proj_dim), atol=1e-5)
    # stays orthogonal through training steps, and the loss is CE(t1) + γ·CE(t2)
    opt = torch.optim.AdamW(aligner.parameters(), lr=1e-2)
    y = torch.tensor([0, 1, 2, 1, 0])
    for _ in range(3):
        opt.zero_grad()
        aligner_loss(aligner(torch.randn(5, 12)), y, gamma=0.5).backward()
        opt.step()
    assert orthogonality_error(aligner.proj.weight) < 1e-4
    aligner.eval()
    x = torch.randn(5, 12)
    out = aligner(x)
    assert torch.equal(out.p_t, x @ aligner.proj.weight.T)  # no bias, no dropout on p_t
    assert aligner_loss(out, y, gamma=0.5).item() == pytest.approx(task_loss(out.t1, out.t2, y, 0.5).item())


def test_aligner_branch_structure_regression_and_projection_only():
    a = TeacherAligner(teacher_dim=6, num_classes=1, hidden=8, proj_dim=4)
    kinds = [type(m).__name__ for m in a.branch_a]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [type(m).__name__ for m in a.head_t2] == ["Dropout", "Linear"]
    assert a.proj.bias is None
    out = a(torch.randn(3, 6))
    assert out.t1.shape == (3, 1)
    loss = aligner_loss(out, torch.tensor([0.5, 1.0, -1.0]), regression=True)
    assert loss.dim() == 0 and loss.item() > 0
    p_only = TeacherAligner(teacher_dim=6, num_classes=0, proj_dim=4)
    o = p_only(torch.randn(3, 6))
    assert o.t1 is None and o.t2 is None and o.p_t.shape == (3, 4)
    with pytest.raises(ValueError, match="no classification heads"):
        aligner_loss(o, torch.tensor([0, 1, 0]))


def test_aligner_freeze_random_and_save_load(tmp_path):
    from armada_ray.config import AlignerConfig

    frozen = build_aligner(AlignerConfig(hidden=8, proj_dim=4, freeze_random=True), teacher_dim=6, num_classes=2)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    trained = build_aligner(AlignerConfig(hidden=8, proj_dim=4), teacher_dim=6, num_classes=2).eval()
    save_aligner(trained, tmp_path)
    back = load_aligner(tmp_path)
    x = torch.randn(3, 6)
    a, b = trained(x), back(x)
    assert torch.equal(a.t1, b.t1) and torch.equal(a.t2, b.t2) and torch.equal(a.p_t, b.p_t)
