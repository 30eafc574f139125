"""Generate videos: the Python API (``load_pipeline`` + ``generate``) and the ``generate`` command that
``demos/cli_teacache.py`` runs. The command keeps every option of upstream ``demos/cli.py``."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from genmo_teacache.coefficients import Rescale
from genmo_teacache.config import DEFAULT_HIGH_STEPS, CacheConfig
from genmo_teacache.parallel import check_divisible
from genmo_teacache.video import (
    OutputPathError,
    atomic_path,
    check_output_dir,
    check_output_file,
    write_json,
    write_video,
)

log = logging.getLogger(__name__)

DEFAULT_MODE = "adaptive_0.12_0.04"  # the reference experiment's two-phase setting (high 0.12 for steps 0-33)
DEFAULT_PROMPT = (
    "A hand with delicate fingers picks up a bright yellow lemon from a wooden bowl filled with lemons and sprigs "
    "of mint against a peach-colored background. The hand gently tosses the lemon up and catches it, showcasing "
    "its smooth texture. A beige string bag sits beside the bowl, adding a rustic touch to the scene. Additional "
    "lemons, one halved, are scattered around the base of the bowl. The even lighting enhances the vibrant colors "
    "and creates a fresh, inviting atmosphere."
)  # upstream demos/cli.py's default prompt
GENERATION_DEFAULTS_FILE = "generation_defaults.json"


@dataclass(frozen=True)
class GenerationSettings:
    """Everything about one generation except the prompt, the seed and the cache (upstream's defaults)."""

    width: int = 848
    height: int = 480
    num_frames: int = 163
    num_steps: int = 64
    cfg_scale: float = 6.0
    negative_prompt: str = ""
    threshold_noise: float = 0.025
    linear_steps: int | None = None
    batch_cfg: bool = False

    def __post_init__(self) -> None:
        if (self.num_frames - 1) % 6 != 0 or self.num_frames < 1:
            raise ValueError(f"num_frames={self.num_frames}: Mochi needs num_frames - 1 divisible by 6 "
                             f"(e.g. 19, 31, 85, 163)")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v < 16 or v % 16 != 0:
                raise ValueError(f"{name}={v}: use a positive multiple of 16 (latents are 1/8 size, patches 2x2)")
        if self.num_steps < 2:
            raise ValueError(f"num_steps={self.num_steps}: use at least 2 denoising steps")
        if not math.isfinite(self.cfg_scale):
            raise ValueError(f"cfg_scale={self.cfg_scale} must be a finite number")

    def sampler_args(self, seed: int) -> dict[str, Any]:
        """The keyword arguments of upstream ``sample_model``."""
        from genmo.mochi_preview.pipelines import linear_quadratic_schedule

        return dict(
            seed=seed, width=self.width, height=self.height, num_frames=self.num_frames,
            num_inference_steps=self.num_steps, cfg_schedule=[self.cfg_scale] * self.num_steps,
            sigma_schedule=linear_quadratic_schedule(self.num_steps, self.threshold_noise, self.linear_steps),
        )


@dataclass
class GenerationResult:
    frames: np.ndarray  # (T, H, W, 3) float32 in [0, 1]
    report: dict[str, Any]
    timings: dict[str, float]
    peak_memory_gb: float | None
    latents: Any = field(repr=False, default=None)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter(f"device {device!r} asked for but no CUDA GPU is visible: use --device cpu")
    return device


def load_pipeline(model_dir: str | Path, *, device: str = "auto", attention_mode: str = "auto",
                  cpu_offload: bool = False, lora_path: str | None = None, text_encoder_dir: str | None = None,
                  decode_type: str = "auto", num_gpus: int | None = 1, ray_address: str | None = None,
                  dit_dtype: str = "fp32", sdpa_backend: str = "auto", compile_dit: bool = False):
    """Load the models once. ``decode_type="auto"``: tiled_spatial on a GPU (as upstream's CLI), full on CPU.
    ``dit_dtype``, ``sdpa_backend``, ``compile_dit``: see ``genmo_teacache.speed`` (defaults = upstream)."""
    from genmo_teacache.pipelines import TeaCacheSingleGPUPipeline, factories_for
    from genmo_teacache.speed import SpeedOptions

    speed = SpeedOptions(dit_dtype=dit_dtype, sdpa_backend=sdpa_backend, compile=compile_dit)

    device = resolve_device(device)
    if num_gpus is None:
        import torch

        num_gpus = max(torch.cuda.device_count(), 1) if device.startswith("cuda") else 1
    factories = factories_for(model_dir, text_encoder_dir=text_encoder_dir, lora_path=lora_path,
                              attention_mode=attention_mode, speed=speed)
    if num_gpus > 1:
        from genmo_teacache.multigpu import TeaCacheMultiGPUPipeline

        if lora_path or cpu_offload:
            raise click.UsageError("--lora_path and --cpu_offload are single-GPU options (as upstream)")
        if speed.dit_dtype != "fp32" or speed.compile:
            raise click.UsageError("--dit_dtype bf16 and --compile_dit are single-GPU options (FSDP keeps fp32)")
        return TeaCacheMultiGPUPipeline(**factories, world_size=num_gpus, device_type=device.split(":")[0],
                                        ray_address=ray_address)
    if decode_type == "auto":
        decode_type = "tiled_spatial" if device.startswith("cuda") else "full"
    decode_args = dict(overlap=8) if decode_type == "tiled_spatial" else None
    return TeaCacheSingleGPUPipeline(**factories, device=device, cpu_offload=cpu_offload, decode_type=decode_type,
                                     decode_args=decode_args, fast_init=not lora_path, strict_load=not lora_path)


def generate(pipe, *, prompt: str, cache: CacheConfig, seed: int, settings: GenerationSettings,
             observe_only: bool = False, progress: bool = True) -> GenerationResult:
    """One video with the pipeline from ``load_pipeline``."""
    cache.thresholds(settings.num_steps)  # fail before any work if the schedule does not fit
    out = pipe.generate(batch_cfg=settings.batch_cfg, prompt=prompt, negative_prompt=settings.negative_prompt,
                        cache=cache, observe_only=observe_only, progress=progress,
                        **settings.sampler_args(seed))
    report = out.report.to_dict()
    return GenerationResult(out.frames[0], report, out.timings, out.peak_memory_gb, out.latents)


# -- command-line options shared by generate, batch and calibrate ---------------------------------------------

def _options(*decorators):
    def apply(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


generation_options = _options(
    click.option("--model_dir", required=True, type=click.Path(file_okay=False),
                 help="Mochi weights directory (dit.safetensors, decoder.safetensors), or one made by "
                      "`genmo-teacache make-tiny-model`."),
    click.option("--width", default=848, show_default=True, type=int, help="Width of the video."),
    click.option("--height", default=480, show_default=True, type=int, help="Height of the video."),
    click.option("--num_frames", default=163, show_default=True, type=int, help="Number of frames (6k+1)."),
    click.option("--num_steps", default=64, show_default=True, type=int, help="Number of inference steps."),
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
    click.option("--num_gpus", default=None, type=int,
                 help="Ranks for context parallelism through Ray (default: every visible GPU, as upstream; 1 on "
                      "CPU). With --device cpu, N CPU ranks (gloo)."),
    click.option("--ray_address", default=None, help="Join this Ray cluster instead of starting a local one."),
    click.option("--dit_dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
                 help="DiT weight storage: fp32 as upstream (cast under autocast each call) or bf16 (less memory)."),
    click.option("--sdpa_backend", default="auto", show_default=True,
                 type=click.Choice(["auto", "cudnn", "flash", "efficient", "math"]),
                 help="SDPA kernel for the DiT's attention (sdpa mode); auto lets PyTorch choose, as upstream."),
    click.option("--compile_dit", is_flag=True, help="torch.compile each DiT block (upstream's COMPILE_DIT)."),
)

SETTINGS_KEYS = ("width", "height", "num_frames", "num_steps", "cfg_scale", "negative_prompt", "threshold_noise",
                 "linear_steps", "batch_cfg")
PIPELINE_KEYS = ("device", "attention_mode", "cpu_offload", "lora_path", "text_encoder_dir", "decode_type",
                 "num_gpus", "ray_address", "dit_dtype", "sdpa_backend", "compile_dit")


def apply_model_defaults(ctx: click.Context | None, options: dict[str, Any]) -> dict[str, Any]:
    """Options left at their defaults take the values in ``MODEL_DIR/generation_defaults.json`` (the tiny model
    ships one so that the demo runs in seconds on a CPU)."""
    path = Path(options["model_dir"]) / GENERATION_DEFAULTS_FILE
    if not path.exists():
        return options
    defaults = json.loads(path.read_text())
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
    return {k: options[k] for k in PIPELINE_KEYS if k in options}


cache_options = _options(
    click.option("--teacache_thresh", type=float, default=None, help="One TeaCache threshold for every step."),
    click.option("--teacache_thresh_high", type=float, default=None,
                 help="Threshold of the first --teacache_high_steps steps (two-phase schedule)."),
    click.option("--teacache_thresh_low", type=float, default=None, help="Threshold of the remaining steps."),
    click.option("--teacache_high_steps", type=int, default=DEFAULT_HIGH_STEPS, show_default=True,
                 help="Length of the high-threshold phase (34 = steps 0-33, as the reference)."),
    click.option("--teacache_schedule", default=None,
                 help="Any schedule as STEPS:THRESHOLD segments, e.g. 34:0.12,14:0.04,16:0.12 (rest:T ends it)."),
    click.option("--teacache_mode", default=None,
                 help=f"A mode name instead: baseline, fixed_0.06, adaptive_0.12_0.04, adaptive_f34s14l16, ..., or "
                      f"MagCache mag_0.06[_k<K>][_r<retention>] (needs --mag_ratios) "
                      f"(default when no cache option is given: {DEFAULT_MODE})."),
    click.option("--teacache_coefficients", type=click.Path(dir_okay=False), default=None,
                 help="Rescale polynomial JSON (from `genmo-teacache calibrate`); default: TeaCache's Mochi fit."),
    click.option("--mag_ratios", type=click.Path(dir_okay=False), default=None,
                 help="Calibration JSON (from `genmo-teacache calibrate`) whose per-step magnitude ratios drive the "
                      "MagCache modes (--teacache_mode mag_<t>)."),
    click.option("--teacache_max_skips", type=int, default=None,
                 help="At most this many consecutive skips (for mag_<t> modes: MagCache's K)."),
    click.option("--teacache_no_range_guard", is_flag=True,
                 help="Do not force a compute when the indicator leaves the polynomial's fitted range."),
    click.option("--no_teacache", is_flag=True, help="No caching: upstream's sampler, bit for bit."),
)


def cache_from_options(teacache_thresh=None, teacache_thresh_high=None, teacache_thresh_low=None,
                       teacache_high_steps=DEFAULT_HIGH_STEPS, teacache_schedule=None, teacache_mode=None,
                       teacache_coefficients=None, teacache_max_skips=None, teacache_no_range_guard=False,
                       no_teacache=False, mag_ratios=None, **_: Any) -> CacheConfig:
    """The cache configuration the options describe; errors name the conflicting or bad value."""
    two_phase = (teacache_thresh_high, teacache_thresh_low)
    given = [name for name, v in (("--teacache_thresh", teacache_thresh), ("--teacache_schedule", teacache_schedule),
                                  ("--teacache_mode", teacache_mode),
                                  ("--teacache_thresh_high/low", None if two_phase == (None, None) else 1))
             if v is not None]
    if no_teacache and given:
        raise click.UsageError(f"--no_teacache conflicts with {', '.join(given)}")
    if len(given) > 1:
        raise click.UsageError(f"give one way to set the cache, not {' and '.join(given)}")
    if no_teacache:
        return CacheConfig.baseline()
    try:
        rescale = Rescale.load(teacache_coefficients) if teacache_coefficients else Rescale()
        extra: dict[str, Any] = dict(rescale=rescale, max_skips=teacache_max_skips,
                                     range_guard=not teacache_no_range_guard)
        if teacache_mode is not None:
            cfg = CacheConfig.from_mode(teacache_mode, rescale=rescale, mag_ratios=mag_ratios)
            if mag_ratios is not None and cfg.policy != "mag":
                log.warning("--mag_ratios is used by MagCache modes (mag_<t>) only; mode %s ignores it", cfg.name)
            if cfg.enabled and teacache_max_skips is not None:
                cfg = cfg.with_options(max_skips=teacache_max_skips)
            if cfg.policy == "teacache" and teacache_no_range_guard:
                cfg = cfg.with_options(range_guard=False)
            return cfg
        if mag_ratios is not None:
            log.warning("--mag_ratios is used by MagCache modes only: add e.g. --teacache_mode mag_0.06")
        if teacache_thresh is not None:
            return CacheConfig.fixed(teacache_thresh, **extra)
        if teacache_schedule is not None:
            return CacheConfig.from_schedule_string(teacache_schedule, **extra)
        if two_phase != (None, None):
            if None in two_phase:
                missing = "--teacache_thresh_low" if teacache_thresh_low is None else "--teacache_thresh_high"
                raise click.UsageError(f"two-phase caching needs both thresholds: add {missing}")
            return CacheConfig.two_phase(teacache_thresh_high, teacache_thresh_low, teacache_high_steps, **extra)
        return CacheConfig.from_mode(DEFAULT_MODE, rescale=rescale).with_options(
            max_skips=teacache_max_skips, range_guard=not teacache_no_range_guard)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


# -- writing one result -------------------------------------------------------------------------------------

def write_delta_temni(video_path: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """``<video>_delta_TEMNI.txt`` (one rescaled indicator per step; nan for the first step, which has no
    predecessor) and ``<video>_delta_TEMNI_plot.png`` beside the video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [math.nan if s["rescaled"] is None else s["rescaled"] for s in report["steps"]]
    stem = video_path.with_suffix("")
    txt, png = Path(f"{stem}_delta_TEMNI.txt"), Path(f"{stem}_delta_TEMNI_plot.png")
    with atomic_path(txt) as tmp:
        tmp.write_text("".join(f"{v:.8g}\n" for v in values))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(len(values)), values, marker=".", lw=1)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("rescaled relative L1 change")
    ax.set_title("TeaCache indicator per step (delta TEMNI)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return txt, png


def summary_text(report: dict[str, Any], timings: dict[str, float], peak_gb: float | None) -> str:
    """A one-paragraph summary of what the cache skipped and where the time went."""
    steps = report["steps"]
    computed = [s["seconds"] for s in steps if s["computed"]]
    skipped = [s["seconds"] for s in steps if not s["computed"]]
    est = ""
    if skipped and len(computed) > 1:
        # an uncached loop: the first step (which also memoises the conditioning) plus a computed step each
        typical = float(np.median(computed[1:]))
        uncached = computed[0] + typical * (len(steps) - 1)
        est = (f" A computed step took {typical:.3g} s, a skipped one {np.median(skipped):.3g} s, so the loop ran "
               f"about {uncached / sum(s['seconds'] for s in steps):.2f}x faster than uncached would "
               f"(ideal {report['ideal_speedup']:.2f}x).")
    mem = f" Peak GPU memory {peak_gb:.1f} GiB." if peak_gb is not None else ""
    return (f"Mode {report['mode']}: computed {report['computed_steps']} of {report['num_steps']} steps, skipped "
            f"{report['skipped_steps']} ({100 * report['skipped_steps'] / report['num_steps']:.0f}%).{est} "
            f"Time: text encoding {timings['text_encoding_s']:.1f} s, denoising {timings['denoising_s']:.1f} s, "
            f"decoding {timings['decoding_s']:.1f} s, total {timings['total_s']:.1f} s.{mem}")


def save_result(result: GenerationResult, video_path: Path, *, arguments: dict[str, Any],
                delta_temni: bool = False, latents_path: str | None = None, exclusive: bool = False
                ) -> dict[str, Path]:
    """The mp4, its JSON sidecar (``<video>.json``) and, if asked, the delta-TEMNI files and latents.
    ``exclusive``: never replace a file; the video takes the first free name (``<stem>-1.mp4``, ...)."""
    import torch

    video_path = write_video(video_path, result.frames, exclusive=exclusive)
    paths = {"video": video_path}
    if latents_path:
        with atomic_path(latents_path) as tmp:
            torch.save(result.latents.cpu(), tmp)
        paths["latents"] = Path(latents_path)
    if delta_temni:
        paths["delta_temni_txt"], paths["delta_temni_png"] = write_delta_temni(video_path, result.report)
    sidecar = {
        "video": str(video_path),
        "arguments": arguments,
        "mode": result.report["mode"],
        "cache": result.report["cache"],
        "computed_steps": result.report["computed_steps"],
        "skipped_steps": result.report["skipped_steps"],
        "ideal_speedup": result.report["ideal_speedup"],
        "timings": result.timings,
        "peak_memory_gb": result.peak_memory_gb,
        "frames": list(result.frames.shape),
        "steps": result.report["steps"],
    }
    paths["sidecar"] = video_path.with_suffix(".json")
    write_json(paths["sidecar"], sidecar)
    return paths


# -- the command ---------------------------------------------------------------------------------------------

@click.command("generate")
@click.option("--prompt", default=DEFAULT_PROMPT, help="Prompt for video generation.")
@click.option("--sweep-file", "sweep_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSONL file, one config per line (prompt, cfg_scale, num_steps, seed, width, height, "
                   "num_frames, threshold_noise, linear_steps, teacache_mode), as upstream.")
@click.option("--seed", default=1710977262, show_default=True, type=int, help="Random seed.")
@click.option("--out_dir", default="outputs", show_default=True, help="Output directory for generated videos.")
@click.option("--save_file", default=None,
              help="Video path, replaced if it exists (default: OUT_DIR/output_<time>_<i>_<mode>.mp4, never "
                   "replacing a file: -1, -2, ... are added to a name that exists).")
@click.option("--save_latents", default=None, help="Also torch.save the final latents (before decoding) here.")
@click.option("--delta_temni_plot", is_flag=True,
              help="Record the TeaCache indicator on every step without skipping; write <video>_delta_TEMNI.txt "
                   "and <video>_delta_TEMNI_plot.png beside the video.")
@generation_options
@cache_options
@click.pass_context
def generate_command(ctx: click.Context, **options: Any) -> None:
    """Generate a Mochi 1 video with the native pipeline, skipping DiT passes with TeaCache."""
    from genmo.lib.progress import progress_bar

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = apply_model_defaults(ctx, options)
    cache = cache_from_options(**options)
    settings = settings_from_options(**options)
    jobs = _sweep_jobs(options) if options["sweep_file"] else [(options["prompt"], options["seed"], settings, cache)]
    for _, _, s, c in jobs:
        try:
            c.thresholds(s.num_steps)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    if options["delta_temni_plot"]:
        jobs = [(p, seed, s, c if c.enabled else CacheConfig.from_mode(DEFAULT_MODE)) for p, seed, s, c in jobs]
    if (options["num_gpus"] or 1) > 1:
        from genmo_teacache.pipelines import read_model_config

        heads = read_model_config(options["model_dir"], "dit_config.json").get("num_heads", 24)
        for _, _, s, _ in jobs:
            try:
                check_divisible(options["num_gpus"], num_heads=heads, width=s.width, height=s.height,
                                num_frames=s.num_frames)
            except ValueError as e:
                raise click.BadParameter(str(e)) from None
    if options["save_file"] and len(jobs) > 1:
        raise click.UsageError("--save_file names one video; with --sweep-file use --out_dir")
    check_outputs(options)

    try:
        pipe = load_pipeline(options["model_dir"], **pipeline_kwargs(options))
    except (FileNotFoundError, ConnectionError) as e:
        raise click.ClickException(str(e)) from None
    for i, (prompt, seed, s, c) in enumerate(jobs):
        with progress_bar(type="tqdm"):
            result = generate(pipe, prompt=prompt, cache=c, seed=seed, settings=s,
                              observe_only=options["delta_temni_plot"])
        video = Path(options["save_file"] or Path(options["out_dir"]) / f"output_{int(time.time())}_{i}_{c.name}.mp4")
        arguments = {"prompt": prompt, "seed": seed, "model_dir": options["model_dir"], **asdict(s),
                     **pipeline_kwargs(options)}
        paths = save_result(result, video, arguments=arguments, delta_temni=options["delta_temni_plot"],
                            latents_path=options["save_latents"], exclusive=not options["save_file"])
        click.echo(summary_text(result.report, result.timings, result.peak_memory_gb))
        for kind, path in paths.items():
            click.echo(f"  {kind}: {path}")


def check_outputs(options: dict[str, Any]) -> None:
    """Before any model loads: the output locations can be written, the Ray address answers."""
    from genmo_teacache.parallel import check_ray_address

    try:
        if options["save_file"]:
            check_output_file(options["save_file"], "--save_file")
        else:
            check_output_dir(options["out_dir"], "--out_dir")
        if options["save_latents"]:
            check_output_file(options["save_latents"], "--save_latents")
        check_ray_address(options.get("ray_address"))
    except (OutputPathError, ConnectionError) as e:
        raise click.UsageError(str(e)) from None


def _sweep_jobs(options: dict[str, Any]) -> list[tuple[str, int, GenerationSettings, CacheConfig]]:
    jobs = []
    base = {k: options[k] for k in SETTINGS_KEYS}
    for n, line in enumerate(Path(options["sweep_file"]).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            conf = json.loads(line)
            if not isinstance(conf, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise click.BadParameter(f"{options['sweep_file']} line {n}: {e}") from None
        unknown = set(conf) - {"prompt", "seed", "teacache_mode", *SETTINGS_KEYS}
        if unknown:
            raise click.BadParameter(f"{options['sweep_file']} line {n}: unknown keys {sorted(unknown)}")
        settings = settings_from_options(**{**base, **{k: v for k, v in conf.items() if k in SETTINGS_KEYS}})
        if "teacache_mode" in conf:  # the line's mode; calibration files and options from the command line
            keep = ("teacache_coefficients", "mag_ratios", "teacache_max_skips", "teacache_no_range_guard")
            cache = cache_from_options(teacache_mode=conf["teacache_mode"], **{k: options.get(k) for k in keep})
        else:
            cache = cache_from_options(**options)
        jobs.append((conf.get("prompt", options["prompt"]), conf.get("seed", options["seed"]), settings, cache))
    return jobs
