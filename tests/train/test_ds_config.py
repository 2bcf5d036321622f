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


@pytest.mark.timeout(600)
def test_zero3_builds_the_student_partitioned_and_it_still_trains(monkeypatch):
    """Issue 15: under ZeRO-3 the backbone is created inside deepspeed.zero.Init (transformers' HfDeepSpeedConfig),
    so each parameter is partitioned as it is made instead of every rank materialising the whole model first.

    Checked before deepspeed.initialize (which would partition anything left over): the backbone's parameters are
    already ZeRO parameters with their full size recorded, and the engine then trains."""
    import deepspeed
    import torch

    from armada_ray.config import StudentConfig
    from armada_ray.model import build_student
    from armada_ray.model.build import trainable_parameters
    from armada_ray.train import ops
    from armada_ray.train.ds_config import load_dtype, zero3_init_context
    from armada_ray.train.session import init_local_process_group

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    ops.use_extensions_dir()
    init_local_process_group()
    ds_cfg = build_ds_config(TrainConfig(zero_stage=3, batch_size=2), ScalingConfig(num_workers=1), on_gpu=False)
    assert zero3_init_context(build_ds_config(TrainConfig(zero_stage=2), ScalingConfig(), on_gpu=False)) is None
    assert load_dtype(ds_cfg) is None  # fp32 on CPU; bf16 GPU configs load in bf16
    assert load_dtype(build_ds_config(TrainConfig(zero_stage=3), ScalingConfig(use_gpu=True), on_gpu=True)) \
        is torch.bfloat16
    keep = zero3_init_context(ds_cfg)
    try:
        student, tok = build_student(StudentConfig(model="tiny-llama", max_length=16), num_classes=3, proj_dim=8)
        # the loaded (frozen) base weights; LoRA adapters and heads are made afterwards and partitioned at initialize
        backbone = [p for n, p in student.named_parameters() if "heads" not in n and "lora_" not in n]
        assert backbone and all(hasattr(p, "ds_id") for p in backbone)
        assert sum(p.numel() for p in backbone) < sum(p.ds_numel for p in backbone)  # partitioned, not materialised
        trainable, total = trainable_parameters(student)
        assert 0 < trainable < total and total >= sum(p.ds_numel for p in backbone)
        params = [p for p in student.parameters() if p.requires_grad]
        engine, _, _, _ = deepspeed.initialize(model=student, optimizer=torch.optim.AdamW(params, lr=1e-2),
                                               config=ds_cfg)
        enc = tok(["a short text", "another one"], return_tensors="pt", padding=True)
        y = torch.tensor([0, 2])
        losses = []
        for _ in range(4):
            loss = torch.nn.functional.cross_entropy(engine(input_ids=enc["input_ids"],
                                                            attention_mask=enc["attention_mask"]).s1, y)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]
        engine.destroy()
        # a later ZeRO-2 worker in this process (armada report's next cell) is not built under the stale ZeRO-3 one
        from transformers.integrations import is_deepspeed_zero3_enabled

        assert is_deepspeed_zero3_enabled()
        assert zero3_init_context(build_ds_config(TrainConfig(zero_stage=2), ScalingConfig(), on_gpu=False)) is None
        assert not is_deepspeed_zero3_enabled()
    finally:
        del keep
