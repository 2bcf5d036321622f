"""Training data for generative tasks: prompt+answer sequences whose LM labels cover the answer only."""

from __future__ import annotations

import numpy as np
import torch

from armada_ray.model import hub
from armada_ray.train.data import GenerativeDataset, SplitArrays, choice_label, lm_prompt, make_dataset


def _split(prompts, answers, labels=None):
    labels = np.asarray(labels if labels is not None else [-1] * len(prompts), dtype=np.int64)
    return SplitArrays([f"u{i}" for i in range(len(prompts))], prompts, labels, None, answers)


def test_labels_cover_the_answer_and_eos_only_under_right_padding():
    tok = hub.load_tokenizer("tiny-llama")
    split = _split(["how many legs do 2 cats have?", "x"], ["8", "a much longer answer here"])
    ds = make_dataset(split, tok, max_length=64)
    assert isinstance(ds, GenerativeDataset)
    batch = ds.collate([ds[0], ds[1]])
    for j, (prompt, answer) in enumerate(zip(split.prompts, split.answers)):
        p = tok(lm_prompt(prompt), add_special_tokens=True)["input_ids"]
        a = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(p) + len(a)
        assert batch["input_ids"][j, :n].tolist() == p + a  # the prompt alone is a prefix: pooling sees it
        assert batch["attention_mask"][j].sum() == n
        lm = batch["lm_labels"][j]
        assert (lm[: len(p)] == -100).all() and (lm[n:] == -100).all()
        assert lm[len(p): n].tolist() == a
    assert tok.decode(batch["lm_labels"][0][batch["lm_labels"][0] != -100][:-1]).strip() == "8"


def test_overlong_rows_keep_the_question_end_and_some_answer():
    tok = hub.load_tokenizer("tiny-llama")
    long_prompt = " ".join(f"word{i}" for i in range(200)) + " final question?"
    ds = GenerativeDataset(_split([long_prompt, "q"], ["42", " ".join(["long"] * 300)]), tok, max_length=32)
    for i in range(2):
        assert len(ds.input_ids[i]) <= 32 and ds.answer_len[i] >= 1
    assert tok.decode(ds.input_ids[0]).rstrip().endswith(tok.decode(
        tok(" 42", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]).rstrip())
    assert "answer:" in tok.decode(ds.input_ids[0])  # the cue survives: the prompt is cut from its start
    assert ds.answer_len[1] == 32 - len(tok(lm_prompt("q"))["input_ids"])  # the answer's tail is cut


def test_choice_labels():
    assert choice_label("Yes", ["Yes", "No"]) == 0
    assert choice_label(" no.", ["Yes", "No"]) == 1
    assert choice_label("maybe", ["Yes", "No"]) == -1
    assert choice_label("8", None) == -1
    assert torch.is_tensor(make_dataset(_split(["a"], ["Yes"], [0]), hub.load_tokenizer("tiny-llama"), 16)
                           .collate([{"index": 0, "input_ids": [1, 2], "label": 0, "answer_len": 1}])["lm_labels"])


def test_pair_tasks_reach_the_student_through_its_pair_encoding():
    """Issue 12: the student reads the task's own fields (own case, [SEP] + segment ids for an encoder, a visible
    newline for a decoder); the teacher keeps the paper's lower-cased joined prompt."""
    from armada_ray.config import load_config
    from armada_ray.model.hub import load_tokenizer
    from armada_ray.tasks import Example, TaskSpec, example_prompt
    from armada_ray.train.data import ArmadaDataset, SplitArrays, encode_texts, student_inputs

    spec = TaskSpec(name="pairs", kind="classification", text_fields=["sentence1", "sentence2"], labels=["no", "yes"],
                    answer_format=None, metric="accuracy", description="a pair task", loader=lambda s, c: None)
    ex = Example(uid="p:1", fields={"sentence1": "The Cat sat.", "sentence2": "A cat Is sitting."}, label=1)
    assert example_prompt(spec, ex) == "the cat sat. a cat is sitting."  # the teacher's prompt
    texts, pairs = student_inputs(load_config(None, []), spec, [ex])
    assert texts == ["The Cat sat."] and pairs == ["A cat Is sitting."]
    assert student_inputs(load_config(None, ["student.input=teacher_prompt"]), spec, [ex]) == (
        ["the cat sat. a cat is sitting."], None)

    bert = load_tokenizer("minilm")
    enc = encode_texts(bert, texts, pairs, 64)
    assert enc["input_ids"][0].count(bert.sep_token_id) == 2 and set(enc["token_type_ids"][0]) == {0, 1}
    ds = ArmadaDataset(SplitArrays(["p:1"], texts, np.array([1]), None, pairs=pairs), bert, 64)
    batch = ds.collate([ds[0]])
    assert batch["token_type_ids"].tolist()[0] == enc["token_type_ids"][0]

    llama = load_tokenizer("tiny-llama")
    joined = encode_texts(llama, texts, pairs, 64)["input_ids"][0]
    assert llama.decode(joined, skip_special_tokens=True).strip() == "The Cat sat.\nA cat Is sitting."


def test_a_worker_reads_its_teacher_vectors_by_the_drivers_identity(tmp_path, request):
    """The driver resolves the teacher once; the worker's data path opens the cache by that identity (JSON, as in
    its train_loop_config) and never fingerprints the teacher (an hf fingerprint hashes a node-local folder)."""
    import json

    from armada_ray.cache import TeacherCache, open_cache, resolve_teacher_identity
    from armada_ray.config import load_config
    from armada_ray.fingerprint import TeacherIdentity
    from armada_ray.tasks import load_task
    from armada_ray.teachers.factory import teacher_fingerprint
    from armada_ray.teachers.prompts import teacher_prompt
    from armada_ray.train.data import build_splits

    cfg = load_config(None, [f"paths.work_dir={tmp_path}", "teacher.kind=http", "teacher.dim=8",
                             "task.name=pang_lee_polarity", "task.max_train=12", "task.max_dev=6", "task.max_test=6"])
    data = load_task(cfg.task)
    prompts = sorted({teacher_prompt(cfg.teacher, data.spec, ex) for ex in data.train + data.dev})
    cache = TeacherCache(cfg.cache_root, teacher_fingerprint(cfg.teacher), 8, "float32")
    vectors = np.random.default_rng(0).standard_normal((len(prompts), 8)).astype(np.float32)
    cache.write_shard([cache.key_for(p) for p in prompts], vectors)
    wire = json.loads(json.dumps(resolve_teacher_identity(cfg).to_json()))  # the driver's side

    request.getfixturevalue("forbid_fingerprinting")  # from here on, as in a worker
    _, splits = build_splits(cfg, with_teacher=True, cache=open_cache(TeacherIdentity.from_json(wire)))
    by_prompt = dict(zip(prompts, vectors))
    for name in ("train", "dev"):
        rows = getattr(data, name)
        want = np.stack([by_prompt[teacher_prompt(cfg.teacher, data.spec, ex)] for ex in rows])
        np.testing.assert_array_equal(splits[name].teacher, want)
