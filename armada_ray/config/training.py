"""Sections of what is trained and how: student (with LoRA), aligner, loss, schedule, scaling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from armada_ray.config.base import ModelRef, Section


class LoraConfig(Section):
    enabled: bool = True
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    layers_to_transform: list[int] | None = Field(None, description="Only these layers get LoRA (None = all).")


class StudentConfig(Section):
    model: ModelRef = Field("smollm2-135m", description="Hub id, local folder, or alias: smollm2-135m, minilm, "
                                                        "tiny-llama.")
    revision: str | None = None
    kind: Literal["auto", "encoder", "decoder"] = "auto"
    pooling: Literal["auto", "context", "cls", "pooler", "last", "first"] = Field(
        "auto", description="Encoders: context = a trainable ContextPooler (dense + activation over [CLS], as "
                            "DebertaV2ForSequenceClassification), pooler = the model's pooler_output, cls = the raw "
                            "first token. Decoders: last / first non-padding token. auto = context for DeBERTa(-v2), "
                            "pooler (else cls) for other encoders, last for decoders."
    )
    max_length: int = Field(128, ge=8, le=32768)
    input: Literal["fields", "teacher_prompt"] = Field(
        "fields", description="What a classification/regression student reads: fields = the task's own text fields "
                              "in their own case, pairs through the tokenizer's pair encoding (the reference code); "
                              "teacher_prompt = the teacher's lower-cased joined prompt.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    orthogonal_projection: bool = Field(False, description="Make the student projection p_s orthogonal.")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0,
                                description="Dropout on the pooled vector before the heads (reference code: 0.1).")
    head_init: Literal["torch", "normal"] = Field(
        "torch", description="Heads' init: torch's default, or normal(0, 0.02) as the reference code."
    )
    freeze_layers_below: int | None = Field(
        None, ge=0, description="Full fine-tuning only: freeze embeddings and layers below this index."
    )

    @model_validator(mode="after")
    def _lora_or_freeze(self) -> "StudentConfig":
        # refused on load, not after ~50 s inside the Ray worker (issue 13)
        if self.lora.enabled and self.freeze_layers_below is not None:
            raise ValueError("student.freeze_layers_below applies to full fine-tuning only; set "
                             "student.lora.enabled=false, or place LoRA on the top layers with "
                             "student.lora.layers_to_transform")
        return self


class AlignerConfig(Section):
    hidden: int = Field(768, ge=1, description="d: width of branch A.")
    proj_dim: int = Field(1024, ge=1, description="P: width of the orthogonal projection p_t (and p_s).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lr: float = Field(1e-3, gt=0)
    freeze_random: bool = Field(False, description="Ablation control: random, frozen aligner.")
    fit: Literal["converge", "per_epoch"] = Field(
        "converge",
        description="converge: before the student's first epoch, fit the aligner on the cached vectors until the "
                    "dev metric stops improving (fit_max_epochs, fit_patience), then keep it fixed; per_epoch: the "
                    "paper's schedule, one aligner pass per outer epoch (alternating) or per step (joint).",
    )
    fit_max_epochs: int = Field(300, ge=1, description="converge: most passes over the train vectors.")
    fit_patience: int = Field(25, ge=1, description="converge: stop after this many passes without a better dev metric.")
    batch_size: int = Field(32, ge=1, description="converge: rows per aligner step (the student's batch in per_epoch).")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay of the aligner.")
    standardize: bool = Field(
        True, description="Standardise teacher vectors per dimension (train-split mean/std, saved with the aligner)."
    )
    init: Literal["torch", "normal"] = Field(
        "torch", description="Linear-layer init: torch's default, or normal(0, 0.02) as the reference code."
    )
    student_targets: Literal["best", "latest"] = Field(
        "best",
        description="Which aligner the student learns against: best = the best-so-far by dev metric (also the one "
                    "exported); latest = the one just trained (the reference code; the best is still kept on disk).",
    )


class LossConfig(Section):
    mode: Literal["armada", "baseline"] = "armada"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    beta: float = Field(1.0, ge=0.0)
    gamma: float = Field(1.0, ge=0.0)
    temperature: float = Field(5.0, gt=0.0)
    manifold: Literal["cosine", "euclid", "pointwise"] = "cosine"
    soft: Literal["mse", "kl"] = "mse"


class TrainConfig(Section):
    schedule: Literal["alternating", "joint"] = "alternating"
    epochs: int = Field(
        2, ge=1, description="Outer epochs. 2 fits the CPU demo's budget; the reference code trains 10, and the jobs/ "
                             "GPU configs say their own.")
    batch_size: int = Field(8, ge=1, description="Micro-batch per worker.")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay of the student (reference code: 0.01).")
    clip: float = Field(1.0, gt=0)
    seed: int = 42
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload: bool = Field(False, description="ZeRO CPU offload of optimizer state (and params at stage 3).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU.")
    report_every: int = Field(20, ge=1, description="Steps between progress reports.")
    max_steps_per_epoch: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)


class ScalingConfig(Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0, description="Whole GPUs per rank: DeepSpeed binds one device per rank.")
    max_failures: int = Field(1, ge=0, description="Automatic restarts from the latest checkpoint.")
    gpu_memory_gb: float = Field(80.0, gt=0, description="Memory per GPU, for the fit check (H100: 80).")
    memory_headroom: float = Field(0.9, gt=0, le=1.0, description="Fraction of memory a plan may use.")
    cluster_spec: str | None = Field(
        None, description="An autoscaling cluster's description (cluster/autoscaler.yaml, cluster/kuberay/*.yaml): "
                          "the preflight sizes plans on it at full scale, not only on the nodes alive now.")

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_gpus(cls, v: float) -> float:
        # Ray would pack two 0.5-GPU ranks onto one device, where DeepSpeed/NCCL ranks cannot share it
        if v != int(v):
            raise ValueError(f"must be a whole number of GPUs (got {v}): DeepSpeed binds one device per rank; "
                             "use 1, or 0 with scaling.use_gpu=false")
        return v
