"""GLUE and SuperGLUE: the paper's NLU tasks.

Each task loads from its Hugging Face Hub copy (``nyu-mll/glue``, ``aps/super_glue``) when
``task.data_dir`` is unset, or from local files when it is set:

- GLUE: ``train.tsv``, ``dev.tsv`` (MNLI: ``dev_matched.tsv``) and optionally ``test.tsv``, with the
  column names of the official GLUE download (CoLA's train/dev files have no header row: source, label,
  original_label, sentence);
- SuperGLUE: ``train.jsonl``, ``val.jsonl`` and optionally ``test.jsonl``, as distributed.

The official test splits carry no labels, so by default the labelled dev split is the test split and a
new dev split is carved from train (see :func:`~armada_ray.tasks.base.fill_missing_splits`).
Example fields use the Hub column names (e.g. MNLI ``premise``/``hypothesis``, MRPC ``sentence1``/
``sentence2``) whichever source the rows came from. Labels are in the Hub's ClassLabel order.
"""

from __future__ import annotations

import functools

from armada_ray.tasks.base import TaskSpec
from armada_ray.tasks.sources import Columns, FileSource, HubSource, load_file_task

GLUE_FILES = {"train": ("train.tsv",), "dev": ("dev.tsv", "dev_matched.tsv"), "test": ("test.tsv", "test_matched.tsv")}
SUPERGLUE_FILES = {"train": ("train.jsonl",), "dev": ("val.jsonl", "dev.jsonl", "validation.jsonl"),
                   "test": ("test.jsonl",)}
BINARY = ("0", "1")


def _spec(name: str, *, fields: dict[str, tuple[str, ...]], label: tuple[str, ...], labels: list[str] | None,
          raw_labels: tuple[str, ...] | None, metric: str, extra: list[str], description: str, hub: HubSource,
          files: dict[str, tuple[str, ...]], headerless: tuple[str, ...] | None = None) -> TaskSpec:
    source = FileSource(
        files=files,
        required=("train", "dev"),
        columns=Columns(fields=fields, label=label, headerless=headerless),
        hub=hub,
        raw_labels=raw_labels,
    )
    fmt = "GLUE TSV" if files is GLUE_FILES else "SuperGLUE JSONL"
    return TaskSpec(
        name=name,
        kind="classification" if labels else "regression",
        text_fields=list(fields),
        labels=labels,
        answer_format=None,
        metric=metric,
        extra_metrics=extra,
        description=description,
        loader=functools.partial(load_file_task, source),
        source=f"hub {hub.ref()} | data_dir {fmt}",
    )


def _glue(name: str, hub_split_dev: str = "validation", hub_split_test: str = "test", **kw) -> TaskSpec:
    hub = HubSource("nyu-mll/glue", name, {"train": "train", "dev": hub_split_dev, "test": hub_split_test})
    return _spec(name, hub=hub, files=GLUE_FILES, **kw)


def _superglue(name: str, config: str | None = None, **kw) -> TaskSpec:
    hub = HubSource("aps/super_glue", config or name, {"train": "train", "dev": "validation", "test": "test"})
    return _spec(name, hub=hub, files=SUPERGLUE_FILES, **kw)


NLI3 = ["entailment", "neutral", "contradiction"]
NLI2 = ["entailment", "not_entailment"]
BOOL = ["False", "True"]

GLUE_TASKS = [
    _glue("cola", fields={"sentence": ("sentence",)}, label=("label",),
          labels=["unacceptable", "acceptable"], raw_labels=BINARY, metric="mcc", extra=["accuracy"],
          headerless=("source", "label", "original_label", "sentence"),
          description="CoLA: grammatical acceptability of a sentence (Matthews correlation)"),
    _glue("sst2", fields={"sentence": ("sentence",)}, label=("label",), labels=["negative", "positive"],
          raw_labels=BINARY, metric="accuracy", extra=[], description="SST-2: movie-review sentence sentiment"),
    _glue("mrpc", fields={"sentence1": ("#1 String", "sentence1"), "sentence2": ("#2 String", "sentence2")},
          label=("Quality", "label"), labels=["not_equivalent", "equivalent"], raw_labels=BINARY, metric="f1",
          extra=["accuracy"], description="MRPC: are two news sentences paraphrases"),
    _glue("qqp", fields={"question1": ("question1",), "question2": ("question2",)},
          label=("is_duplicate", "label"), labels=["not_duplicate", "duplicate"], raw_labels=BINARY, metric="f1",
          extra=["accuracy"], description="QQP: are two Quora questions duplicates"),
    _glue("stsb", fields={"sentence1": ("sentence1",), "sentence2": ("sentence2",)}, label=("score", "label"),
          labels=None, raw_labels=None, metric="pearson", extra=["spearman"],
          description="STS-B: sentence-pair similarity score 0-5 (regression, Pearson)"),
    _glue("mnli", hub_split_dev="validation_matched", hub_split_test="test_matched",
          fields={"premise": ("sentence1", "premise"), "hypothesis": ("sentence2", "hypothesis")},
          label=("gold_label", "label"), labels=NLI3, raw_labels=None, metric="accuracy", extra=[],
          description="MNLI: 3-way entailment (matched dev)"),
    _glue("qnli", fields={"question": ("question",), "sentence": ("sentence",)}, label=("label",), labels=NLI2,
          raw_labels=None, metric="accuracy", extra=[], description="QNLI: does the sentence answer the question"),
    _glue("rte", fields={"sentence1": ("sentence1",), "sentence2": ("sentence2",)}, label=("label",), labels=NLI2,
          raw_labels=None, metric="accuracy", extra=[], description="RTE (GLUE TSV): textual entailment"),
    _glue("wnli", fields={"sentence1": ("sentence1",), "sentence2": ("sentence2",)}, label=("label",),
          labels=["not_entailment", "entailment"], raw_labels=BINARY, metric="accuracy", extra=[],
          description="WNLI: pronoun-resolution entailment"),
]

SUPERGLUE_TASKS = [
    _superglue("boolq", fields={"question": ("question",), "passage": ("passage",)}, label=("label",),
               labels=BOOL, raw_labels=None, metric="accuracy", extra=[],
               description="BoolQ: yes/no question about a passage"),
    _superglue("cb", fields={"premise": ("premise",), "hypothesis": ("hypothesis",)}, label=("label",),
               labels=["entailment", "contradiction", "neutral"], raw_labels=None, metric="macro_f1",
               extra=["accuracy"], description="CommitmentBank: 3-way entailment (macro-F1)"),
    _superglue("copa", fields={"premise": ("premise",), "question": ("question",), "choice1": ("choice1",),
                               "choice2": ("choice2",)}, label=("label",), labels=["choice1", "choice2"],
               raw_labels=BINARY, metric="accuracy", extra=[],
               description="COPA: which choice is the cause/effect of the premise"),
    _superglue("wic", fields={"word": ("word",), "sentence1": ("sentence1",), "sentence2": ("sentence2",)},
               label=("label",), labels=BOOL, raw_labels=None, metric="accuracy", extra=[],
               description="WiC: is the word used in the same sense in both sentences"),
    _superglue("superglue_rte", config="rte", fields={"premise": ("premise",), "hypothesis": ("hypothesis",)},
               label=("label",), labels=NLI2, raw_labels=None, metric="accuracy", extra=[],
               description="RTE (SuperGLUE JSONL): textual entailment"),
    _superglue("wsc", config="wsc.fixed", fields={"text": ("text",), "span1_text": ("span1_text",),
                                                  "span2_text": ("span2_text",)}, label=("label",), labels=BOOL,
               raw_labels=None, metric="accuracy", extra=[],
               description="WSC: does the pronoun (span2) refer to span1"),
]
