"""``genmo-teacache compare-videos``: the side-by-side grids (:mod:`.grid`) of any subset of videos."""

from __future__ import annotations

from pathlib import Path

import click

from genmo_teacache.eval.cli import _setup_logging, _split


@click.command("compare-videos", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--videos", type=click.Path(path_type=Path), default=Path("vbench_eval/videos"), show_default=True,
              help="Folder with one sub-folder of {prompt}-{i}.mp4 videos per mode.")
@click.option("--baseline", required=True, help="Mode folder of the uncached baseline (the first tile).")
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
              help="Folder of generation_log_*.json, for the speedups. Default: logs/ beside the videos.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where the grids go. Default: <results>/grids (where evaluate's report.html finds them).")
@click.option("--diff", is_flag=True, help="Add under each mode's tile its per-pixel difference to the baseline.")
@click.option("--diff-gain", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="Factor on |mode - baseline| (0-255 per channel) before the colour map.")
@click.option("--max-width", type=click.IntRange(min=64), default=1920, show_default=True,
              help="Widest grid in pixels; tiles of larger videos are scaled down.")
@click.option("--columns", type=click.IntRange(min=1), default=None,
              help="Tiles per row. Default: at most 3, rows as even as possible.")
@click.option("--overwrite", is_flag=True, help="Make every grid again (default: keep grids that are up to date).")
def compare_videos_command(videos: Path, baseline: str, modes: tuple[str, ...], only: tuple[str, ...],
                           results: Path | None, gen_log_dir: Path | None, out: Path | None, diff: bool,
                           diff_gain: float, max_width: int, columns: int | None, overwrite: bool) -> None:
    """Side-by-side videos: per prompt and sample one mp4 with the baseline and every mode, time-aligned, each tile
    labelled with its mode, speedup and PSNR/LPIPS against the baseline. Resumable: grids whose inputs, numbers and
    options did not change are kept. `evaluate` makes them for every video by default."""
    from genmo_teacache.eval.grid import GridOptions, make_grids, plan_grids
    from genmo_teacache.eval.layout import resolve_modes

    _setup_logging()
    try:
        compare_modes = resolve_modes(videos, baseline, _split(modes))
    except FileNotFoundError as err:
        raise click.BadParameter(str(err)) from err
    results = results if results is not None else videos.parent / "results"
    log_dir = gen_log_dir if gen_log_dir is not None else videos.parent / "logs"
    out = out if out is not None else results / "grids"
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
