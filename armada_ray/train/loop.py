"""The per-worker ARMADA training loop (one loop: ARMADA, the baseline and the ablation controls are
settings of it).

``train_loop_per_worker(config)`` is what Ray Train runs on every worker: it validates its config at
the top, builds the student (DeepSpeed engine) and the aligner (DDP when there is more than one worker),
then runs the schedule of DESIGN §2:

- The aligner first (``aligner.fit=converge``, the default): before the student's first epoch it is fitted
  on the cached train vectors (standardised with the train split's per-dimension mean/std, saved with it)
  until its dev metric has not improved for ``aligner.fit_patience`` passes, then kept fixed while the
  student trains. It is a small MLP over fixed vectors, so this costs seconds; one aligner pass per outer
  epoch (the paper) left it near chance on small data (issue 12). ``aligner.fit=per_epoch`` is the paper's
  schedule exactly:
- ``alternating`` (the paper): per epoch one aligner epoch (AdamW ``aligner.lr``, clip 1.0), then one
  student epoch with the aligner frozen (AdamW ``train.lr``, clip ``train.clip``);
- ``joint``: one aligner step and one student step per batch.

Which aligner the student learns against is ``aligner.student_targets``: ``best`` (the best-so-far by dev
metric, also the one exported) or ``latest`` (the one just trained, as the reference code does; the best is
still kept in the checkpoint and exported).

Generative tasks (reasoning, instructions) run the same schedule with a ``GenerativeStudent``: LM loss on the
answer tokens plus the manifold loss on the pooled prompt (``losses.generative_loss``; how the aligner is
supervised there is in ``GenerativeStudent``'s docstring: trained on the answer class when the task has a
fixed answer set, an untrained orthogonal projection of the teacher otherwise), and the dev metric comes
from greedy generation (numeric exact match, exact match or ROUGE-L; ``synced_gpus`` under ZeRO-3 so
every rank keeps stepping until the slowest finishes).

Every epoch ends with a dev evaluation with the task's metric (``train/scoring.py``), one ``ray.train.report``
carrying the metrics and a checkpoint (DeepSpeed state + aligner + tokenizer + resolved config + loop state incl.
the MLflow run id); progress lines every ``train.report_every`` steps (a report per step would cost ~2 s under
Train V2, NOTES.md).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from armada_ray import console
from armada_ray.cache import dataset_view, open_cache
from armada_ray.config import ArmadaConfig, dump_config
from armada_ray.fingerprint import TeacherIdentity
from armada_ray.model import aligner_loss, armada_loss, baseline_loss, build_aligner, build_student, generative_loss
from armada_ray.model.aligner_fit import fit_aligner
from armada_ray.model.outputs import AlignerOutput
from armada_ray.probe import class_targets, linear_probe, probe_line
from armada_ray.tracking import KIND_TRAIN, KIND_TRIAL, RunTracker, standard_tags
from armada_ray.train.data import build_splits, make_dataset
from armada_ray.train import ops
from armada_ray.train.checkpoint import CKPT_TAG
from armada_ray.train.ds_config import build_ds_config, load_dtype, zero3_init_context
from armada_ray.train.scoring import Scorer, aligner_outputs
from armada_ray.train.session import Session

WARMUP_STEPS = 2


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every generator a step draws from: CPU torch, this rank's GPU (dropout on GPU draws there), numpy, python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return m.module if hasattr(m, "module") else m


class ArmadaWorker:
    """State and steps of one worker. Kept as a class so the schedule reads top to bottom in ``run``."""

    def __init__(self, cfg: ArmadaConfig, session: Session, parent_run_id: str | None, eval_test: bool = False,
                 teacher: TeacherIdentity | None = None):
        import deepspeed

        self.cfg, self.session = cfg, session
        self.eval_test = eval_test  # score test at the best dev epoch (armada report: select on dev)
        self._best_trained: dict[str, torch.Tensor] | None = None  # the best epoch's trained weights, see _test_at_best
        self._targets_table: Any = None  # the frozen aligner's outputs for every train row (student_epoch)
        self.rank, self.world = session.rank, session.world_size
        self.device = session.device
        self.distill = cfg.loss.mode == "armada"
        # the driver resolved the teacher (its cache folder, fingerprint, dim): this worker only opens that cache
        self.teacher = teacher if self.distill else None
        _seed_all(cfg.train.seed)

        cache = open_cache(self.teacher) if self.teacher is not None else None
        self.spec, self.splits = build_splits(cfg, with_teacher=self.distill, cache=cache)
        self.regression = self.spec.kind == "regression"
        self.generative = self.spec.kind == "generative"
        self.num_classes = self.spec.head_width  # generative: class heads only for a fixed answer set

        on_gpu = self.device.type == "cuda"
        ds_config = build_ds_config(cfg.train, cfg.scaling, on_gpu=on_gpu)
        # load DeepSpeed's JIT ops ourselves first: a build killed earlier cannot block this one (train/ops.py)
        ops.prepare_ops(on_gpu=on_gpu, offload=cfg.train.offload, log=session.log)
        # ZeRO-3: the backbone is created partitioned (deepspeed.zero.Init through transformers' HfDeepSpeedConfig),
        # so no rank ever holds the whole model; without it every rank materialised all of it before
        # deepspeed.initialize split it (issue 15). transformers holds only a weak reference: keep it alive as long
        # as the engine (ZeRO-3 generation also asks it whether to sync ranks).
        if ds_config["zero_optimization"]["stage"] == 3:
            # zero.Init sizes its partitions by DeepSpeed's world size; before deepspeed.initialize that is 1 unless
            # DeepSpeed is attached to the process group the runtime made (Ray Train's, or the local session's)
            deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
        self._hf_ds_config = zero3_init_context(ds_config)
        student, self.tokenizer = build_student(
            cfg.student, num_classes=self.num_classes, proj_dim=cfg.aligner.proj_dim, task_kind=self.spec.kind,
            dtype=load_dtype(ds_config),
        )
        self.datasets = {k: make_dataset(v, self.tokenizer, cfg.student.max_length) for k, v in self.splits.items()}

        params = [p for p in student.parameters() if p.requires_grad]
        if "optimizer" in ds_config:  # offload: DeepSpeed builds its CPU Adam from the config (issue 15)
            self.engine, _, _, _ = deepspeed.initialize(model=student, model_parameters=params, config=ds_config)
        else:
            optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
            self.engine, _, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, config=ds_config)
        self.dtype = next(p for p in self.engine.module.parameters()).dtype

        self.aligner: torch.nn.Module | None = None
        self.aligner_opt: torch.optim.Optimizer | None = None
        if self.distill:
            dim = self.splits["train"].teacher.shape[1]
            aligner = build_aligner(cfg.aligner, teacher_dim=dim, num_classes=self.num_classes)
            if cfg.aligner.standardize:
                aligner.set_standardization(torch.as_tensor(self.splits["train"].teacher))
            aligner = aligner.to(self.device)
            # an open-answer generative task has no labels to train the aligner on: its p_t stays the seeded
            # orthogonal projection of the teacher (GenerativeStudent's docstring says why)
            trainable = not cfg.aligner.freeze_random and self.num_classes > 0
            if trainable and self.world > 1:
                aligner = torch.nn.parallel.DistributedDataParallel(
                    aligner, device_ids=[self.device.index] if self.device.type == "cuda" else None
                )
            self.aligner = aligner
            self.aligner_opt = (torch.optim.AdamW(aligner.parameters(), lr=cfg.aligner.lr,
                                                  weight_decay=cfg.aligner.weight_decay) if trainable else None)
            self.best_aligner = copy.deepcopy(_unwrap(aligner).state_dict())
        self.scorer = Scorer(cfg, self.spec, self.splits, self.engine, self.tokenizer,
                             None if self.aligner is None else _unwrap(self.aligner),
                             lambda split: self._loader(split, shuffle=False), self.device, self.rank, self.world,
                             session.log)

        self.state: dict[str, Any] = {
            "epoch": 0, "global_step": 0, "history": [], "best_dev_metric": None,
            "best_aligner_metric": None, "mlflow_run_id": None,
        }
        self._resume()
        self.tracker = None
        if self.rank == 0:
            self.tracker = self._start_tracker(parent_run_id)

    # ------------------------------------------------------------------ checkpoints and tracking

    def _resume(self) -> None:
        ckpt = self.session.get_checkpoint()
        if ckpt is None:
            return
        with ckpt.as_directory() as d:
            d = Path(d)
            # a checkpoint without the frozen base weights (LoRA, frozen layers) restores only what trained:
            # the frozen ones are what the model was just built with
            self.engine.load_checkpoint(str(d / "deepspeed"), tag=CKPT_TAG, load_module_strict=not self._has_frozen)
            self.state = json.loads((d / "state.json").read_text())
            if self.aligner is not None and (d / "aligner.pt").exists():
                blob = torch.load(d / "aligner.pt", map_location=self.device, weights_only=False)
                _unwrap(self.aligner).load_state_dict(blob["current"])
                self.best_aligner = blob["best"]
                if self.aligner_opt is not None and blob.get("optimizer"):
                    self.aligner_opt.load_state_dict(blob["optimizer"])
            rng = d / f"rng_rank{self.rank}.pt"
            if rng.exists():
                _set_rng_state(torch.load(rng, weights_only=False))
        self.session.log(f"resumed from checkpoint after epoch {self.state['epoch']}")

    def _start_tracker(self, parent_run_id: str | None) -> Any:
        cfg = self.cfg
        if not cfg.tracking.enabled:
            return RunTracker.disabled(cfg)
        try:
            tracker = RunTracker.start(
                cfg, run_name=cfg.run_name or "train", kind=KIND_TRIAL if parent_run_id else KIND_TRAIN,
                parent_run_id=parent_run_id, run_id=self.state.get("mlflow_run_id"),
                tags=standard_tags(cfg, self.teacher.fingerprint_id if self.teacher is not None else None),
            )
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self.session.log(f"warning: MLflow unavailable ({exc}); metrics kept locally")
            return RunTracker.disabled(cfg)
        if self.state.get("mlflow_run_id") is None:
            tracker.log_config(cfg)
            if self.teacher is not None:
                tracker.log_cache_dataset(dataset_view(self.teacher.cache_path))
        self.state["mlflow_run_id"] = tracker.run_id
        return tracker

    @property
    def _has_frozen(self) -> bool:
        return any(not p.requires_grad for p in self.engine.module.parameters())

    def _save_checkpoint(self, metrics: dict[str, Any]) -> None:
        if not self.session.keeps_checkpoints:  # a study cell in-process: the metrics are what it keeps
            self.session.report(metrics)
            return
        tmp = Path(tempfile.mkdtemp(prefix="armada-ckpt-"))
        # frozen base weights are never written (issue 15: a ZeRO-3 LoRA checkpoint of an 8B model held ≈ 15 GB of
        # them per epoch); export and resume rebuild them from student.model
        self.engine.save_checkpoint(str(tmp / "deepspeed"), tag=CKPT_TAG, exclude_frozen_parameters=self._has_frozen)
        torch.save(_rng_state(), tmp / f"rng_rank{self.rank}.pt")
        if self.rank == 0:
            (tmp / "state.json").write_text(json.dumps(self.state, default=float))
            (tmp / "config.yaml").write_text(dump_config(self.cfg))
            (tmp / "metrics.json").write_text(json.dumps(metrics, default=float))
            self.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            (tmp / "task.json").write_text(json.dumps(
                {"task": self.spec.name, "kind": self.spec.kind, "labels": self.spec.labels,
                 "choices": self.spec.choices, "num_classes": self.num_classes, "metric": self.spec.metric}
            ))
            if self.aligner is not None:
                torch.save(
                    {"current": _unwrap(self.aligner).state_dict(), "best": self.best_aligner,
                     "optimizer": self.aligner_opt.state_dict() if self.aligner_opt else None,
                     "teacher_dim": self.splits["train"].teacher.shape[1]},
                    tmp / "aligner.pt",
                )
        self.session.report(metrics, checkpoint_dir=tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ data

    def _loader(self, split: str, shuffle: bool, epoch: int = 0) -> DataLoader:
        ds = self.datasets[split]
        sampler = DistributedSampler(
            ds, num_replicas=self.world, rank=self.rank, shuffle=shuffle, seed=self.cfg.train.seed
        )
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size=self.cfg.train.batch_size, sampler=sampler, collate_fn=ds.collate)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    # ------------------------------------------------------------------ steps

    def freeze_student_targets(self, joint: bool = False) -> None:
        """Before a student epoch: with the aligner frozen for it (not joint), its outputs for every train row."""
        self._targets_table = None
        if self.distill and not joint:
            ds = self.datasets["train"]
            vectors = ds.student_teacher if ds.student_teacher is not None else ds.teacher
            self._targets_table = aligner_outputs(_unwrap(self.aligner), torch.as_tensor(
                vectors, dtype=torch.float32, device=self.device))

    def _student_targets(self, batch: dict[str, torch.Tensor]) -> Any:
        """The aligner's outputs for the batch's rows: taken from the epoch's table when the aligner is frozen
        for the epoch (one forward over the split instead of one per step, the orthogonal map's solve included),
        else computed now (joint schedule)."""
        table = self._targets_table
        if table is not None:
            idx = batch["index"].to(table.p_t.device)
            pick = lambda t: None if t is None else t[idx]  # noqa: E731
            return AlignerOutput(pick(table.t1), pick(table.t2), table.p_t[idx])
        return aligner_outputs(_unwrap(self.aligner), batch.get("student_teacher", batch["teacher"]))

    def _aligner_step(self, batch: dict[str, torch.Tensor]) -> float:
        self.aligner.train()
        teacher, labels = batch["teacher"], batch["labels"]
        if not self.regression:  # label -1: an answer outside the choices, or a transfer-set row
            keep = labels >= 0
            if not bool(keep.any()):
                return math.nan
            teacher, labels = teacher[keep], labels[keep]
        out = self.aligner(teacher)
        loss = aligner_loss(out, labels, gamma=self.cfg.loss.gamma, regression=self.regression)
        self.aligner_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.aligner.parameters(), 1.0)
        self.aligner_opt.step()
        return float(loss.detach())

    def _student_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if self.generative:
            out = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=batch["lm_labels"])
            targets = self._student_targets(batch) if self.distill else None
            y = batch["labels"] if self.num_classes else None
            loss, comps = generative_loss(out, targets, self.cfg.loss, y=y, mask=None if y is None else y >= 0)
        elif self.distill:
            out = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch.get("token_type_ids"))
            targets = self._student_targets(batch)
            labels = batch["labels"]
            if not self.regression and targets.t1 is not None:  # transfer-set rows: the aligner's label
                labels = torch.where(labels >= 0, labels, targets.t1.argmax(-1))
            loss, comps = armada_loss(out, targets, labels, self.cfg.loss, regression=self.regression)
        else:
            out = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch.get("token_type_ids"))
            loss = baseline_loss(out, batch["labels"], regression=self.regression)
            comps = {}
        self.engine.backward(loss)
        self.engine.step()
        return {"loss": float(loss.detach()), **{f"loss_{k}": float(v) for k, v in comps.items() if k != "loss"}}

    def _progress(self, phase: str, epoch: int, i: int, n: int, losses: list[float], t0: float) -> None:
        self.state["global_step"] += 1
        every = self.cfg.train.report_every
        if self.rank != 0 or ((i + 1) % every and i + 1 != n):
            return
        recent = float(np.mean(losses[-every:]))
        rate = (i + 1) * self.cfg.train.batch_size * self.world / max(time.perf_counter() - t0, 1e-9)
        self.session.log(f"epoch {epoch + 1}/{self.cfg.train.epochs} {phase} step {i + 1}/{n} "
                         f"loss {recent:.4f} ({rate:.1f} samples/s)")
        if self.tracker is not None:
            self.tracker.log_metrics({f"{phase}_loss": recent, f"{phase}_samples_per_s": rate},
                                     step=self.state["global_step"])

    def _limit(self, loader: DataLoader) -> int:
        n = len(loader)
        cap = self.cfg.train.max_steps_per_epoch
        return min(n, cap) if cap else n

    def aligner_epoch(self, epoch: int) -> dict[str, float]:
        if self.aligner_opt is None:
            return {}
        loader = self._loader("train", shuffle=True, epoch=epoch)
        n, losses, t0 = self._limit(loader), [], time.perf_counter()
        for i, batch in enumerate(loader):
            if i >= n:
                break
            losses.append(self._aligner_step(self._to_device(batch)))
            self._progress("aligner", epoch, i, n, losses, t0)
        return {"aligner_loss": float(np.nanmean(losses)) if np.isfinite(losses).any() else math.nan}

    def student_epoch(self, epoch: int, joint: bool = False) -> dict[str, float]:
        self.engine.train()
        self.freeze_student_targets(joint)
        loader = self._loader("train", shuffle=True, epoch=epoch)
        n, t0 = self._limit(loader), time.perf_counter()
        records: list[dict[str, float]] = []
        aligner_losses: list[float] = []
        step_times: list[float] = []
        for i, batch in enumerate(loader):
            if i >= n:
                break
            batch = self._to_device(batch)
            t_step = time.perf_counter()
            if joint and self.aligner_opt is not None:
                aligner_losses.append(self._aligner_step(batch))
            rec = self._student_step(batch)
            step_times.append(time.perf_counter() - t_step)
            records.append(rec)
            self._progress("student", epoch, i, n, [r["loss"] for r in records], t0)
        elapsed = time.perf_counter() - t0
        out = {k: float(np.mean([r[k] for r in records])) for k in records[0]} if records else {}
        out = {("train_loss" if k == "loss" else k): v for k, v in out.items()}
        if records:
            out["first_step_loss"] = records[0]["loss"]
        out["samples_per_s"] = len(records) * self.cfg.train.batch_size * self.world / max(elapsed, 1e-9)
        # steady-state step time: the first steps (allocator, autotuning, lazy init) are excluded
        steady = step_times[WARMUP_STEPS:] or step_times
        if steady:
            out["step_s_median"] = float(np.median(steady))
            out["step_s"] = [round(t, 4) for t in step_times]  # every step, for benchmarks (not a metric)
        if aligner_losses:
            out["aligner_loss"] = float(np.mean(aligner_losses))
        if self.device.type == "cuda":
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out

    # ------------------------------------------------------------------ the aligner fit and the probe

    def fit_aligner(self) -> dict[str, Any]:
        """``aligner.fit=converge``: fit the aligner on the cached vectors until dev stops improving.

        Every rank fits the same module on the same data with the same seed; rank 0's result is then
        broadcast so the ranks hold identical weights whatever the hardware's determinism.
        """
        cfg, aligner = self.cfg, _unwrap(self.aligner)
        tr, dv = self.splits["train"], self.splits["dev"]
        keep_tr, y_tr = class_targets(self.spec, tr.labels)
        keep_dv, y_dv = class_targets(self.spec, dv.labels)
        as_t = lambda a: torch.as_tensor(a, device=self.device)  # noqa: E731
        fit = fit_aligner(
            aligner, self.aligner_opt, as_t(tr.teacher[keep_tr]), as_t(y_tr), as_t(dv.teacher[keep_dv]),
            lambda t1: self.scorer.aligner_score(t1, y_dv), gamma=cfg.loss.gamma, regression=self.regression,
            batch_size=cfg.aligner.batch_size, max_epochs=cfg.aligner.fit_max_epochs,
            patience=cfg.aligner.fit_patience, seed=cfg.train.seed,
            higher_is_better=not (self.regression and self.spec.metric == "mse"),
            log=self.session.log if self.rank == 0 else None,
        )
        aligner.load_state_dict(fit.best_state if cfg.aligner.student_targets == "best" else fit.latest_state)
        if self.world > 1:
            for t in aligner.state_dict().values():
                dist.broadcast(t, src=0)
        self.best_aligner = copy.deepcopy(aligner.state_dict()) if cfg.aligner.student_targets == "best" \
            else fit.best_state
        self.state["best_aligner_metric"] = fit.best_metric
        used = fit.best_epoch if cfg.aligner.student_targets == "best" else fit.epochs_run
        self.state["aligner_fit"] = {"best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
                                     "best_dev_metric": fit.best_metric,
                                     "loss": fit.curve[max(used, 1) - 1]["loss"] if fit.curve else math.nan}
        if self.tracker is not None:
            for point in fit.curve:
                self.tracker.log_metrics({"aligner_fit_loss": point["loss"],
                                          "aligner_fit_dev_metric": point["dev_metric"]}, step=int(point["epoch"]))
        return self.state["aligner_fit"]

    def probe(self) -> dict[str, Any] | None:
        """The linear probe on the teacher vectors (the ceiling the aligner is read against), rank 0 only."""
        if self.rank != 0 or self.num_classes == 0:
            return None
        tr, dv = self.splits["train"], self.splits["dev"]
        try:
            result = linear_probe(self.spec, tr.teacher, tr.labels, dv.teacher, dv.labels, seed=self.cfg.train.seed)
        except Exception as exc:  # noqa: BLE001 - a diagnostic must never stop training
            self.session.log(f"warning: linear probe skipped ({exc})")
            return None
        self.session.log(probe_line(result))
        if self.tracker is not None:
            self.tracker.log_metrics({"probe_dev_metric": result["probe_dev_metric"],
                                      "floor_dev_metric": result["floor_dev_metric"]})
        return result

    def _is_better(self, value: float, best: float | None) -> bool:
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value < best if self.regression and self.spec.metric in ("mse",) else value > best

    # ------------------------------------------------------------------ the schedule

    def run(self) -> None:
        cfg = self.cfg
        start = self.state["epoch"]
        if self.rank == 0:
            self.session.log(
                f"training {cfg.student.model} on {cfg.task.name} ({len(self.datasets['train'])} train / "
                f"{len(self.datasets['dev'])} dev rows, {self.world} worker(s), loss.mode={cfg.loss.mode}, "
                f"schedule={cfg.train.schedule}, ZeRO-{cfg.train.zero_stage}) from epoch {start + 1}"
            )
        per_epoch = self.distill and self.aligner_opt is not None and cfg.aligner.fit == "per_epoch"
        if self.distill:
            probe = self.probe()
            if probe is not None:
                self.state["probe"] = {k: probe[k] for k in ("probe_dev_metric", "floor_dev_metric")}
            if self.aligner_opt is not None and cfg.aligner.fit == "converge" and "aligner_fit" not in self.state:
                self.fit_aligner()
        for epoch in range(start, cfg.train.epochs):
            t_epoch = time.perf_counter()
            rec: dict[str, Any] = {"epoch": epoch + 1}
            if per_epoch and cfg.train.schedule == "alternating":
                rec.update(self.aligner_epoch(epoch))
                a_metric = self.scorer.evaluate_aligner("dev")["aligner_metric"]
                if self._is_better(a_metric, self.state["best_aligner_metric"]):
                    self.state["best_aligner_metric"] = a_metric
                    self.best_aligner = copy.deepcopy(_unwrap(self.aligner).state_dict())
                if cfg.aligner.student_targets == "best":
                    _unwrap(self.aligner).load_state_dict(self.best_aligner)
            if "aligner_fit" in self.state and not per_epoch:  # the loss of the fitted aligner the student uses
                rec["aligner_loss"] = self.state["aligner_fit"]["loss"]
            rec.update(self.student_epoch(epoch, joint=per_epoch and cfg.train.schedule == "joint"))
            ev = self.scorer.evaluate("dev")
            rec["dev_metric"] = ev["dev_metric"]
            rec.update({f"dev_{k}": v for k, v in ev["metrics"].items()})
            if "aligner_metric" in ev:
                rec["aligner_dev_metric"] = ev["aligner_metric"]
                if "probe" in self.state:
                    rec["probe_dev_metric"] = self.state["probe"]["probe_dev_metric"]
                if cfg.train.schedule == "joint" and self._is_better(ev["aligner_metric"],
                                                                      self.state["best_aligner_metric"]):
                    self.state["best_aligner_metric"] = ev["aligner_metric"]
                    self.best_aligner = copy.deepcopy(_unwrap(self.aligner).state_dict())
            if self._is_better(ev["dev_metric"], self.state["best_dev_metric"]):
                self.state["best_dev_metric"] = ev["dev_metric"]
                self.state["best_epoch"] = epoch + 1
                if self.eval_test and "test" in self.splits:
                    self._test_at_best(epoch + 1 == cfg.train.epochs)
            elif self.eval_test and epoch + 1 == cfg.train.epochs and self._best_trained is not None:
                self._test_at_best(last=True)
            rec["best_dev_metric"] = self.state["best_dev_metric"]
            rec["epoch_s"] = time.perf_counter() - t_epoch
            self.state["epoch"] = epoch + 1
            self.state["history"].append(rec)
            if self.rank == 0:
                self._log_epoch(rec, ev)
            self._save_checkpoint({k: v for k, v in rec.items() if isinstance(v, (int, float))})
        if self.tracker is not None:
            self.tracker.end("FINISHED")

    def _test_at_best(self, last: bool) -> None:
        """``test_at_best_dev``: the test split scored once, with the weights of the best dev epoch.

        Under ZeRO-0/1/2 every rank holds the full trained parameters, so a new best epoch that is not the last only
        keeps a CPU copy of them (LoRA: the adapter and heads) and the test split is scored at the end, with that
        copy swapped in: one test pass per run instead of one per improving epoch (on 2 cores a 120-row test pass
        of SmolLM2 costs as much as 10 training steps). Under ZeRO-3 the parameters are partitioned and the test
        is scored at each new best epoch, as before, and so are trained weights over 2 GB (a full fine-tune: no CPU
        copy of those). A run resumed past its best epoch has lost the copy: it leaves ``test_at_best_dev`` unset."""
        trained = {n: p for n, p in self.engine.module.named_parameters() if p.requires_grad}
        improved = self.state.get("best_epoch") == self.state["epoch"] + 1
        big = sum(p.numel() * p.element_size() for p in trained.values()) > 2 * 2**30
        if self.cfg.train.zero_stage >= 3 or big or (last and improved):
            self.state["test_at_best_dev"] = self.scorer.evaluate("test")["dev_metric"]
            self._best_trained = None
            return
        if improved:  # a best epoch that is not the last: keep its weights, score later
            self._best_trained = {n: p.detach().to("cpu", copy=True) for n, p in trained.items()}
            return
        current = {n: p.detach().to("cpu", copy=True) for n, p in trained.items()}
        with torch.no_grad():
            for n, p in trained.items():
                p.copy_(self._best_trained[n].to(p.device))
            self.state["test_at_best_dev"] = self.scorer.evaluate("test")["dev_metric"]
            for n, p in trained.items():
                p.copy_(current[n].to(p.device))
        self._best_trained = None

    def _log_epoch(self, rec: dict[str, Any], ev: dict[str, Any]) -> None:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float) and k != "epoch_s")
        self.session.log(f"epoch {rec['epoch']}/{self.cfg.train.epochs} done in {rec['epoch_s']:.1f}s: {parts}")
        if self.tracker is None:
            return
        self.tracker.log_metrics({k: v for k, v in rec.items() if isinstance(v, (int, float))},
                                 step=rec["epoch"])
        try:
            from armada_ray import plots  # lazy: loads matplotlib

            history = self.state["history"]
            self.tracker.log_figure(plots.plot_loss_components(history), "plots/loss_components.png")
            curves = {"student dev": [h["dev_metric"] for h in history]}
            if any("aligner_dev_metric" in h for h in history):
                curves["aligner dev"] = [h.get("aligner_dev_metric", math.nan) for h in history]
            self.tracker.log_figure(plots.plot_dev_curves(curves), "plots/dev_curves.png")
            if "p_t" in ev:
                labels = self.splits["dev"].labels
                if self.generative:
                    labels = [self.spec.choices[i] if i >= 0 else "other" for i in labels] if self.num_classes else None
                self.tracker.log_figure(plots.plot_embedding_map(ev["p_t"], ev["p_s"], labels),
                                        "plots/embedding_map.png")
        except Exception as exc:  # noqa: BLE001 - a plot must never stop training
            self.session.log(f"warning: could not log plots ({exc})")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config`` = {"cfg": resolved config dict, "parent_run_id", "teacher" (the driver's
    :class:`~armada_ray.fingerprint.TeacherIdentity` as JSON, or None), "eval_test"}."""
    cfg = ArmadaConfig.model_validate(config["cfg"])  # validate at the top; read no module globals
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cfg.scaling.use_gpu else "cpu")
    if not console.verbose():  # the driver's plan check already named the task's skipped rows and their file
        logging.getLogger("armada_ray.tasks").setLevel(logging.ERROR)
    teacher = TeacherIdentity.from_json(config["teacher"]) if config.get("teacher") else None
    session = Session.from_ray(label=(cfg.run_name or "train").split("/")[-1])
    session.log(session.placement())  # which node each rank runs on, visible in the job's logs
    ArmadaWorker(cfg, session, parent_run_id=config.get("parent_run_id"), eval_test=bool(config.get("eval_test")),
                 teacher=teacher).run()
