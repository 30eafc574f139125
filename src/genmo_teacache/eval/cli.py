"""``genmo-teacache evaluate`` and the commands behind the reference-named scripts in ``vbench_eval/``.

The commands only map flags onto the typed functions of :mod:`.fidelity`, :mod:`.vbench_runner`, :mod:`.tables` and
:mod:`.plots`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from genmo_teacache.cliutils import setup_logging, split_values
from genmo_teacache.eval import scoring

logger = logging.getLogger(__name__)


def _dimensions(values: Sequence[str] | str | None) -> list[str]:
    dims = split_values(values) or list(scoring.ALL_DIMENSIONS)
    unknown = [d for d in dims if d not in scoring.ALL_DIMENSIONS]
    if unknown:
        raise click.BadParameter(f"unknown dimension(s) {', '.join(unknown)}; choose from: "
                                 f"{', '.join(scoring.ALL_DIMENSIONS)}", param_hint="--dimensions")
    return dims


def videos_dir_of(path: Path, option: str) -> Path:
    """The folder of mode folders: ``path`` itself, or that of a batch output folder in either layout (see
    layout); its ``prompt_names.json``, if any, is checked here, before anything is computed."""
    from genmo_teacache.eval.layout import PromptNamesError, find_videos_dir, load_prompt_names

    try:
        videos = find_videos_dir(path)
        load_prompt_names(videos)
    except FileNotFoundError as err:
        raise click.BadParameter(str(err), param_hint=option) from err
    except PromptNamesError as err:
        raise click.ClickException(str(err)) from None
    return videos


def writable_dir(path: Path, option: str) -> Path:
    """``path`` created if needed and checked to be writable (before anything is computed that would be lost)."""
    from genmo_teacache.files import OutputPathError, check_output_dir

    try:
        return check_output_dir(path, option)
    except OutputPathError as err:
        raise click.BadParameter(str(err), param_hint=option) from None


def list_modes_of(videos: Path, option: str) -> list[str]:
    from genmo_teacache.eval.layout import list_modes

    try:
        return list_modes(videos)
    except FileNotFoundError as err:
        raise click.BadParameter(str(err), param_hint=option) from err


def modes_of(videos: Path, baseline: str, modes: Sequence[str] | str | None) -> list[str]:
    """The modes to compare with ``baseline`` (``--modes``, default every mode folder but the baseline's)."""
    from genmo_teacache.eval.layout import resolve_modes

    try:
        return resolve_modes(videos, baseline, split_values(modes))
    except FileNotFoundError as err:
        raise click.BadParameter(str(err)) from err


def _run_fidelity(videos: Path, baseline: str, modes: list[str], save_dir: Path, device: str,
                  overwrite: bool) -> list[str]:
    """Fidelity of ``modes``; returns what failed as a whole (a mode none of whose pairs could be compared, with
    the reasons), which ends the command with exit status 1 once its tables are printed."""
    from genmo_teacache.eval.fidelity import run_fidelity
    from genmo_teacache.eval.lpips_weights import LpipsWeightsError

    try:
        results = run_fidelity(videos, baseline, modes, save_dir, device=device, overwrite=overwrite)
    except LpipsWeightsError as err:
        raise click.ClickException(str(err)) from err
    failed = []
    for mode, summary in results.items():
        if mode in modes and not summary.get("num_videos"):
            reasons = "; ".join(f"{p.get('video')}: {p.get('reason')}" for p in summary.get("problems", [])[:3])
            failed.append(f"fidelity of {mode} against {baseline}: no video pair could be compared "
                          f"({reasons or 'no videos'})")
    return failed


def _fail_if(failed: Sequence[str]) -> None:
    if failed:
        raise click.ClickException("\n".join(failed))


def _run_vbench(videos: Path, modes: list[str], scores_dir: Path, dimensions: list[str], full_info: Path | None,
                device: str, overwrite: bool, table_follows: bool, retry_failed: bool = False) -> list:
    """Run VBench and print what happened: counts, and (when no table with its notes follows) each reason for an
    n/a once, with the modes and dimensions it applies to."""
    from genmo_teacache.eval.vbench_runner import NOT_RETRIED, UNAVAILABLE_STATUSES, run_vbench

    outcomes = run_vbench(videos, modes, scores_dir, dimensions=dimensions, full_info=full_info, device=device,
                          overwrite=overwrite, retry_failed=retry_failed)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    unavailable = [o for o in outcomes if o.status in UNAVAILABLE_STATUSES]
    where = "under the table below" if table_follows else "below"
    click.echo("VBench: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
               + (f" (why {len(unavailable)} are n/a: {where})" if unavailable else ""))
    if counts.get(NOT_RETRIED):
        click.echo(f"VBench: {counts[NOT_RETRIED]} failed before on the same videos and were not tried again: pass "
                   "--retry-failed once they can run (e.g. with network access to download their models)")
    if unavailable and not table_follows:
        by_reason: dict[str, dict[str, list[str]]] = {}
        for o in unavailable:
            by_reason.setdefault(o.reason or o.status, {}).setdefault(o.mode, []).append(o.dimension)
        for reason, dims_of in by_reason.items():
            groups: dict[tuple[str, ...], list[str]] = {}
            for mode, dims in dims_of.items():
                groups.setdefault(tuple(dims), []).append(mode)
            click.echo("- n/a: " + "; ".join(f"{', '.join(ms)} / {', '.join(ds)}" for ds, ms in groups.items())
                       + f": {reason}")
    return outcomes


def baseline_of(given: str | None, candidates: Sequence[str], where: str) -> str:
    """``--baseline``, or the one candidate whose name contains "baseline" (said so); a usage error otherwise. The
    reference's ``mochi_diff_baseline`` is taken with a note (here the baseline is upstream's native sampler)."""
    from genmo_teacache.caches.baseline import ALIAS_NOTE, REFERENCE_ALIAS
    from genmo_teacache.eval.layout import pick_baseline

    found = given
    if not found:
        try:
            found = pick_baseline(candidates, where)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--baseline") from err
        variants = " without @speed options" if any("@" in m and "baseline" in m.lower() for m in candidates) else ""
        click.echo(f"baseline: {found} (the only mode whose name contains 'baseline'{variants}; another one: "
                   "--baseline)")
    if REFERENCE_ALIAS in found:
        click.echo("note: " + ALIAS_NOTE.format(name=found))
    return found


def log_dir_of(given: Path | None, defaults: Sequence[Path]) -> tuple[Path | None, list[str]]:
    """(the folder of the generation logs, warnings). A ``--gen-log-dir`` without any log near it is an error (before
    anything runs); without the option, missing logs are a warning at the end (the tables lack latency and
    speedup)."""
    from genmo_teacache.eval.timing import find_log_dir, find_logs, log_dir_candidates

    searched = log_dir_candidates(given) if given is not None else list(defaults)
    shown = ", ".join(dict.fromkeys(str(c) for c in searched))
    found = find_log_dir(given) if given is not None else next((d for d in defaults if find_logs(d)), None)
    if found is not None:
        click.echo(f"generation logs (latency, speedup): {found}")
        return found, []
    hint = "the logs/ folder of the batch run, or its --output-dir"
    if given is not None:
        raise click.BadParameter(f"no generation log (generation_log_*.json) in {shown}: point it at {hint}, or leave "
                                 "it out to build the tables without latency and speedup", param_hint="--gen-log-dir")
    return None, [f"no generation log (generation_log_*.json) in {shown}: the Latency and Speedup columns are empty; "
                  f"pass --gen-log-dir ({hint})"]


def _compare(baseline: str, modes: list[str], scores_dir: Path | None, fidelity_dir: Path | None,
             log_dir: Path | None, out_dir: Path, output_json: Path | None, temni_dirs: Sequence[Path | None],
             warnings: Sequence[str] = (), then: Callable[[], dict[str, Path]] | None = None) -> None:
    """Tables, results JSON and plots, then what ``then`` writes from them (the side-by-side videos and the report);
    the output ends with where they are, the summary table and the warnings."""
    from genmo_teacache.eval.plots import find_delta_temni, write_plots
    from genmo_teacache.eval.report import REPORT
    from genmo_teacache.eval.tables import collect, console_report, write_tables

    comp = collect(modes, baseline, scores_dir, fidelity_dir, log_dir)
    comp.warnings[:0] = list(warnings)
    written = write_tables(comp, out_dir, output_json)
    written.update(write_plots(comp, out_dir / "plots", temni_groups=find_delta_temni(*temni_dirs)))
    if then is not None:
        written.update(then())
    _echo_outputs(out_dir, written)
    if REPORT in written:
        click.echo(f"report: {written[REPORT]} (open it in a browser)")
    click.echo("\n" + console_report(comp))
    for warning in comp.warnings:
        click.secho(f"WARNING: {warning}", fg="yellow", err=True)


def _echo_outputs(out_dir: Path, paths: dict[str, Path]) -> None:
    """One line: the results folder and what is in it (paths relative to it where they are inside)."""
    names = []
    for path in paths.values():
        try:
            names.append(str(path.relative_to(out_dir)))
        except ValueError:
            names.append(str(path))
    click.echo(f"tables, results JSON and plots in {out_dir}: {', '.join(names)}")


DEVICE_HELP = "Torch device for fidelity metrics and VBench: auto (GPU if available), cpu, cuda, cuda:1, ..."
RETRY_HELP = ("Run again the VBench dimensions that failed before on the same videos (e.g. a model that could not be "
              "downloaded); by default they are not retried on every run.")


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--videos", type=click.Path(path_type=Path), default=Path("vbench_eval/videos"), show_default=True,
              help="Folder with one sub-folder of {prompt}-{i}.mp4 videos per mode, or the --output-dir of a batch "
                   "run (whose videos/ holds them).")
@click.option("--baseline", default=None,
              help="Mode folder of the uncached baseline, e.g. mochi_baseline. Default: the one folder whose name "
                   "contains 'baseline' (without @speed options if there are such, e.g. baseline@fast; an error if "
                   "there is none or several).")
@click.option("--modes", multiple=True,
              help="Modes to evaluate (comma-separated or repeated). Default: every folder but the baseline.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Results folder (checked before anything is computed). Default: results/ beside the videos "
                   "folder.")
@click.option("--full-info", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="VBench_full_info.json. Default: the one inside the vbench wheel.")
@click.option("--dimensions", multiple=True, help="VBench dimensions (comma-separated or repeated). Default: all 16.")
@click.option("--skip-fidelity", is_flag=True, help="Do not compute PSNR/SSIM/LPIPS.")
@click.option("--skip-vbench", is_flag=True, help="Do not run VBench.")
@click.option("--gen-log-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of generation_log_*.json (for latency and speedup), or the batch run's --output-dir or "
                   "videos folder (its logs/ is found). Default: logs/ beside the videos.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--overwrite", is_flag=True, help="Recompute results that exist already (default: resume).")
@click.option("--retry-failed", is_flag=True, help=RETRY_HELP)
@click.option("--no-grids", is_flag=True,
              help="Do not make the side-by-side videos (grids/); the report shows those made before.")
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
def evaluate_command(videos: Path, baseline: str | None, modes: tuple[str, ...], out: Path | None,
                     full_info: Path | None, dimensions: tuple[str, ...], skip_fidelity: bool, skip_vbench: bool,
                     gen_log_dir: Path | None, device: str, overwrite: bool, retry_failed: bool, no_grids: bool,
                     no_report: bool) -> None:
    """Fidelity (PSNR/SSIM/LPIPS against the baseline), VBench, comparison tables and plots, side-by-side videos
    and report.html, resuming whatever was computed already."""
    from genmo_teacache.eval.layout import log_dirs, results_dir

    setup_logging()
    dims = _dimensions(dimensions)
    videos = videos_dir_of(videos, "--videos")
    baseline = baseline_of(baseline, list_modes_of(videos, "--videos"), str(videos))
    compare_modes = modes_of(videos, baseline, modes)
    log_dir, warnings = log_dir_of(gen_log_dir, log_dirs(videos))
    out = writable_dir(out if out is not None else results_dir(videos), "--out")
    fidelity_dir, scores_dir = out / "fidelity_metrics", out / "vbench_scores"
    click.echo(f"baseline {baseline}; modes: {', '.join(compare_modes) or '(none)'}")

    failed: list[str] = []
    if skip_fidelity:
        click.echo("fidelity: skipped (--skip-fidelity)")
    elif not compare_modes:
        click.echo("fidelity: no mode besides the baseline")
    else:
        failed = _run_fidelity(videos, baseline, compare_modes, fidelity_dir, device, overwrite)
        click.echo(f"fidelity results: {fidelity_dir}")
    if skip_vbench:
        click.echo("VBench: skipped (--skip-vbench)")
    else:
        _run_vbench(videos, [baseline, *compare_modes], scores_dir, dims, full_info, device, overwrite, True,
                    retry_failed)
        click.echo(f"VBench results: {scores_dir} (status of every dimension: {scores_dir / 'vbench_status.json'})")
    then = None
    if not (no_grids and no_report):
        from genmo_teacache.eval.report import grids_and_report

        def then() -> dict[str, Path]:
            return grids_and_report(videos, baseline, compare_modes, out, log_dir, make=not no_grids,
                                    report=not no_report)
    _compare(baseline, compare_modes, scores_dir, fidelity_dir, log_dir, out, None, [videos, log_dir], warnings,
             then=then)
    _fail_if(failed)


# ---------------------------------------------------------------- the reference-named entry points


@click.command("run_fidelity_metrics", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--video-dir", type=click.Path(path_type=Path), default=Path("vbench_eval/videos"), show_default=True,
              help="Folder with one sub-folder of videos per mode.")
@click.option("--baseline", default=None,
              help="Mode folder of the uncached baseline. Default: the one folder whose name contains 'baseline'.")
@click.option("--modes", multiple=True, help="Modes (comma-separated). Default: every folder but the baseline.")
@click.option("--save-dir", type=click.Path(path_type=Path), default=Path("vbench_eval/fidelity_metrics"),
              show_default=True, help="Where {mode}_vs_{baseline}.json and all_fidelity_results.json go.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--overwrite", is_flag=True, help="Recompute modes whose result file exists.")
def fidelity_command(video_dir: Path, baseline: str | None, modes: tuple[str, ...], save_dir: Path, device: str,
                     overwrite: bool) -> None:
    """PSNR / SSIM / LPIPS of every mode against the baseline (TeaCache / PAB protocol)."""
    from genmo_teacache.eval.tables import collect, fidelity_report

    setup_logging()
    video_dir = videos_dir_of(video_dir, "--video-dir")
    baseline = baseline_of(baseline, list_modes_of(video_dir, "--video-dir"), str(video_dir))
    compare_modes = modes_of(video_dir, baseline, modes)
    writable_dir(save_dir, "--save-dir")
    failed = _run_fidelity(video_dir, baseline, compare_modes, save_dir, device, overwrite)
    click.echo(f"fidelity results: {save_dir}\n")
    click.echo(fidelity_report(collect(compare_modes, baseline, None, save_dir, None)))
    _fail_if(failed)


@click.command("run_vbench_eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--video-dir", type=click.Path(path_type=Path), default=Path("vbench_eval/videos"), show_default=True,
              help="Folder with one sub-folder of {prompt}-{i}.mp4 videos per mode.")
@click.option("--modes", multiple=True, help="Modes (comma-separated). Default: every folder.")
@click.option("--save-dir", type=click.Path(path_type=Path), default=Path("vbench_eval/vbench_scores"),
              show_default=True, help="Where {mode}/{dimension}_eval_results.json go.")
@click.option("--full-info", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="VBench_full_info.json. Default: the one inside the vbench wheel.")
@click.option("--dimensions", multiple=True, help="Dimensions (comma-separated). Default: all 16.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--overwrite", is_flag=True, help="Recompute dimensions whose result file exists.")
@click.option("--retry-failed", is_flag=True, help=RETRY_HELP)
def vbench_command(video_dir: Path, modes: tuple[str, ...], save_dir: Path, full_info: Path | None,
                   dimensions: tuple[str, ...], device: str, overwrite: bool, retry_failed: bool) -> None:
    """VBench on every mode and dimension (in VBench's own environment, created on first use)."""
    setup_logging()
    dims = _dimensions(dimensions)
    video_dir = videos_dir_of(video_dir, "--video-dir")
    existing = list_modes_of(video_dir, "--video-dir")
    chosen = split_values(modes) or existing
    missing = [m for m in chosen if m not in existing]
    if missing:
        raise click.BadParameter(f"mode folder(s) {', '.join(missing)} not in {video_dir}; folders there: "
                                 f"{', '.join(existing) or '(none)'}", param_hint="--modes")
    writable_dir(save_dir, "--save-dir")
    _run_vbench(video_dir, chosen, save_dir, dims, full_info, device, overwrite, False, retry_failed)
    click.echo(f"VBench results: {save_dir}")


@click.command("compare_results", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scores-dir", type=click.Path(path_type=Path), default=Path("vbench_eval/vbench_scores"),
              show_default=True, help="VBench results, one folder per mode.")
@click.option("--fidelity-dir", type=click.Path(path_type=Path), default=Path("vbench_eval/fidelity_metrics"),
              show_default=True, help="Fidelity results.")
@click.option("--gen-log-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of generation_log_*.json files, or the batch run's --output-dir or videos folder (its "
                   "logs/ is found). Default: vbench_eval/videos (the vbench_eval/ scripts' logs), vbench_eval/logs, "
                   "else logs/ beside the scores folder.")
@click.option("--output-json", type=click.Path(path_type=Path),
              default=Path("vbench_eval/all_comparison_results.json"), show_default=True,
              help="Combined results JSON; the CSV/Markdown tables and plots/ go beside it.")
@click.option("--baseline", default=None,
              help="Mode that speedups and fidelity are measured against. Default: the one mode (of --modes, else "
                   "of the results) whose name contains 'baseline'.")
@click.option("--modes", multiple=True,
              help="Modes in table order (comma-separated). Default: every mode with VBench or fidelity results.")
@click.pass_context
def compare_command(ctx: click.Context, scores_dir: Path, fidelity_dir: Path, gen_log_dir: Path | None,
                    output_json: Path, baseline: str | None, modes: tuple[str, ...]) -> None:
    """Comparison tables (CSV + Markdown), results JSON and plots from existing result files."""
    from genmo_teacache.eval.tables import read_fidelity_files
    from genmo_teacache.files import OutputPathError, check_output_file

    setup_logging()
    for option, folder in (("scores_dir", scores_dir), ("fidelity_dir", fidelity_dir)):
        given = ctx.get_parameter_source(option) != click.core.ParameterSource.DEFAULT
        if given and not folder.is_dir():
            raise click.BadParameter(f"{folder} does not exist: pass the folder the results were written to",
                                     param_hint="--" + option.replace("_", "-"))
    if not scores_dir.is_dir() and not fidelity_dir.is_dir():
        raise click.UsageError(f"no results to compare: neither {scores_dir} nor {fidelity_dir} exists; pass "
                               "--scores-dir and/or --fidelity-dir (the --save-dir of run_vbench_eval.py and of "
                               "run_fidelity_metrics.py)")
    chosen = split_values(modes)
    scored: set[str] = set()
    if scores_dir.is_dir():
        scored = {p.name for p in scores_dir.iterdir() if p.is_dir() and p.name != "logs"
                  and not p.name.startswith(".")}
    fidelity = read_fidelity_files(fidelity_dir)
    named = scored | {mode for mode, _ in fidelity} | {str(against) for _, against in fidelity if against}
    where = "--modes" if chosen else f"{scores_dir} and {fidelity_dir}"
    baseline = baseline_of(baseline, chosen or sorted(named), where)
    if not chosen:  # VBench results, and fidelity results against this baseline
        chosen = sorted((scored | {m for m, against in fidelity if against == baseline}) - {baseline})
    from genmo_teacache.output_layout import BATCH

    defaults = [Path("vbench_eval/videos"), Path("vbench_eval") / BATCH.logs, scores_dir.parent / BATCH.logs,
                scores_dir.parent.parent / BATCH.logs]
    log_dir, warnings = log_dir_of(gen_log_dir, defaults)
    try:
        check_output_file(output_json, "--output-json")
    except OutputPathError as err:
        raise click.BadParameter(str(err), param_hint="--output-json") from None
    _compare(baseline, chosen, scores_dir, fidelity_dir, log_dir, output_json.parent, output_json, [log_dir],
             warnings)
