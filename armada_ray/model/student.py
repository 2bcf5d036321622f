"""Student wrappers: a transformers backbone, a pooled vector ``h_s`` and ARMADA's heads (DESIGN §2).

Classification / regression (:class:`ArmadaStudent`)
    Encoders (BERT, DeBERTa, …) are loaded with ``AutoModel`` and pooled with ``pooler`` (``pooler_output``
    when the model has a pooler), ``context`` (a trainable transformers ``ContextPooler``: dropout over the
    first token → dense H→H → ``pooler_hidden_act``, what ``DebertaV2ForSequenceClassification`` pools with,
    since DeBERTa's ``AutoModel`` has no pooler) or ``cls`` (the raw first position). Decoders (OPT, LLaMA, …)
    are loaded as the BASE model (``AutoModel``: no LM head, which would cost a vocabulary-sized matmul per
    position for nothing) and pooled at the last NON-padding token, found from ``attention_mask``, so right and
    left padding give the same vector (the reference code took the literal last position, a pad token under
    right padding), or at the first non-padding token. ``pooling="auto"``: ``context`` for DeBERTa(-v2),
    ``pooler``/``cls`` for other encoders (with/without a pooler layer), ``last`` for decoders.

    Heads on ``h_s`` (hidden H): ``s1 = Linear(H→C)``, ``p_s = Linear(H→P, bias=False)`` (orthogonal when
    ``student.orthogonal_projection``), ``s2 = Linear(P→C)``. The heads, and the context pooler when there is
    one, live on the student outside the (peft-wrapped) backbone: they are always trainable, also under LoRA.

Generative tasks (:class:`GenerativeStudent`): see its docstring for the loss and the aligner's supervision.

Training modes: LoRA through peft (``student.lora``) or full fine-tuning, optionally with the embeddings and
the layers below ``student.freeze_layers_below`` frozen; optional gradient checkpointing.

Export (:meth:`ArmadaStudent.save_pretrained_parts`, :func:`load_student_export`): the folder is a Hugging
Face model folder (safetensors; LoRA merged with ``merge_and_unload``, or the peft adapter folder when
``merge=False``) plus ``armada_heads.safetensors`` (the heads, and the context pooler's weights under
``context_pooler.``) and ``armada_student.json``; the tokenizer is saved beside.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from armada_ray.config import ConfigError
from armada_ray.model import hub
from armada_ray.model.aligner import orthogonal_linear

if TYPE_CHECKING:  # pragma: no cover
    from armada_ray.config import LoraConfig, StudentConfig

HEADS_FILE = "armada_heads.safetensors"
META_FILE = "armada_student.json"
POOLER_PREFIX = "context_pooler."  # the context pooler's keys in HEADS_FILE (its attribute name on the student)
EXPORT_FORMAT = 1

TaskKind = Literal["classification", "regression", "generative"]
GENERATIVE_TASK_KINDS = ("generative", "reasoning", "instruction", "instructions")

_ENCODER_TYPES = {
    "bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "albert", "xlm-roberta", "mpnet",
    "modernbert", "camembert", "ernie", "megatron-bert", "xlnet",
}
_DECODER_TYPES = {
    "llama", "opt", "gpt2", "gpt_neox", "gptj", "gpt_neo", "mistral", "mixtral", "qwen2", "qwen3", "gemma",
    "gemma2", "gemma3_text", "phi", "phi3", "falcon", "bloom", "olmo", "olmo2", "granite", "smollm3", "cohere",
}


# ------------------------------------------------------------------------------------------- outputs


@dataclass
class StudentOutput:
    s1: torch.Tensor | None  # (B, C) prediction head (None when num_classes=0)
    s2: torch.Tensor | None  # (B, C) head on p_s
    p_s: torch.Tensor  # (B, P) projection matched to the aligner's p_t
    pooled: torch.Tensor  # (B, H) h_s


@dataclass
class GenerativeOutput:
    answer_logits: torch.Tensor  # (N, V) LM logits at the N supervised positions (already shifted)
    answer_labels: torch.Tensor  # (N,) the answer tokens they predict
    s1: torch.Tensor | None  # (B, C) class heads on the pooled prompt (finite answer sets only)
    s2: torch.Tensor | None
    p_s: torch.Tensor  # (B, P)
    pooled: torch.Tensor  # (B, H) hidden state of the last prompt token


# ------------------------------------------------------------------------------------------- pooling


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row (right or left padding alike; 0 if none)."""
    mask = attention_mask.to(torch.long)
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return (positions * mask).argmax(dim=-1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first position whose mask is 1, per row (0 if none)."""
    return attention_mask.to(torch.long).argmax(dim=-1)


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, H) -> (B, H). ``last``/``first``: last/first non-padding token; ``cls``: position 0."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        idx = last_token_index(attention_mask)
    elif mode == "first":
        idx = first_token_index(attention_mask)
    else:
        raise ValueError(f"pooling {mode!r}: allowed 'last', 'first', 'cls' (and 'pooler' for encoders)")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx.to(hidden.device)]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (what ``generate`` uses), so left padding shifts nothing."""
    pos = attention_mask.to(torch.long).cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def detect_kind(config: Any) -> Literal["encoder", "decoder"]:
    """``encoder`` for BERT-like models, ``decoder`` for causal LMs (by model type, then architecture)."""
    model_type = getattr(config, "model_type", "")
    if model_type in _ENCODER_TYPES:
        return "encoder"
    if model_type in _DECODER_TYPES:
        return "decoder"
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"student.model: {model_type} is an encoder-decoder model; use an encoder or a decoder")
    if any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in (getattr(config, "architectures", None) or [])):
        return "decoder"
    return "encoder"


CONTEXT_POOLER_TYPES = ("deberta", "deberta-v2")  # pooled with ContextPooler by their *ForSequenceClassification


def resolve_pooling(pooling: str, kind: str, has_pooler: bool, model_type: str = "") -> str:
    """The pooling mode to use: ``auto`` becomes ``context`` for DeBERTa(-v2) encoders (the reference's
    ``ContextPooler``), ``pooler``/``cls`` for other encoders and ``last`` for decoders."""
    if pooling == "auto":
        if kind == "decoder":
            return "last"
        return "context" if model_type in CONTEXT_POOLER_TYPES else ("pooler" if has_pooler else "cls")
    if kind == "decoder" and pooling in ("cls", "pooler", "context"):
        raise ConfigError(
            f"student.pooling={pooling!r}: a decoder student has no [CLS]/pooler; allowed: auto, last, first"
        )
    if pooling == "pooler" and not has_pooler:
        raise ConfigError(
            "student.pooling='pooler': this encoder has no pooler layer; use context, cls, first or auto"
        )
    return pooling


def build_context_pooler(config: Any, init_std: float | None = None) -> nn.Module:
    """transformers' DeBERTa-v2 ``ContextPooler`` for ``config``: dropout(``pooler_dropout``) over the first
    token → ``Linear(H→H)`` → ``pooler_hidden_act``. Encoders without ``pooler_*`` fields get DeBERTa-v2's
    defaults (size H, dropout 0, gelu). ``init_std``: normal(0, std) weights and zero bias, Hugging Face's
    initialisation of it inside ``DebertaV2ForSequenceClassification``; torch's default otherwise. Float32."""
    from types import SimpleNamespace

    from transformers.models.deberta_v2.modeling_deberta_v2 import ContextPooler

    hidden = int(config.hidden_size)
    size = int(getattr(config, "pooler_hidden_size", None) or hidden)
    if size != hidden:  # ContextPooler's dense reads the H-wide first token and reports output_dim = H
        raise ConfigError(f"student.pooling='context': pooler_hidden_size={size} differs from hidden_size={hidden}")
    shim = SimpleNamespace(  # only what ContextPooler reads, so the backbone's config is not shared or pickled
        hidden_size=hidden,
        pooler_hidden_size=size,
        pooler_dropout=float(getattr(config, "pooler_dropout", 0.0) or 0.0),
        pooler_hidden_act=getattr(config, "pooler_hidden_act", None) or "gelu",
    )
    pooler = ContextPooler(shim).float()
    if init_std is not None:
        nn.init.normal_(pooler.dense.weight, std=init_std)
        nn.init.zeros_(pooler.dense.bias)
    return pooler


# ------------------------------------------------------------------------------------------- heads


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


# ------------------------------------------------------------------------------------------- students


def _is_peft(module: nn.Module) -> bool:
    try:
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


# ------------------------------------------------------------------------------------------- building


def _linear_leaf_names(model: nn.Module) -> list[str]:
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted name, module list) of the transformer layers (the ModuleList with num_hidden_layers entries)."""
    n = int(getattr(model.config, "num_hidden_layers", -1))
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return name, mod
    raise ConfigError(f"student.model: cannot find the {n} transformer layers of {type(model).__name__}")


def apply_lora(backbone: nn.Module, lora: "LoraConfig", causal_lm: bool) -> nn.Module:
    """Wrap ``backbone`` with peft LoRA as configured; unknown target modules or layers are a ConfigError."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    available = _linear_leaf_names(backbone)
    missing = [t for t in lora.target_modules if t not in available]
    if missing:
        raise ConfigError(
            f"student.lora.target_modules={list(lora.target_modules)!r}: {missing} match no linear layer of "
            f"{type(backbone).__name__}; its linear layers are named: {', '.join(available)}"
        )
    n_layers = int(getattr(backbone.config, "num_hidden_layers", 0))
    layers = list(lora.layers_to_transform) if lora.layers_to_transform is not None else None
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad or not layers:
            raise ConfigError(
                f"student.lora.layers_to_transform={layers!r}: this model has layers 0..{n_layers - 1}"
            )
    # peft's default layer regex needs a prefix before the layer list ("model.layers.3."), which a base model
    # ("layers.3.") lacks: name the list explicitly.
    layers_pattern = _layer_list(backbone)[0].rsplit(".", 1)[-1] if layers is not None else None
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=layers,
        layers_pattern=layers_pattern,
        task_type=TaskType.CAUSAL_LM if causal_lm else TaskType.FEATURE_EXTRACTION,
    )
    return get_peft_model(backbone, peft_cfg)


def freeze_lower_layers(backbone: nn.Module, below: int) -> None:
    """Freeze the embeddings and the transformer layers with index < ``below`` (full fine-tuning)."""
    _, layers = _layer_list(backbone)
    if below > len(layers):
        raise ConfigError(f"student.freeze_layers_below={below}: this model has {len(layers)} layers")
    for p in backbone.get_input_embeddings().parameters():
        p.requires_grad_(False)
    for name, p in backbone.named_parameters():  # position/type embeddings and their norms (BERT, OPT, GPT-2)
        if any("embed" in part or part in ("wte", "wpe") for part in name.split(".")[:-1]):
            p.requires_grad_(False)
    for layer in list(layers)[:below]:
        for p in layer.parameters():
            p.requires_grad_(False)


def trainable_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (a ZeRO-3 partitioned parameter counts its full size, ``ds_numel``)."""
    def size(p: nn.Parameter) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    total = sum(size(p) for p in module.parameters())
    return sum(size(p) for p in module.parameters() if p.requires_grad), total


def is_generative(task_kind: str) -> bool:
    return task_kind in GENERATIVE_TASK_KINDS


def build_student(
    student_cfg: "StudentConfig",
    num_classes: int,
    proj_dim: int,
    task_kind: str = "classification",
    dtype: torch.dtype | None = None,
) -> tuple[ArmadaStudent | GenerativeStudent, Any]:
    """Load the backbone and tokenizer named by ``student_cfg`` and wrap them with ARMADA's heads.

    ``task_kind``: ``classification``, ``regression`` (``num_classes`` must be 1) or ``generative`` (also
    accepted: ``reasoning``, ``instruction(s)``), where ``num_classes`` is the size of a finite answer set or
    0 for open answers. Returns ``(student, tokenizer)``; the tokenizer gets a pad token (its EOS) if it has
    none, and its padding side is recorded on the student.
    """
    if task_kind not in ("classification", "regression", *GENERATIVE_TASK_KINDS):
        raise ConfigError(f"task kind {task_kind!r}: allowed classification, regression, generative")
    if task_kind == "regression" and num_classes != 1:
        raise ConfigError(f"a regression task has one output (num_classes=1), got num_classes={num_classes}")
    generative = is_generative(task_kind)
    if not generative and num_classes < 1:
        raise ConfigError(f"a {task_kind} task needs num_classes >= 1, got {num_classes}")
    name, revision = student_cfg.model, student_cfg.revision
    config = hub.load_model_config(name, revision, field="student.model")
    kind = detect_kind(config) if student_cfg.kind == "auto" else student_cfg.kind
    if generative and kind != "decoder":
        raise ConfigError(f"student.model={name!r}: a generative task needs a decoder (causal LM) student")

    tokenizer = hub.load_tokenizer(name, revision)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"student.model={name!r}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    backbone = hub.load_model(name, revision, causal_lm=generative, dtype=dtype)
    if getattr(backbone.config, "pad_token_id", None) is None:
        backbone.config.pad_token_id = tokenizer.pad_token_id

    if student_cfg.gradient_checkpointing:
        # renamed activation_checkpointing_enable in transformers 5.2x (the old name warns)
        if hasattr(backbone, "activation_checkpointing_enable"):
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(backbone.config, "use_cache"):
            backbone.config.use_cache = False
    if student_cfg.lora.enabled:
        if student_cfg.gradient_checkpointing:
            backbone.enable_input_require_grads()
        backbone = apply_lora(backbone, student_cfg.lora, causal_lm=generative)
    elif student_cfg.freeze_layers_below is not None:
        freeze_lower_layers(backbone, student_cfg.freeze_layers_below)

    common = dict(
        num_classes=num_classes,
        proj_dim=proj_dim,
        orthogonal_projection=student_cfg.orthogonal_projection,
        base_model=name,
        revision=revision,
        padding_side=tokenizer.padding_side,
        task_kind=task_kind,
        max_length=student_cfg.max_length,
        head_dropout=student_cfg.head_dropout,
        head_init=student_cfg.head_init,
    )
    if generative:
        student: ArmadaStudent | GenerativeStudent = GenerativeStudent(backbone, **common)
    else:
        student = ArmadaStudent(backbone, kind=kind, pooling=student_cfg.pooling, **common)
    student.tokenizer = tokenizer
    return student, tokenizer


def load_student_export(
    folder: str | Path, dtype: torch.dtype | None = None
) -> tuple[ArmadaStudent | GenerativeStudent, Any]:
    """Load a folder written by :meth:`save_pretrained_parts` (merged or adapter) in eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{folder}: not an armada-ray student export (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    generative = bool(meta["generative"])
    kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    with hub.quiet_transformers():
        if meta.get("adapter"):
            from peft import PeftModel

            base = meta.get("base_model") or meta.get("base_model_path")
            base_model = hub.load_model(base, meta.get("revision"), causal_lm=generative, dtype=dtype)
            backbone = PeftModel.from_pretrained(base_model, str(folder))
        else:
            cls = AutoModelForCausalLM if generative else AutoModel
            backbone = cls.from_pretrained(str(folder), **kwargs)
    common = dict(
        num_classes=meta["num_classes"],
        proj_dim=meta["proj_dim"],
        orthogonal_projection=meta["orthogonal_projection"],
        base_model=meta.get("base_model"),
        revision=meta.get("revision"),
        padding_side=meta.get("padding_side", "right"),
        task_kind=meta.get("task_kind", "classification"),
        max_length=meta.get("max_length"),
    )
    if generative:
        student: ArmadaStudent | GenerativeStudent = GenerativeStudent(backbone, **common)
    else:
        student = ArmadaStudent(backbone, kind=meta["kind"], pooling=meta["pooling"], **common)
    parts = load_file(str(folder / HEADS_FILE))
    pooler_state = {k[len(POOLER_PREFIX):]: v for k, v in parts.items() if k.startswith(POOLER_PREFIX)}
    student.heads.load_state_dict({k: v for k, v in parts.items() if not k.startswith(POOLER_PREFIX)})
    pooler = getattr(student, "context_pooler", None)
    if pooler is not None or pooler_state:
        if pooler is None or not pooler_state:
            raise ConfigError(f"{folder}: {HEADS_FILE} and {META_FILE} disagree about the context pooler "
                              f"(pooling {meta.get('pooling')!r})")
        pooler.load_state_dict(pooler_state)
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    else:
        tokenizer = hub.load_tokenizer(meta["base_model"], meta.get("revision"))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    student.tokenizer = tokenizer
    return student.eval(), tokenizer


__all__ = [
    "ArmadaStudent",
    "GenerativeOutput",
    "GenerativeStudent",
    "StudentHeads",
    "StudentOutput",
    "apply_lora",
    "build_context_pooler",
    "build_student",
    "detect_kind",
    "first_token_index",
    "freeze_lower_layers",
    "is_generative",
    "last_token_index",
    "load_student_export",
    "pool_hidden",
    "position_ids_from_mask",
    "resolve_pooling",
    "trainable_parameters",
]
