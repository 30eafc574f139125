"""Command-line options shared by ``generate``, ``batch``, ``sweep`` and ``calibrate``, and their mapping onto the
typed Python API (:mod:`genmo_teacache.generate`, :mod:`genmo_teacache.caches`). Flags only map onto values here;
what they mean lives with the code they drive."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from genmo_teacache.caches import METHODS, CacheConfig, parse_mode, syntax
from genmo_teacache.cliutils import compose
from genmo_teacache.generate import GENERATION_DEFAULTS_FILE, GenerationSettings
from genmo_teacache.speed import speed_from_options

log = logging.getLogger(__name__)

DEFAULT_MODE = "adaptive_0.12_0.04"  # the reference experiment's two-phase setting (high 0.12 for steps 0-33)


def _positive_or_none(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"{value}: use a positive number of GPUs (or leave it out for every visible GPU)")
    return value


generation_options = compose(
    click.option("--model_dir", default=None, type=click.Path(file_okay=False),
                 help="Mochi weights directory (dit.safetensors, decoder.safetensors). Default: the tiny RANDOM "
                      "demo model, made on first use in the cache folder ($GENMO_TEACACHE_CACHE, else "
                      "~/.cache/genmo_teacache): it makes noise, for trying the pipeline out."),
    click.option("--width", default=848, show_default="848, or the model's generation_defaults.json", type=int,
                 help="Width of the video."),
    click.option("--height", default=480, show_default="480, or the model's generation_defaults.json", type=int,
                 help="Height of the video."),
    click.option("--num_frames", default=163, show_default="163, or the model's generation_defaults.json", type=int,
                 help="Number of frames (6k+1)."),
    click.option("--num_steps", default=64, show_default="64, or the model's generation_defaults.json", type=int,
                 help="Number of inference steps."),
    click.option("--cfg_scale", default=6.0, show_default=True, type=float, help="CFG scale."),
    click.option("--negative_prompt", default="", help="Negative prompt."),
    click.option("--threshold-noise", "threshold_noise", default=0.025, show_default=True, type=float,
                 help="Sigma schedule: noise level where the linear part ends."),
    click.option("--linear-steps", "linear_steps", default=None, type=int,
                 help="Sigma schedule: number of linear steps (default: half)."),
    click.option("--batch_cfg", is_flag=True,
                 help="Batch the two CFG branches into one DiT call (needs --attention_mode flash)."),
    click.option("--lora_path", default=None, type=click.Path(dir_okay=False, exists=True),
                 help="LoRA weights (.safetensors or .pt), as upstream."),
    click.option("--cpu_offload", is_flag=True, help="Keep models on CPU and move each to the GPU when used."),
    click.option("--low_memory", is_flag=True,
                 help="For small GPUs (one GPU): each model on the GPU only while used (as --cpu_offload), the DiT's "
                      "weights converted there block by block (never whole in fp32), decoding a few frames at a "
                      "time. Same latents as without it. For a 24 GB GPU with --speed_preset fastest: "
                      "docs/BENCHMARKS.md."),
    click.option("--attention_mode", default="auto", show_default=True,
                 type=click.Choice(["auto", "flash", "sdpa", "sage"]),
                 help="DiT attention: auto = flash if flash-attn is installed, else sdpa."),
    click.option("--device", default="auto", show_default=True,
                 help="cuda:N, cpu, or auto (first GPU if any, else CPU)."),
    click.option("--text_encoder_dir", default=None, type=click.Path(file_okay=False, exists=True),
                 help="Local T5 directory (default: MODEL_DIR/text_encoder if present, else google/t5-v1_1-xxl "
                      "from the hub, as upstream)."),
    click.option("--decode_type", default="auto", show_default=True,
                 type=click.Choice(["auto", "full", "tiled_full", "tiled_spatial"]),
                 help="VAE decoding: auto = tiled_spatial on GPU (as upstream's CLI), full on CPU."),
    click.option("--num_gpus", default=None, type=int, callback=_positive_or_none,
                 help="Ranks for context parallelism through Ray (default: every visible GPU, as upstream; 1 on "
                      "CPU). With --device cpu, N CPU ranks (gloo)."),
    click.option("--cfg_parallel", is_flag=True,
                 help="Run the two CFG branches on two halves of the --num_gpus GPUs (2: one branch per GPU, each "
                      "with the whole DiT; 2N: N-way context parallelism per branch). Latents are those of one GPU."),
    click.option("--ray_address", default=None, help="Join this Ray cluster instead of starting a local one."),
    click.option("--dit_dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
                 help="DiT weight storage: fp32 as upstream (cast under autocast each call) or bf16 (less memory)."),
    click.option("--sdpa_backend", default="auto", show_default=True,
                 type=click.Choice(["auto", "cudnn", "flash", "efficient", "math"]),
                 help="SDPA kernel for the DiT's attention (sdpa mode); auto lets PyTorch choose, as upstream."),
    click.option("--compile_dit", is_flag=True, help="torch.compile each DiT block (upstream's COMPILE_DIT)."),
    click.option("--attention_kernel", default="sdpa", show_default=True,
                 type=click.Choice(["sdpa", "fa3", "fa3_fp8", "fa4", "sage"]),
                 help="DiT attention kernel: sdpa as upstream; fa3 / fa3_fp8 (pip install fa3-fwd, Hopper), fa4 "
                      "(pip install flash-attn-4), sage (pip install sageattention). See docs/BENCHMARKS.md."),
    click.option("--fp8_linear", is_flag=True,
                 help="FP8 visual linear layers through torchao (needs --dit_dtype bf16, compute capability 8.9+)."),
    click.option("--fp8_mm", is_flag=True,
                 help="FP8 visual linear layers through torch._scaled_mm, no extra package (needs --dit_dtype bf16)."),
    click.option("--sparse_attention", default="none", show_default=True,
                 help="Training-free sparse attention (docs/METHODS.md): sparse_tile_<density>[_w<steps>] (a static "
                      "window of 3-D tiles, STA), sparse_heads_<density>[_w<steps>] (spatial or temporal per head, "
                      "Sparse VideoGen), sparse_topk_<density>[_w<steps>] (SpargeAttn's block top-k); _w: dense "
                      "warm-up steps. Also a token of --speed_preset (fastest+sparse_tile_0.17)."),
    click.option("--speed_preset", default=None,
                 help="Named speed options: fastest (FP8 attention and linears), fast (FP8 attention), fast_bf16 "
                      "(no 8-bit rounding), default; or "
                      "tokens joined by + (bf16+fa3+compile). Other speed options given go on top."),
)

SETTINGS_KEYS = ("width", "height", "num_frames", "num_steps", "cfg_scale", "negative_prompt", "threshold_noise",
                 "linear_steps", "batch_cfg")
PIPELINE_KEYS = ("device", "attention_mode", "cpu_offload", "lora_path", "text_encoder_dir", "decode_type",
                 "num_gpus", "cfg_parallel", "ray_address", "low_memory")  # and ``speed``, from speed.py's options


def resolve_model_dir(options: dict[str, Any]) -> dict[str, Any]:
    """``--model_dir`` or, when not given, the tiny random demo model (made on first use, then reused)."""
    if options.get("model_dir"):
        return options
    from genmo_teacache.tiny import default_model_dir

    return {**options, "model_dir": str(default_model_dir())}


def apply_model_defaults(ctx: click.Context | None, options: dict[str, Any]) -> dict[str, Any]:
    """Options left at their defaults take the values in ``MODEL_DIR/generation_defaults.json`` (the tiny model
    ships one so that the demo runs in seconds on a CPU)."""
    path = Path(options["model_dir"]) / GENERATION_DEFAULTS_FILE
    if not path.exists():
        return options
    try:
        defaults = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"{path} is not valid JSON ({e}): fix or delete it") from None
    out = dict(options)
    for key, value in defaults.items():
        source = ctx.get_parameter_source(key) if ctx is not None else None
        if key in out and (ctx is None or source == click.core.ParameterSource.DEFAULT):
            out[key] = value
    return out


def settings_from_options(**options: Any) -> GenerationSettings:
    try:
        return GenerationSettings(**{k: options[k] for k in SETTINGS_KEYS if k in options})
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def pipeline_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``generate.load_pipeline``: the pipeline options, and ``speed``, the one
    :class:`~genmo_teacache.speed.SpeedOptions` of ``--speed_preset`` with the speed options given on top."""
    try:
        speed = speed_from_options(options)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return {**{k: options[k] for k in PIPELINE_KEYS if k in options}, "speed": speed}


# -- the cache --------------------------------------------------------------------------------------------------

cache_options = compose(
    click.option("--cache_mode", "--teacache_mode", "cache_mode", default=None,
                 help=f"A cache mode: METHOD[+MODIFIER...], e.g. baseline, fixed_0.06, adaptive_0.12_0.04, "
                      f"mag_0.06 (needs --calibration), easycache_0.05, fbcache_0.1, fixed_0.06+cfg (CFG cache: "
                      f"the uncond branch skipped on some computed steps), fixed_0.06+taylor1 (skipped steps "
                      f"forecast, not reused) (default when no cache option is given: {DEFAULT_MODE}). "
                      f"Grammar:\n{syntax()}"),
    click.option("--calibration", "--teacache_coefficients", "--mag_ratios", "calibration", default=None,
                 type=click.Path(dir_okay=False),
                 help="Calibration JSON from `genmo-teacache calibrate`, for the methods that take one (TeaCache: "
                      "its rescale polynomial, default TeaCache's Mochi fit; MagCache: its magnitude ratios)."),
    *[option for method in METHODS for option in method.click_options()],  # a method's own flags (TeaCache's)
    click.option("--teacache_max_skips", "max_skips", type=int, default=None,
                 help="At most this many consecutive skips (TeaCache's -max<N>, MagCache's K)."),
    click.option("--teacache_no_range_guard", is_flag=True,
                 help="Do not force a compute when the indicator leaves the polynomial's fitted range."),
    click.option("--no_teacache", "--no_cache", "no_cache", is_flag=True,
                 help="No caching: upstream's sampler, bit for bit."),
)


def cache_from_options(cache_mode=None, calibration=None, max_skips=None, teacache_no_range_guard=False,
                       no_cache=False, **options: Any) -> CacheConfig:
    """The cache configuration the options describe (``options``: the rest, among them the methods' own flags);
    errors name the conflicting or bad value."""
    try:
        flagged = [(m.cli_flags, c) for m in METHODS if (c := m.from_flags(options, calibration)) is not None]
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    given = (["--cache_mode"] if cache_mode is not None else []) + [flags for flags, _ in flagged]
    if no_cache and given:
        raise click.UsageError(f"--no_teacache conflicts with {', '.join(given)}")
    if len(given) > 1:
        raise click.UsageError(f"give one way to set the cache, not {' and '.join(given)}")
    if calibration is not None and not Path(calibration).is_file():
        raise click.BadParameter(f"calibration file {calibration} does not exist: run `genmo-teacache calibrate` "
                                 f"or fix the path")
    try:
        if no_cache:
            config = CacheConfig.baseline()
        elif flagged:
            config = CacheConfig(flagged[0][1])
        else:
            config = parse_mode(cache_mode or DEFAULT_MODE, calibration)
        if calibration is not None and not config.method.uses_calibration:
            log.warning("mode %s takes no calibration file: %s is not used", config.name, calibration)
        config = config.with_method_options(max_skips=max_skips, range_guard=not teacache_no_range_guard)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return config
