"""The ``generate`` command (``genmo-teacache generate`` = ``demos/cli_teacache.py``): every option of upstream
``demos/cli.py`` plus the cache's, mapped onto :mod:`genmo_teacache.generate`."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from genmo_teacache.caches import CacheConfig
from genmo_teacache.cliutils import setup_logging
from genmo_teacache.files import OutputPathError, check_output_dir, check_output_file
from genmo_teacache.generate import (
    DEFAULT_PROMPT,
    SEED_MAX,
    GenerationSettings,
    check_seed,
    generate,
    load_pipeline,
    save_result,
    summary_text,
)
from genmo_teacache.options import (
    SETTINGS_KEYS,
    apply_model_defaults,
    cache_from_options,
    cache_options,
    generation_options,
    pipeline_kwargs,
    resolve_model_dir,
    settings_from_options,
)
from genmo_teacache.parallel import check_divisible, check_layout, check_ray_address
from genmo_teacache.weights import WeightsError, check_model_dir

log = logging.getLogger(__name__)

Job = tuple[str, int, GenerationSettings, CacheConfig]


@click.command("generate")
@click.option("--prompt", default=DEFAULT_PROMPT, help="Prompt for video generation.")
@click.option("--sweep-file", "sweep_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSONL file, one config per line (prompt, cfg_scale, num_steps, seed, width, height, "
                   "num_frames, threshold_noise, linear_steps, cache_mode), as upstream.")
@click.option("--seed", default=1710977262, show_default=True, type=click.IntRange(0, SEED_MAX), help="Random seed.")
@click.option("--out_dir", default="outputs", show_default=True, help="Output directory for generated videos.")
@click.option("--save_file", default=None,
              help="Video path, replaced if it exists (default: OUT_DIR/output_<unix time>_<job index>_<mode>.mp4, "
                   "never replacing a file: -1, -2, ... are added to a name that exists).")
@click.option("--save_latents", default=None, help="Also torch.save the final latents (before decoding) here.")
@click.option("--delta_temni_plot", is_flag=True,
              help="Record the TeaCache indicator on every step without skipping; write <video>_delta_TEMNI.txt "
                   "and <video>_delta_TEMNI_plot.png beside the video.")
@generation_options
@cache_options
@click.pass_context
def generate_command(ctx: click.Context, **options: Any) -> None:
    """Generate a Mochi 1 video with the native pipeline, skipping DiT passes with a step cache (TeaCache by
    default). Without --model_dir it runs the tiny random demo model (noise), to try the pipeline out."""
    from genmo_teacache.upstream import progress_bar

    setup_logging(plain=True)
    options = resolve_model_dir(options)
    options = apply_model_defaults(ctx, options)
    jobs = _sweep_jobs(options) if options["sweep_file"] else [
        (options["prompt"], options["seed"], settings_from_options(**options), cache_from_options(**options))]
    _check_jobs(jobs, options)
    pipeline = pipeline_kwargs(options)
    try:
        check_model_dir(options["model_dir"], text_encoder_dir=options["text_encoder_dir"],
                        lora_path=options["lora_path"])
    except WeightsError as e:
        raise click.ClickException(str(e)) from None
    try:
        pipe = load_pipeline(options["model_dir"], **pipeline)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise click.ClickException(str(e)) from None
    for i, (prompt, seed, s, c) in enumerate(jobs):
        with progress_bar(type="tqdm"):
            result = generate(pipe, prompt=prompt, cache=c, seed=seed, settings=s,
                              observe_only=options["delta_temni_plot"])
        video = Path(options["save_file"] or Path(options["out_dir"]) / f"output_{int(time.time())}_{i}_{c.name}.mp4")
        arguments = {"prompt": prompt, "seed": seed, "model_dir": options["model_dir"], **asdict(s),
                     **pipeline, **pipeline["speed"].record()}  # speed: its spec, and every field
        paths = save_result(result, video, arguments=arguments, delta_temni=options["delta_temni_plot"],
                            latents_path=options["save_latents"], exclusive=not options["save_file"])
        click.echo(summary_text(result.report, result.timings, result.peak_memory_gb))
        for kind, path in paths.items():
            click.echo(f"  {kind}: {path}")


def _check_jobs(jobs: list[Job], options: dict[str, Any]) -> None:
    """Everything that can be refused before a model loads."""
    for _, _, s, c in jobs:
        try:
            for warning in c.check(s.num_steps, batch_cfg=s.batch_cfg):
                log.warning("warning: %s", warning)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    num_gpus, cfg_parallel = options["num_gpus"] or (2 if options["cfg_parallel"] else 1), options["cfg_parallel"]
    if num_gpus > 1 or cfg_parallel:
        from genmo_teacache.weights import read_json_object

        config = Path(options["model_dir"]) / "dit_config.json"
        heads = (read_json_object(config) if config.exists() else {}).get("num_heads", 24)
        for _, _, s, _ in jobs:
            try:
                if cfg_parallel and s.batch_cfg:
                    raise ValueError("--cfg_parallel runs one CFG branch per GPU: drop --batch_cfg")
                check_divisible(check_layout(num_gpus, cfg_parallel), num_heads=heads, width=s.width,
                                height=s.height, num_frames=s.num_frames)
            except ValueError as e:
                raise click.BadParameter(str(e)) from None
    if options["save_file"] and len(jobs) > 1:
        raise click.UsageError("--save_file names one video; with --sweep-file use --out_dir")
    try:  # the output locations can be written, the Ray address answers
        if options["save_file"]:
            check_output_file(options["save_file"], "--save_file")
        else:
            check_output_dir(options["out_dir"], "--out_dir")
        if options["save_latents"]:
            check_output_file(options["save_latents"], "--save_latents")
        check_ray_address(options.get("ray_address"))
    except (OutputPathError, ConnectionError) as e:
        raise click.UsageError(str(e)) from None


def _sweep_jobs(options: dict[str, Any]) -> list[Job]:
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
        mode = conf.pop("cache_mode", conf.pop("teacache_mode", None))
        unknown = set(conf) - {"prompt", "seed", *SETTINGS_KEYS}
        where = f"{options['sweep_file']} line {n}"
        if unknown:
            raise click.BadParameter(f"{where}: unknown keys {sorted(unknown)}")
        prompt, seed = conf.get("prompt", options["prompt"]), conf.get("seed", options["seed"])
        try:  # every value of the line, before any model loads: a wrong type would stop the sweep midway
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt={prompt!r}: a prompt is a non-empty string")
            if mode is not None and not isinstance(mode, str):
                raise ValueError(f"cache_mode={mode!r}: a mode is a string, e.g. \"fixed_0.06\"")
            check_seed(seed)
            settings = GenerationSettings(**{**base, **{k: v for k, v in conf.items() if k in SETTINGS_KEYS}})
        except ValueError as e:
            raise click.BadParameter(f"{where}: {e}") from None
        if mode is not None:  # the line's mode; the calibration file and overrides from the command line
            keep = ("calibration", "max_skips", "teacache_no_range_guard")
            cache = cache_from_options(cache_mode=mode, **{k: options.get(k) for k in keep})
        else:
            cache = cache_from_options(**options)
        jobs.append((prompt, seed, settings, cache))
    return jobs
