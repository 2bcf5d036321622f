"""The DeepSpeed config, built by one pure function (golden-tested in tests/train/test_ds_config.py).

Follows OpenRLHF's ``get_train_ds_config`` shape: the engine config is derived from our typed
``TrainConfig``/``ScalingConfig`` plus the device facts, never hand-edited JSON. Conflicting settings are
a :class:`ConfigError` naming the keys, raised before any cluster time is spent.
"""

from __future__ import annotations

from typing import Any

from armada_ray.config import ConfigError, ScalingConfig, TrainConfig


def resolve_precision(train: TrainConfig, on_gpu: bool) -> str:
    """``auto`` -> bf16 on GPU, fp32 on CPU."""
    if train.precision == "auto":
        return "bf16" if on_gpu else "fp32"
    return train.precision


def check_ds_settings(train: TrainConfig, scaling: ScalingConfig, on_gpu: bool) -> list[str]:
    """Every conflict between the DeepSpeed-related settings, as user-facing lines."""
    problems: list[str] = []
    precision = resolve_precision(train, on_gpu)
    if not on_gpu and precision in ("fp16", "bf16"):
        problems.append(
            f"config error: train.precision={train.precision!r} needs a GPU (scaling.use_gpu=false); "
            "allowed on CPU: fp32 or auto"
        )
    if train.offload and train.zero_stage < 2:
        problems.append(
            f"config error: train.offload=true needs train.zero_stage 2 or 3 (got {train.zero_stage})"
        )
    if train.offload and not on_gpu:
        problems.append(
            "config error: train.offload=true moves optimizer state from GPU to CPU; with "
            "scaling.use_gpu=false everything is already on the CPU: set train.offload=false"
        )
    if scaling.use_gpu and scaling.gpus_per_worker <= 0:
        problems.append("config error: scaling.gpus_per_worker=0 with scaling.use_gpu=true: allowed > 0")
    return problems


def build_ds_config(train: TrainConfig, scaling: ScalingConfig, *, on_gpu: bool) -> dict[str, Any]:
    """DeepSpeed engine config for the student.

    The optimizer is a ``torch.optim.AdamW`` handed to ``deepspeed.initialize`` (no JIT-compiled
    FusedAdam/CPUAdam on CPU machines; NOTES.md), so the config carries no ``optimizer`` block unless
    offload asks for DeepSpeed's CPU Adam on GPU machines.
    """
    problems = check_ds_settings(train, scaling, on_gpu)
    if problems:
        raise ConfigError(problems)
    precision = resolve_precision(train, on_gpu)
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage >= 2:
        zero.update(overlap_comm=on_gpu, contiguous_gradients=True, reduce_bucket_size=5e7)
    if train.zero_stage == 3:
        zero.update(
            stage3_gather_16bit_weights_on_model_save=True,
            stage3_param_persistence_threshold=1e4,
            stage3_prefetch_bucket_size=5e7,
        )
    if train.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if train.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * scaling.num_workers,
        "gradient_clipping": train.clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,  # our own progress lines; DeepSpeed's would interleave with them
        "wall_clock_breakdown": False,
    }
    if train.offload:
        # the loop then hands DeepSpeed the parameters, not a torch optimizer: with zero_force_ds_cpu_optimizer a
        # torch AdamW was refused at engine start (ZeRORuntimeException), so offload never ran (issue 15)
        config["optimizer"] = {"type": "AdamW", "params": {"lr": train.lr, "weight_decay": train.weight_decay}}
        config["zero_force_ds_cpu_optimizer"] = True
    return config


def load_dtype(ds_config: dict[str, Any]) -> "torch.dtype | None":
    """The dtype to load the backbone in: the engine's compute dtype (bf16/fp16), so a GPU rank never holds an
    fp32 copy of the weights first (an 8B model is 32 GB in fp32); ``None`` (as stored) for fp32 runs."""
    import torch

    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return None


def zero3_init_context(ds_config: dict[str, Any]) -> Any:
    """For ZeRO-3, register ``ds_config`` with transformers (``HfDeepSpeedConfig``) so that ``from_pretrained`` and
    ``from_config`` build the model inside ``deepspeed.zero.Init``: each parameter is partitioned as it is created.

    Returns the object to keep alive while the model is used (transformers keeps a weak reference), or ``None``
    below stage 3, where there is nothing to partition at load time: then any registration left by an earlier
    ZeRO-3 worker of this process (``armada report`` runs cells one after another) is dropped, so this worker's
    model is not built partitioned by mistake.
    """
    if ds_config.get("zero_optimization", {}).get("stage") != 3:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)
