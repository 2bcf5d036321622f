"""Student wrappers: a transformers backbone, a pooled vector ``h_s`` and ARMADA's heads (DESIGN §2).

Classification / regression (:class:`ArmadaStudent`)
    Encoders are loaded with ``AutoModel``; decoders as the BASE model (``AutoModel``: no LM head, which would
    cost a vocabulary-sized matmul per position for nothing). The backbone's hidden states are pooled into
    ``h_s`` (see :mod:`armada_ray.model.pooling`) and fed to the heads (:mod:`armada_ray.model.heads`).

Generative tasks (:class:`GenerativeStudent`): see its docstring for the loss and the aligner's supervision.

Export (:meth:`ArmadaStudent.save_pretrained_parts`, read back by :func:`build.load_student_export`): the folder is
a Hugging Face model folder (safetensors; LoRA merged with ``merge_and_unload``, or the peft adapter folder when
``merge=False``) plus ``armada_heads.safetensors`` (the heads, and the context pooler's weights under
``context_pooler.``) and ``armada_student.json``; the tokenizer is saved beside.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from armada_ray.model import hub
from armada_ray.model.heads import StudentHeads
from armada_ray.model.outputs import GenerativeOutput, StudentOutput
from armada_ray.model.pooling import build_context_pooler, pool_hidden, position_ids_from_mask, resolve_pooling

HEADS_FILE = "armada_heads.safetensors"
META_FILE = "armada_student.json"
POOLER_PREFIX = "context_pooler."  # the context pooler's keys in HEADS_FILE (its attribute name on the student)
EXPORT_FORMAT = 1


def _is_peft(module: nn.Module) -> bool:
    try:  # peft (and the transformers it imports) loads when a model is built, not at import time
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, PeftModel)


def _unwrap(backbone: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return backbone.get_base_model() if _is_peft(backbone) else backbone


class _StudentBase(nn.Module):
    generative = False

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        proj_dim: int,
        orthogonal_projection: bool = False,
        base_model: str | None = None,
        revision: str | None = None,
        padding_side: str = "right",
        task_kind: str = "classification",
        max_length: int | None = None,
        head_dropout: float = 0.0,
        head_init: str = "torch",
    ):
        super().__init__()
        self.backbone = backbone
        config = _unwrap(backbone).config
        self.hidden_size = int(config.hidden_size)
        self.num_classes, self.proj_dim = num_classes, proj_dim
        self.heads = StudentHeads(self.hidden_size, num_classes, proj_dim, orthogonal_projection,
                                  dropout=head_dropout, init=head_init)
        self.base_model_name = base_model or getattr(config, "name_or_path", None)
        self.revision = revision
        self.padding_side = padding_side
        self.task_kind = task_kind
        self.max_length = max_length
        self.tokenizer: Any = None  # set by build_student / load_student_export (not a module, not saved in state)

    @property
    def is_lora(self) -> bool:
        return _is_peft(self.backbone)

    @property
    def config(self):
        return _unwrap(self.backbone).config

    def _meta(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "generative": self.generative,
            "task_kind": self.task_kind,
            "num_classes": self.num_classes,
            "proj_dim": self.proj_dim,
            "hidden_size": self.hidden_size,
            "orthogonal_projection": self.heads.orthogonal_projection,
            "base_model": self.base_model_name,
            "base_model_path": getattr(self.config, "_name_or_path", None),
            "revision": self.revision,
            "padding_side": self.padding_side,
            "max_length": self.max_length,
        }

    def save_pretrained_parts(self, out_dir: str | Path, merge: bool = True, tokenizer: Any = None) -> Path:
        """Write the student as a Hugging Face folder plus ARMADA's heads.

        ``merge=True`` (or a fully fine-tuned student): the full backbone, LoRA merged in (on a copy: the
        live model keeps its adapter). ``merge=False`` with LoRA: the peft adapter folder, loadable with
        ``PeftModel.from_pretrained(base, out_dir)``. Always ``armada_heads.safetensors`` and
        ``armada_student.json``, and the tokenizer when one is known.
        """
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        adapter = self.is_lora and not merge
        with hub.quiet_transformers():
            if self.is_lora and merge:
                merged = copy.deepcopy(self.backbone).merge_and_unload()
                merged.save_pretrained(out)
                del merged
            else:
                self.backbone.save_pretrained(out)
        heads = {k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}
        pooler = getattr(self, "context_pooler", None)
        if pooler is not None:
            heads |= {f"{POOLER_PREFIX}{k}": v.detach().contiguous().cpu() for k, v in pooler.state_dict().items()}
        save_file(heads, str(out / HEADS_FILE), metadata={"format": str(EXPORT_FORMAT)})
        meta = {**self._meta(), **self._extra_meta(), "adapter": adapter, "merged_lora": bool(self.is_lora and merge)}
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
        tok = tokenizer if tokenizer is not None else self.tokenizer
        if tok is not None:
            tok.save_pretrained(out)
        return out

    def _extra_meta(self) -> dict[str, Any]:
        return {}


class ArmadaStudent(_StudentBase):
    """A classification/regression student: backbone → pooled ``h_s`` → heads ``s1``, ``p_s``, ``s2``."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        kind: Literal["encoder", "decoder"],
        pooling: str,
        num_classes: int,
        proj_dim: int,
        orthogonal_projection: bool = False,
        **kwargs: Any,
    ):
        super().__init__(
            backbone, num_classes=num_classes, proj_dim=proj_dim, orthogonal_projection=orthogonal_projection,
            **kwargs,
        )
        if kind not in ("encoder", "decoder"):
            raise ValueError(f"kind {kind!r}: allowed 'encoder', 'decoder'")
        self.kind = kind
        inner = _unwrap(backbone)
        self.pooling = resolve_pooling(pooling, kind, getattr(inner, "pooler", None) is not None,
                                       getattr(inner.config, "model_type", ""))
        # beside the heads, outside the (peft-wrapped) backbone: trainable under LoRA, saved with the heads
        self.context_pooler: nn.Module | None = None
        if self.pooling == "context":
            normal = kwargs.get("head_init") == "normal"  # as the reference model initialises it
            std = float(getattr(inner.config, "initializer_range", 0.02)) if normal else None
            self.context_pooler = build_context_pooler(inner.config, init_std=std)
        params = inspect.signature(inner.forward).parameters
        self._pass_positions = kind == "decoder" and "position_ids" in params

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> StudentOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.kind == "decoder":
            kwargs["use_cache"] = False
            if self._pass_positions:
                kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        out = self.backbone(**kwargs)
        if self.pooling == "pooler":
            pooled = out.pooler_output
        elif self.context_pooler is not None:
            dtype = self.context_pooler.dense.weight.dtype
            pooled = self.context_pooler(out.last_hidden_state[:, :1].to(dtype))  # it reads position 0
        else:
            pooled = pool_hidden(out.last_hidden_state, attention_mask, self.pooling)
        s1, s2, p_s = self.heads(pooled)
        return StudentOutput(s1=s1, s2=s2, p_s=p_s, pooled=pooled)

    def _extra_meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "pooling": self.pooling}


class GenerativeStudent(_StudentBase):
    """A causal-LM student for generative tasks (reasoning, instructions).

    The backbone is ``AutoModelForCausalLM``. ``forward(input_ids, attention_mask, labels)`` takes the prompt
    and answer concatenated, with ``labels = -100`` on the prompt and on padding, and returns the LM logits at
    the supervised positions only (the vocabulary matmul is skipped for the prompt) plus the pooled prompt
    representation: the hidden state of the last non-padding PROMPT token (causal attention makes it equal to
    running the prompt alone), fed to the heads ``p_s`` (and ``s1``/``s2`` when there are classes).

    **How the aligner is supervised here** (the paper does not say; this is our choice):

    - *Finite answer set* (yes/no, multiple choice, WinoGrande's two options, a label set known to the task):
      the task maps each answer to a class id ``y``, and everything works as in classification. The aligner is
      trained with ``CE(t1,y) + γ·CE(t2,y)`` on the answer class; the student gets
      ``L = α·L_soft + (1−α)·(L_lm + CE(s1,y) + γ·CE(s2,y)) + β·L_manifold``, its class heads reading the pooled
      prompt (``losses.generative_loss``). The LM loss keeps the student generating the answer text; the heads
      carry the teacher's soft class distribution exactly as in the NLU recipe.
    - *Open answer set* (GSM8K numbers, free-form instructions): there are no classes, so branch A and the
      ``t2`` head are not built (``num_classes=0``) and the aligner is not trained: ``p_t`` stays the
      orthogonal projection of its (seeded) initialisation and the student gets ``L = L_lm + β·L_manifold``.
      Why this is defensible: an orthogonal map is an isometry, so ``p_t`` keeps the teacher space's geometry
      (distances and angles between examples) intact, which is all the manifold loss can transfer without
      labels; a label-free objective trained on ``p_t`` could only choose another rotation, and any fixed
      rotation is absorbed by the student's own linear ``p_s``. Inventing pseudo-labels (clustering the teacher
      vectors, or tokens of the answer) would add a design the paper does not have, and a trained-but-wrong
      aligner is what the paper's random-aligner ablation shows to hurt.
    """

    generative = True

    def __init__(self, backbone: nn.Module, *, num_classes: int, proj_dim: int, **kwargs: Any):
        super().__init__(backbone, num_classes=num_classes, proj_dim=proj_dim, **kwargs)
        self.kind = "decoder"
        self.pooling = "last"
        inner = _unwrap(backbone)
        params = inspect.signature(inner.base_model.forward).parameters
        self._pass_positions = "position_ids" in params

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> GenerativeOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inner = _unwrap(self.backbone)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if self._pass_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        hidden = inner.base_model(**kwargs).last_hidden_state  # (B, T, H), no LM head yet
        if labels is None:
            prompt_mask = attention_mask.bool()
            sel_hidden = hidden[:, :0].reshape(0, hidden.shape[-1])
            answer_labels = input_ids.new_zeros((0,))
        else:
            prompt_mask = attention_mask.bool() & (labels == -100)
            shifted = labels[:, 1:]
            keep = shifted != -100
            sel_hidden = hidden[:, :-1][keep]
            answer_labels = shifted[keep]
        answer_logits = self._lm_logits(inner, sel_hidden)
        pooled = pool_hidden(hidden, prompt_mask, "last")
        s1, s2, p_s = self.heads(pooled)
        return GenerativeOutput(answer_logits, answer_labels, s1=s1, s2=s2, p_s=p_s, pooled=pooled)

    @staticmethod
    def _lm_logits(inner: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        logits = inner.get_output_embeddings()(hidden)
        scale = getattr(inner, "logit_scale", None) or getattr(inner.config, "logit_scale", None)
        if isinstance(scale, (int, float)) and scale != 1:
            logits = logits * scale
        cap = getattr(inner.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int = 64,
        tokenizer: Any = None,
        batch_size: int = 8,
        **gen_kwargs: Any,
    ) -> list[str]:
        """Greedy continuations of ``prompts`` (left-padded batches), decoded without special tokens."""
        tok = tokenizer if tokenizer is not None else self.tokenizer
        if tok is None:
            raise ValueError("generate: no tokenizer (pass tokenizer= or build the student with build_student)")
        device = next(self.backbone.parameters()).device
        old_side, old_trunc, was_training = tok.padding_side, tok.truncation_side, self.training
        tok.padding_side = tok.truncation_side = "left"  # an over-long prompt keeps its end (the question)
        self.eval()
        texts: list[str] = []
        try:
            for i in range(0, len(prompts), batch_size):
                enc = tok(
                    list(prompts[i : i + batch_size]), return_tensors="pt", padding=True, truncation=True,
                    max_length=self.max_length or None,
                ).to(device)
                kw = {"do_sample": False, "pad_token_id": tok.pad_token_id, **gen_kwargs}
                out = self.backbone.generate(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=max_new_tokens,
                    **kw,
                )
                texts += tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        finally:
            tok.padding_side, tok.truncation_side = old_side, old_trunc
            self.train(was_training)
        return texts


__all__ = [
    "ArmadaStudent",
    "EXPORT_FORMAT",
    "GenerativeStudent",
    "HEADS_FILE",
    "META_FILE",
    "POOLER_PREFIX",
]
