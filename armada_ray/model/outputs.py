"""The output records of ARMADA's modules: what the students and the aligner return, what the losses read.

A bottom module (torch only), so the students, the aligner and the losses import it and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


@dataclass
class AlignerOutput:
    t1: torch.Tensor | None  # (B, C) branch A logits (None when num_classes=0)
    t2: torch.Tensor | None  # (B, C) branch B logits (None when num_classes=0)
    p_t: torch.Tensor  # (B, P) orthogonal projection of the teacher vector

    def detach(self) -> "AlignerOutput":
        return AlignerOutput(
            None if self.t1 is None else self.t1.detach(),
            None if self.t2 is None else self.t2.detach(),
            self.p_t.detach(),
        )


__all__ = ["AlignerOutput", "GenerativeOutput", "StudentOutput"]
