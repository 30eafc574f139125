"""``genmo-teacache compare-videos``: the side-by-side grids (:mod:`.grid`) of any subset of videos."""

from __future__ import annotations

import math
from pathlib import Path

import click

from genmo_teacache.cliutils import setup_logging
from genmo_teacache.eval.cli import baseline_of, list_modes_of, log_dir_of, modes_of, videos_dir_of, writable_dir


def _positive_finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value}: use a positive finite number (e.g. 4)")
    return value


@click.command("compare-videos", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--videos", type=click.Path(path_type=Path), default=Path("vbench_eval/videos"), show_default=True,
              help="Folder with one sub-folder of {prompt}-{i}.mp4 videos per mode, or the --output-dir of a batch "
                   "run (either layout).")
@click.option("--baseline", default=None,
              help="Mode folder of the uncached baseline (the first tile). Default: as evaluate's, the one folder "
                   "whose name contains 'baseline'.")
@click.option("--modes", multiple=True,
              help="Modes to show, in this order (comma-separated or repeated). Default: every folder but the "
                   "baseline.")
@click.option("--only", multiple=True,
              help="Shell-style pattern on the video's file stem (e.g. 'alley-0') or its prompt (e.g. '*bike*'); "
                   "repeat for several. Default: every video of the baseline.")
@click.option("--results", type=click.Path(path_type=Path), default=None,
              help="Results folder of `evaluate`, for the per-video PSNR/LPIPS (fidelity_metrics/per_video/). "
                   "Default: results/ beside the videos folder. Without them PSNR is computed, LPIPS left out.")
@click.option("--gen-log-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of generation_log_*.json, for the speedups. Default: as evaluate's (beside the mode "
                   "folders, or logs/ beside the videos folder).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where the grids go. Default: <results>/grids (where evaluate's report.html finds them).")
@click.option("--diff", is_flag=True, help="Add under each mode's tile its per-pixel difference to the baseline.")
@click.option("--diff-gain", type=float, default=4.0, show_default=True, callback=_positive_finite,
              help="Factor on |mode - baseline| (0-255 per channel) before the colour map.")
@click.option("--max-width", type=click.IntRange(min=64), default=1920, show_default=True,
              help="Widest grid in pixels; tiles of larger videos are scaled down.")
@click.option("--columns", type=click.IntRange(min=1), default=None,
              help="Tiles per row. Default: at most 3, rows as even as possible.")
@click.option("--overwrite", is_flag=True, help="Make every grid again (default: keep grids that are up to date).")
def compare_videos_command(videos: Path, baseline: str | None, modes: tuple[str, ...], only: tuple[str, ...],
                           results: Path | None, gen_log_dir: Path | None, out: Path | None, diff: bool,
                           diff_gain: float, max_width: int, columns: int | None, overwrite: bool) -> None:
    """Side-by-side videos: per prompt and sample one mp4 with the baseline and every mode, time-aligned, each tile
    labelled with its mode, speedup and PSNR/LPIPS against the baseline. Resumable: grids whose inputs, numbers and
    options did not change are kept. `evaluate` makes them for every video by default."""
    from genmo_teacache.eval.grid import GridOptions, make_grids, plan_grids
    from genmo_teacache.eval.layout import log_dirs, results_dir

    setup_logging()
    videos = videos_dir_of(videos, "--videos")
    baseline = baseline_of(baseline, list_modes_of(videos, "--videos"), str(videos))
    compare_modes = modes_of(videos, baseline, modes)
    results = results if results is not None else results_dir(videos)
    log_dir, _ = log_dir_of(gen_log_dir, log_dirs(videos))
    out = writable_dir(out if out is not None else results / "grids", "--out")
    options = GridOptions(max_width=max_width, columns=columns, diff=diff, diff_gain=diff_gain)
    patterns = [p for p in only if p]  # prompts may contain commas: one pattern per option
    jobs = plan_grids(videos, baseline, compare_modes, results / "fidelity_metrics", log_dir, only=patterns)
    if not jobs:
        raise click.ClickException(f"no video of {videos / baseline} to compare"
                                   + (f" matches --only {', '.join(patterns)}" if patterns else ""))
    done = make_grids(jobs, out, options, overwrite=overwrite)
    for r in done:
        click.echo(f"  {r.status:7s} {r.mp4 if r.mp4 is not None else r.job.name + ': ' + r.reason}")
    failed = [r for r in done if r.status == "failed"]
    click.echo(f"{len(done) - len(failed)} grid(s) in {out}" + (f", {len(failed)} failed" if failed else ""))
    if failed:
        raise click.exceptions.Exit(1)
