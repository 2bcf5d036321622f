"""Student configs, texts and LoRA weights shared by the tests of tests/model."""

from __future__ import annotations

import torch

from armada_ray.config import LoraConfig, StudentConfig

TEXTS = ["the quick brown fox jumps over the lazy dog today", "hi there", "a medium length sentence here"]


def student_cfg(model: str, lora: bool, **kw) -> StudentConfig:
    lora_kw = kw.pop("lora_kw", {})
    return StudentConfig(model=model, lora=LoraConfig(enabled=lora, **lora_kw), **kw)


def perturb_lora(module: torch.nn.Module) -> None:
    """LoRA's B starts at zero (merge would be a no-op): give the adapters real weights."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
