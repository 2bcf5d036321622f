"""Building students: load the backbone named by the config, apply LoRA or freeze layers, wrap it (DESIGN §2).

Training modes: LoRA through peft (``student.lora``) or full fine-tuning, optionally with the embeddings and
the layers below ``student.freeze_layers_below`` frozen; optional gradient checkpointing.
:func:`load_student_export` reads back a folder written by :meth:`ArmadaStudent.save_pretrained_parts`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from armada_ray.config import ConfigError, LoraConfig, StudentConfig
from armada_ray.model import hub
from armada_ray.model.pooling import detect_kind
from armada_ray.model.students import HEADS_FILE, META_FILE, POOLER_PREFIX, ArmadaStudent, GenerativeStudent

GENERATIVE_TASK_KINDS = ("generative", "reasoning", "instruction", "instructions")


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


def apply_lora(backbone: nn.Module, lora: LoraConfig, causal_lm: bool) -> nn.Module:
    """Wrap ``backbone`` with peft LoRA as configured; unknown target modules or layers are a ConfigError."""
    # peft and transformers load when a model is built, not when armada_ray.model is imported (import time)
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
    student_cfg: StudentConfig,
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
    # transformers and peft load when a model is built, not when armada_ray.model is imported (import time)
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
    "GENERATIVE_TASK_KINDS",
    "apply_lora",
    "build_student",
    "freeze_lower_layers",
    "is_generative",
    "load_student_export",
    "trainable_parameters",
]
