"""Memory per worker for a student, ZeRO stage and batch: an estimate, checked before cluster time.

Formulas (Rajbhandari et al., ZeRO, 2020; Korthikanti et al., 2022), with Ψ parameters, Ψt of them
trainable, N data-parallel workers, w bytes per weight (2 for bf16/fp16, 4 for fp32):
  weights      w·Ψ                      (÷N at ZeRO-3)
  gradients    w·Ψt                     (÷N at ZeRO ≥ 2)
  optimizer    12·Ψt mixed precision (fp32 master + 2 moments), 8·Ψt in fp32   (÷N at ZeRO ≥ 1;
               0 on the device with offload)
  activations  per layer ≈ s·b·h·(34 + 5·a·s/h)·w/2 without checkpointing, 2·s·b·h·w/2 with it,
               for the layers that backward runs through (all, for full and LoRA-everywhere)
  LM logits    generative students: b·s·V·(w + 4) at most (the logits, and their fp32 copy in the loss;
               our student computes them on the answer tokens only, so this is an upper bound)
The parameter count comes from the model's own config, instantiated on the meta device (exact, no weights).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from armada_ray.config import ArmadaConfig

GIB = 1024**3


@dataclass
class MemoryEstimate:
    params: int
    trainable_params: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    total_gib: float
    available_gib: float
    device: str

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.available_gib

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}


def model_shape(model_path: str, causal_lm: bool = False) -> dict[str, Any]:
    """Parameter count and shape facts of a transformers model, from its config on the meta device
    (with its LM head when ``causal_lm``: a generative student keeps it)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = (AutoModelForCausalLM if causal_lm else AutoModel).from_config(config)
    params = sum(p.numel() for p in model.parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "params": params,
        "hidden": int(getattr(text, "hidden_size", 0) or getattr(text, "d_model", 0)),
        "layers": int(getattr(text, "num_hidden_layers", 0)),
        "heads": int(getattr(text, "num_attention_heads", 1)),
        "vocab": int(getattr(text, "vocab_size", 0) or 0),
        "causal_lm": causal_lm,
        "model_type": config.model_type,
    }


def estimate(
    shape: dict[str, Any], *, lora_params: int | None, zero_stage: int, workers: int, precision: str,
    offload: bool, batch: int, seq: int, grad_checkpointing: bool, available_gib: float, device: str,
) -> MemoryEstimate:
    psi = shape["params"]
    psi_t = lora_params if lora_params is not None else psi
    w = 4 if precision == "fp32" else 2
    n = max(workers, 1)
    weights = w * psi / (n if zero_stage == 3 else 1)
    grads = w * psi_t / (n if zero_stage >= 2 else 1)
    opt_bytes = 8 if precision == "fp32" else 12
    optimizer = 0.0 if offload else opt_bytes * psi_t / (n if zero_stage >= 1 else 1)
    h, layers, heads = shape["hidden"], shape["layers"], shape["heads"]
    per_layer = seq * batch * h * (2 if grad_checkpointing else 34 + 5 * heads * seq / max(h, 1)) * w / 2
    activations = per_layer * layers
    if shape.get("causal_lm"):
        activations += batch * seq * shape.get("vocab", 0) * (w + 4)
    total = (weights + grads + optimizer + activations) / GIB
    return MemoryEstimate(
        params=psi, trainable_params=psi_t, weights_gib=weights / GIB, grads_gib=grads / GIB,
        optimizer_gib=optimizer / GIB, activations_gib=activations / GIB, total_gib=total,
        available_gib=available_gib, device=device,
    )


def estimate_for_config(cfg: "ArmadaConfig", shape: dict[str, Any], available_gib: float,
                        device: str) -> MemoryEstimate:
    """:func:`estimate` for a config's student, LoRA, ZeRO stage, precision, batch and sequence."""
    # lazy: ds_config loads the config package (pydantic); the bare estimate (cluster/capacity.py) does without
    from armada_ray.train.ds_config import resolve_precision

    lora = cfg.student.lora
    lora_params = (lora_param_count(shape, lora.r, len(lora.target_modules),
                                    len(lora.layers_to_transform) if lora.layers_to_transform else None)
                   if lora.enabled else None)
    return estimate(
        shape, lora_params=lora_params, zero_stage=cfg.train.zero_stage, workers=cfg.scaling.num_workers,
        precision=resolve_precision(cfg.train, cfg.scaling.use_gpu), offload=cfg.train.offload,
        batch=cfg.train.batch_size, seq=cfg.student.max_length,
        grad_checkpointing=cfg.student.gradient_checkpointing, available_gib=available_gib, device=device,
    )


def lora_param_count(shape: dict[str, Any], r: int, n_targets: int, n_layers: int | None) -> int:
    """LoRA adds r·(in+out) per adapted matrix; q/k/v/o-sized matrices are approximated as h×h."""
    layers = n_layers if n_layers is not None else shape["layers"]
    return int(layers * n_targets * r * 2 * shape["hidden"])
