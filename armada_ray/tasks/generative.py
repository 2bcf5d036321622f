"""Generative tasks: arithmetic and commonsense reasoning (LLM-Adapters style) and instruction tuning.

Local files (``task.data_dir``) or the Hugging Face Hub copy when one exists:

- ``gsm8k``: ``{question, answer}`` JSONL whose answer ends with ``#### N``; the answer text (rationale
  included) is the target and its last number is what numeric exact match compares (Hub ``openai/gsm8k``
  ``main``);
- ``singleeq``: ``{sQuestion, lSolutions}`` (MAWPS) or ``{question, answer}`` rows, in JSONL or a JSON array;
  the target is the (first) solution as a number (no Hub copy: set ``task.data_dir``);
- ``winogrande``: ``{sentence, option1, option2, answer "1"/"2"}``; the target is ``option1``/``option2``
  as in LLM-Adapters (Hub ``allenai/winogrande`` ``winogrande_xl``; its test split has no answers);
- ``dolly``: ``{instruction, context, response, category}`` (databricks-dolly-15k), scored with ROUGE-L.

A missing dev split is carved from train (10%); with train only, the split is 70/10/20.
"""

from __future__ import annotations

import functools
from typing import Any

from armada_ray.tasks.base import TaskSpec
from armada_ray.tasks.metrics import last_number
from armada_ray.tasks.sources import Columns, FileSource, HubSource, load_file_task

DEV = ("dev.jsonl", "val.jsonl", "validation.jsonl")
WINOGRANDE_COLUMNS = Columns(fields={"sentence": ("sentence",), "option1": ("option1",), "option2": ("option2",)},
                             label=("answer",), ids=("qID", "idx", "id"))
DOLLY_COLUMNS = dict(fields={"instruction": ("instruction",), "context": ("context",)}, label=("response",),
                     optional=("context",), extra={"category": ("category",)})


def format_number(value: float) -> str:
    """``24.0`` -> ``"24"``, ``2.5`` -> ``"2.5"``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def gsm8k_answer(raw: Any) -> str:
    text = str(raw).strip()
    if "####" not in text or last_number(text.rsplit("####", 1)[1]) is None:
        raise ValueError("no final '#### N' answer")
    return text


def singleeq_answer(raw: Any) -> str:
    if isinstance(raw, list):
        if not raw:
            raise ValueError("empty solution list")
        raw = raw[0]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return format_number(raw)
    number = last_number(str(raw))
    if number is None:
        raise ValueError(f"no number in answer {raw!r}")
    return format_number(number)


def winogrande_answer(raw: Any) -> str:
    token = str(raw).strip()
    if token not in ("1", "2"):
        raise ValueError(f"unknown answer {raw!r}; allowed: 1, 2")
    return f"option{token}"


def _spec(name: str, *, source: FileSource, text_fields: list[str], answer_format: str, metric: str,
          description: str, choices: list[str] | None = None) -> TaskSpec:
    where = f"hub {source.hub.ref()} | data_dir JSONL" if source.hub else "data_dir JSONL/JSON only"
    return TaskSpec(name=name, kind="generative", text_fields=text_fields, labels=None, answer_format=answer_format,
                    metric=metric, description=description, loader=functools.partial(load_file_task, source),
                    choices=choices, source=where)


GENERATIVE_TASKS = [
    _spec("gsm8k", text_fields=["question"], answer_format="numeric", metric="numeric_em",
          description="GSM8K grade-school math word problems (exact match on the final number)",
          source=FileSource(
              files={"train": ("train.jsonl",), "dev": DEV, "test": ("test.jsonl",)}, required=("train",),
              columns=Columns(fields={"question": ("question",)}, label=("answer",)),
              hub=HubSource("openai/gsm8k", "main", {"train": "train", "test": "test"}),
              answer=gsm8k_answer)),
    _spec("singleeq", text_fields=["question"], answer_format="numeric", metric="numeric_em",
          description="SingleEq single-equation arithmetic word problems (exact match on the number)",
          source=FileSource(
              files={"train": ("train.jsonl", "train.json"), "dev": (*DEV, "dev.json"),
                     "test": ("test.jsonl", "test.json")}, required=("train",),
              columns=Columns(fields={"question": ("sQuestion", "question")}, label=("lSolutions", "answer"),
                              ids=("iIndex", "idx", "id")),
              answer=singleeq_answer)),
    _spec("winogrande", text_fields=["sentence", "option1", "option2"], answer_format="choice",
          metric="exact_match", choices=["option1", "option2"],
          description="WinoGrande: which option fills the blank (answer option1/option2)",
          source=FileSource(
              files={"train": ("train.jsonl", "train_xl.jsonl"), "dev": DEV, "test": ("test.jsonl",)},
              required=("train",),
              columns=WINOGRANDE_COLUMNS,
              hub=HubSource("allenai/winogrande", "winogrande_xl",
                            {"train": "train", "dev": "validation", "test": "test"}),
              hub_columns=WINOGRANDE_COLUMNS,
              answer=winogrande_answer)),
    _spec("dolly", text_fields=["instruction", "context"], answer_format="text", metric="rouge_l",
          description="databricks-dolly-15k instruction following (ROUGE-L)",
          source=FileSource(
              files={"train": ("train.jsonl", "databricks-dolly-15k.jsonl"), "dev": DEV, "test": ("test.jsonl",)},
              required=("train",),
              columns=Columns(**DOLLY_COLUMNS),
              hub=HubSource("databricks/databricks-dolly-15k", None, {"train": "train"}),
              hub_columns=Columns(**DOLLY_COLUMNS))),
]
