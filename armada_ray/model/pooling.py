"""Pooling: how a student turns its backbone's hidden states into one vector ``h_s`` (DESIGN §2).

Encoders (BERT, DeBERTa, …) are pooled with ``pooler`` (``pooler_output`` when the model has a pooler),
``context`` (a trainable transformers ``ContextPooler``: dropout over the first token → dense H→H →
``pooler_hidden_act``, what ``DebertaV2ForSequenceClassification`` pools with, since DeBERTa's ``AutoModel`` has
no pooler) or ``cls`` (the raw first position). Decoders (OPT, LLaMA, …) are pooled at the last NON-padding
token, found from ``attention_mask``, so right and left padding give the same vector (the reference code took the
literal last position, a pad token under right padding), or at the first non-padding token. ``pooling="auto"``:
``context`` for DeBERTa(-v2), ``pooler``/``cls`` for other encoders (with/without a pooler layer), ``last`` for
decoders.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import nn

from armada_ray.config import ConfigError

_ENCODER_TYPES = {
    "bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "albert", "xlm-roberta", "mpnet",
    "modernbert", "camembert", "ernie", "megatron-bert", "xlnet",
}
_DECODER_TYPES = {
    "llama", "opt", "gpt2", "gpt_neox", "gptj", "gpt_neo", "mistral", "mixtral", "qwen2", "qwen3", "gemma",
    "gemma2", "gemma3_text", "phi", "phi3", "falcon", "bloom", "olmo", "olmo2", "granite", "smollm3", "cohere",
}


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
    # transformers is imported when a model is built, not when armada_ray.model is imported (import time)
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


__all__ = [
    "CONTEXT_POOLER_TYPES",
    "build_context_pooler",
    "detect_kind",
    "first_token_index",
    "last_token_index",
    "pool_hidden",
    "position_ids_from_mask",
    "resolve_pooling",
]
