"""The DeepSpeed config builder (pure) and the memory-fit estimate."""

from __future__ import annotations

import pytest

from armada_ray.config import ConfigError, ScalingConfig, TrainConfig
from armada_ray.train import memory
from armada_ray.train.ds_config import build_ds_config


def test_cpu_zero2_fp32_golden():
    cfg = build_ds_config(TrainConfig(batch_size=4, grad_accum=2, zero_stage=2, clip=1.0),
                          ScalingConfig(num_workers=2), on_gpu=False)
    assert cfg == {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
        "train_batch_size": 16,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True,
                              "reduce_bucket_size": 5e7},
        "bf16": {"enabled": False},
        "fp16": {"enabled": False, "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def test_gpu_zero3_bf16_offload():
    cfg = build_ds_config(TrainConfig(zero_stage=3, offload=True), ScalingConfig(num_workers=8, use_gpu=True),
                          on_gpu=True)
    assert cfg["bf16"] == {"enabled": True}
    z = cfg["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["stage3_gather_16bit_weights_on_model_save"] is True
    assert cfg["optimizer"]["type"] == "AdamW"


@pytest.mark.parametrize(
    "train,scaling,on_gpu,needle",
    [
        (TrainConfig(precision="bf16"), ScalingConfig(), False, "train.precision='bf16' needs a GPU"),
        (TrainConfig(offload=True, zero_stage=1), ScalingConfig(use_gpu=True), True, "zero_stage 2 or 3"),
        (TrainConfig(offload=True, zero_stage=2), ScalingConfig(), False, "train.offload=false"),
    ],
)
def test_conflicting_settings_are_refused(train, scaling, on_gpu, needle):
    with pytest.raises(ConfigError, match=needle):
        build_ds_config(train, scaling, on_gpu=on_gpu)


def test_memory_estimate_zero3_shards_everything_and_lora_shrinks_optimizer():
    shape = {"params": 8_030_261_248, "hidden": 4096, "layers": 32, "heads": 32, "model_type": "llama"}
    common = dict(precision="bf16", offload=False, batch=1, seq=512, grad_checkpointing=True,
                  available_gib=72.0, device="GPU")
    full3 = memory.estimate(shape, lora_params=None, zero_stage=3, workers=8, **common)
    assert full3.weights_gib == pytest.approx(2 * shape["params"] / 8 / memory.GIB)
    assert full3.optimizer_gib == pytest.approx(12 * shape["params"] / 8 / memory.GIB)
    full2_1gpu = memory.estimate(shape, lora_params=None, zero_stage=2, workers=1, **common)
    assert not full2_1gpu.fits and full2_1gpu.total_gib > 16 * shape["params"] / memory.GIB * 0.99
    lora = memory.estimate(shape, lora_params=memory.lora_param_count(shape, 8, 2, None), zero_stage=3,
                           workers=1, **common)
    assert lora.fits and lora.optimizer_gib < 0.1


@pytest.mark.timeout(900)
def test_offload_engine_starts_and_steps_with_deepspeeds_cpu_adam(monkeypatch):
    """Issue 15: train.offload=true crashed at engine start (a torch AdamW under zero_force_ds_cpu_optimizer).

    The GPU config (ZeRO-2, optimizer offloaded to CPU, DeepSpeed's CPU Adam) runs here on the CPU accelerator
    in fp32, the way the loop starts it: the parameters go to deepspeed.initialize, not a torch optimizer."""
    import deepspeed
    import torch

    from armada_ray.train import ops
    from armada_ray.train.session import init_local_process_group

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    ops.use_extensions_dir()
    ops.prepare_ops(on_gpu=False, offload=True, log=print)  # cpu_adam, built by `make install`
    init_local_process_group()
    gpu_cfg = build_ds_config(TrainConfig(zero_stage=2, offload=True, batch_size=4, weight_decay=0.01),
                              ScalingConfig(num_workers=1, use_gpu=True), on_gpu=True)
    gpu_cfg["bf16"] = {"enabled": False}  # fp32: the CPU accelerator has no bf16 Adam kernel path to test here
    gpu_cfg["zero_optimization"]["offload_optimizer"]["pin_memory"] = False
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                                   config=gpu_cfg)
    assert "CPUAdam" in type(engine.optimizer.optimizer).__name__ if hasattr(engine.optimizer, "optimizer") \
        else "CPUAdam" in type(optimizer).__name__
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 0, 1])
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    engine.destroy()
