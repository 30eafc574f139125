"""Generate videos, the Python API: ``load_pipeline`` once, then ``generate`` per video and ``save_result``.
The ``generate`` command (``demos/cli_teacache.py``) maps its flags onto these in :mod:`genmo_teacache.generate_cli`.

    pipe = load_pipeline("weights/")
    result = generate(pipe, prompt="a cat", cache=parse_mode("fixed_0.06"), seed=0, settings=GenerationSettings())
    save_result(result, Path("cat.mp4"), arguments={...})
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genmo_teacache.caches import CacheConfig
from genmo_teacache.files import atomic_path, write_json
from genmo_teacache.speed import SpeedOptions, check_movable, check_speed_options
from genmo_teacache.speedup import is_noise
from genmo_teacache.video import write_video

log = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "A hand with delicate fingers picks up a bright yellow lemon from a wooden bowl filled with lemons and sprigs "
    "of mint against a peach-colored background. The hand gently tosses the lemon up and catches it, showcasing "
    "its smooth texture. A beige string bag sits beside the bowl, adding a rustic touch to the scene. Additional "
    "lemons, one halved, are scattered around the base of the bowl. The even lighting enhances the vibrant colors "
    "and creates a fresh, inviting atmosphere."
)  # upstream demos/cli.py's default prompt
GENERATION_DEFAULTS_FILE = "generation_defaults.json"
SEED_MAX = 2**32 - 1  # upstream's sample_model seeds numpy, whose seeds are 0 .. 2**32 - 1


def check_seed(seed: object) -> int:
    """``seed`` if it is a whole number numpy can seed with (0 .. 2**32 - 1); ValueError naming it otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed {seed!r}: use a whole number from 0 to {SEED_MAX} (numpy's range, which upstream's "
                         "sampler seeds)")
    return seed


def _check_types(settings: object) -> None:
    """Every field of a dataclass of settings has its declared type (an int field takes no float or bool, a
    float field takes an int): values from JSON files are checked before any model loads."""
    kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "int | None": (int, type(None))}
    for name, declared in settings.__annotations__.items():
        value, allowed = getattr(settings, name), kinds.get(str(declared))
        if allowed is None:
            continue
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            raise ValueError(f"{name}={value!r} ({type(value).__name__}): {name} must be of type {declared}")


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
        _check_types(self)
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
        if not 0 < self.threshold_noise < 1:
            raise ValueError(f"threshold_noise={self.threshold_noise}: the sigma where the linear part of the "
                             "schedule ends must lie between 0 and 1 (upstream: 0.025)")
        if self.linear_steps is not None and not 1 <= self.linear_steps < self.num_steps:
            raise ValueError(f"linear_steps={self.linear_steps}: use 1 to num_steps - 1 ({self.num_steps - 1}), or "
                             "leave it out for half the steps")

    def sampler_args(self, seed: int) -> dict[str, Any]:
        """The keyword arguments of upstream ``sample_model``."""
        from genmo_teacache.upstream import pipelines as up

        return dict(
            seed=seed, width=self.width, height=self.height, num_frames=self.num_frames,
            num_inference_steps=self.num_steps, cfg_schedule=[self.cfg_scale] * self.num_steps,
            sigma_schedule=up.linear_quadratic_schedule(self.num_steps, self.threshold_noise, self.linear_steps),
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
        raise ValueError(f"device {device!r} asked for but no CUDA GPU is visible: use --device cpu")
    return device


def load_pipeline(model_dir: str | Path, *, device: str = "auto", attention_mode: str = "auto",
                  cpu_offload: bool = False, lora_path: str | None = None, text_encoder_dir: str | None = None,
                  decode_type: str = "auto", num_gpus: int | None = 1, ray_address: str | None = None,
                  speed: SpeedOptions | None = None, cfg_parallel: bool = False, low_memory: bool = False):
    """Load the models once. ``decode_type="auto"``: tiled_spatial on a GPU (as upstream's CLI), full on CPU.
    ``speed``: how the DiT runs (:class:`genmo_teacache.speed.SpeedOptions`; None = upstream's way; a preset is
    ``speed.PRESETS["fast"]`` or ``speed.parse_speed("bf16+compile")``). ``num_gpus`` > 1: context parallelism over
    them, or with ``cfg_parallel`` the two CFG branches on two halves of them (each half context-parallel if it has
    more than one GPU). ``low_memory``: each model on the GPU only during its phase, the DiT's weights converted
    there part by part, decoding a few frames at a time; same latents (see :mod:`genmo_teacache.pipelines`)."""
    from genmo_teacache.pipelines import TeaCacheSingleGPUPipeline, factories_for

    speed = speed or SpeedOptions()
    if low_memory:
        check_low_memory(speed, num_gpus, cfg_parallel)
        num_gpus = 1
    device = resolve_device(device)
    check_speed_options(speed, device)  # a missing kernel package fails here, before any model loads
    if num_gpus is None:
        import torch

        num_gpus = max(torch.cuda.device_count(), 1) if device.startswith("cuda") else 1
    factories = factories_for(model_dir, text_encoder_dir=text_encoder_dir, lora_path=lora_path,
                              attention_mode=attention_mode, speed=speed)
    if num_gpus > 1 or cfg_parallel:
        from genmo_teacache.multigpu import TeaCacheMultiGPUPipeline
        from genmo_teacache.parallel import check_layout

        cp_size = check_layout(num_gpus, cfg_parallel)
        if lora_path or cpu_offload:
            raise ValueError("--lora_path and --cpu_offload are single-GPU options (as upstream)")
        if cp_size > 1 and not speed.is_default:
            raise ValueError(f"speed options ({speed.spec()}: --speed_preset, --dit_dtype bf16, --compile_dit, "
                             f"--attention_kernel, --sparse_attention, ...) need the whole DiT on each GPU: context "
                             f"parallelism shards it (FSDP keeps fp32); use them on one GPU or with --cfg_parallel on "
                             f"2 GPUs")
        return TeaCacheMultiGPUPipeline(**factories, world_size=num_gpus, device_type=device.split(":")[0],
                                        ray_address=ray_address, cfg_parallel=cfg_parallel)
    if decode_type == "auto":
        decode_type = "tiled_spatial" if device.startswith("cuda") else "full"
    decode_args = dict(overlap=8) if decode_type == "tiled_spatial" else None
    return TeaCacheSingleGPUPipeline(**factories, device=device, cpu_offload=cpu_offload, decode_type=decode_type,
                                     decode_args=decode_args, fast_init=not lora_path, strict_load=not lora_path,
                                     low_memory=low_memory)


def check_low_memory(speed: SpeedOptions, num_gpus: int | None, cfg_parallel: bool) -> None:
    """Raise ValueError naming what ``low_memory`` cannot be combined with, before any model loads."""
    if (num_gpus or 1) > 1 or cfg_parallel:
        given = "--cfg_parallel" if cfg_parallel else f"--num_gpus {num_gpus}"
        raise ValueError(f"--low_memory places the models of one GPU, {given} spreads them over several (context "
                         f"parallelism shards them with FSDP, --cfg_parallel holds a whole DiT per GPU): use one or "
                         f"the other")
    check_movable(speed)
    if speed.dit_dtype == "fp32":
        log.warning("--low_memory with fp32 DiT weights (upstream's): the DiT alone takes 37 GiB of GPU memory while "
                    "it denoises; for a 24 GB GPU add --speed_preset fastest (FP8 linears, 13.6 GiB of weights)")


def generate(pipe, *, prompt: str, cache: CacheConfig, seed: int, settings: GenerationSettings,
             observe_only: bool = False, progress: bool = True) -> GenerationResult:
    """One video with the pipeline from ``load_pipeline``."""
    cache.check(settings.num_steps, batch_cfg=settings.batch_cfg)  # fail before any work if it cannot run
    check_seed(seed)
    out = pipe.generate(batch_cfg=settings.batch_cfg, prompt=prompt, negative_prompt=settings.negative_prompt,
                        cache=cache, observe_only=observe_only, progress=progress,
                        **settings.sampler_args(seed))
    report = out.report.to_dict()
    return GenerationResult(out.frames[0], report, out.timings, out.peak_memory_gb, out.latents)


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
    """A one-paragraph summary of what the cache skipped and where the time went: what was measured (synchronised
    step times, warm-up apart), and what is an estimate from it; a gain above the ideal is called noise."""
    steps = report["steps"]
    # steps that ran every CFG branch (a CFG cache's cond-only steps run half the forwards)
    full = max((len(s.get("branches") or ()) for s in steps), default=0)
    computed = [s["seconds"] for s in steps if s["computed"] and len(s.get("branches") or ()) == full]
    skipped = [s["seconds"] for s in steps if not s["computed"]]
    est = ""
    if (skipped or report.get("cond_only_steps")) and len(computed) > 1:
        # an uncached loop: the first step (which also memoises the conditioning) plus a computed step each
        typical, loop = float(np.median(computed[1:])), sum(s["seconds"] for s in steps)
        uncached = computed[0] + typical * (len(steps) - 1)
        skip = f", a skipped one {np.median(skipped):.3g} s" if skipped else ""
        est = (f" Measured: a computed step {typical:.3g} s (median){skip}, the loop {loop:.1f} s. Estimated from "
               f"those step times, an uncached loop would take {uncached:.1f} s")
        gain, ideal = uncached / loop, report["ideal_speedup"]
        if is_noise(gain, ideal):
            est += (f": {gain:.2f}x, above the {ideal:.2f}x that the forwards it skipped allow at most: noise (the "
                    f"step times varied more than what was skipped saved), not a result.")
        elif gain >= 1.02:
            est += f": caching made denoising about {gain:.2f}x faster (ideal {ideal:.2f}x)."
        else:
            est += (f": no gain measurable in this run (what it skipped saved less than the step times vary; "
                    f"ideal {report['ideal_speedup']:.2f}x).")
    mem = f" Peak GPU memory {peak_gb:.1f} GiB." if peak_gb is not None else ""
    if timings.get("warmup_s"):
        mem = (f" Warm-up {timings['warmup_s']:.1f} s apart (the pipeline's first run of this shape: compile, lazy "
               f"initialisation), in none of the times above.") + mem
    warn = "".join(f"\nNote: {w}" for w in report.get("warnings", []))
    cond_only = f" ({report['cond_only_steps']} cond-only)" if report.get("cond_only_steps") else ""
    return (f"Mode {report['mode']}: computed {report['computed_steps']} of {report['num_steps']} steps{cond_only}, "
            f"skipped {report['skipped_steps']} ({100 * report['skipped_steps'] / report['num_steps']:.0f}%), "
            f"{report['dit_calls']} DiT forwards.{est} Time: text encoding {timings['text_encoding_s']:.1f} s, "
            f"denoising {timings['denoising_s']:.1f} s, decoding {timings['decoding_s']:.1f} s, total "
            f"{timings['total_s']:.1f} s.{mem}{warn}")


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
        "cond_only_steps": result.report.get("cond_only_steps", 0),
        "ideal_speedup": result.report["ideal_speedup"],
        "dit_calls": result.report["dit_calls"],
        "warnings": result.report["warnings"],
        "timings": result.timings,
        "peak_memory_gb": result.peak_memory_gb,
        "frames": list(result.frames.shape),
        "steps": result.report["steps"],
    }
    paths["sidecar"] = video_path.with_suffix(".json")
    write_json(paths["sidecar"], sidecar)
    return paths
