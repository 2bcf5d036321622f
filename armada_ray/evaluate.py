"""``armada eval``: score a checkpoint or an export on a task split and write its predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from armada_ray.config import ArmadaConfig, ConfigError
from armada_ray.export import best_checkpoint_of, checkpoint_config, load_checkpoint_student
from armada_ray.model import load_student_export
from armada_ray.ray_utils import run_with_student_resources
from armada_ray.tasks import compute_metrics, load_task
from armada_ray.tracking import KIND_EVAL, RunTracker, standard_tags
from armada_ray.train.checkpoint import local_checkpoint
from armada_ray.train.data import encode_texts, lm_prompt, student_inputs


def load_for_eval(path: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(student, tokenizer, task facts) from an export folder or a training checkpoint (a folder or storage URI)."""
    path = local_checkpoint(path)
    if (path / "armada_student.json").is_file():
        student, tokenizer = load_student_export(path)
        _, task = checkpoint_config(path)
        return student, tokenizer, task
    student, tokenizer, _, task, _ = load_checkpoint_student(path)
    return student, tokenizer, task


@torch.no_grad()
def predict(student: Any, tokenizer: Any, prompts: list[str], max_length: int, regression: bool,
            batch_size: int = 16, pairs: list[str | None] | None = None) -> list[float | int]:
    """Class ids (or values) for ``prompts`` (and their second texts ``pairs``), encoded as in training."""
    preds: list[float | int] = []
    student.eval()
    for i in range(0, len(prompts), batch_size):
        enc = encode_texts(tokenizer, prompts[i:i + batch_size], None if pairs is None else pairs[i:i + batch_size],
                           max_length, padding=True)
        device = next(student.parameters()).device
        tt = enc.get("token_type_ids") if pairs is not None else None
        out = student(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                      token_type_ids=tt.to(device) if tt is not None else None)
        s1 = out.s1.float()
        preds += s1.squeeze(-1).tolist() if regression else s1.argmax(-1).tolist()
    return preds


def generate_answers(student: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                     batch_size: int = 16, **gen_kwargs: Any) -> list[str]:
    """A generative student's greedy answers to task prompts (with the answer cue training used); training's
    dev evaluation and ``armada eval`` both answer through here."""
    texts = student.generate([lm_prompt(p) for p in prompts], tokenizer=tokenizer, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, **gen_kwargs)
    return [t.strip() for t in texts]


def evaluate_checkpoint(cfg: ArmadaConfig, path: str | Path, split: str = "dev", out_dir: Path | None = None
                        ) -> dict[str, Any]:
    """Metrics of ``path`` on ``split`` of ``cfg.task``; predictions land in ``predictions-<split>.jsonl`` beside the
    checkpoint (a local copy of it, for a storage URI)."""
    source = str(path)
    path = local_checkpoint(path)
    student, tokenizer, task = load_for_eval(path)
    if torch.cuda.is_available():  # a Ray task given a GPU sees exactly that one
        student = student.to("cuda")
    data = load_task(cfg.task)
    spec = data.spec
    regression = spec.kind == "regression"
    generative = spec.kind == "generative"
    expected = spec.head_width
    if task["kind"] != spec.kind or task["num_classes"] != expected:
        raise ConfigError(
            f"student/task mismatch: {path} was trained for {task['task']!r} ({task['kind']}, "
            f"{task['num_classes']} output(s)) but task.name={cfg.task.name!r} is {spec.kind} with {expected} "
            "output(s)"
        )
    rows = getattr(data, split)
    if not rows:
        raise ConfigError(f"task {cfg.task.name!r}: the {split} split is empty")
    trained, _ = checkpoint_config(path)  # read the rows as the student was trained to (student.input)
    prompts, pairs = student_inputs(trained, spec, rows)
    if generative:
        preds = generate_answers(student, tokenizer, prompts, cfg.eval.max_new_tokens, cfg.eval.batch_size)
        refs = [ex.answer for ex in rows]
    else:
        preds = predict(student, tokenizer, prompts, cfg.student.max_length, regression, cfg.eval.batch_size, pairs)
        refs = [ex.label for ex in rows]
    metrics = compute_metrics(spec, preds, refs)
    out_dir = Path(out_dir) if out_dir else path
    out_file = out_dir / f"predictions-{split}.jsonl"
    with open(out_file, "w") as f:
        for ex, p, ref in zip(rows, preds, refs):
            if regression or generative:
                row = {"uid": ex.uid, "prediction": p, "reference": ref}
            else:  # label names for a reader, ids for a program
                row = {"uid": ex.uid, "prediction": spec.labels[int(p)], "reference": spec.labels[int(ref)],
                       "prediction_id": int(p), "reference_id": int(ref)}
            f.write(json.dumps(row) + "\n")
    result = {"checkpoint": source, "task": cfg.task.name, "split": split, "rows": len(rows),
              "metric": spec.metric, "metric_value": float(metrics[spec.metric]),
              "metrics": {k: float(v) for k, v in metrics.items()}, "predictions": str(out_file)}
    (out_dir / f"eval-{split}.json").write_text(json.dumps(result, indent=2))
    print(f"[armada] {cfg.task.name} {split}: {spec.metric} {result['metric_value']:.4f} over {len(rows)} rows "
          f"-> {out_file}", flush=True)
    return result


def evaluate_on_cluster(cfg: ArmadaConfig, path: str | Path, split: str = "dev") -> dict[str, Any]:
    """:func:`evaluate_checkpoint` as a Ray task with one training rank's resources (its GPU when the student
    trains on one), not in the driver: a cluster's head has neither the GPU nor the memory of a worker (issue 15)."""
    return run_with_student_resources(cfg, evaluate_checkpoint, cfg, str(path), split)


def run_eval(cfg: ArmadaConfig) -> dict[str, Any]:
    """``armada eval``: score, write predictions, and record the evaluation as an MLflow run."""
    path = cfg.eval.checkpoint or best_checkpoint_of(cfg)
    checkpoint_config(path)  # a folder that is not a checkpoint is refused here, before Ray starts
    result = evaluate_on_cluster(cfg, path, cfg.eval.split)
    tracker = RunTracker.start(cfg, run_name=f"eval-{cfg.task.name}-{cfg.eval.split}", kind=KIND_EVAL,
                               tags=standard_tags(cfg, None), local_dir=Path(result["predictions"]).parent)
    tracker.log_params({"eval.checkpoint": str(path), "eval.split": cfg.eval.split, "task.name": cfg.task.name})
    tracker.log_metrics({f"{cfg.eval.split}_{k}": v for k, v in result["metrics"].items()}, step=0)
    tracker.log_artifact(result["predictions"])
    tracker.end("FINISHED")
    return {**result, "mlflow_run_id": tracker.run_id, "mlflow_url": tracker.url}


__all__ = ["evaluate_checkpoint", "evaluate_on_cluster", "generate_answers", "load_for_eval", "predict", "run_eval"]
