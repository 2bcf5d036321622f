"""model/students.py and model/build.py: encoder, decoder and DeBERTa-v2 students, LoRA, exports, the
generative student.

Real offline models only (ASSETS.md): all-MiniLM-L6-v2 from its package, and tiny-llama (random weights, real
SentencePiece tokenizer) built once into the model cache.
"""

from __future__ import annotations

import pytest
import torch
from _students import TEXTS, perturb_lora, student_cfg

from armada_ray.config import ConfigError
from armada_ray.model import hub
from armada_ray.model.build import build_student, load_student_export, trainable_parameters
from armada_ray.model.losses import causal_lm_loss, task_loss
from armada_ray.model.orthogonal import orthogonality_error
from armada_ray.model.students import ArmadaStudent, GenerativeStudent


@pytest.fixture(scope="module")
def tiny_full():
    torch.manual_seed(0)
    student, tok = build_student(student_cfg("tiny-llama", lora=False), num_classes=3, proj_dim=16)
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
    student, tok = build_student(student_cfg("minilm", lora=False), num_classes=2, proj_dim=8)
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
    cls_student, _ = build_student(student_cfg("minilm", lora=False, pooling="cls"), num_classes=2, proj_dim=8)
    with torch.no_grad():
        torch.testing.assert_close(cls_student.eval()(**enc).pooled, raw.last_hidden_state[:, 0])
    with pytest.raises(ConfigError, match="decoder student has no"):
        build_student(student_cfg("tiny-llama", lora=False, pooling="cls"), num_classes=2, proj_dim=8)


def test_encoder_freeze_layers_below_and_lora_targets():
    student, _ = build_student(student_cfg("minilm", lora=False, freeze_layers_below=4), num_classes=2, proj_dim=8)
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert any(n.startswith("backbone.embeddings.") for n in frozen)
    assert all(not n.startswith("backbone.embeddings.") or n in frozen for n, _ in student.named_parameters())
    for i in range(6):
        layer = [p.requires_grad for n, p in student.named_parameters() if f"encoder.layer.{i}." in n]
        assert layer and all(layer) == (i >= 4) and any(layer) == (i >= 4)
    assert all(p.requires_grad for n, p in student.named_parameters() if n.startswith(("heads.", "backbone.pooler")))
    with pytest.raises(ConfigError, match="query"):  # q_proj/v_proj are LLaMA names: say what BERT calls them
        build_student(student_cfg("minilm", lora=True), num_classes=2, proj_dim=8)
    lora, _ = build_student(
        student_cfg("minilm", lora=True, lora_kw={"target_modules": ["query", "value"], "layers_to_transform": [5]}),
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
    lora, tok = build_student(student_cfg("tiny-llama", lora=True, lora_kw={"r": 4}), num_classes=3, proj_dim=16)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("heads.") for n in names)
    lora_names = [n for n in names if "lora_" in n]
    assert len(lora_names) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    assert {n.split("layers.")[1].split(".")[0] for n in lora_names} == {"0", "1"}
    top, _ = build_student(
        student_cfg("tiny-llama", lora=True, lora_kw={"r": 4, "layers_to_transform": [1]}), num_classes=3, proj_dim=16
    )
    top_names = [n for n, p in top.named_parameters() if p.requires_grad and "lora_" in n]
    assert len(top_names) == 4 and all("layers.1." in n for n in top_names)
    assert all(p.requires_grad for n, p in top.named_parameters() if n.startswith("heads."))
    with pytest.raises(ConfigError, match="layers 0..1"):
        build_student(student_cfg("tiny-llama", lora=True, lora_kw={"layers_to_transform": [2]}), 3, 16)
    # a training step with gradient checkpointing reaches the adapters and the heads
    ckpt, _ = build_student(
        student_cfg("tiny-llama", lora=True, gradient_checkpointing=True, orthogonal_projection=True, lora_kw={"r": 4}),
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
        student_cfg("tiny-llama", lora=True, orthogonal_projection=True, lora_kw={"r": 4}), num_classes=3, proj_dim=16
    )
    perturb_lora(student)
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
    student, tok = build_student(student_cfg("minilm", lora=False), num_classes=2, proj_dim=8)
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
    student, tok = build_student(student_cfg(tiny_deberta, lora=False), num_classes=2, proj_dim=8)
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
    cls_student, _ = build_student(student_cfg(tiny_deberta, lora=False, pooling="cls"), num_classes=2, proj_dim=8)
    assert cls_student.context_pooler is None
    with torch.no_grad():
        cls_out = cls_student.eval()(**enc)
        torch.testing.assert_close(cls_out.pooled, cls_student.backbone(**enc).last_hidden_state[:, 0])
    with pytest.raises(ConfigError, match="decoder student has no"):
        build_student(student_cfg("tiny-llama", lora=False, pooling="context"), num_classes=2, proj_dim=8)


def test_deberta_v2_context_pooler_trains_under_lora(tiny_deberta):
    student, tok = build_student(
        student_cfg(tiny_deberta, lora=True, lora_kw={"r": 4, "target_modules": ["query_proj", "value_proj"]}),
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
    student, tok = build_student(student_cfg(tiny_deberta, lora=lora, lora_kw=lora_kw), num_classes=2, proj_dim=8)
    _perturb_pooler(student)
    if lora:
        perturb_lora(student)
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
        student_cfg("tiny-llama", lora=True, lora_kw={"r": 4}), num_classes=2, proj_dim=8, task_kind="generative"
    )
    assert isinstance(student, GenerativeStudent)
    assert type(student.backbone.get_base_model()).__name__ == "LlamaForCausalLM"
    perturb_lora(student)
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
        student_cfg("tiny-llama", lora=True, lora_kw={"r": 4}), num_classes=0, proj_dim=8, task_kind="reasoning"
    )
    assert student.heads.s1 is None
    perturb_lora(student)
    side = tok.padding_side
    texts = student.generate(["Hello there", "The capital of France is", "x"], max_new_tokens=4, batch_size=2)
    assert len(texts) == 3 and all(isinstance(x, str) for x in texts)
    assert tok.padding_side == side
    out_dir = student.save_pretrained_parts(tmp_path, merge=True)
    back, _ = load_student_export(out_dir)
    assert isinstance(back, GenerativeStudent) and not back.is_lora
    assert back.generate(["Hello there", "The capital of France is", "x"], max_new_tokens=4) == texts
    with pytest.raises(ConfigError, match="decoder"):
        build_student(student_cfg("minilm", lora=False), num_classes=0, proj_dim=8, task_kind="generative")
    with pytest.raises(ConfigError, match="num_classes=1"):
        build_student(student_cfg("minilm", lora=False), num_classes=2, proj_dim=8, task_kind="regression")
