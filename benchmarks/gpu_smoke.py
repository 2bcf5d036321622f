"""One-GPU smoke run: the 8B-shaped LoRA student, checkpoint without frozen weights + resume, offload, SD teacher.

Everything runs in this process through the project's own per-worker loop (``ArmadaWorker`` on a one-rank
``LocalSession``): no Ray, no MLflow, so it runs on a bare one-GPU machine that has PyTorch (CUDA), transformers
and peft but not Ray/DeepSpeed/pydantic/diffusers (those travel as a wheel bundle, below). ``ray`` and ``mlflow``
are blocked in ``sys.modules`` here too, so an import of either on this path fails here as it would there. Three
legs, in this order, each printing its own JSON line when it ends; a failing leg is recorded as ``{"error": ...}``
(traceback on stderr) and the others still run. On the GPU each leg is also cut (SIGALRM) at its cap
(``LEG_CAP_S``) or at what is left of ``--budget-s`` (540 s), so one hung leg cannot use up the machine's time:

lora
    ``student.model=llama3-8b-shape`` (Llama-3-8B's architecture, random weights from its config, no download),
    bf16, DeepSpeed ZeRO-3, LoRA r=64 (alpha 16) on q_proj/k_proj/v_proj/o_proj of every layer, sequence 512,
    ``loss.mode=armada`` on a generative ``task.name=files`` task that this script writes (texts long enough
    to fill 512 tokens, short answers) with random 1024-d teacher vectors written straight into the project's
    teacher cache (the SD-v1 recipe's dimension and fingerprint; the teacher itself is measured in its own leg).
    ``ArmadaWorker.run()`` trains 2 epochs of ``--steps`` steps; its checkpoints go through
    ``_save_checkpoint`` (``exclude_frozen_parameters``: no frozen base weights are written) into a session that
    keeps them like Ray Train would. A fresh worker then resumes from the epoch-1 checkpoint and trains epoch 2:
    ``resume_loss_rel_diff`` = |first step loss of its epoch 2 − the uninterrupted worker's| / |the latter|.
    Finally the resumed student greedily generates 8 tokens (``min_new_tokens=8``) for 2 dev prompts.
teacher
    The paper's SD recipe (``armada_ray/teachers/diffusion.py``: txt2img 20 steps at 512 px → 128 px →
    img2img, strength 0.75, guidance 7.5, latent) with SD-v1's exact UNet/VAE/CLIP-L shapes and random weights
    (``teacher.model=sd-v1-shape``, fp16), one batch of 8 and one of 32 prompts after a warm-up: rows/s each.
offload
    A fresh worker with ``train.offload=true`` (ZeRO-3: optimizer state and parameters on the CPU, DeepSpeed's
    CPU Adam, JIT-built once on first use), ``--offload-steps`` steps of ``student_epoch`` (the training steps
    only: a dev generation would stream every parameter from the CPU per token): seconds per step. It runs last
    because its JIT build of CPU Adam (ninja + nvcc/g++ on the device machine) is the likeliest to fail or be slow.

MFU of the lora leg (``value``, a fraction of ``--peak-tflops``; 989 TFLOP/s = H100/H200 SXM dense bf16). Model
FLOPs per step, summed over the step's rows (each row has n tokens, of which a are supervised answer tokens)::

    F_row = n·(4·N_body + 6·N_lora) + 12·L·d·n² + 4·d·V·a
    MFU   = batch · mean(F_row) / step_s / peak

- ``N_body``: weights of the transformer layers' linear maps (no embeddings, no LM head), 6.98e9 for the 8B shape.
  LoRA leaves them frozen: forward 2·N_body plus the input gradient 2·N_body; no weight gradient.
- ``N_lora``: the adapters, r·(d_in + d_out) per adapted map: forward, input and weight gradients, 6·N_lora.
- ``12·L·d·n`` per token: the attention score and value matmuls (QKᵀ and AV, 2·2·n·d per layer forward, ×3 with
  backward), counted over the full n×n square as PaLM, Megatron and torchtitan do (a causal kernel does about half).
- ``4·d·V·a``: the LM head (frozen, d×V) runs only on the answer positions (``GenerativeStudent``): forward +
  input gradient. The ARMADA heads (on one pooled vector per row) and gradient-checkpointing recompute are not
  model FLOPs. ``step_s`` is the median of the steps after the loop's warm-up (``WARMUP_STEPS``) of both epochs.

``--quick`` (and any run without a CUDA GPU) runs the same legs with tiny shapes on the CPU in fp32: ``tiny-llama``,
sequence 64, 3 steps, the ``tiny`` SD pipeline (32 px, 4 steps); it prints, never saves, and has no MFU. On the
CPU ``train.offload=true`` is refused by the config check (nothing to offload to), so that leg builds the GPU's
DeepSpeed config and runs it in fp32 without pinned memory, as ``tests/train/test_ds_config.py`` does.

The bare GPU machine (shared/NOTES.md): Python 3.12, torch (CUDA), transformers, peft, accelerate, safetensors,
pyarrow, scikit-learn, nvcc; no network. Prepare the bundle here (cp312 wheels + the 8B-shape config/tokenizer
folder + the CLIP BPE tokenizer folder, 23.9 MiB; the folder is git-ignored; needs the package index)::

    .venv/bin/python benchmarks/gpu_smoke.py --prepare-wheels benchmarks/.wheels

then run on the device machine (``run`` copies tracked and untracked-not-ignored files; ignored ones must be carried)::

    run(command="PY=/opt/torch/.venv/bin/python; [ -x $PY ] || PY=python3; "
                "$PY benchmarks/gpu_smoke.py --install-wheels benchmarks/.wheels --out $OUT",
        carry=["benchmarks/.wheels"], timeout_s=600)

``--install-wheels DIR`` pip-installs, offline (``--no-index --find-links DIR --no-deps --target DIR/site``), the
bundle's wheels whose package is missing or older there (unpacking them itself where that Python has no pip),
puts DIR/site on the path and DIR/site/bin (ninja, for DeepSpeed's JIT builds) on PATH, copies the model/tokenizer
folders into the armada cache, then runs the smoke. ``--out`` gets ``gpu_smoke.json`` (the saved result, with the
device and machine) and ``gpu_smoke_legs.jsonl``: commit the former as benchmarks/results/gpu_smoke.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the device machine has the checkout, not an installed armada_ray
from _common import RESULTS, ROOT, emit  # noqa: E402

os.environ.setdefault("ARMADA_CACHE_DIR", str(Path.home() / ".cache" / "armada-ray"))

# not on the bare GPU machine: refused in this process too, so a stray import fails here as it would there
BLOCKED = ("ray", "mlflow")
# what the bare machine lacks, as cp312/pure wheels (deepspeed is an sdist: built into a pure wheel here)
BUILT_WHEELS = ("deepspeed",)
DOWNLOADED_WHEELS = (
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",  # config + DeepSpeed
    "hjson", "py-cpuinfo", "ninja", "msgpack", "einops",  # DeepSpeed's own requirements
    "diffusers", "importlib-metadata", "zipp", "pillow",  # the SD teacher
    "requests", "urllib3", "idna", "charset-normalizer", "certifi",  # diffusers imports requests
)
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
GEN_TOKENS = 8
WORDS = ("river stone market window garden silver engine letter summer winter morning evening village harbor "
         "mountain forest island bridge station kitchen painter doctor teacher farmer sailor student friend "
         "orange yellow purple green quiet bright early late small large ancient modern simple careful rapid "
         "gentle heavy light warm cold open closed north south east west paper glass metal wooden cotton "
         "wheel clock candle mirror pocket basket ladder hammer needle thread signal record journey answer "
         "question reason number pattern season valley desert meadow canyon lantern compass harvest festival "
         "orchestra library museum theater factory airport highway tunnel castle temple cottage palace").split()


# ------------------------------------------------------------------------------------------ the wheel bundle


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def prepare_bundle(folder: Path, python_version: str) -> dict[str, Any]:
    """Wheels of what the bare GPU machine lacks, at the versions installed here, plus two offline asset folders."""
    from importlib.metadata import version

    from armada_ray.model.hub import resolve_model_path
    from armada_ray.teachers.diffusion import tokenizer_dir

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):  # a bundle holds one version of each package
        old.unlink()
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(folder), *(f"{n}=={version(n)}" for n in BUILT_WHEELS)],
                   check=True)
    abi = "cp" + python_version.replace(".", "")
    plats = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([*pip, "download", "--only-binary=:all:", "--no-deps", "--python-version", python_version,
                    "--implementation", "cp", "--abi", abi, *plats, "-d", str(folder),
                    *(f"{n}=={version(n)}" for n in DOWNLOADED_WHEELS)], check=True)
    assets = folder / "armada-cache"
    for src, dest in ((Path(resolve_model_path("llama3-8b-shape")), assets / "models" / "llama3-8b-shape"),
                      (tokenizer_dir("clip-bpe"), assets / "tokenizers" / "clip-tokenizer-clip-bpe")):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest)
    wheels = {p.name: p.stat().st_size for p in sorted(folder.glob("*.whl"))}
    sizes = {"wheels": wheels, "wheels_bytes": sum(wheels.values()), "assets_bytes": _tree_bytes(assets)}
    sizes["total_bytes"] = sizes["wheels_bytes"] + sizes["assets_bytes"]
    (folder / "bundle.json").write_text(json.dumps({**sizes, "python": python_version}, indent=1) + "\n")
    for name, size in wheels.items():
        print(f"{size / 2**20:8.2f} MiB  {name}")
    print(f"{sizes['assets_bytes'] / 2**20:8.2f} MiB  armada-cache/ (llama3-8b-shape config + tokenizer, CLIP BPE)")
    print(f"{sizes['total_bytes'] / 2**20:8.2f} MiB  in all, in {folder} (carry limit: 64 MiB with the checkout)")
    return sizes


def _activate(site: Path) -> None:
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    os.environ["PATH"] = os.pathsep.join([str(site / "bin"), os.environ.get("PATH", "")])  # JIT builds run `ninja`


def _extract(wheel: Path, site: Path) -> None:
    """What pip does for these wheels when the machine has no pip: unzip, lift ``*.data/{purelib,platlib}`` into
    ``site`` and ``*.data/scripts`` (ninja's binary) into ``site/bin``, executable."""
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    for data in site.glob("*.data"):
        for kind in ("purelib", "platlib"):
            if (data / kind).is_dir():
                shutil.copytree(data / kind, site, dirs_exist_ok=True)
        if (data / "scripts").is_dir():
            shutil.copytree(data / "scripts", site / "bin", dirs_exist_ok=True)
        shutil.rmtree(data)
    for exe in (site / "bin").glob("*"):
        exe.chmod(0o755)


def install_bundle(folder: Path) -> dict[str, Any]:
    """Install, offline, the bundle's wheels whose package is missing or older here (into ``folder/site``)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    site = folder / "site"
    wanted, present = [], {}
    for wheel in sorted(folder.glob("*.whl")):
        name, ver = wheel.name.split("-")[:2]
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have is None or Version(have) < Version(ver):
            wanted.append(wheel)
        else:
            present[name] = have
    site.mkdir(parents=True, exist_ok=True)
    how = "nothing to install"
    if wanted:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(folder), "--no-deps",
               "--upgrade", "--target", str(site), "--quiet", *map(str, wanted)]
        try:
            subprocess.run(cmd, check=True)
            how = "pip"
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"pip install failed ({exc}); unpacking the wheels instead", flush=True)
            for wheel in wanted:
                _extract(wheel, site)
            how = "unzip"
    _activate(site)
    cache_root = Path(os.environ["ARMADA_CACHE_DIR"])
    for kind in ("models", "tokenizers"):
        for src in sorted((folder / "armada-cache" / kind).glob("*")):
            dest = cache_root / kind / src.name
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(src, dest)
    info = {"installed": [w.name for w in wanted], "already_present": present, "how": how, "site": str(site)}
    print(json.dumps({"bundle": info}), flush=True)
    return info


# ------------------------------------------------------------------------------------------ plan and data


@dataclass
class Plan:
    gpu: bool
    device: str
    work: Path
    shape: str
    seq: int
    batch: int
    steps: int  # per epoch; the lora leg runs 2 epochs
    offload_steps: int
    teacher_model: str
    teacher_image: int
    teacher_steps: int
    aligner: tuple[int, int]  # (hidden, proj_dim)
    grad_ckpt: bool
    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    @classmethod
    def make(cls, gpu: bool, args: argparse.Namespace) -> "Plan":
        work = Path(tempfile.mkdtemp(prefix="armada-gpu-smoke-"))
        if gpu:
            return cls(True, "cuda:0", work, "llama3-8b-shape", 512, args.batch or 8, args.steps or 6,
                       args.offload_steps or 4, "sd-v1-shape", 128, 20, (768, 1024), args.grad_ckpt)
        return cls(False, "cpu", work, "tiny-llama", 64, args.batch or 4, args.steps or 3, args.offload_steps or 3,
                   "tiny", 32, 4, (64, 64), args.grad_ckpt)

    def write_task(self) -> None:
        """A generative JSONL task: unique texts longer than ``seq`` tokens, two-word answers."""
        rng = random.Random(0)
        n_words = int(self.seq * 1.1) + 8
        self.rows = {"train": self.batch * self.steps, "dev": 2, "test": 2}
        for split, n in self.rows.items():
            self.files[split] = self.work / "data" / f"{split}.jsonl"
            self.files[split].parent.mkdir(parents=True, exist_ok=True)
            with open(self.files[split], "w") as f:
                for i in range(n):
                    text = f"{split} report {i}: " + " ".join(rng.choice(WORDS) for _ in range(n_words))
                    f.write(json.dumps({"text": text, "answer": f"{rng.choice(WORDS)} {rng.choice(WORDS)}"}) + "\n")

    def teacher_texts(self, n: int) -> list[str]:
        rng = random.Random(1)
        return [f"prompt {i}: " + " ".join(rng.choice(WORDS) for _ in range(12)) for i in range(n)]  # < 77 CLIP tokens

    def overrides(self, run_name: str, *extra: str) -> list[str]:
        f = self.files
        hidden, proj = self.aligner
        return [
            f"paths.work_dir={self.work}", f"run_name={run_name}", "tracking.enabled=false",
            "task.name=files", f"task.files={{train: {f['train']}, dev: {f['dev']}, test: {f['test']}}}",
            "task.text_fields=[text]", "task.kind=generative", "task.answer_field=answer",
            f"task.max_train={self.rows['train']}", f"task.max_dev={self.rows['dev']}",
            f"task.max_test={self.rows['test']}",
            f"teacher={{kind: diffusion, model: {self.teacher_model}, image_size: {self.teacher_image}, "
            f"steps: {self.teacher_steps}, stand_in: true}}",
            f"student.model={self.shape}", f"student.max_length={self.seq}", "student.lora.enabled=true",
            "student.lora.r=64", "student.lora.alpha=16", f"student.lora.target_modules=[{','.join(LORA_TARGETS)}]",
            "student.lora.layers_to_transform=null", f"student.gradient_checkpointing={str(self.grad_ckpt).lower()}",
            f"aligner.hidden={hidden}", f"aligner.proj_dim={proj}", "loss.mode=armada",
            f"train.batch_size={self.batch}", "train.epochs=2", f"train.max_steps_per_epoch={self.steps}",
            "train.zero_stage=3", f"train.report_every={self.steps}",
            f"scaling.use_gpu={str(self.gpu).lower()}", "scaling.num_workers=1", f"eval.max_new_tokens={GEN_TOKENS}",
            *extra,
        ]

    def config(self, run_name: str, *extra: str) -> Any:
        from armada_ray.config import load_config

        return load_config(ROOT / "jobs" / "demo.yaml", self.overrides(run_name, *extra))


def write_teacher_cache(cfg: Any, seed: int = 0) -> dict[str, Any]:
    """Random teacher vectors for every prompt of the task, in the cache the loop reads for ``cfg.teacher``."""
    import numpy as np

    from armada_ray.cache import TeacherCache
    from armada_ray.tasks import load_task
    from armada_ray.teachers import build_teacher
    from armada_ray.teachers.prompts import teacher_prompt

    teacher = build_teacher(cfg.teacher, device=cfg.embed.teacher_device)  # what open_cache_for fingerprints
    cache = TeacherCache(cfg.cache_root, teacher.fingerprint(), dim=teacher.dim, dtype=cfg.cache.dtype)
    data = load_task(cfg.task)
    prompts = sorted({teacher_prompt(cfg.teacher, data.spec, ex) for split in ("train", "dev", "test")
                      for ex in getattr(data, split)})
    vectors = np.random.default_rng(seed).standard_normal((len(prompts), teacher.dim)).astype(np.float32)
    cache.write_shard([cache.key_for(p) for p in prompts], vectors)
    return {"rows": len(prompts), "dim": teacher.dim, "path": str(cache.path)}


# ------------------------------------------------------------------------------------------ sessions


class DirCheckpoint:
    """The part of ``ray.train.Checkpoint`` the loop uses: ``as_directory()``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield str(self.path)


def _local_session_class() -> type:
    from armada_ray.train.session import LocalSession

    @dataclass
    class KeepingSession(LocalSession):
        """A one-rank ``LocalSession`` that keeps checkpoints as Ray Train does: each report's folder is copied
        into ``store`` (the rank's temp folder is removed by the loop afterwards); resume reads ``resume_from``."""

        store: Path | None = None
        resume_from: Path | None = None
        saved: list[dict[str, Any]] = field(default_factory=list)
        keeps_checkpoints = True  # a class attribute, as in Session

        def get_checkpoint(self) -> Any:
            return DirCheckpoint(self.resume_from) if self.resume_from else None

        def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
            super().report(metrics, checkpoint_dir)
            if checkpoint_dir is None:
                return
            assert self.store is not None
            dest = self.store / f"checkpoint_{len(self.saved):06d}"
            t0 = time.perf_counter()
            shutil.copytree(checkpoint_dir, dest)
            self.saved.append({"path": dest, "epoch": metrics.get("epoch"), "copy_s": time.perf_counter() - t0,
                               "bytes": _tree_bytes(dest)})

    return KeepingSession


def _timed_saves(engine: Any) -> list[float]:
    """Seconds of every ``engine.save_checkpoint`` call from now on."""
    times: list[float] = []
    save = engine.save_checkpoint

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return save(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - t0)

    engine.save_checkpoint = timed
    return times


def _free() -> None:
    """Collect what the legs dropped (a ZeRO-3 engine holds cycles) and hand its GPU memory back."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ FLOPs


def model_counts(model_name: str, r: int) -> dict[str, int]:
    """N_body, N_lora, L, d, V of a LLaMA-family student, from its config (exact for q/k/v/o + gated MLP, no bias).

    From the config, not a model on the meta device: once a ZeRO-3 worker exists, transformers builds every
    model inside ``deepspeed.zero.Init`` (``HfDeepSpeedConfig``), which a meta model cannot go through."""
    from transformers import AutoConfig

    from armada_ray.model.hub import resolve_model_path

    c = AutoConfig.from_pretrained(resolve_model_path(model_name))
    d, layers, heads, kv = c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads
    hd = getattr(c, "head_dim", None) or d // heads
    shapes = {"q_proj": (d, heads * hd), "k_proj": (d, kv * hd), "v_proj": (d, kv * hd), "o_proj": (heads * hd, d)}
    body = layers * (sum(i * o for i, o in shapes.values()) + 3 * d * c.intermediate_size)
    lora = layers * sum(r * (i + o) for name, (i, o) in shapes.items() if name in LORA_TARGETS)
    embed = c.vocab_size * d * (1 if c.tie_word_embeddings else 2)
    return {"n_body": body, "n_lora": lora, "layers": layers, "hidden": d, "vocab": c.vocab_size,
            "params": body + embed + (2 * layers + 1) * d}


def flops_per_step(counts: dict[str, int], dataset: Any, batch: int) -> tuple[float, float]:
    """(model FLOPs, tokens) per step: ``batch`` × the train rows' mean (see the module docstring)."""
    n_body, n_lora, layers, d, vocab = (counts[k] for k in ("n_body", "n_lora", "layers", "hidden", "vocab"))
    per_row, tokens = [], []
    for ids, answer in zip(dataset.input_ids, dataset.answer_len):
        n = len(ids)
        per_row.append(n * (4 * n_body + 6 * n_lora) + 12 * layers * d * n * n + 4 * d * vocab * answer)
        tokens.append(n)
    return batch * statistics.fmean(per_row), batch * statistics.fmean(tokens)


# ------------------------------------------------------------------------------------------ the legs


def leg_lora(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from armada_ray.cache import resolve_teacher_identity
    from armada_ray.train.data import lm_prompt
    from armada_ray.train.loop import WARMUP_STEPS, ArmadaWorker

    cfg = plan.config("smoke-lora")
    cache = write_teacher_cache(cfg)
    teacher = resolve_teacher_identity(cfg)  # resolved once, as a driver does, and handed to the worker
    session_cls = _local_session_class()
    _reset_peak()

    t0 = time.perf_counter()
    first = session_cls.create(plan.device, quiet=False)
    first.store = plan.work / "kept-checkpoints" / "first"
    worker = ArmadaWorker(cfg, first, parent_run_id=None, teacher=teacher)
    init_s = time.perf_counter() - t0
    frozen_bytes = sum(getattr(p, "ds_numel", p.numel()) * p.element_size()
                       for p in worker.engine.module.parameters() if not p.requires_grad)
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in worker.engine.module.parameters() if p.requires_grad)
    saves = _timed_saves(worker.engine)
    counts = model_counts(plan.shape, cfg.student.lora.r)
    flops, tokens = flops_per_step(counts, worker.datasets["train"], plan.batch)
    row_lengths = [len(ids) for ids in worker.datasets["train"].input_ids]
    t0 = time.perf_counter()
    worker.run()
    run_s = time.perf_counter() - t0
    e1, e2 = worker.state["history"][:2]
    steady = e1["step_s"][WARMUP_STEPS:] + e2["step_s"][1:]
    step_s = statistics.median(steady)
    peak_train = _peak_gib()
    worker.engine.destroy()
    del worker
    _free()

    ckpt = first.saved[0]
    ds_bytes = _tree_bytes(ckpt["path"] / "deepspeed")  # the engine's own files: adapters, heads, their optimizer
    second = session_cls.create(plan.device, quiet=False)
    second.store, second.resume_from = plan.work / "kept-checkpoints" / "second", ckpt["path"]
    t0 = time.perf_counter()
    resumed = ArmadaWorker(cfg, second, parent_run_id=None, teacher=teacher)
    resume_init_s = time.perf_counter() - t0
    resumed_after = resumed.state["epoch"]
    resumed.run()
    loss_uninterrupted, loss_resumed = e2["first_step_loss"], resumed.state["history"][1]["first_step_loss"]

    tok, student = resumed.tokenizer, resumed.engine.module
    prompts = [lm_prompt(p) for p in resumed.splits["dev"].prompts[:2]]
    side = tok.padding_side, tok.truncation_side
    tok.padding_side = tok.truncation_side = "left"
    try:
        enc = tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=plan.seq).to(plan.device)
    finally:
        tok.padding_side, tok.truncation_side = side
    student.eval()
    _sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = student.backbone.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                        max_new_tokens=GEN_TOKENS, min_new_tokens=GEN_TOKENS, do_sample=False,
                                        pad_token_id=tok.pad_token_id)
    _sync()
    generate_s = time.perf_counter() - t0
    generated = int(out.shape[1] - enc["input_ids"].shape[1])
    sample = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    resumed.engine.destroy()
    del resumed, student
    _free()

    tflops = flops / step_s / 1e12
    return {
        "tokens_per_s": round(tokens / step_s, 1),
        "mfu": round(tflops / args.peak_tflops, 4) if plan.gpu else None,
        "achieved_tflops": round(tflops, 4),
        "step_s": round(step_s, 4),
        "steps_measured": len(steady),
        "flops_per_step": flops,
        "tokens_per_step": tokens,
        "row_tokens_min_max": [min(row_lengths), max(row_lengths)],
        "n_body": counts["n_body"], "n_lora": counts["n_lora"], "params": counts["params"],
        "trainable_params": trainable,
        "peak_mem_gib": peak_train,
        "worker_init_s": round(init_s, 1),
        "train_run_s": round(run_s, 1),
        "checkpoint_bytes": ckpt["bytes"],
        "checkpoint_deepspeed_bytes": ds_bytes,
        "frozen_param_bytes": frozen_bytes,
        "checkpoint_save_s": round(saves[0], 3) if saves else None,
        "checkpoint_copy_s": round(ckpt["copy_s"], 3),
        "resumed_after_epoch": resumed_after,
        "resume_init_s": round(resume_init_s, 1),
        "resume_losses": [loss_uninterrupted, loss_resumed],
        "resume_loss_rel_diff": abs(loss_resumed - loss_uninterrupted) / max(abs(loss_uninterrupted), 1e-12),
        "generated_tokens": generated,
        "generate_s": round(generate_s, 3),
        "generated_sample": sample[:80],
        "teacher_cache_rows": cache["rows"],
    }


@contextlib.contextmanager
def _gpu_ds_config_on_cpu() -> Iterator[None]:
    """On the CPU: the loop builds the GPU's offload config, in fp32 and without pinned memory."""
    from armada_ray.train import ds_config, loop

    def build(train: Any, scaling: Any, *, on_gpu: bool) -> dict[str, Any]:
        cfg = ds_config.build_ds_config(train, scaling.model_copy(update={"use_gpu": True}), on_gpu=True)
        cfg["bf16"] = {"enabled": False}
        for key in ("offload_optimizer", "offload_param"):
            if key in cfg["zero_optimization"]:
                cfg["zero_optimization"][key]["pin_memory"] = False
        return cfg

    loop.build_ds_config = build
    try:
        yield
    finally:
        loop.build_ds_config = ds_config.build_ds_config


def leg_offload(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    from armada_ray.cache import resolve_teacher_identity
    from armada_ray.train.loop import WARMUP_STEPS, ArmadaWorker
    from armada_ray.train.session import LocalSession

    cfg = plan.config("smoke-offload", "train.offload=true", "train.epochs=1",
                      f"train.max_steps_per_epoch={plan.offload_steps}")
    write_teacher_cache(cfg)
    _reset_peak()
    t0 = time.perf_counter()
    with contextlib.nullcontext() if plan.gpu else _gpu_ds_config_on_cpu():
        worker = ArmadaWorker(cfg, LocalSession.create(plan.device), parent_run_id=None,
                              teacher=resolve_teacher_identity(cfg))
    init_s = time.perf_counter() - t0
    optimizer = type(getattr(worker.engine.optimizer, "optimizer", worker.engine.optimizer)).__name__
    out = worker.student_epoch(0)  # the training steps only: no dev generation with every parameter on the CPU
    worker.engine.destroy()
    del worker
    _free()
    steps = out["step_s"]
    return {
        "offload_step_s": round(statistics.median(steps[WARMUP_STEPS:] or steps), 4),
        "step_s": steps,
        "loss": out["train_loss"],
        "optimizer": optimizer,
        "worker_init_s": round(init_s, 1),
        "peak_mem_gib": _peak_gib(),
        "ds_config": "GPU offload config run in fp32 on the CPU" if not plan.gpu else "as built for the GPU",
    }


def leg_teacher(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from armada_ray.config import load_config
    from armada_ray.teachers import build_teacher

    batches = (8, 32)
    tcfg = load_config(None, [f"teacher={{kind: diffusion, model: {plan.teacher_model}, image_size: "
                              f"{plan.teacher_image}, steps: {plan.teacher_steps}, batch_size: {max(batches)}, "
                              "stand_in: true}"]).teacher
    teacher = build_teacher(tcfg, device="cuda" if plan.gpu else "cpu")
    texts = plan.teacher_texts(max(batches))
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # a worker still alive would make transformers build CLIP inside zero.Init
        raise RuntimeError("a ZeRO-3 worker of an earlier leg is still alive (HfDeepSpeedConfig)")
    _reset_peak()
    t0 = time.perf_counter()
    teacher.load()
    teacher.embed(texts[:2])  # warm-up
    load_s = time.perf_counter() - t0
    rows_per_s, seconds = {}, {}
    for b in batches:
        _sync()
        t0 = time.perf_counter()
        vectors = teacher.embed(texts[:b])
        _sync()
        seconds[str(b)] = round(time.perf_counter() - t0, 3)
        if vectors.shape != (b, teacher.dim) or not np.isfinite(vectors).all():
            raise RuntimeError(f"teacher batch {b}: vectors {vectors.shape}, all finite: {np.isfinite(vectors).all()}")
        rows_per_s[str(b)] = round(b / seconds[str(b)], 3)
    dtype, txt2img = str(next(teacher._pipe.unet.parameters()).dtype), teacher.txt2img_size
    del teacher
    _free()
    return {"teacher_rows_per_s": rows_per_s, "seconds": seconds, "load_and_warmup_s": round(load_s, 1),
            "model": plan.teacher_model, "dim": int(vectors.shape[1]), "dtype": dtype,
            "txt2img_px": txt2img, "image_size": plan.teacher_image,
            "steps": plan.teacher_steps, "peak_mem_gib": _peak_gib()}


LEGS = {"lora": leg_lora, "teacher": leg_teacher, "offload": leg_offload}
LEG_CAP_S = {"lora": 330, "teacher": 150, "offload": 180}  # on the GPU; whatever is left of --budget-s caps them too


class LegTimeout(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: int | None) -> Iterator[None]:
    if not seconds:
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise LegTimeout(f"leg ran past its {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "deepspeed", "diffusers", "pydantic"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU, < 3 min; prints, does not save")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200 SXM)")
    ap.add_argument("--legs", default="lora,teacher,offload", help="comma-separated subset of lora,teacher,offload")
    ap.add_argument("--batch", type=int, default=None, help="micro-batch (GPU 8, CPU 4)")
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch of the lora leg (GPU 6, CPU 3)")
    ap.add_argument("--offload-steps", type=int, default=None, help="steps of the offload leg (GPU 4, CPU 3)")
    ap.add_argument("--grad-ckpt", action="store_true", help="student.gradient_checkpointing=true")
    ap.add_argument("--budget-s", type=float, default=540.0, help="GPU: skip or cut legs beyond this wall time")
    ap.add_argument("--out", type=Path, default=None, help="also write the result and the leg lines here ($OUT)")
    ap.add_argument("--prepare-wheels", type=Path, metavar="DIR", help="build the bundle for the bare GPU machine")
    ap.add_argument("--python-version", default="3.12", help="of the bundle's wheels (the GPU machine's Python)")
    ap.add_argument("--install-wheels", type=Path, metavar="DIR", help="install a bundle offline, then run")
    args = ap.parse_args()
    if args.prepare_wheels:
        prepare_bundle(args.prepare_wheels.resolve(), args.python_version)
        return
    for name in BLOCKED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type] - `import ray` now fails as on the GPU machine
    bundle = install_bundle(args.install_wheels.resolve()) if args.install_wheels else None

    import torch

    gpu = torch.cuda.is_available() and not args.quick
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
    from armada_ray.train.ops import DEFAULT_EXTENSIONS_DIR

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    plan = Plan.make(gpu, args)
    plan.write_task()
    legs = [x.strip() for x in args.legs.split(",") if x.strip()]
    unknown = sorted(set(legs) - set(LEGS))
    if unknown:
        ap.error(f"--legs: unknown {unknown}; allowed {', '.join(LEGS)}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    for name in legs:
        left = args.budget_s - (time.perf_counter() - t_start) - 10
        cap = int(min(LEG_CAP_S[name], left)) if gpu else None
        t0 = time.perf_counter()
        if cap is not None and cap < 30:
            rows[name] = {"error": f"skipped: {left:.0f} s left of --budget-s {args.budget_s:.0f}"}
        else:
            try:
                with _alarm(cap):
                    rows[name] = LEGS[name](plan, args)
            except Exception as exc:  # noqa: BLE001 - one leg failing must not lose the others
                rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:800]}"}
                traceback.print_exc()  # stderr: where it failed; the leg line says what
            _free()  # after the except block: its traceback no longer holds the failed leg's objects
        rows[name]["leg_s"] = round(time.perf_counter() - t0, 1)
        line = json.dumps({"leg": name, **rows[name]}, default=str)
        print(line, flush=True)
        if args.out:
            with open(args.out / "gpu_smoke_legs.jsonl", "a") as f:
                f.write(line + "\n")

    lora, offload, teacher = (rows.get(k, {}) for k in ("lora", "offload", "teacher"))
    device = torch.cuda.get_device_name(0) if gpu else "cpu (tiny shapes: plumbing only, no GPU figures)"
    result = {
        "name": "gpu_smoke",
        "value": lora.get("mfu"),
        "unit": "fraction",
        "device": device,
        "student_shape": plan.shape, "seq": plan.seq, "batch": plan.batch, "steps_per_epoch": plan.steps,
        "lora": {"r": 64, "alpha": 16, "targets": list(LORA_TARGETS)}, "zero_stage": 3,
        "precision": "bf16" if gpu else "fp32", "gradient_checkpointing": plan.grad_ckpt,
        "peak_tflops": args.peak_tflops if gpu else None,
        **{k: lora.get(k) for k in ("tokens_per_s", "mfu", "achieved_tflops", "peak_mem_gib", "checkpoint_bytes",
                                    "checkpoint_deepspeed_bytes", "frozen_param_bytes", "checkpoint_save_s",
                                    "resume_loss_rel_diff", "generated_tokens")},
        "offload_step_s": offload.get("offload_step_s"),
        "teacher_rows_per_s": teacher.get("teacher_rows_per_s"),
        "teacher_model": plan.teacher_model,
        "legs": rows,
        "imported": {m: sys.modules.get(m) is not None for m in (*BLOCKED, "deepspeed", "diffusers")},
        "versions": _versions(),
        "cuda": torch.version.cuda,
        "bundle": bundle,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "notes": "value = MFU of the LoRA leg (fraction of peak_tflops; null on CPU); FLOP formula in the docstring",
    }
    quick = args.quick or not gpu
    emit(result, quick)
    if args.out:
        saved = RESULTS / "gpu_smoke.json"
        if not quick and saved.is_file():
            shutil.copy(saved, args.out / "gpu_smoke.json")
        else:
            (args.out / "gpu_smoke.json").write_text(json.dumps(result, default=str) + "\n")
    shutil.rmtree(plan.work, ignore_errors=True)


if __name__ == "__main__":
    main()
