"""armada-ray: ARMADA cross-modal distillation from (black-box) vision-language teachers into LM students, on Ray."""

__version__ = "0.1.0"
