"""ARMADA's losses against hand-computed values and against equivalent formulations (DESIGN §2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from armada_ray.config import LossConfig
from armada_ray.model.losses import (
    armada_loss,
    baseline_loss,
    causal_lm_loss,
    generative_loss,
    manifold_loss,
    soft_loss,
    task_loss,
)
from armada_ray.model.outputs import AlignerOutput, GenerativeOutput, StudentOutput

LN2, LN3 = math.log(2.0), math.log(3.0)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------------------------------- task / baseline


def test_task_loss_hand_computed():
    # softmax([0, ln3]) = [1/4, 3/4]: CE at class 1 = -ln(3/4) = 0.2876821; softmax([0, 0]) = [1/2, 1/2]: ln 2.
    s1, s2, y = t([0.0, LN3]), t([0.0, 0.0]), torch.tensor([1])
    assert task_loss(s1, s2, y, gamma=0.5).item() == pytest.approx(0.2876821 + 0.5 * 0.6931472, abs=1e-6)
    assert task_loss(s1, s2, y, gamma=0.0).item() == pytest.approx(0.2876821, abs=1e-6)
    assert baseline_loss(s1, y).item() == pytest.approx(0.2876821, abs=1e-6)
    out = StudentOutput(s1=s1, s2=s2, p_s=t([0.0]), pooled=t([0.0]))
    assert baseline_loss(out, y).item() == pytest.approx(0.2876821, abs=1e-6)


def test_task_loss_batch_mean_and_regression():
    # batch of two: CE(s1)= mean(-ln 3/4, -ln 1/4) = (0.2876821 + 1.3862944) / 2
    s1 = t([0.0, LN3], [0.0, LN3])
    s2 = t([0.0, 0.0], [0.0, 0.0])
    y = torch.tensor([1, 0])
    assert task_loss(s1, s2, y, gamma=1.0).item() == pytest.approx((0.2876821 + 1.3862944) / 2 + LN2, abs=1e-6)
    # regression: MSE([1,3],[2,2]) = 1, MSE([2,4],[2,2]) = 2
    r1, r2, yr = t([1.0], [3.0]), t([2.0], [4.0]), torch.tensor([2.0, 2.0])
    assert task_loss(r1, r2, yr, gamma=1.0, regression=True).item() == pytest.approx(3.0)
    assert task_loss(r1, r2, yr, gamma=0.5, regression=True).item() == pytest.approx(2.0)
    assert baseline_loss(r1, yr, regression=True).item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- soft


def test_soft_loss_mse_hand_computed():
    T = 2.0
    # t1/T = [0,0] -> [1/2, 1/2]; s1/T = [ln3, 0] -> [3/4, 1/4]; MSE = (1/16 + 1/16)/2 = 1/16
    t1, s1 = t([0.0, 0.0]), t([T * LN3, 0.0])
    # t2 -> [3/4, 1/4]; s2 -> [1/4, 3/4]; MSE = (1/4 + 1/4)/2 = 1/4
    t2, s2 = t([T * LN3, 0.0]), t([0.0, T * LN3])
    got = soft_loss(t1, t2, s1, s2, temperature=T, gamma=0.5)
    assert got.item() == pytest.approx(T**2 * (1 / 16 + 0.5 * 1 / 4), abs=1e-6)  # = 0.75
    assert soft_loss(t1, t1, s1, t1, temperature=T, gamma=1.0).item() == pytest.approx(4 * 1 / 16, abs=1e-6)


def test_soft_loss_kl_hand_computed():
    T = 2.0
    # KL([1/2,1/2] || [3/4,1/4]) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) = 0.1438410
    t1, s1 = t([0.0, 0.0]), t([T * LN3, 0.0])
    got = soft_loss(t1, s1, s1, s1, temperature=T, gamma=1.0, kind="kl")
    assert got.item() == pytest.approx(T**2 * 0.5 * math.log(4 / 3), abs=1e-6)


def test_soft_loss_matches_explicit_formulas():
    g = torch.Generator().manual_seed(0)
    t1, t2, s1, s2 = (torch.randn(6, 4, generator=g) for _ in range(4))
    T, gamma = 3.0, 0.7
    p = lambda x: torch.softmax(x / T, dim=-1)  # noqa: E731
    mse = T**2 * (((p(t1) - p(s1)) ** 2).mean() + gamma * ((p(t2) - p(s2)) ** 2).mean())
    assert soft_loss(t1, t2, s1, s2, T, gamma).item() == pytest.approx(mse.item(), rel=1e-6)
    kl_pair = lambda a, b: (p(a) * (p(a).log() - p(b).log())).sum(-1).mean()  # noqa: E731
    kl = T**2 * (kl_pair(t1, s1) + gamma * kl_pair(t2, s2))
    assert soft_loss(t1, t2, s1, s2, T, gamma, kind="kl").item() == pytest.approx(kl.item(), rel=1e-5)
    # the student matching the teacher exactly gives 0 for both kinds
    assert soft_loss(t1, t2, t1, t2, T, gamma).item() == pytest.approx(0.0, abs=1e-7)
    assert soft_loss(t1, t2, t1, t2, T, gamma, kind="kl").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="allowed"):
        soft_loss(t1, t2, s1, s2, T, gamma, kind="js")


def test_soft_loss_regression_is_raw_mse():
    t1, t2 = t([1.0], [2.0]), t([0.0], [0.0])
    s1, s2 = t([2.0], [2.0]), t([1.0], [1.0])
    # MSE(t1,s1) = (1 + 0)/2 = 0.5 ; MSE(t2,s2) = 1 ; no temperature
    assert soft_loss(t1, t2, s1, s2, temperature=5.0, gamma=2.0, regression=True).item() == pytest.approx(2.5)


def test_soft_loss_has_no_gradient_into_teacher():
    t1 = torch.randn(3, 2, requires_grad=True)
    s1 = torch.randn(3, 2, requires_grad=True)
    soft_loss(t1, t1, s1, s1, temperature=2.0).backward()
    assert t1.grad is None and s1.grad is not None


# ------------------------------------------------------------------------------------------- manifold


def test_manifold_cosine_hand_computed():
    p_t = t([1.0, 0.0], [1.0, 0.0])
    assert manifold_loss(p_t, t([0.0, 1.0], [0.0, 1.0]), "cosine").item() == pytest.approx(1.0)  # orthogonal
    assert manifold_loss(p_t, t([-1.0, 0.0], [-3.0, 0.0]), "cosine").item() == pytest.approx(2.0)  # opposite
    # batch means agree ([1,0]) although no single sample does: cosine/euclid 0, pointwise not
    p_s = t([1.0, 1.0], [1.0, -1.0])
    assert manifold_loss(p_t, p_s, "cosine").item() == pytest.approx(0.0, abs=1e-7)
    assert manifold_loss(p_t, p_s, "euclid").item() == pytest.approx(0.0, abs=1e-7)
    assert manifold_loss(p_t, p_s, "pointwise").item() == pytest.approx(0.5)  # (0 + 1 + 0 + 1) / 4
    # 45 degrees: 1 - cos(pi/4)
    assert manifold_loss(p_t, t([1.0, 1.0], [1.0, 1.0]), "cosine").item() == pytest.approx(1 - math.sqrt(0.5))


def test_manifold_euclid_and_pointwise_hand_computed():
    p_t = t([1.0, 0.0], [1.0, 0.0])  # mean [1, 0]
    p_s = t([3.0, 0.0], [1.0, 2.0])  # mean [2, 1]
    assert manifold_loss(p_t, p_s, "euclid").item() == pytest.approx((1 + 1) / 2)
    assert manifold_loss(p_t, p_s, "pointwise").item() == pytest.approx((4 + 0 + 0 + 4) / 4)


def test_manifold_equivalent_formulations():
    g = torch.Generator().manual_seed(1)
    p_t, p_s = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    mt, ms = p_t.mean(0), p_s.mean(0)
    cos = 1 - (mt @ ms) / (mt.norm() * ms.norm())
    assert manifold_loss(p_t, p_s, "cosine").item() == pytest.approx(cos.item(), rel=1e-5)
    assert manifold_loss(p_t, p_s, "euclid").item() == pytest.approx(((mt - ms) ** 2).mean().item(), rel=1e-6)
    # with one sample, euclid and pointwise are the same quantity
    assert manifold_loss(p_t[:1], p_s[:1], "euclid").item() == pytest.approx(
        manifold_loss(p_t[:1], p_s[:1], "pointwise").item(), rel=1e-6
    )
    # cosine is scale invariant, euclid is not
    assert manifold_loss(p_t, 3 * p_s, "cosine").item() == pytest.approx(cos.item(), rel=1e-5)
    with pytest.raises(ValueError, match="dimension"):
        manifold_loss(p_t, p_s[:, :3])


# ------------------------------------------------------------------------------------------- masks and guards


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, y, m: task_loss(s, s, y, mask=m),
        lambda s, y, m: baseline_loss(s, y, mask=m),
        lambda s, y, m: soft_loss(s.detach() + 1, s.detach(), s, s, mask=m),
        lambda s, y, m: manifold_loss(s.detach() + 1, s, mask=m),
    ],
)
def test_empty_and_masked_batches_give_zero_with_a_graph(fn):
    s = torch.randn(3, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    zero = fn(s, y, torch.zeros(3, dtype=torch.bool))
    assert zero.dim() == 0 and zero.item() == 0.0
    zero.backward()  # connected to the graph: backward runs, gradient is 0
    assert s.grad is not None and float(s.grad.abs().sum()) == 0.0
    empty = torch.zeros(0, 4, requires_grad=True)
    assert fn(empty, y[:0], None).item() == 0.0


def test_mask_equals_subset():
    g = torch.Generator().manual_seed(2)
    s1, s2, t1, t2 = (torch.randn(5, 3, generator=g) for _ in range(4))
    p_t, p_s = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 2, 1, 1, 0])
    m = torch.tensor([True, False, True, True, False])
    assert task_loss(s1, s2, y, mask=m).item() == pytest.approx(task_loss(s1[m], s2[m], y[m]).item())
    assert soft_loss(t1, t2, s1, s2, mask=m).item() == pytest.approx(soft_loss(t1[m], t2[m], s1[m], s2[m]).item())
    for kind in ("cosine", "euclid", "pointwise"):
        assert manifold_loss(p_t, p_s, kind, mask=m).item() == pytest.approx(
            manifold_loss(p_t[m], p_s[m], kind).item()
        )


# ------------------------------------------------------------------------------------------- armada_loss


def test_armada_loss_combines_components_and_detaches_aligner():
    g = torch.Generator().manual_seed(3)
    s1, s2 = (torch.randn(4, 3, generator=g).requires_grad_() for _ in range(2))
    p_s = torch.randn(4, 5, generator=g).requires_grad_()
    t1, t2 = (torch.randn(4, 3, generator=g).requires_grad_() for _ in range(2))
    p_t = torch.randn(4, 5, generator=g).requires_grad_()
    y = torch.tensor([0, 1, 2, 1])
    cfg = LossConfig(alpha=0.3, beta=2.0, gamma=0.5, temperature=4.0, manifold="euclid", soft="mse")
    student = StudentOutput(s1=s1, s2=s2, p_s=p_s, pooled=torch.zeros(4, 8))
    total, parts = armada_loss(student, AlignerOutput(t1, t2, p_t), y, cfg)
    want_task = F.cross_entropy(s1, y) + 0.5 * F.cross_entropy(s2, y)
    want_soft = soft_loss(t1, t2, s1, s2, temperature=4.0, gamma=0.5)
    want_man = ((p_t.mean(0) - p_s.mean(0)) ** 2).mean()
    want = 0.3 * want_soft + 0.7 * want_task + 2.0 * want_man
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert parts["task"].item() == pytest.approx(want_task.item(), rel=1e-6)
    assert parts["soft"].item() == pytest.approx(want_soft.item(), rel=1e-6)
    assert parts["manifold"].item() == pytest.approx(want_man.item(), rel=1e-6)
    assert all(not v.requires_grad for v in parts.values())
    total.backward()
    assert t1.grad is None and t2.grad is None and p_t.grad is None
    assert s1.grad is not None and s2.grad is not None and p_s.grad is not None


def test_armada_loss_baseline_mode_and_alpha_extremes():
    s1, s2 = t([0.0, LN3]), t([0.0, 0.0])
    y = torch.tensor([1])
    student = StudentOutput(s1=s1, s2=s2, p_s=t([1.0, 0.0]), pooled=t([0.0]))
    total, parts = armada_loss(student, None, y, LossConfig(mode="baseline"))
    assert total.item() == pytest.approx(0.2876821, abs=1e-6) and set(parts) == {"loss", "task"}
    aligner = AlignerOutput(t([0.0, 0.0]), t([0.0, 0.0]), t([0.0, 1.0]))
    # alpha=0, beta=0: the task loss alone; alpha=1, beta=0: the soft loss alone
    total, _ = armada_loss(student, aligner, y, LossConfig(alpha=0.0, beta=0.0, gamma=1.0))
    assert total.item() == pytest.approx(0.2876821 + LN2, abs=1e-6)
    total, _ = armada_loss(student, aligner, y, LossConfig(alpha=1.0, beta=0.0, gamma=1.0, temperature=1.0))
    assert total.item() == pytest.approx(((0.25 - 0.5) ** 2 + (0.75 - 0.5) ** 2) / 2, abs=1e-6)
    # beta=1 adds 1 - cos([1,0],[0,1]) = 1
    total2, _ = armada_loss(student, aligner, y, LossConfig(alpha=1.0, beta=1.0, gamma=1.0, temperature=1.0))
    assert total2.item() == pytest.approx(total.item() + 1.0, abs=1e-6)
    with pytest.raises(ValueError, match="aligner"):
        armada_loss(student, None, y, LossConfig())


def test_armada_loss_regression():
    student = StudentOutput(s1=t([1.0], [3.0]), s2=t([2.0], [4.0]), p_s=t([1.0], [1.0]), pooled=t([0.0], [0.0]))
    aligner = AlignerOutput(t([2.0], [2.0]), t([2.0], [2.0]), t([1.0], [1.0]))
    y = torch.tensor([2.0, 2.0])
    total, parts = armada_loss(student, aligner, y, LossConfig(alpha=0.5, beta=1.0, gamma=1.0), regression=True)
    # task = 1 + 2 = 3; soft = MSE(raw) = 1 + 2 = 3; manifold = 0
    assert parts["task"].item() == pytest.approx(3.0) and parts["soft"].item() == pytest.approx(3.0)
    assert total.item() == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------- causal LM


def test_causal_lm_loss_hand_computed_and_shift_equivalence():
    V = 4
    logits = torch.zeros(2, 5, V)  # uniform: CE = ln 4 at every supervised position
    labels = torch.tensor([[-100, -100, 1, 2, -100], [-100, 3, 0, -100, -100]])
    assert causal_lm_loss(logits, labels).item() == pytest.approx(math.log(4))
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, V, generator=g)
    shifted, keep = labels[:, 1:], labels[:, 1:] != -100
    aligned = causal_lm_loss(logits[:, :-1][keep], shifted[keep])
    explicit = -torch.log_softmax(logits[:, :-1], -1).gather(-1, shifted.clamp(min=0)[..., None])[..., 0][keep].mean()
    assert causal_lm_loss(logits, labels).item() == pytest.approx(aligned.item(), rel=1e-6)
    assert aligned.item() == pytest.approx(explicit.item(), rel=1e-6)
    x = torch.randn(2, 5, V, requires_grad=True)
    zero = causal_lm_loss(x, torch.full((2, 5), -100))
    assert zero.item() == 0.0
    zero.backward()


def test_generative_loss_open_and_finite_answer_sets():
    g = torch.Generator().manual_seed(5)
    logits, labels = torch.randn(3, 6, generator=g), torch.tensor([1, 4, 2])
    p_s, p_t = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    lm = causal_lm_loss(logits, labels)
    man = manifold_loss(p_t, p_s)
    cfg = LossConfig(alpha=0.4, beta=2.0, gamma=0.5, temperature=2.0)
    open_out = GenerativeOutput(logits, labels, None, None, p_s, torch.zeros(2, 3))
    total, parts = generative_loss(open_out, AlignerOutput(None, None, p_t), cfg)
    assert total.item() == pytest.approx(lm.item() + 2.0 * man.item(), rel=1e-6)
    assert "soft" not in parts
    s1, s2, t1, t2 = (torch.randn(2, 3, generator=g) for _ in range(4))
    y = torch.tensor([0, 2])
    fin = GenerativeOutput(logits, labels, s1, s2, p_s, torch.zeros(2, 3))
    total, parts = generative_loss(fin, AlignerOutput(t1, t2, p_t), cfg, y=y)
    want = 0.4 * soft_loss(t1, t2, s1, s2, 2.0, 0.5) + 0.6 * (lm + task_loss(s1, s2, y, 0.5)) + 2.0 * man
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    base, parts = generative_loss(fin, None, LossConfig(mode="baseline"), y=y)
    assert base.item() == pytest.approx(lm.item(), rel=1e-6)
