"""Training: the DeepSpeed config builder, the per-worker loop and the TorchTrainer driver."""
