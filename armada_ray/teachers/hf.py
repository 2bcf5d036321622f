"""A local transformers model as the teacher: a pooled hidden state per prompt.

Works for encoders (BERT-style, e.g. the ``minilm`` alias) and decoders (LLaMA-style, e.g.
``smollm2-135m``): ``AutoModel`` loads the base model, the chosen hidden-state ``layer`` is pooled with
``mean`` (over real tokens), ``cls`` (position 0), ``first`` (first real token, which differs from
position 0 under left padding) or ``last`` (last *real* token under either padding side, never a pad),
and optionally L2-normalised. Batches are sorted by length to waste less padding. On a GPU it runs in
bf16 (fp16 where bf16 is unsupported) unless ``teacher.dtype`` says otherwise; fp32 on CPU.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from armada_ray.teachers.base import FINGERPRINT_VERSION, LocalTeacher, default_device, dtype_tag, resolve_dtype

_DIGESTS: dict[tuple[str, float, int], str] = {}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_META_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")


def resolve_model(name: str, revision: str | None = None, field: str = "teacher.model") -> str:
    """A local folder for aliases and local paths, else the hub id (``armada_ray.model.hub.resolve_model_path``)."""
    # lazy: armada_ray.model imports torch, which importing the teachers package does not need
    from armada_ray.model.hub import resolve_model_path

    return resolve_model_path(name, revision, field=field)


def folder_digest(folder: str | os.PathLike[str]) -> str:
    """A cheap content digest of a model folder: names, sizes and the first/last MiB of every weight and
    tokenizer/config file. It changes when the weights are replaced, without hashing gigabytes."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _META_FILES)
    )
    for p in files:
        st = p.stat()
        key = (str(p), st.st_mtime, st.st_size)
        part = _DIGESTS.get(key)
        if part is None:
            ph = hashlib.sha256()
            with open(p, "rb") as f:
                ph.update(f.read(1 << 20))
                if st.st_size > (2 << 20):
                    f.seek(-(1 << 20), os.SEEK_END)
                    ph.update(f.read(1 << 20))
            part = f"{p.relative_to(folder)}:{st.st_size}:{ph.hexdigest()}"
            _DIGESTS[key] = part
        h.update(part.encode())
    return h.hexdigest()[:16]


class HFTeacher(LocalTeacher):
    kind = "hf"

    def __init__(self, cfg: Any, device: str | None = None):
        self.cfg = cfg
        self.stand_in = bool(cfg.stand_in)
        self.device = device or default_device()
        self.path = resolve_model(cfg.model, cfg.revision)
        self._model: Any = None
        self._tok: Any = None
        self._dim: int | None = None
        self._fp: dict[str, Any] | None = None

    # ------------------------------------------------------------------ metadata (no weights loaded)
    @property
    def dim(self) -> int:
        if self._dim is None:
            from transformers import AutoConfig

            rev = None if Path(self.path).is_dir() else self.cfg.revision
            conf = AutoConfig.from_pretrained(self.path, revision=rev)
            conf = getattr(conf, "text_config", None) or conf
            self._dim = int(conf.hidden_size)
        return self._dim

    def fingerprint(self) -> dict[str, Any]:
        if self._fp is None:
            c = self.cfg
            local = Path(self.path).is_dir() and any(
                p.suffix in _WEIGHT_SUFFIXES for p in Path(self.path).iterdir()
            )
            self._fp = {
                "v": FINGERPRINT_VERSION,
                "kind": "hf",
                "model": c.model,
                "revision": c.revision,
                "weights": folder_digest(self.path) if local else (
                    "random-init:seed0" if _config_only(c.model) else None
                ),
                "pooling": c.pooling,
                "layer": c.layer,
                "normalize": c.normalize,
                "max_length": c.max_length,
                "prompt_template": c.prompt_template,
                "dtype": dtype_tag(c.dtype, self.device),
                "dim": self.dim,
            }
        return dict(self._fp)

    # ------------------------------------------------------------------------------------ model
    def load(self) -> "HFTeacher":
        if self._model is not None:
            return self
        from armada_ray.model import hub  # lazy (torch), as in resolve_model

        dtype = resolve_dtype(self.cfg.dtype, self.device)
        # through the hub: aliases, config-only shapes (random weights), offline errors in the user's terms
        tok = hub.load_tokenizer(self.cfg.model, self.cfg.revision)
        model = hub.load_model(self.cfg.model, self.cfg.revision, dtype=dtype)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        model.to(self.device).eval()
        self._tok, self._model = tok, model
        return self

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads for ``texts`` (after truncation): the server's ``usage`` figures."""
        self.load()
        enc = self._tok(list(texts), truncation=True, max_length=self.cfg.max_length)
        return int(sum(len(ids) for ids in enc["input_ids"]))

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        self.load()
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bs = self.cfg.batch_size
        with torch.inference_mode():
            for start in range(0, len(texts), bs):
                idx = order[start : start + bs]
                enc = self._tok(
                    [texts[i] for i in idx], padding=True, truncation=True,
                    max_length=self.cfg.max_length, return_tensors="pt",
                ).to(self.device)
                want_all = self.cfg.layer != -1
                res = self._model(**enc, output_hidden_states=want_all)
                hidden = res.hidden_states[self.cfg.layer] if want_all else res.last_hidden_state
                pooled = pool(hidden.float(), enc["attention_mask"], self.cfg.pooling)
                if self.cfg.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.cpu().numpy()
        return out


def _config_only(name: str) -> bool:
    from armada_ray.model.hub import is_config_only  # lazy (torch), as in resolve_model

    return is_config_only(name)


def pool(hidden: Any, mask: Any, how: str) -> Any:
    """Pool ``hidden`` [B, T, H] over real tokens ``mask`` [B, T] (either padding side)."""
    import torch

    m = mask.to(hidden.dtype)
    if how == "mean":
        return (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
    if how == "cls":
        return hidden[:, 0]
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    if how == "last":
        idx = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(1).values.clamp(min=0)
    elif how == "first":
        big = mask.shape[1]
        idx = torch.where(mask.bool(), positions, torch.full_like(positions, big)).min(1).values.clamp(max=big - 1)
    else:
        raise ValueError(f"pooling {how!r}: allowed mean, cls, first, last")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
