"""The paper's Stable Diffusion teacher: a text-to-image-to-latent recipe, one vector per prompt.

For each prompt (the example's text fields, lower-cased and joined, then ``teacher.prompt_template``):

1. txt2img with ``steps`` denoising steps at the model's native size (512 for SD-v1; ``txt2img_size``);
2. the image resized to ``image_size`` (128), bicubic with antialiasing, on the pipeline's device (the txt2img
   output stays a tensor, quantised to 8-bit levels as a saved image would be: no PIL round trip on one CPU);
3. ``StableDiffusionImg2ImgPipeline(**pipe.components)`` with the same prompt, ``strength`` 0.75,
   ``guidance_scale`` 7.5, ``steps`` steps and ``output_type="latent"``;
4. the latent flattened: 4 x (128 / 8) x (128 / 8) = 1024 floats for SD-v1's 4-block VAE.

Every row gets its own ``torch.Generator`` seeded with ``teacher.seed``, so a row's vector does not
depend on which other prompts share its batch (the cache is content-addressed per prompt).

Models: a diffusers pipeline id or folder (what users run:
``StableDiffusionPipeline.from_pretrained("CompVis/stable-diffusion-v1-4", revision=..., dtype=fp16)`` on
a GPU), optionally with LoRA weights (``pipe.load_lora_weights``). Two offline shapes with random
weights exist for tests and benchmarks, since no SD weights are installable here: ``tiny`` (a 2-block
UNet/VAE and a 2-layer CLIP text tower with a character vocabulary; 128 px -> 4x64x64) and
``sd-v1-shape`` (SD-v1's exact UNet/VAE/CLIP-L shapes built from configs, with the real CLIP BPE
vocabulary rebuilt from ``open_clip``'s ``bpe_simple_vocab_16e6.txt.gz``; ~1.07 B parameters).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import string
from pathlib import Path
from typing import Any

import numpy as np

from armada_ray.teachers.base import (
    FINGERPRINT_VERSION,
    LocalTeacher,
    TeacherError,
    default_device,
    dtype_tag,
    resolve_dtype,
)
from armada_ray.config import ConfigError
from armada_ray.teachers.hf import folder_digest

RECIPE = "sd-txt2img>u8>resize-bicubic-aa>img2img>latent-flatten"  # v2: tensor resize (was PIL)

# Random-weight offline shapes: (unet kwargs, vae kwargs, clip text kwargs, tokenizer kind)
_TINY = {
    "unet": dict(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32,
    ),
    "vae": dict(
        block_out_channels=(32, 64), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=32, sample_size=32,
    ),
    "text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 projection_dim=32),
    "tokenizer": "chars",
}
_SD_V1 = {  # CompVis/stable-diffusion-v1-4's unet/vae/text_encoder configs
    "unet": dict(
        sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    ),
    "vae": dict(
        block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, norm_num_groups=32, sample_size=512, layers_per_block=2,
    ),
    "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projection_dim=768, hidden_act="quick_gelu"),
    "tokenizer": "clip-bpe",
}
SHAPES = {"tiny": _TINY, "sd-v1-shape": _SD_V1}


class DiffusionTeacher(LocalTeacher):
    kind = "diffusion"

    def __init__(self, cfg: Any, device: str | None = None):
        self.cfg = cfg
        self.stand_in = bool(cfg.stand_in)
        self.device = device or default_device()
        self._pipe: Any = None
        self._i2i: Any = None
        self._vae_conf: dict[str, Any] | None = None
        self._unet_sample: int | None = None
        self._fp: dict[str, Any] | None = None

    # ------------------------------------------------------------------ metadata (no weights loaded)
    def _configs(self) -> tuple[dict[str, Any], int]:
        if self._vae_conf is None:
            shape = SHAPES.get(self.cfg.model)
            if shape is not None:
                self._vae_conf, self._unet_sample = dict(shape["vae"]), int(shape["unet"]["sample_size"])
            else:
                try:
                    from diffusers import AutoencoderKL, UNet2DConditionModel

                    kw = {"subfolder": "vae", "revision": self.cfg.revision}
                    self._vae_conf = dict(AutoencoderKL.load_config(self.cfg.model, **kw))
                    kw["subfolder"] = "unet"
                    self._unet_sample = int(UNet2DConditionModel.load_config(self.cfg.model, **kw)["sample_size"])
                except Exception as exc:  # noqa: BLE001 - offline / missing model: say which and why
                    raise PipelineUnavailableError(_unavailable(self.cfg.model, exc)) from None
        return self._vae_conf, int(self._unet_sample or 64)

    @property
    def vae_scale(self) -> int:
        vae, _ = self._configs()
        return 2 ** (len(vae.get("block_out_channels", (1, 1, 1, 1))) - 1)

    @property
    def txt2img_size(self) -> int:
        _, sample = self._configs()
        return int(self.cfg.txt2img_size or sample * self.vae_scale)

    @property
    def dim(self) -> int:
        vae, _ = self._configs()
        side = self.cfg.image_size // self.vae_scale
        return int(vae.get("latent_channels", 4)) * side * side

    def fingerprint(self) -> dict[str, Any]:
        if self._fp is None:
            c = self.cfg
            local = Path(c.model).expanduser().is_dir()
            lora_local = c.lora is not None and Path(c.lora).expanduser().exists()
            self._fp = {
                "v": FINGERPRINT_VERSION,
                "kind": "diffusion",
                "recipe": RECIPE,
                "model": c.model,
                "revision": c.revision,
                "weights": folder_digest(Path(c.model).expanduser()) if local else (
                    "random-init:seed0" if c.model in SHAPES else None
                ),
                "lora": c.lora,
                "lora_weights": folder_digest(Path(c.lora).expanduser()) if lora_local and Path(c.lora).is_dir() else None,
                "steps": c.steps,
                "txt2img_size": self.txt2img_size,
                "image_size": c.image_size,
                "strength": c.strength,
                "guidance_scale": c.guidance_scale,
                "seed": c.seed,
                "prompt_template": c.prompt_template,
                "dtype": dtype_tag(c.dtype, self.device),
                "dim": self.dim,
            }
        return dict(self._fp)

    # ------------------------------------------------------------------------------------ model
    def load(self) -> "DiffusionTeacher":
        if self._pipe is not None:
            return self
        import torch
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        dtype = resolve_dtype(self.cfg.dtype, self.device)
        if dtype == torch.bfloat16 and self.cfg.dtype == "auto":
            dtype = torch.float16  # SD-v1 is published and validated in fp16
        if self.cfg.model in SHAPES:
            pipe = build_random_pipeline(self.cfg.model, dtype=dtype)
        else:
            try:
                pipe = load_pipeline(StableDiffusionPipeline, self.cfg.model, self.cfg.revision, dtype)
            except Exception as exc:  # noqa: BLE001
                raise PipelineUnavailableError(_unavailable(self.cfg.model, exc)) from None
        if self.cfg.lora:
            pipe.load_lora_weights(self.cfg.lora)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        with _quiet_diffusers():  # the expected "you have disabled the safety checker" notice
            i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
        i2i.set_progress_bar_config(disable=True)
        self._pipe, self._i2i = pipe, i2i
        return self

    def images(self, texts: list[str]) -> list[Any]:
        """The first half of the recipe: txt2img then the resize (what an images API would return)."""
        import torch

        self.load()
        gen_device = "cpu" if self.device == "mps" else self.device
        gens = [torch.Generator(device=gen_device).manual_seed(self.cfg.seed) for _ in texts]
        size, side = self.txt2img_size, self.cfg.image_size
        with torch.inference_mode():
            images = self._pipe(
                list(texts), height=size, width=size, num_inference_steps=self.cfg.steps,
                guidance_scale=self.cfg.guidance_scale, generator=gens,
            ).images
        return [im.resize((side, side), resample=_bicubic()) for im in images]

    @property
    def batch_size(self) -> int:
        """``teacher.batch_size``, else 32 on a GPU and 4 on CPU."""
        if self.cfg.batch_size is not None:
            return self.cfg.batch_size
        return 32 if str(self.device).startswith("cuda") else 4

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        self.load()
        out = np.zeros((len(texts), self.dim), np.float32)
        size, side = self.txt2img_size, self.cfg.image_size
        bs = self.batch_size
        gen_device = "cpu" if self.device == "mps" else self.device
        for start in range(0, len(texts), bs):
            chunk = list(texts[start : start + bs])
            gens = [torch.Generator(device=gen_device).manual_seed(self.cfg.seed) for _ in chunk]
            with torch.inference_mode():
                pixels = self._pipe(
                    chunk, height=size, width=size, num_inference_steps=self.cfg.steps,
                    guidance_scale=self.cfg.guidance_scale, generator=gens, output_type="pt",
                ).images  # (B, 3, size, size) in [0, 1], on the device
                images = resize_images(pixels, side)
                gens = [torch.Generator(device=gen_device).manual_seed(self.cfg.seed) for _ in chunk]
                latents = self._i2i(
                    chunk, image=images, strength=self.cfg.strength, guidance_scale=self.cfg.guidance_scale,
                    num_inference_steps=self.cfg.steps, output_type="latent", generator=gens,
                ).images
            out[start : start + len(chunk)] = latents.float().flatten(1).cpu().numpy()
        return out


def resize_images(pixels: Any, side: int) -> Any:
    """txt2img output (B, 3, H, W) in [0, 1] -> (B, 3, side, side): quantised to 8-bit levels (what a saved image
    holds), then bicubic with antialiasing, clamped to [0, 1]; stays on the tensor's device."""
    import torch

    pixels = torch.round(pixels.float().clamp(0, 1) * 255) / 255
    resized = torch.nn.functional.interpolate(pixels, size=(side, side), mode="bicubic", antialias=True,
                                              align_corners=False)
    return resized.clamp(0, 1)


def load_pipeline(cls: Any, model: str, revision: str | None, dtype: Any) -> Any:
    """``cls.from_pretrained`` for a pipeline id or folder: in fp16, the repository's fp16 weights
    (``variant="fp16"``, half the download and no fp32 copy in memory), falling back to the default weights
    when it publishes none."""
    import torch

    kwargs = dict(revision=revision, dtype=dtype, safety_checker=None, feature_extractor=None,
                  requires_safety_checker=False)
    with _quiet_diffusers():
        if dtype == torch.float16:
            try:
                return cls.from_pretrained(model, variant="fp16", **kwargs)
            except (OSError, ValueError):  # no fp16 variant in this repository or folder
                pass
        return cls.from_pretrained(model, **kwargs)


class _quiet_diffusers:
    def __enter__(self) -> None:
        from diffusers.utils import logging as dlog

        self._level = dlog.get_verbosity()
        dlog.set_verbosity_error()

    def __exit__(self, *exc: Any) -> None:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity(self._level)


def _bicubic() -> Any:
    from PIL import Image

    return Image.Resampling.BICUBIC


class PipelineUnavailableError(ConfigError, TeacherError):
    """``teacher.model`` names no pipeline that loads here: the user can fix it (CLI exit 2), and to the fan-out it
    is still a fatal teacher error."""


def _unavailable(model: str, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
    return (
        f"teacher.model={model!r}: cannot load this diffusion pipeline{hint}: {type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}. "
        f"Use a local pipeline folder, or teacher.model=tiny / sd-v1-shape for random-weight offline shapes"
    )


# ------------------------------------------------------------------------ offline random pipelines


def tokenizer_dir(kind: str) -> Path:
    """The cached folder of an offline CLIP tokenizer (``clip-bpe`` or the small character one), written once."""
    root = Path(os.environ.get("ARMADA_CACHE_DIR") or Path.home() / ".cache" / "armada-ray") / "tokenizers"
    folder = root / f"clip-tokenizer-{kind}"
    if (folder / "merges.txt").is_file():
        return folder
    tmp = root / f".clip-tokenizer-{kind}.{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    if kind == "clip-bpe":
        vocab, merges = _clip_bpe_vocab()
    else:
        vocab, merges = {"<|startoftext|>": 0, "<|endoftext|>": 1}, []
        for ch in string.ascii_lowercase + string.digits + ".,!?'-:;$%&()\"/":
            vocab[ch] = len(vocab)
            vocab[ch + "</w>"] = len(vocab)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _clip_bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's 49 408-token BPE, rebuilt from open_clip's bpe_simple_vocab_16e6.txt.gz."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError("sd-v1-shape needs the open-clip-torch package (its CLIP BPE file; install --no-deps)")
    bpe = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab_list = byte_chars + [v + "</w>" for v in byte_chars] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {v: i for i, v in enumerate(vocab_list)}, merges  # type: ignore[return-value]


def build_random_pipeline(shape: str, dtype: Any = None, seed: int = 0) -> Any:
    """A StableDiffusionPipeline of an offline shape (``tiny`` or ``sd-v1-shape``) with seeded random weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = SHAPES[shape]
    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir(spec["tokenizer"])), model_max_length=77)
    bos, eos = tok.convert_tokens_to_ids("<|startoftext|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tok), max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
            pad_token_id=eos, **spec["text"],
        ))
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        steps_offset=1, set_alpha_to_one=False, num_train_timesteps=1000,
    )
    with _quiet_diffusers():
        pipe = StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
    if dtype is not None and dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    return pipe
