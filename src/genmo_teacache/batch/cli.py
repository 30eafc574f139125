"""``genmo-teacache batch`` (= ``vbench_eval/batch_generate.py``) and ``genmo-teacache sweep``
(= ``vbench_eval/run_adaptive_threshold_experiment.py``): the click commands, mapping flags onto the typed
functions of this package. See docs/BATCH.md."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from genmo_teacache.batch.execute import JobOptions, PipelineSpec
from genmo_teacache.batch.jobs import (
    MAX_SAMPLES,
    SEED_MAX,
    BatchError,
    Job,
    build_jobs,
    longest_first,
    select_prompts,
)
from genmo_teacache.batch.naming import mode_folder, parse_modes
from genmo_teacache.batch.prompts import DEFAULT_PROMPTS_FILE, PromptFileError, load_prompts, resolve_prompts_file
from genmo_teacache.batch.runner import BatchPlan, BatchResult, format_job_table, run_local
from genmo_teacache.batch.state import format_summary, read_logs, summarize
from genmo_teacache.batch.sweep import sweep_options
from genmo_teacache.caches import syntax
from genmo_teacache.cliutils import compose, setup_logging
from genmo_teacache.files import OutputPathError, check_output_dir
from genmo_teacache.options import (
    apply_model_defaults,
    generation_options,
    pipeline_kwargs,
    resolve_model_dir,
    settings_from_options,
)
from genmo_teacache.output_layout import BATCH, LAYOUTS, REFERENCE, found_layout
from genmo_teacache.parallel import check_ray_address
from genmo_teacache.speed import SpeedOptions

logger = logging.getLogger(__name__)

DEFAULT_MODES = "baseline,fixed_0.04,fixed_0.12,adaptive_0.12_0.04"
# The vbench_eval/ scripts: the reference workflow's folders, layout and mode names (docs/BATCH.md).
REFERENCE_MODES = "mochi_baseline,mochi_fixed_0.04,mochi_fixed_0.12,mochi_adaptive_0.12_0.04"
REFERENCE_BATCH = {"output_dir": "vbench_eval/videos", "layout": REFERENCE.name, "modes": REFERENCE_MODES}
REFERENCE_SWEEP = {"output_dir": "vbench_eval/videos_threshold_experiment", "layout": REFERENCE.name}

calibration_option = click.option(
    "--calibration", "--teacache_coefficients", "--mag_ratios", "calibration",
    type=click.Path(dir_okay=False, exists=True), default=None,
    help="Calibration JSON (genmo-teacache calibrate) for the modes whose method takes one (TeaCache: rescale "
         "polynomial, default TeaCache's Mochi fit; MagCache: magnitude ratios; others ignore it). The folder name "
         "does not record it: use a new --output-dir per calibration.")


def _generation_option_names() -> frozenset[str]:
    probe = generation_options(lambda **kw: None)
    return frozenset(p.name for p in getattr(probe, "__click_params__", []) if p.name)


GENERATION_OPTIONS = _generation_option_names()


def split_options(ctx: click.Context, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(generation options, the rest), with the tiny demo model where no ``--model_dir`` is given (as ``generate``)
    and the model's generation defaults applied. The weights folder is checked here, before anything runs or is
    written (a dry run included): a usage error names it."""
    from genmo_teacache.weights import WeightsError, check_model_dir

    kwargs = resolve_model_dir(kwargs)
    try:
        check_model_dir(kwargs["model_dir"], text_encoder_dir=kwargs.get("text_encoder_dir"),
                        lora_path=kwargs.get("lora_path"))
    except WeightsError as e:
        raise click.BadParameter(str(e), param_hint="--model_dir") from None
    kwargs = apply_model_defaults(ctx, kwargs)
    gen = {k: v for k, v in kwargs.items() if k in GENERATION_OPTIONS}
    return gen, {k: v for k, v in kwargs.items() if k not in GENERATION_OPTIONS}


def check_shares(o: dict[str, Any]) -> None:
    """``--gpu-id`` / ``--total-gpus`` / ``--ray`` of ``batch`` and ``sweep``: a share that exists, a split by hand
    that says which share this process runs (a dry run may show them all), never with Ray."""
    if o["gpu_id"] is not None and o["gpu_id"] >= o["total_gpus"]:
        raise click.BadParameter(f"--gpu-id {o['gpu_id']} needs --total-gpus > {o['gpu_id']}", param_hint="--gpu-id")
    if o["total_gpus"] > 1 and o["gpu_id"] is None and not o["dry_run"]:
        raise click.BadParameter("--total-gpus > 1 needs --gpu-id (which share this process runs)",
                                 param_hint="--gpu-id")
    if o["use_ray"] and o["total_gpus"] > 1:
        raise click.UsageError("--ray schedules jobs over the whole cluster: do not combine it with --gpu-id / "
                               "--total-gpus (a split by hand)")


def gpus_per_worker(gen: dict[str, Any], o: dict[str, Any]) -> int:
    """GPUs per pipeline: ``--gpus-per-worker`` or the generation option ``--num_gpus`` (the same thing); 1 unless
    given (unlike ``generate``, whose --num_gpus default is every visible GPU: a batch spreads jobs, not ranks)."""
    k, num_gpus = o.get("gpus_per_worker"), gen.get("num_gpus") or 1
    if k is not None and num_gpus not in (1, k):
        raise click.UsageError(f"--gpus-per-worker {k} and --num_gpus {num_gpus} disagree: give one of them")
    return k or num_gpus


def pipeline_spec(gen: dict[str, Any], k: int, use_ray: bool) -> PipelineSpec:
    """How each process or worker loads its pipeline. Ray workers already run inside the cluster, so they get
    no ``ray_address`` (``--ray_address`` then names the cluster of the batch)."""
    kwargs = pipeline_kwargs(gen)
    kwargs["num_gpus"] = k
    if use_ray:
        kwargs.pop("ray_address", None)
    return PipelineSpec(str(gen["model_dir"]), kwargs)


def is_cpu(gen: dict[str, Any]) -> bool:
    return str(gen.get("device") or "auto").startswith("cpu")


def uses_gpu(gen: dict[str, Any], o: dict[str, Any]) -> bool:
    """Whether the pipelines run on GPUs (Ray workers: unless --device cpu; here: if one is visible)."""
    return not is_cpu(gen) and (o["use_ray"] or _cuda_available())


def prompt_options(default_output: str) -> Callable[[Any], Any]:
    return compose(
        click.option("--prompts-file", "--prompts_file", "prompts_file", default=DEFAULT_PROMPTS_FILE,
                     show_default=True,
                     help="VBench full-info JSON (list of {prompt_en, dimension, ...}) or a text file, one prompt a "
                          "line."),
        click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False),
                     default=default_output, show_default=True,
                     help="Root of the outputs: videos/<mode>/, reports/<mode>/, logs/ and prompt_names.json "
                          "(--layout batch), or <mode>/ and generation_log_*.json (--layout reference)."),
        click.option("--layout", type=click.Choice(sorted(LAYOUTS)), default=BATCH.name, show_default=True,
                     help="Folders under --output-dir: batch (videos/, reports/, logs/), or reference, the reference "
                          "workflow's (<mode>/ and generation_log_*.json in --output-dir itself; the vbench_eval/ "
                          "scripts' default). Readers (evaluate, compare-videos) accept both."),
        click.option("--generation-seed", "--generation_seed", "generation_seed", type=click.IntRange(0, SEED_MAX),
                     default=0, show_default=True,
                     help="Seed of sample 0; sample i uses seed + i, the same in every mode."),
        click.option("--dry-run", "--dry_run", "dry_run", is_flag=True,
                     help="Print the job table (cost, share, status) and exit; writes nothing."),
        click.option("--background-write/--no-background-write", "background_write", default=True,
                     show_default=True,
                     help="Encode and verify each video in a background thread while the next one generates (one "
                          "pending write at most); a job counts as finished only once its video is verified."),
        click.option("--verbose", "-v", is_flag=True, help="Debug logging."),
    )


def ray_options(f: Any) -> Any:
    return compose(
        click.option("--ray", "use_ray", is_flag=True,
                     help="Run on Ray workers: one per GPU (or per --gpus-per-worker GPUs; per --num-workers CPU "
                          "slots with --device cpu), a shared longest-first queue, dead workers' jobs retried. "
                          "--ray_address joins a running cluster; default: start a local one."),
        click.option("--num-workers", "--num_workers", "num_workers", type=click.IntRange(min=1), default=None,
                     help="Ray workers to start (default: every GPU of the cluster / --gpus-per-worker; 1 on CPU)."),
        click.option("--gpus-per-worker", "--gpus_per_worker", "gpus_per_worker", type=click.IntRange(min=1),
                     default=None,
                     help="GPUs per Ray worker (default 1, or --num_gpus); >1 loads the context-parallel pipeline "
                          "(num_gpus=k) in each worker."),
        click.option("--max-retries", "--max_retries", "max_retries", type=click.IntRange(min=0), default=2,
                     show_default=True, help="Retries of a job whose worker died or that raised, before it is "
                                             "reported failed."),
    )(f)


def load_prompt_list(prompts_file: str) -> list[Any]:
    try:
        return load_prompts(resolve_prompts_file(prompts_file))
    except PromptFileError as e:
        raise click.ClickException(str(e)) from None


def run_plan(plan: BatchPlan, spec: PipelineSpec, *, use_ray: bool, cpu: bool, ray_address: str | None,
             num_workers: int | None, gpus_per_worker: int, max_retries: int) -> BatchResult:
    if not use_ray and not cpu and gpus_per_worker == 1:
        import torch

        if torch.cuda.device_count() > 1:
            logger.info("this process uses one GPU of %d: add --ray to use all of them (one worker each), or run "
                        "one process per GPU with --gpu-id/--total-gpus", torch.cuda.device_count())
    try:
        if use_ray:
            from genmo_teacache.batch.ray_runner import RayOptions, run_ray

            opts = RayOptions(address=ray_address, num_workers=num_workers, gpus_per_worker=gpus_per_worker,
                              cpu=cpu, max_retries=max_retries)
            return run_ray(plan, spec, opts)
        return run_local(plan, spec)
    except BatchError as e:
        raise click.ClickException(str(e)) from None


def report_result(plan: BatchPlan, result: BatchResult, modes: list[str]) -> None:
    elsewhere = f", {len(result.elsewhere)} left to another batch" if result.elsewhere else ""
    click.echo(f"\n{result.generated} video(s) generated, {result.already_done} done before, "
               f"{len(result.failed)} failed{elsewhere}, of {result.total}; {result.elapsed_s:.0f} s. "
               f"Log: {result.log_path}")
    runs = read_logs(plan.root)
    if runs:  # every mode of the folder (this run's first), so that speedups over an earlier baseline show
        click.echo(format_summary(summarize(runs, modes + sorted({r["mode"] for r in runs} - set(modes)))))
    problems = []
    if result.failed:
        lines = "\n".join(f"  {job.id}: {why}" for job, why in result.failed)
        problems.append(f"{len(result.failed)} job(s) failed (re-run the same command to retry them):\n{lines}")
    if result.elsewhere:
        lines = "\n".join(f"  {job.id}: {holder}" for job, holder in result.elsewhere)
        problems.append(f"{len(result.elsewhere)} job(s) were being generated by another batch on this output folder "
                        f"and are not in this log yet (re-run this command when it has finished):\n{lines}")
    if problems:
        raise click.ClickException("\n".join(problems))


def make_plan(settings: Any, prompts_file: str, output_dir: str, modes_text: str | list[str], *,
              num_samples: int, generation_seed: int, start_idx: int, end_idx: int | None, gpu_id: int | None = None,
              total_gpus: int = 1, num_prompts: int | None = None, calibration: str | None = None,
              layout: str = BATCH.name, spec: PipelineSpec | None = None, gpu: bool = False,
              observe_only: bool = False, background_write: bool = True) -> tuple[BatchPlan, list[str]]:
    """The plan, built once: validate everything that can be validated without the model (click errors name the
    bad value). Says on screen (stderr) what of a mode never acts at this step count (a schedule cut, a warm-up
    covering the run, a CFG cache starting after the last step), as ``generate`` does. With the pipeline ``spec``
    (``gpu``: whether it runs on GPUs), the plan carries the run's speed options and the fingerprint of the weights
    and options, what a resume is checked against. Returns the plan and the modes' folders."""
    from genmo_teacache.batch.fingerprint import pipeline_fingerprint

    prompts = load_prompt_list(prompts_file)
    try:
        modes = parse_modes(modes_text, calibration)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--modes") from None
    for mode, cache in modes:
        try:
            warnings = cache.check(settings.num_steps, batch_cfg=getattr(settings, "batch_cfg", False))
        except ValueError as e:
            raise click.BadParameter(f"mode {mode!r}: {e}", param_hint="--modes") from None
        for warning in warnings:
            click.echo(f"warning: mode {mode} at --num_steps {settings.num_steps}: {warning}", err=True)
    existing = found_layout(output_dir)
    if existing is not None and existing.name != layout:
        raise click.BadParameter(f"{output_dir} holds videos in the {existing.name} layout: pass --layout "
                                 f"{existing.name} to add to them, or another --output-dir", param_hint="--layout")
    try:
        if num_prompts is not None:
            end_idx = start_idx + num_prompts
        selected = select_prompts(prompts, start_idx, end_idx)
        jobs = build_jobs(selected, modes, num_samples, generation_seed, settings.num_steps, LAYOUTS[layout])
    except BatchError as e:
        raise click.ClickException(str(e)) from None
    late = sorted({j.sample for j in jobs if j.sample >= MAX_SAMPLES})
    if late:
        click.echo(f"warning: videos numbered {', '.join(map(str, late))} (their seeds, in the {layout} layout): "
                   f"VBench's standard mode reads <prompt>-0 .. -{MAX_SAMPLES - 1} only", err=True)
    start, end = selected[0][0], selected[-1][0] + 1
    fingerprint, model_paths = (None, None) if spec is None else pipeline_fingerprint(
        spec.model_dir or ".", spec.kwargs, gpu=gpu, observe_only=observe_only)
    options = JobOptions(str(Path(output_dir)), settings, fingerprint, model_paths, observe_only, background_write,
                         SpeedOptions() if spec is None else spec.speed)
    return BatchPlan(options, jobs, start, end, gpu_id, total_gpus), [mode_folder(m) for m, _ in modes]


def print_dry_run(plan: BatchPlan, use_ray: bool) -> None:
    try:
        done = set(plan.finished(plan.jobs)) if plan.root.is_dir() else set()
    except BatchError as e:
        click.echo(f"warning: {e}", err=True)
        done = set()
    order: list[Job] | None = longest_first(plan.all_jobs) if use_ray else None
    if use_ray:
        click.echo("Ray queue order (longest first):")
    click.echo(format_job_table(plan, done, order))
    click.echo("dry run: nothing was written")


def check_speeds(plan: BatchPlan, gen: dict[str, Any], k: int, remote: bool) -> None:
    """Each distinct set of speed options of the plan's jobs (a mode's ``@SPEED`` or the run's) can run here:
    the kernel packages installed, the device fits (``speed.check_speed_options``), and no context parallelism.
    Raises a usage error naming the modes and what to install; nothing is loaded. On a remote Ray cluster
    (``remote``) the packages are the workers' business: only the layout is checked here."""
    from genmo_teacache.batch.jobs import speed_groups
    from genmo_teacache.generate import resolve_device
    from genmo_teacache.parallel import check_layout
    from genmo_teacache.speed import SpeedOptionError, check_speed_options

    groups = speed_groups(plan.jobs, plan.speed)
    try:
        cp_size = check_layout(k, bool(gen.get("cfg_parallel"))) if k > 1 else 1
        device = "cpu" if is_cpu(gen) else resolve_device(str(gen.get("device") or "auto")) if not remote else None
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for speed, jobs in groups.items():
        modes = ", ".join(dict.fromkeys(j.mode for j in jobs))
        if cp_size > 1 and not speed.is_default:
            raise click.UsageError(f"modes {modes}: speed options {speed.spec()} need the whole DiT on each GPU, and "
                                   f"{k} GPUs per pipeline shard it (context parallelism): use --gpus-per-worker 1, "
                                   "or --cfg_parallel on 2")
        if device is None:
            continue
        try:
            check_speed_options(speed, device)
        except SpeedOptionError as e:
            raise click.UsageError(f"modes {modes} (speed options {speed.spec()}): {e}") from None


def execute_plan(plan: BatchPlan, spec: PipelineSpec, gen: dict[str, Any], o: dict[str, Any]) -> BatchResult | None:
    """Run the plan locally or on Ray; None for a dry run (which only prints it). Before any model loads: the
    output folder can be written, the Ray address answers, each mode's speed options can run here."""
    k = gpus_per_worker(gen, o)
    if o["dry_run"]:
        print_dry_run(plan, o["use_ray"])
        return None
    try:
        check_output_dir(plan.root, "--output-dir")
        check_ray_address(gen.get("ray_address"))
    except (OutputPathError, ConnectionError) as e:
        raise click.UsageError(str(e)) from None
    check_speeds(plan, gen, k, remote=o["use_ray"] and bool(gen.get("ray_address")))
    return run_plan(plan, spec, use_ray=o["use_ray"], cpu=is_cpu(gen), ray_address=gen.get("ray_address"),
                    num_workers=o["num_workers"], gpus_per_worker=k, max_retries=o["max_retries"])


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# -- batch -----------------------------------------------------------------------------------------------------
@click.command("batch", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@generation_options
@prompt_options("outputs/vbench")
@click.option("--modes", default=DEFAULT_MODES, show_default=True,
              help="Comma-separated modes; each becomes a folder named as written (videos/<mode>/ in the batch "
                   "layout), or FOLDER for FOLDER=MODE. Reference names "
                   "(mochi_baseline, mochi_fixed_0.04, mochi_adaptive_0.12_0.04, mochi_adaptive_f34s14l16, ...) or "
                   "any cache mode of any method (docs/METHODS.md): "
                   + "; ".join(line.strip() for line in syntax().splitlines())
                   + ". Modifiers as suffixes (fixed_0.06+cfg, fixed_0.06+taylor1); each mode optionally with its "
                   "own speed options after @ (baseline@fast, fixed_0.04@bf16+compile), which replace the run's "
                   "(--speed_preset, --dit_dtype, ...) for that mode.")
@calibration_option
@click.option("--num-samples", "--num_samples", "num_samples", type=click.IntRange(1, MAX_SAMPLES), default=1,
              show_default=True, help="Videos per prompt and mode (VBench: 5 for the full protocol).")
@click.option("--start-idx", "--start_idx", "start_idx", type=click.IntRange(min=0), default=0, show_default=True,
              help="First prompt (index into the prompt list).")
@click.option("--end-idx", "--end_idx", "end_idx", type=click.IntRange(min=1), default=None,
              help="End of the prompt range, exclusive (default: the end of the list).")
@click.option("--gpu-id", "--gpu_id", "gpu_id", type=click.IntRange(min=0), default=None,
              help="With --total-gpus: run only this share of the cost-balanced split (one process per GPU).")
@click.option("--total-gpus", "--total_gpus", "total_gpus", type=click.IntRange(min=1), default=1,
              show_default=True, help="Number of shares for a split by hand (see --gpu-id).")
@click.option("--delta_temni_plot", "--delta-temni-plot", "delta_temni_plot", is_flag=True,
              help="Observe-only generation: record the TeaCache indicator on every step without skipping (every "
                   "mode then computes every step); write logs/delta_temni/<mode>/<video>_delta_TEMNI.txt and "
                   "_plot.png, where `genmo-teacache evaluate` plots them. Use a separate --output-dir.")
@ray_options
@click.pass_context
def batch_command(ctx: click.Context, **kwargs: Any) -> None:
    """Generate every (prompt, mode, sample) video of an evaluation, resumably.

    Loads the model once per process (or Ray worker); finished videos are skipped, so re-running the same
    command after a crash completes exactly the missing videos.
    """
    setup_logging(kwargs["verbose"])
    gen, o = split_options(ctx, kwargs)
    check_shares(o)
    settings = settings_from_options(**gen)
    spec = pipeline_spec(gen, gpus_per_worker(gen, o), o["use_ray"])
    plan, modes = make_plan(settings, o["prompts_file"], o["output_dir"], o["modes"], num_samples=o["num_samples"],
                            generation_seed=o["generation_seed"], start_idx=o["start_idx"], end_idx=o["end_idx"],
                            gpu_id=o["gpu_id"], total_gpus=o["total_gpus"], calibration=o["calibration"],
                            layout=o["layout"], spec=spec, gpu=uses_gpu(gen, o), observe_only=o["delta_temni_plot"],
                            background_write=o["background_write"])
    result = execute_plan(plan, spec, gen, o)
    if result is None:
        return
    report_result(plan, result, modes)


# -- sweep -----------------------------------------------------------------------------------------------------
@click.command("sweep", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@generation_options
@prompt_options("outputs/threshold_sweep")
@click.option("--num-prompts", "--num_prompts", "num_prompts", type=click.IntRange(min=1), default=2,
              show_default=True, help="Prompts of the sweep: the first N of the prompt file.")
@click.option("--configs", "--candidates", "configs", default=None,
              help="Candidates, comma-separated, each MODE or LABEL=MODE, of any methods (e.g. c1=adaptive_0.08_0.04,"
                   "fixed_0.12,easycache_0.05,fbcache_0.1,cfg=fixed_0.06+cfg,fc=fixed_0.06+taylor1,mag_0.06 with "
                   "--calibration). Default: the reference c1-c4 "
                   "adaptive (high, low) pairs (0.08, 0.04), (0.20, 0.10), (0.12, 0.04), (0.16, 0.10).")
@calibration_option
@click.option("--high-steps", "--high_steps", "high_steps", type=click.IntRange(min=1), default=None,
              help="Steps of the high phase of the default candidates (default: 34 of 64 as in the reference, "
                   "scaled to --num_steps).")
@click.option("--metric", type=click.Choice(["psnr", "ssim", "lpips", "speedup"]), default="psnr",
              show_default=True, help="What names the best candidate (lpips: lowest; others: highest).")
@sweep_options
@ray_options
@click.pass_context
def sweep_command(ctx: click.Context, **kwargs: Any) -> None:
    """The threshold mini-experiment: a few prompts x (baseline + candidate cache configs), generated with the
    batch machinery, then fidelity against the baseline, a table naming the best candidate, and that candidate in
    best_config.json / best_modes.txt for the full batch run."""
    from genmo_teacache.batch.sweep import check_sweep_options, default_candidates, parse_candidates, run_sweep

    setup_logging(kwargs["verbose"])
    gen, o = split_options(ctx, kwargs)
    check_shares(o)
    seed = check_sweep_options(o)
    settings = settings_from_options(**gen)
    try:
        candidates = (parse_candidates(o["configs"], o["calibration"]) if o["configs"]
                      else default_candidates(settings.num_steps, o["high_steps"]))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--configs") from None
    modes = [o["baseline"]] + [mode for _, mode in candidates]
    spec = pipeline_spec(gen, gpus_per_worker(gen, o), o["use_ray"])
    plan, _ = make_plan(settings, o["prompts_file"], o["output_dir"], modes, num_samples=1, generation_seed=seed,
                        start_idx=o["start_idx"], end_idx=o["end_idx"], gpu_id=o["gpu_id"],
                        total_gpus=o["total_gpus"], num_prompts=None if o["end_idx"] else o["num_prompts"],
                        calibration=o["calibration"], layout=o["layout"], spec=spec, gpu=uses_gpu(gen, o),
                        background_write=o["background_write"])
    result = execute_plan(plan, spec, gen, o)
    if result is None:
        return
    if result.failed:
        report_result(plan, result, [mode_folder(m) for m in modes])  # raises
    run_sweep(plan, candidates, o["metric"], device="cpu" if is_cpu(gen) else None, baseline=o["baseline"],
              model_dir=kwargs["model_dir"])


def main(command: click.Command = batch_command, defaults: dict[str, Any] | None = None,
         prog_name: str | None = None) -> None:
    """Entry point of the vbench_eval scripts; ``defaults``: option defaults of the script (e.g. the reference
    layout, :data:`REFERENCE_BATCH`)."""
    command.main(prog_name=prog_name or Path(sys.argv[0]).name, default_map=defaults)

