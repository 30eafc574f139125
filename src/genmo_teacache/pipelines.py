"""Pipelines and model factories: upstream's, with our DiT subclass, our sampler and any device.

``TeaCacheSingleGPUPipeline`` subclasses upstream's ``MochiSingleGPUPipeline``; ``TeaCacheDitModelFactory``
subclasses ``DitModelFactory`` so it can build other sizes (a model directory's ``dit_config.json``) and any
device, and loads ``dit.safetensors`` (and a LoRA) as upstream does. Each factory builds its model with random
weights instead when its config holds ``weights.RANDOM_WEIGHTS_KEY`` (benchmarks: ``make-tiny-model
--full-size-random-dit --full-size-random-t5 --full-size-random-decoder``).

``low_memory`` (``--low_memory``): each model is on the GPU only during its phase (text encoding, denoising,
decoding) and on the CPU otherwise, as upstream's ``cpu_offload`` does, and besides: the DiT's weights are converted
(bf16, FP8) part by part on the GPU while it stays on the CPU (``speed.apply_speed_options(convert_on=...)``), the
allocator's cache is emptied between phases, and decoding runs a few latent frames at a time
(:mod:`genmo_teacache.decoding`). The latents are those of the pipeline without it, bit for bit.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genmo_teacache import compat
from genmo_teacache.caches import CacheConfig
from genmo_teacache.decoding import decode_in_time_chunks
from genmo_teacache.model import TeaCacheAsymmDiTJoint, random_dit
from genmo_teacache.sampler import CacheReport, sample_model
from genmo_teacache.speed import SpeedOptions, apply_speed_options
from genmo_teacache.upstream import (
    Decoder,
    Timer,
    decode_latents,
    decode_latents_tiled_full,
    decode_latents_tiled_spatial,
)
from genmo_teacache.upstream import pipelines as up
from genmo_teacache.weights import RANDOM_WEIGHTS_KEY, check_model_dir

log = logging.getLogger(__name__)

# upstream DitModelFactory.get_model's model_args (without attention_mode)
FULL_DIT_KWARGS: dict[str, Any] = dict(
    depth=48, patch_size=2, num_heads=24, hidden_size_x=3072, hidden_size_y=1536, mlp_ratio_x=4.0,
    mlp_ratio_y=4.0, in_channels=12, qk_norm=True, qkv_bias=False, out_bias=True, patch_embed_bias=True,
    timestep_mlp_bias=True, timestep_scale=1000.0, t5_feat_dim=4096, t5_token_length=256, rope_theta=10000.0,
)
# upstream DecoderModelFactory.get_model's Decoder kwargs
FULL_DECODER_KWARGS: dict[str, Any] = dict(
    out_channels=3, base_channels=128, channel_multipliers=[1, 2, 4, 6], temporal_expansions=[1, 2, 3],
    spatial_expansions=[2, 2, 2], num_res_blocks=[3, 3, 4, 6, 3], latent_dim=12,
    has_attention=[False, False, False, False, False], output_norm=False, nonlinearity="silu",
    output_nonlinearity="silu", causal=True,
)
T5_HUB_ID = up.T5_MODEL


def dit_kwargs(overrides: dict[str, Any] | None = None, attention_mode: str = "sdpa") -> dict[str, Any]:
    return {**FULL_DIT_KWARGS, "attention_mode": attention_mode, **(overrides or {})}


def decoder_kwargs(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**FULL_DECODER_KWARGS, **(overrides or {})}


def read_model_config(model_dir: str | Path, name: str) -> dict[str, Any]:
    """``{model_dir}/{name}`` as a dict, or {} when absent (real weights: the full architecture)."""
    path = Path(model_dir) / name
    return json.loads(path.read_text()) if path.exists() else {}


def resolve_attention_mode(attention_mode: str | None) -> str:
    """``auto``/None -> "flash" when flash-attn 2 is installed, else "sdpa" (upstream's inference)."""
    if attention_mode in (None, "auto"):
        return "flash" if compat.flash_attn2_available() else "sdpa"
    if attention_mode not in ("flash", "sdpa", "sage"):
        raise ValueError(f"attention_mode {attention_mode!r}: use auto, flash, sdpa or sage")
    return attention_mode


def _device_of(device_id: int | str) -> torch.device:
    return torch.device(f"cuda:{device_id}") if isinstance(device_id, int) else torch.device("cpu")


def random_weights_device() -> torch.device:
    """Where random weights (benchmark model directories) are drawn: the current GPU when there is one (billions of
    values take seconds there, a minute or more on a CPU), else the CPU. Each model is then moved where it is asked,
    so the same directory gives the same weights whatever the placement."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _warn_random(what: str) -> None:
    log.warning("%s with RANDOM weights (%s): for timing and memory only, its videos are noise", what,
                RANDOM_WEIGHTS_KEY)


def fsdp_wrap(model: torch.nn.Module, device: torch.device, auto_wrap_policy, process_group=None) -> torch.nn.Module:
    """Upstream's ``setup_fsdp_sync`` with one change: root forward inputs are not cast to the parameter dtype.
    Upstream only ever passes fp32 tensors to the root (so nothing changes for it), but our sampler passes the
    phases' bf16 activations through the root forward, and casting them to fp32 would change the numerics
    away from the single-GPU result. On CPU, FSDP cannot sync weights from rank 0 (that needs GPUs): every CPU
    rank loads the weights instead. ``process_group``: the ranks that shard the model (default: all)."""
    from torch.distributed.fsdp import BackwardPrefetch, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = FSDP(
        model,
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        mixed_precision=MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.float32,
                                       buffer_dtype=torch.float32, cast_root_forward_inputs=False),
        auto_wrap_policy=auto_wrap_policy,
        backward_prefetch=BackwardPrefetch.BACKWARD_PRE,
        limit_all_gathers=True,
        device_id=device if device.type == "cpu" else device.index,
        sync_module_states=device.type == "cuda",
        use_orig_params=True,
        process_group=process_group,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return model



class TeaCacheDitModelFactory(up.DitModelFactory):
    """Builds ``TeaCacheAsymmDiTJoint``; ``model_kwargs`` override the full-size architecture (upstream passes
    ``depth`` twice and cannot build another size)."""

    def __init__(self, *, model_path: str, model_dtype: str = "bf16", lora_path: str | None = None,
                 attention_mode: str | None = None, model_kwargs: dict[str, Any] | None = None,
                 speed: SpeedOptions | None = None):
        model_kwargs = dict(model_kwargs or {})
        random_weights = bool(model_kwargs.pop(RANDOM_WEIGHTS_KEY, False))
        up.ModelFactory.__init__(
            self, model_path=model_path, lora_path=lora_path, model_dtype=model_dtype,
            attention_mode=resolve_attention_mode(attention_mode), model_kwargs=model_kwargs,
            random_weights=random_weights, speed=speed or SpeedOptions(),
        )

    def get_model(self, *, local_rank, device_id, world_size, model_kwargs=None, patch_model_fns=None,
                  strict_load=True, load_checkpoint=True, fast_init=True, fsdp=None, all_ranks_load=False,
                  convert_on: torch.device | None = None):
        """As upstream. For world_size > 1 the model is wrapped by ``fsdp(model, auto_wrap_policy)``, by default
        ``multigpu.fsdp_wrap``; ``all_ranks_load`` where FSDP cannot sync weights from rank 0 (CPU). ``convert_on``
        (one device): the speed options' weight conversions run there part by part, the model placed on
        ``device_id`` (``--low_memory``: converted on the GPU, kept on the CPU)."""
        lora_sd = None
        kwargs = {**self.kwargs["model_kwargs"], **(model_kwargs or {})}
        if self.kwargs["lora_path"] is not None:
            lora_sd, lora_kwargs = _load_lora(self.kwargs["lora_path"])
            kwargs.update(lora_kwargs)
        args = dit_kwargs(kwargs, self.kwargs["attention_mode"])
        if self.kwargs["random_weights"]:
            return self._random_model(args, device_id, world_size, fsdp, convert_on)
        if fast_init:
            model = torch.nn.utils.skip_init(TeaCacheAsymmDiTJoint, **args)
        else:
            model = TeaCacheAsymmDiTJoint(**args)
        for fn in patch_model_fns or []:
            model = fn(model)
        if load_checkpoint and (local_rank == 0 or all_ranks_load):
            sd = up.load_to_cpu(self.kwargs["model_path"])
            result = model.load_state_dict(sd, strict=strict_load)
            if not strict_load:
                missing = [k for k in result.missing_keys if ".lora_" not in k]
                if missing or result.unexpected_keys:
                    log.warning("%s: missing keys %s, unexpected keys %s", self.kwargs["model_path"], missing,
                                result.unexpected_keys)
            if lora_sd:
                model.load_state_dict(lora_sd, strict=strict_load)
        if world_size > 1:
            assert self.kwargs["model_dtype"] == "bf16", "FP8 is not supported for multi-GPU inference"
            return self._fsdp(model, device_id, fsdp).eval()
        return apply_speed_options(model.to(_device_of(device_id)), self.kwargs["speed"], convert_on=convert_on).eval()

    @staticmethod
    def _fsdp(model, device_id, fsdp):
        policy = partial(up.lambda_auto_wrap_policy, lambda_fn=lambda m: m in model.blocks)
        if fsdp is None:  # upstream's setup, minus the root input cast that would change our phases' numerics
            fsdp = partial(fsdp_wrap, device=_device_of(device_id))
        return fsdp(model, auto_wrap_policy=policy)

    def _random_model(self, args, device_id, world_size, fsdp, convert_on):
        """The architecture with random weights (``model.random_dit``, seed 0 on every rank), drawn part by part on
        :func:`random_weights_device` and placed on ``device_id``: timing and memory only."""
        _warn_random("DiT")
        model = random_dit(TeaCacheAsymmDiTJoint, args, draw=random_weights_device(), place=_device_of(device_id))
        if world_size > 1:
            return self._fsdp(model, device_id, fsdp).eval()
        return apply_speed_options(model, self.kwargs["speed"], convert_on=convert_on).eval()


def _load_lora(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["kwargs"])
    lora = up.load_to_cpu(path, weights_only=False)
    return lora["state_dict"], lora["kwargs"]


class TeaCacheDecoderModelFactory(up.DecoderModelFactory):
    """Upstream's decoder factory with constructor overrides (``decoder_config.json``) and any device."""

    def __init__(self, *, model_path: str, model_kwargs: dict[str, Any] | None = None):
        up.ModelFactory.__init__(self, model_path=model_path, model_kwargs=dict(model_kwargs or {}))

    def get_model(self, *, local_rank=0, device_id=0, world_size=1):
        from safetensors.torch import load_file

        kwargs = dict(self.kwargs["model_kwargs"])
        if kwargs.pop(RANDOM_WEIGHTS_KEY, False):
            _warn_random("VAE decoder")
            torch.manual_seed(0)
            with random_weights_device():
                decoder = Decoder(**decoder_kwargs(kwargs))
        else:
            decoder = Decoder(**decoder_kwargs(kwargs))
            decoder.load_state_dict(load_file(self.kwargs["model_path"]), strict=True)
        return decoder.eval().to(_device_of(device_id))


class TeaCacheT5ModelFactory(up.T5ModelFactory):
    """Upstream's T5 factory; a local text encoder whose ``config.json`` holds ``RANDOM_WEIGHTS_KEY`` is built with
    random weights (seed 0) instead of loaded, in fp32 as upstream loads T5-XXL, so its memory and time are real."""

    @property
    def random_weights(self) -> bool:
        return bool(read_model_config(self.model_dir, "config.json").get(RANDOM_WEIGHTS_KEY)) \
            if Path(self.model_dir).is_dir() else False

    def load(self, device: torch.device) -> torch.nn.Module:
        """The encoder on ``device``, not wrapped (the multi-GPU ranks wrap it themselves)."""
        from transformers import T5Config, T5EncoderModel

        if not self.random_weights:
            return T5EncoderModel.from_pretrained(self.model_dir).to(device).eval()
        _warn_random("T5 text encoder")
        config = T5Config.from_pretrained(self.model_dir)
        torch.manual_seed(0)
        with random_weights_device():
            model = T5EncoderModel(config)
        return model.to(device=device, dtype=torch.float32).eval()

    def get_model(self, *, local_rank, device_id, world_size):
        if not self.random_weights:
            return super().get_model(local_rank=local_rank, device_id=device_id, world_size=world_size)
        return self.load(_device_of(device_id))  # unwrapped: the multi-GPU ranks call load() and wrap it


def factories_for(model_dir: str | Path, *, text_encoder_dir: str | None = None, lora_path: str | None = None,
                  attention_mode: str | None = None, speed: SpeedOptions | None = None) -> dict[str, Any]:
    """The three factories for a native weights directory (``dit.safetensors``, ``decoder.safetensors``).
    The text encoder comes from ``text_encoder_dir``, else ``{model_dir}/text_encoder`` if present, else the
    hub id upstream uses (google/t5-v1_1-xxl)."""
    model_dir = Path(model_dir)
    check_model_dir(model_dir, text_encoder_dir=text_encoder_dir, lora_path=lora_path)
    dit_config = read_model_config(model_dir, "dit_config.json")
    if text_encoder_dir is None and (model_dir / "text_encoder").is_dir():
        text_encoder_dir = str(model_dir / "text_encoder")
    return dict(
        text_encoder_factory=TeaCacheT5ModelFactory(text_encoder_dir),
        dit_factory=TeaCacheDitModelFactory(
            model_path=str(model_dir / "dit.safetensors"), lora_path=lora_path, attention_mode=attention_mode,
            model_kwargs=dit_config, speed=speed,
        ),
        decoder_factory=TeaCacheDecoderModelFactory(
            model_path=str(model_dir / "decoder.safetensors"),
            model_kwargs=read_model_config(model_dir, "decoder_config.json"),
        ),
    )


@dataclass
class GenerationOutput:
    """Frames plus what it cost. ``frames``: (B, T, H, W, 3) float32 in [0, 1], as upstream returns them.
    ``phase_peaks_gb``: on a GPU, the peak memory allocated during each phase (text encoding, denoising, decoding,
    each model's moves included); ``peak_memory_gb`` is the largest of them."""

    frames: np.ndarray
    latents: torch.Tensor
    report: CacheReport
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_gb: float | None = None
    phase_peaks_gb: dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TeaCacheSingleGPUPipeline(up.MochiSingleGPUPipeline):
    """Upstream's single-device pipeline on any device (``cuda:N`` or ``cpu``), sampling with the cache.
    ``low_memory``: see the module docstring (it includes what ``cpu_offload`` does)."""

    def __init__(self, *, text_encoder_factory, dit_factory, decoder_factory, device: str | torch.device = "cuda:0",
                 cpu_offload: bool = False, decode_type: str = "full", decode_args: dict[str, Any] | None = None,
                 fast_init: bool = True, strict_load: bool = True, low_memory: bool = False):
        if decode_type not in ("full", "tiled_full", "tiled_spatial"):
            raise ValueError(f"decode_type {decode_type!r}: use full, tiled_full or tiled_spatial")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda:0")
        self.tokenizer = up.t5_tokenizer(text_encoder_factory.model_dir)
        self.cpu_offload = cpu_offload or low_memory
        self.low_memory = low_memory
        self.decode_args = decode_args or {}
        self.decode_type = decode_type
        init_id: int | str = "cpu" if self.cpu_offload or self.device.type == "cpu" else self.device.index
        t = Timer()
        with t("load_text_encoder"):
            self.text_encoder = text_encoder_factory.get_model(local_rank=0, device_id=init_id, world_size=1)
        with t("load_dit"):
            self.dit = dit_factory.get_model(local_rank=0, device_id=init_id, world_size=1, fast_init=fast_init,
                                             strict_load=strict_load, convert_on=self.device if low_memory else None)
        with t("load_vae"):
            self.decoder = decoder_factory.get_model(local_rank=0, device_id=init_id, world_size=1)
        self.load_times = dict(t.times)
        self.warmed: set = set()  # what has run once: the text encoder, the DiT's input shapes (sampler.warm_up)

    @contextmanager
    def placed(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """``model`` on the pipeline's device for the block. With ``cpu_offload`` (or ``low_memory``) on a GPU it
        is moved there and back to the CPU after (upstream's ``move_to_device``); with ``low_memory`` the allocator's
        cache is emptied after, so the next phase finds the memory free."""
        offload = self.cpu_offload and self.device.type == "cuda"
        with up.move_to_device(model, self.device, enabled=offload):
            yield model
        if offload and self.low_memory:
            torch.cuda.empty_cache()

    def encode(self, *, batch_cfg: bool, prompt: str, negative_prompt: str) -> dict[str, Any]:
        """Upstream's ``get_conditioning`` with the text encoder placed on the device for it."""
        with self.placed(self.text_encoder):
            return up.get_conditioning(self.tokenizer, self.text_encoder, self.device, batch_cfg, prompt=prompt,
                                       negative_prompt=negative_prompt)

    def generate(self, *, batch_cfg: bool, prompt: str, negative_prompt: str, cache: CacheConfig,
                 progress: bool = True, **kwargs: Any) -> GenerationOutput:
        """One video. ``kwargs`` are upstream ``sample_model``'s (seed, width, height, num_frames, schedules)."""
        dev = self.device
        peaks: dict[str, float] = {}

        def phase_done(name: str) -> None:
            if dev.type == "cuda":
                peaks[name] = torch.cuda.max_memory_allocated(dev) / 1024**3
                torch.cuda.reset_peak_memory_stats(dev)

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with torch.inference_mode():
            text_warmup = 0.0
            if "text_encoder" not in self.warmed:  # its first call (e.g. cuBLAS initialisation), timed apart
                t0 = time.perf_counter()
                self.encode(batch_cfg=batch_cfg, prompt=prompt, negative_prompt=negative_prompt)
                _sync(dev)
                self.warmed.add("text_encoder")
                text_warmup = time.perf_counter() - t0
            t0 = time.perf_counter()
            conditioning = self.encode(batch_cfg=batch_cfg, prompt=prompt, negative_prompt=negative_prompt)
            _sync(dev)
            t1 = time.perf_counter()
            phase_done("text_encoding")
            with self.placed(self.dit):
                t1b = time.perf_counter()
                result = sample_model(dev, self.dit, conditioning, cache=cache, progress=progress, warm=self.warmed,
                                      **kwargs)
                _sync(dev)
                t2 = time.perf_counter()
            phase_done("denoising")
            with self.placed(self.decoder):
                t2b = time.perf_counter()
                frames = self._decode(result.latents)
                _sync(dev)
            t3 = time.perf_counter()
            phase_done("decoding")
        warmup = result.report.warmup_s  # inside the denoising call, out of its time
        times = dict(text_encoding_s=t1 - t0, denoising_s=t2 - t1b - warmup, decoding_s=t3 - t2b,
                     total_s=t3 - t0 - warmup, warmup_s=text_warmup + warmup)
        if self.cpu_offload and dev.type == "cuda":
            times["offload_s"] = (t1b - t1) + (t2b - t2)
        peak = max(peaks.values()) if peaks else None
        return GenerationOutput(frames.cpu().numpy(), result.latents, result.report, times, peak, peaks)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        decoder = partial(decode_in_time_chunks, self.decoder) if self.low_memory else self.decoder
        if self.decode_type == "tiled_full":
            return decode_latents_tiled_full(decoder, latents, **self.decode_args)
        if self.decode_type == "tiled_spatial":
            return decode_latents_tiled_spatial(decoder, latents, **self.decode_args, num_tiles_w=4,
                                                num_tiles_h=2)
        with warnings.catch_warnings():  # upstream autocasts on "cuda" only: on CPU it warns and runs in fp32
            warnings.filterwarnings("ignore", message="CUDA is not available", category=UserWarning)
            return decode_latents(decoder, latents)

    def __call__(self, batch_cfg, prompt, negative_prompt, cache: CacheConfig | None = None, **kwargs):
        """Upstream's call signature: returns the frames (B, T, H, W, 3) as a numpy array."""
        out = self.generate(batch_cfg=batch_cfg, prompt=prompt, negative_prompt=negative_prompt,
                            cache=cache or CacheConfig.baseline(), **kwargs)
        self.last_output = out
        return out.frames
