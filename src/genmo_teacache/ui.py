"""The web UI (``demos/gradio_teacache.py``, ``pip install -e ".[ui]"``): upstream's Gradio demo (the same fields and
server options) plus the cache method, its modifiers and the speed preset, the report of each run, and an optional
side-by-side comparison with the baseline.

Everything but the page lives here as plain functions, so that it is tested without a browser:

- the choices come from the registries (:data:`genmo_teacache.caches.METHODS` and ``MODIFIERS``,
  :data:`genmo_teacache.speed.PRESETS`); the page's choices make a mode name (:func:`build_mode`) that
  :func:`genmo_teacache.caches.parse_mode` parses, so its errors are the registry's own;
- :func:`parse_request` checks every field before any model work and raises ValueError naming the value and the fix
  (the page shows it);
- :class:`Runner` holds the one pipeline (loaded once; loaded again only when another speed preset is asked for)
  and runs one job at a time, each in a folder of its own (nothing is shared between requests: two users never
  see each other's outputs);
- "compare with the baseline" generates the same prompt and seed without caching on the same pipeline (the cached
  mode first, so that any first-call warm-up falls on it and the speedup is not overstated), scores the pair with
  the evaluation's :class:`~genmo_teacache.eval.fidelity.FidelityScorer` (PSNR, SSIM, LPIPS) and makes the
  evaluation's side-by-side grid (:func:`genmo_teacache.eval.grid.make_grid`).
"""

from __future__ import annotations

import html
import importlib.util
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from genmo_teacache.caches import METHODS, MODIFIERS, CacheConfig, Method, Modifier, parse_mode
from genmo_teacache.cliutils import setup_logging
from genmo_teacache.generate import DEFAULT_PROMPT, GenerationResult, GenerationSettings, generate, save_result
from genmo_teacache.options import DEFAULT_MODE, apply_model_defaults, resolve_model_dir
from genmo_teacache.speed import PRESETS, SpeedOptions, check_speed_options, parse_speed

log = logging.getLogger(__name__)

UPSTREAM_SEED = 1710977262  # upstream demos/gradio_ui.py's default seed
MAX_SEED = 2**32 - 1  # upstream's sample_model seeds numpy, whose seeds are 32-bit
DEFAULT_PRESET = "default"
BASELINE = "baseline"
COMPARISON = "comparison"  # the grid's file stem in a job's folder
STEPS_PLOT = "steps.png"
COLD_NOTE = ("First generation on a freshly loaded pipeline: its time includes the warm-up (first calls, "
             "compilation); generate again for a warm figure.")
STEP_COLUMNS = ["step", "sigma", "decision", "reason", "indicator", "accumulated", "threshold", "seconds"]


# -- the choices, from the registries -------------------------------------------------------------------------

def method_choices() -> list[tuple[str, str]]:
    """(label, mode-name prefix) for every prefix of every registered method: ``("teacache: fixed", "fixed_")``,
    ``("easycache", "easycache_")``, ``("baseline", "baseline")``, ..."""
    out = []
    for method in METHODS:
        for prefix in method.prefixes:
            form = prefix.rstrip("_")
            out.append((form if form == method.key else f"{method.key}: {form}", prefix))
    return out


def method_of(prefix: str) -> type[Method]:
    """The method a prefix of :func:`method_choices` belongs to."""
    for method in METHODS:
        if prefix in method.prefixes:
            return method
    raise ValueError(f"unknown cache method {prefix!r}: use one of {', '.join(p for _, p in method_choices())}")


def example_parameters(kind: type[Method] | type[Modifier], prefix: str) -> str | None:
    """What follows ``prefix`` in the name of the default config of ``kind`` (``TeaCache()`` is ``fixed_0.09``: "0.09"
    for ``fixed_``), or None where that name has another prefix or the config needs more (MagCache's calibration)."""
    try:
        name = kind().name
    except (TypeError, ValueError):
        return None
    return name[len(prefix):] if name.startswith(prefix) else None


def split_method(mode: str) -> tuple[str, str]:
    """A method's mode name as (prefix, parameters): ``"adaptive_0.12_0.04"`` -> ``("adaptive_", "0.12_0.04")``."""
    for _, prefix in method_choices():
        if mode.startswith(prefix):
            return prefix, mode[len(prefix):]
    raise ValueError(f"unknown mode {mode!r}")


def build_mode(prefix: str, parameters: str, modifiers: Sequence[tuple[str, str]] = ()) -> str:
    """The mode name of the page's choices: the method's prefix and its parameters, then ``+<prefix><parameters>``
    for each modifier ticked. ``("fixed_", "0.06", [("taylor", "1")])`` -> ``"fixed_0.06+taylor1"``."""
    method_of(prefix)
    return prefix + parameters.strip() + "".join(f"+{p}{params.strip()}" for p, params in modifiers)


def speed_options(preset: str, device: str = "auto") -> SpeedOptions:
    """The speed options of a preset of :data:`PRESETS` (or a spec such as ``bf16+compile``), checked against the
    device (a kernel package or a GPU that is missing raises SpeedOptionError, a ValueError, before any loading)."""
    from genmo_teacache.generate import resolve_device

    speed = parse_speed(preset)
    check_speed_options(speed, resolve_device(device))
    return speed


# -- one request ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One job, checked: what to generate, with which cache and speed options, and whether to compare."""

    prompt: str
    seed: int
    settings: GenerationSettings
    cache: CacheConfig
    speed: SpeedOptions
    compare: bool = False
    calibration: str | None = None
    warnings: tuple[str, ...] = ()

    def arguments(self) -> dict[str, Any]:
        """What the sidecar records about the request."""
        return {"prompt": self.prompt, "seed": self.seed, **asdict(self.settings), "cache_mode": self.cache.name,
                "calibration": self.calibration, "speed": self.speed.spec(), "compare": self.compare}


def whole_number(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` (a page field) as an int; ValueError naming the field unless it is a whole number in range."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty: enter a whole number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number: enter a whole number") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name}={value}: enter a whole number")
    number = int(number)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{name}={number}: use a whole number from {low} to {high}")
    return number


def parse_request(*, prompt: str, negative_prompt: str = "", seed: Any, width: Any, height: Any, num_frames: Any,
                  num_steps: Any, cfg_scale: Any, method: str, parameters: str = "",
                  modifiers: Sequence[tuple[str, str]] = (), calibration: str | None = None,
                  speed_preset: str = DEFAULT_PRESET, compare: bool = False, device: str = "auto") -> Request:
    """The page's fields as a checked :class:`Request`; ValueError naming the bad value and the fix otherwise.
    Nothing here loads a model."""
    if cfg_scale is None or (isinstance(cfg_scale, str) and not cfg_scale.strip()):
        raise ValueError("CFG scale is empty: enter a number (upstream's default is 6.0)")
    try:
        cfg = float(cfg_scale)
    except (TypeError, ValueError):
        raise ValueError(f"CFG scale {cfg_scale!r} is not a number: enter one, e.g. 6.0") from None
    settings = GenerationSettings(
        width=whole_number("width", width), height=whole_number("height", height),
        num_frames=whole_number("num_frames", num_frames), num_steps=whole_number("num_steps", num_steps),
        cfg_scale=cfg, negative_prompt=negative_prompt or "")
    seed = whole_number("seed", seed, 0, MAX_SEED)
    if calibration is not None and not Path(calibration).is_file():
        raise ValueError(f"calibration file {calibration} does not exist: upload the JSON that `genmo-teacache "
                         f"calibrate` wrote, or remove it")
    cache = parse_mode(build_mode(method, parameters, modifiers), calibration)
    warnings = list(cache.check(settings.num_steps))
    if calibration is not None and not cache.method.uses_calibration:
        warnings.append(f"mode {cache.name} takes no calibration file: the uploaded one is not used")
    if compare and not cache.enabled:
        raise ValueError("compare with the baseline: the cache method is the baseline itself; pick a cache method "
                         "or untick the comparison")
    return Request(prompt=prompt or "", seed=seed, settings=settings, cache=cache,
                   speed=speed_options(speed_preset, device), compare=compare, calibration=calibration,
                   warnings=tuple(warnings))


# -- running jobs ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """The baseline of a job and how the cached video compares with it (the evaluation's numbers)."""

    baseline: GenerationResult
    video: Path
    grid: Path
    speedup: float  # end to end: the baseline's total time over the mode's
    denoising_speedup: float
    psnr: float
    ssim: float
    lpips: float


@dataclass(frozen=True)
class JobResult:
    folder: Path
    request: Request
    result: GenerationResult
    video: Path
    sidecar: Path
    steps_plot: Path
    comparison: Comparison | None = None
    cold: bool = False  # the first generation on a freshly loaded pipeline: its time includes the warm-up

    @property
    def files(self) -> list[Path]:
        """The files a user may download: the videos and their sidecars, the grid."""
        files = [self.video, self.sidecar]
        if self.comparison is not None:
            c = self.comparison
            files += [c.video, c.video.with_suffix(".json"), c.grid]
        return files


class Runner:
    """The one pipeline and the jobs run on it, one at a time (a lock: whatever calls :meth:`run` from several
    threads, the GPU runs one generation at a time). Each job writes into a new folder under ``out_dir``."""

    def __init__(self, model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, cpu_offload: bool = False,
                 lora_path: str | None = None, device: str = "auto", low_memory: bool = False):
        from genmo_teacache.batch.execute import PipelineHolder, PipelineSpec

        self.model_dir = str(model_dir)
        self.out_dir = Path(out_dir)
        self.device = device
        self.pipelines = PipelineHolder(PipelineSpec(self.model_dir, dict(device=device, cpu_offload=cpu_offload,
                                                                          lora_path=lora_path, low_memory=low_memory)))
        self._lock = threading.Lock()
        self._scorer: Any = None
        self._warm: SpeedOptions | None = None  # the speed options of the pipeline that has generated already

    def pipeline(self, speed: SpeedOptions) -> Any:
        """The pipeline for ``speed``: the one loaded, unless it was loaded with other speed options."""
        return self.pipelines.get(speed)

    def new_folder(self) -> Path:
        folder = self.out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True)
        return folder

    def run(self, request: Request, phase: Callable[[str], None] = lambda _: None) -> JobResult:
        """Generate (and compare), write everything into a new folder, return what the page shows. ``phase`` is
        told what starts (loading, each generation, scoring); the sampler's steps go to tqdm bars."""
        from genmo.lib.progress import progress_bar

        with self._lock:
            job_id = uuid.uuid4().hex[:8]
            started = time.time()
            log.info("job %s: %s, seed %d, %s", job_id, request.cache.name, request.seed, request.speed.spec())
            if self.pipelines.speed != request.speed:
                phase(f"Loading the pipeline (speed preset {request.speed.spec()})")
            pipe = self.pipeline(request.speed)
            cold = self._warm != request.speed
            folder = self.new_folder()
            runs = [(request.cache, request.cache.name)]
            if request.compare:
                runs.append((CacheConfig.baseline(), BASELINE))
            results = []
            for cache, name in runs:
                phase(f"Generating: {name}")
                with progress_bar(type="tqdm"):
                    results.append(generate(pipe, prompt=request.prompt, cache=cache, seed=request.seed,
                                            settings=request.settings))
            self._warm = request.speed
            arguments = {**request.arguments(), "model_dir": self.model_dir, "started_at": started, "cold": cold}
            paths = [save_result(r, folder / f"{name}.mp4", arguments={**arguments, "cache_mode": cache.name})
                     for r, (cache, name) in zip(results, runs)]
            plot = write_steps_plot(results[0].report, folder / STEPS_PLOT)
            comparison = None
            if request.compare:
                phase("Comparing with the baseline (PSNR, SSIM, LPIPS; grid)")
                comparison = self.compare(request, results[0], paths[0]["video"], results[1], paths[1]["video"])
            log.info("job %s done in %.1f s: %s", job_id, time.time() - started, folder)
            return JobResult(folder, request, results[0], paths[0]["video"], paths[0]["sidecar"], plot, comparison,
                             cold)

    def scorer(self) -> Any:
        """The evaluation's scorer (its LPIPS model is loaded on the first comparison and kept)."""
        if self._scorer is None:
            from genmo_teacache.eval.fidelity import FidelityScorer

            self._scorer = FidelityScorer(device="auto")
        return self._scorer

    def compare(self, request: Request, result: GenerationResult, video: Path, baseline: GenerationResult,
                baseline_video: Path) -> Comparison:
        from genmo_teacache.eval.grid import GridJob, Tile, grid_paths, make_grid

        scores = self.scorer().score_files(baseline_video, video)
        speedup = baseline.timings["total_s"] / result.timings["total_s"]
        denoising = baseline.timings["denoising_s"] / result.timings["denoising_s"]
        tiles = (Tile(mode=BASELINE, path=baseline_video, baseline=True),
                 Tile(mode=request.cache.name, path=video, speedup=speedup, psnr=scores.psnr, ssim=scores.ssim,
                      lpips=scores.lpips))
        job = GridJob(name=f"{COMPARISON}.mp4", prompt=request.prompt, sample=None, tiles=tiles)
        make_grid(job, video.parent)
        return Comparison(baseline, baseline_video, grid_paths(video.parent, job)[0], speedup, denoising,
                          scores.psnr, scores.ssim, scores.lpips)


# -- what the page shows --------------------------------------------------------------------------------------

def decision(step: dict[str, Any], branches: int) -> str:
    """``computed``, ``cond only`` (a CFG cache ran one branch of ``branches``) or ``skipped``."""
    if not step["computed"]:
        return "skipped"
    ran = len(step.get("branches") or ())
    return "cond only" if 0 < ran < branches else "computed"


def steps_table(report: dict[str, Any]) -> list[list[Any]]:
    """One row per denoising step (:data:`STEP_COLUMNS`): what the cache decided, why, on which indicator."""
    steps = report["steps"]
    branches = max((len(s.get("branches") or ()) for s in steps), default=0)

    def num(value: float | None, digits: int = 4) -> float | None:
        return None if value is None else round(float(value), digits)

    return [[s["step"], num(s["sigma"]), decision(s, branches), s["reason"], num(s["rescaled"]),
             num(s["accumulated"]), num(s["threshold"]), num(s["seconds"], 3)] for s in steps]


def write_steps_plot(report: dict[str, Any], path: Path) -> Path:
    """A bar per denoising step, its time, coloured by what the cache decided."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from genmo_teacache.files import atomic_path

    colours = {"computed": "#2b6cb0", "cond only": "#dd8a1e", "skipped": "#b8b8b8"}
    rows = steps_table(report)
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    for kind, colour in colours.items():
        picked = [r for r in rows if r[2] == kind]
        if picked:
            ax.bar([r[0] for r in picked], [r[7] for r in picked], color=colour, label=f"{kind} ({len(picked)})")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("denoising step")
    ax.set_ylabel("seconds")
    ax.set_title(f"{report['mode']}: {report['computed_steps']} of {report['num_steps']} steps computed, "
                 f"{report['skipped_steps']} skipped", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def timings_table(result: GenerationResult) -> list[list[Any]]:
    """Where the time went (seconds) and the peak GPU memory."""
    names = {"text_encoding_s": "text encoding", "denoising_s": "denoising", "decoding_s": "decoding",
             "offload_s": "moving models (CPU offload)", "total_s": "total"}
    rows = [[label, f"{result.timings[key]:.2f} s"] for key, label in names.items() if key in result.timings]
    peak = result.peak_memory_gb
    rows.append(["peak GPU memory", "n/a (CPU)" if peak is None else f"{peak:.2f} GiB"])
    return rows


def summary_markdown(job: JobResult) -> str:
    """The run in a few lines: what was asked, what the cache skipped, where the time went, peak memory."""
    from genmo_teacache.generate import summary_text

    r, s = job.request, job.request.settings
    head = (f"**{r.cache.name}** · seed {r.seed} · {s.width}x{s.height}, {s.num_frames} frames, {s.num_steps} steps, "
            f"CFG {s.cfg_scale:g} · speed preset {r.speed.spec()}")
    text = summary_text(job.result.report, job.result.timings, job.result.peak_memory_gb).replace("\n", "  \n")
    prompt = r.prompt.replace("\n", " ")
    cold = f"\n\n{COLD_NOTE}" if job.cold else ""
    return f"{head}\n\n{text}{cold}\n\nPrompt: {prompt}\n\nOutput folder: `{job.folder}`"


def comparison_markdown(job: JobResult) -> str:
    c = job.comparison
    if c is None:
        return ""
    mode, base = job.result, c.baseline
    ideal = mode.report["ideal_speedup"]
    noise = (" Measured above the ideal that the skipped work allows: the difference is this run's noise."
             if max(c.speedup, c.denoising_speedup) > ideal else "")
    if job.cold:
        noise += f" {COLD_NOTE} The cached run came first: the speedup is understated."
    return "\n".join([
        f"**{job.request.cache.name} against the baseline** (same prompt and seed, no cache, same speed preset; "
        "PSNR, SSIM and LPIPS as `genmo-teacache evaluate` computes them)",
        "",
        "| | baseline | " + job.request.cache.name + " |",
        "|---|---|---|",
        f"| total | {base.timings['total_s']:.2f} s | {mode.timings['total_s']:.2f} s |",
        f"| denoising | {base.timings['denoising_s']:.2f} s | {mode.timings['denoising_s']:.2f} s |",
        f"| DiT forwards | {base.report['dit_calls']} | {mode.report['dit_calls']} |",
        f"| speedup | 1.00x | **{c.speedup:.2f}x** (denoising {c.denoising_speedup:.2f}x, ideal {ideal:.2f}x) |",
        f"| PSNR | | **{c.psnr:.2f} dB** |",
        f"| SSIM | | {c.ssim:.4f} |",
        f"| LPIPS | | **{c.lpips:.4f}** |",
        "",
        "One run each: on a shared or small machine the times vary; `genmo-teacache batch` and `evaluate` measure "
        f"over many prompts.{noise}",
    ])


def page_defaults(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The fields' initial values: upstream's UI (its seed; 64 steps as our CLI), or the model's
    ``generation_defaults.json`` (the tiny demo model's makes the run small)."""
    base = asdict(GenerationSettings())
    values = apply_model_defaults(None, {"model_dir": str(model_dir), **base})
    return {k: values[k] for k in ("width", "height", "num_frames", "num_steps", "cfg_scale")}


# -- the page and the server ----------------------------------------------------------------------------------

def build_app(runner: Runner, *, random_model: bool = False) -> Any:
    """The Gradio page on ``runner``."""
    import gradio as gr

    defaults = page_defaults(runner.model_dir)
    prefix, params = split_method(DEFAULT_MODE)
    with gr.Blocks(title="Mochi 1 with TeaCache", analytics_enabled=False) as demo:
        gr.Markdown("## Video Generator: Mochi 1 with step caches")
        if random_model:
            gr.Markdown(f"**Tiny RANDOM demo model** (`{runner.model_dir}`): it makes noise, quickly, to try the "
                        "page out. For real videos start the server with `--model_dir WEIGHTS`.",
                        elem_id="random-model")
        with gr.Row():
            with gr.Column(scale=5):
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=3, elem_id="prompt")
                negative_prompt = gr.Textbox(label="Negative Prompt", value="", elem_id="negative-prompt")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=UPSTREAM_SEED, precision=0, elem_id="seed")
                    cfg_scale = gr.Number(label="CFG Scale", value=defaults["cfg_scale"], elem_id="cfg-scale")
                    num_steps = gr.Number(label="Number of Inference Steps", value=defaults["num_steps"],
                                          precision=0, elem_id="num-steps")
                with gr.Row():
                    width = gr.Number(label="Width", value=defaults["width"], precision=0, elem_id="width")
                    height = gr.Number(label="Height", value=defaults["height"], precision=0, elem_id="height")
                    num_frames = gr.Number(label="Number of Frames", value=defaults["num_frames"], precision=0,
                                           elem_id="num-frames")
                with gr.Row():
                    method = gr.Dropdown(label="Cache method", choices=method_choices(), value=prefix,
                                         elem_id="method")
                    parameters = gr.Textbox(label="Method parameters", value=params,
                                            info=f"`{method_of(prefix).syntax}`", elem_id="parameters")
                modifier_fields = []
                with gr.Row():
                    for kind in MODIFIERS:
                        mod_prefix = kind.prefixes[0]
                        with gr.Column(min_width=200):
                            ticked = gr.Checkbox(label=f"+{mod_prefix} ({kind.key})", value=False,
                                                 elem_id=f"modifier-{kind.key}")
                            text = gr.Textbox(show_label=False, info=f"`{kind.syntax}`",
                                              value=example_parameters(kind, mod_prefix) or "",
                                              elem_id=f"modifier-{kind.key}-parameters")
                        modifier_fields.append((mod_prefix, ticked, text))
                calibration = gr.File(label="Calibration file (optional; MagCache needs one)", file_types=[".json"],
                                      type="filepath", height=120, elem_id="calibration")
                speed = gr.Dropdown(label="Speed preset", choices=list(PRESETS), value=DEFAULT_PRESET,
                                    elem_id="speed", info="fastest / fast / fast_bf16: H100/H200 and `pip install "
                                                          "genmo-teacache[kernels]`; a change reloads the pipeline")
                compare = gr.Checkbox(label="Compare with the baseline (same seed, no cache: side-by-side grid, "
                                            "speedup, PSNR, LPIPS)", value=False, elem_id="compare")
                button = gr.Button("Generate Video", variant="primary", elem_id="generate")
            with gr.Column(scale=6):
                video = gr.Video(label="Video", elem_id="video", height=360, autoplay=True, loop=True)
                summary = gr.Markdown(elem_id="summary")
                steps_plot = gr.Image(label="Steps: computed and skipped", type="filepath", height=220,
                                      elem_id="steps-plot")
                timings = gr.Dataframe(headers=["phase", "time"], label="Where the time went", elem_id="timings",
                                       interactive=False)
        grid = gr.Video(label="Side by side: baseline | cached", elem_id="grid", height=360, autoplay=True,
                        loop=True, visible=False)
        comparison = gr.Markdown(elem_id="comparison", visible=False)
        steps = gr.Dataframe(headers=STEP_COLUMNS, label="Per step", elem_id="steps", interactive=False)
        files = gr.File(label="Files (videos, JSON sidecars with the whole report)", file_count="multiple",
                        elem_id="files", interactive=False)

        def on_method(chosen: str, current: str) -> Any:
            kind = method_of(chosen)
            example = example_parameters(kind, chosen)
            return gr.Textbox(info=f"`{kind.syntax}`", value=current if example is None else example)

        method.change(on_method, inputs=[method, parameters], outputs=parameters)

        inputs = {prompt, negative_prompt, seed, width, height, num_frames, cfg_scale, num_steps, method, parameters,
                  calibration, speed, compare, *(c for _, tick, text in modifier_fields for c in (tick, text))}

        def on_generate(v: dict, progress=gr.Progress(track_tqdm=True)) -> dict:  # noqa: B008 (gradio's idiom)
            try:
                request = parse_request(
                    prompt=v[prompt], negative_prompt=v[negative_prompt], seed=v[seed], width=v[width],
                    height=v[height], num_frames=v[num_frames], num_steps=v[num_steps], cfg_scale=v[cfg_scale],
                    method=v[method], parameters=v[parameters], calibration=v[calibration], speed_preset=v[speed],
                    compare=v[compare], device=runner.device,
                    modifiers=[(p, v[text]) for p, tick, text in modifier_fields if v[tick]])
            except ValueError as e:
                # the toast renders HTML: escaped, "fixed_<t>" in a mode's syntax stays visible
                raise gr.Error(html.escape(str(e)), duration=None, print_exception=False) from None
            for warning in request.warnings:
                gr.Warning(html.escape(warning))
            job = runner.run(request, phase=lambda text: progress(0, desc=text))
            c = job.comparison
            return {video: str(job.video), summary: summary_markdown(job), steps_plot: str(job.steps_plot),
                    timings: timings_table(job.result), steps: steps_table(job.result.report),
                    grid: gr.Video(str(c.grid) if c else None, visible=c is not None),
                    comparison: gr.Markdown(comparison_markdown(job), visible=c is not None),
                    files: [str(f) for f in job.files]}

        button.click(on_generate, inputs=inputs,
                     outputs=[video, summary, steps_plot, timings, steps, grid, comparison, files],
                     concurrency_limit=1, concurrency_id="gpu")
    return demo


@click.command()
@click.option("--model_dir", default=None, type=click.Path(file_okay=False),
              help="Mochi weights directory (dit.safetensors, decoder.safetensors), as upstream's UI. Default: the "
                   "tiny RANDOM demo model (made on first use in the cache folder): it makes noise, to try the page.")
@click.option("--lora_path", default=None, type=click.Path(dir_okay=False, exists=True),
              help="LoRA weights (.safetensors or .pt), as upstream.")
@click.option("--cpu_offload", is_flag=True, help="Keep models on CPU and move each to the GPU when used.")
@click.option("--low_memory", is_flag=True,
              help="For a small GPU: each model on the GPU only while used, the DiT converted block by block, "
                   "decoding a few frames at a time (the generate command's --low_memory; with the fastest preset on "
                   "a 24 GB GPU).")
@click.option("--out_dir", default="outputs/gradio", show_default=True, type=click.Path(file_okay=False),
              help="Each request's videos and reports go to a new folder in here.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; the page has no login).")
@click.option("--port", default=7860, show_default=True, type=int, help="Port to listen on.")
def main(model_dir: str | None, lora_path: str | None, cpu_offload: bool, low_memory: bool, out_dir: str, host: str,
         port: int) -> None:
    """Upstream's Gradio UI with step caches: python demos/gradio_teacache.py [--model_dir weights/]."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (set before gradio is imported)
    setup_logging(plain=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own requests to the local server
    if importlib.util.find_spec("gradio") is None:
        raise click.ClickException('the web UI needs Gradio: pip install -e ".[ui]"')
    from genmo_teacache.files import OutputPathError, check_output_dir
    from genmo_teacache.weights import WeightsError, check_model_dir

    random_model = model_dir is None
    model_dir = resolve_model_dir({"model_dir": model_dir})["model_dir"]
    try:
        check_model_dir(model_dir, lora_path=lora_path)
        out = check_output_dir(out_dir, "--out_dir").resolve()
    except (WeightsError, OutputPathError) as e:
        raise click.ClickException(str(e)) from None
    runner = Runner(model_dir, out, cpu_offload=cpu_offload, lora_path=lora_path, low_memory=low_memory)
    try:
        runner.pipeline(speed_options(DEFAULT_PRESET))  # loaded once, before the first request
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    demo = build_app(runner, random_model=random_model)
    demo.queue(default_concurrency_limit=1)
    # no share link, no server-side rendering (node), nothing fetched from the web: the default theme's fonts are
    # served by Gradio itself (the browser test blocks every other host)
    demo.launch(server_name=host, server_port=port, share=False, show_error=True, allowed_paths=[str(out)],
                ssr_mode=False, mcp_server=False, pwa=False)
