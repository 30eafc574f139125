"""The threshold mini-experiment: a few prompts x (baseline + candidate cache configs of any methods), generated
through the batch machinery (so it is resumable, can be split over GPUs by hand and can run on Ray), then fidelity of
every candidate against the baseline (when ``genmo_teacache.eval.fidelity`` is installed), one table (with each
candidate's method) naming the best candidate by a chosen metric, and one Pareto plot of speedup against PSNR and
LPIPS with every method in its own colour and marker. The method of a mode comes from the registry
(:func:`genmo_teacache.caches.method_key`); the one method named here is TeaCache, whose ``two_phase`` schedules
are the default candidates (the reference experiment's c1-c4, :data:`REFERENCE_CANDIDATES`).

Outputs under ``<output-dir>``: the batch's files in its ``--layout`` (the reference's for
``vbench_eval/run_adaptive_threshold_experiment.py``: ``vbench_eval/videos_threshold_experiment/<mode>/``); the
baseline's folder is ``mochi_baseline`` and the default candidates' ``mochi_adaptive_c1`` .. ``c4``, as in the
reference experiment, so that its fidelity and compare commands take ``--video-dir <output-dir>`` as they are),
``fidelity/``
(the fidelity module's files), ``sweep_results.csv`` / ``sweep_results.md``, ``sweep_pareto.png``, and the chosen
candidate in
``best_config.json`` and ``best_modes.txt`` (the ``--modes`` value of the full batch run: baseline and best).
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import click

from genmo_teacache.batch.jobs import SEED_MAX
from genmo_teacache.batch.naming import FOLDER_SEPARATOR, mode_folder, split_folder
from genmo_teacache.batch.runner import BatchPlan
from genmo_teacache.batch.state import read_logs, summarize
from genmo_teacache.caches import is_baseline, method_key, parse_mode
from genmo_teacache.caches.teacache import DEFAULT_HIGH_STEPS, TeaCache
from genmo_teacache.files import atomic_path
from genmo_teacache.speed import split_mode
from genmo_teacache.speedup import noise_text

logger = logging.getLogger(__name__)

# The reference mini-experiment's adaptive (high, low) candidates.
REFERENCE_CANDIDATES: tuple[tuple[str, float, float], ...] = (
    ("c1", 0.08, 0.04),
    ("c2", 0.20, 0.10),
    ("c3", 0.12, 0.04),
    ("c4", 0.16, 0.10),
)
REFERENCE_STEPS = 64  # the reference's high phase: 34 of 64 steps
BASELINE = "mochi_baseline"  # the reference experiment's folder name
PREFIX = "mochi_"  # the default candidates' folders are named like the reference experiment's
BEST_CONFIG = "best_config.json"
BEST_MODES = "best_modes.txt"
PARETO_PLOT = "sweep_pareto.png"
FIDELITY_MODULE = "genmo_teacache.eval.fidelity"
METRICS = {"psnr": max, "ssim": max, "lpips": min, "speedup": max}
COLUMNS = ("label", "mode", "method", "speedup", "denoising_speedup", "ideal_speedup", "noise", "computed_fraction",
           "latency_s", "psnr", "ssim", "lpips", "videos")


def default_candidates(num_steps: int, high_steps: int | None = None) -> list[tuple[str, str]]:
    """The reference c1-c4 as (label, ``FOLDER=MODE``): their folders are the reference's ``mochi_adaptive_c1`` ..
    ``c4``; the high phase lasts ``high_steps`` steps (default 34 of 64, scaled to ``num_steps``)."""
    if high_steps is None:
        high_steps = max(1, DEFAULT_HIGH_STEPS * num_steps // REFERENCE_STEPS)
    return [(label, f"{PREFIX}adaptive_{label}{FOLDER_SEPARATOR}{PREFIX}"
                    f"{TeaCache.two_phase(high, low, high_steps).name}") for label, high, low in REFERENCE_CANDIDATES]


def parse_candidates(text: str, calibration: str | Path | None = None) -> list[tuple[str, str]]:
    """``"c1=adaptive_0.08_0.04,fixed_0.06"`` -> [("c1", "adaptive_0.08_0.04"), ("fixed_0.06", "fixed_0.06")].
    Modes of any method; ``calibration`` is the file for those that take one. Raises ValueError naming a bad mode
    (or one that needs a calibration file) or a repeated label."""
    out: list[tuple[str, str]] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        label, sep, mode = item.partition("=")
        label, mode = (label.strip(), mode.strip()) if sep else (item, item)
        base, speed = split_mode(mode)  # MODE@SPEED: the candidate's own speed options (baseline@fast is one)
        parse_mode(base, calibration)  # raises naming a bad mode
        if is_baseline(base) and speed is None:
            raise ValueError(f"candidate {item!r} is the baseline, which the sweep always runs")
        if label in {lbl for lbl, _ in out} or mode in {m for _, m in out}:
            raise ValueError(f"candidate {item!r} is given twice")
        out.append((label, mode))
    if not out:
        raise ValueError(f"no candidates in {text!r}")
    return out


def fidelity_available() -> bool:
    try:
        return importlib.util.find_spec(FIDELITY_MODULE) is not None
    except ModuleNotFoundError:
        return False


def compute_fidelity(plan: BatchPlan, modes: list[str], device: str | None, baseline: str = BASELINE
                     ) -> tuple[dict[str, Any], str | None]:
    """({mode folder: fidelity summary}, why it is missing or None). Pairs measured before on the same videos are
    reused."""
    if not fidelity_available():
        return {}, f"{FIDELITY_MODULE} is not installed: no PSNR / SSIM / LPIPS"
    fidelity = importlib.import_module(FIDELITY_MODULE)
    try:
        results = fidelity.run_fidelity(plan.layout.videos_dir(plan.root), baseline, [mode_folder(m) for m in modes],
                                        plan.root / "fidelity", device=device or "auto")
    except Exception as e:  # e.g. LPIPS weights that cannot be fetched: keep the speedup table
        logger.exception("fidelity failed")
        return {}, f"fidelity failed: {type(e).__name__}: {e}"
    return results, None


def _mean(result: dict[str, Any] | None, metric: str) -> float:
    value = (result or {}).get(metric, {})
    value = value.get("mean") if isinstance(value, dict) else value
    return float(value) if isinstance(value, int | float) else math.nan


def sweep_rows(runs: list[dict[str, Any]], candidates: list[tuple[str, str]],
               fidelity: dict[str, Any], baseline: str = BASELINE) -> list[dict[str, Any]]:
    """One row per candidate (baseline first, labelled ``baseline``) from log runs and fidelity results (both by
    the candidate's folder: its mode, or FOLDER of ``FOLDER=MODE``)."""
    folders = [baseline] + [mode_folder(m) for _, m in candidates]
    timing = {r["mode"]: r for r in summarize(runs, folders, baseline=baseline)}
    rows = []
    for label, mode in [("baseline", baseline)] + candidates:
        folder, spec = split_folder(mode)
        t = timing.get(folder, {})
        rows.append({
            "label": label, "mode": mode, "method": method_key(spec or mode) or "",
            "speedup": t.get("speedup", math.nan), "denoising_speedup": t.get("denoising_speedup", math.nan),
            "ideal_speedup": t.get("ideal_speedup", math.nan), "noise": t.get("noise", []),
            "skipped_nothing": t.get("skipped_nothing", False),
            "computed_fraction": t.get("computed_fraction", math.nan),
            "latency_s": t.get("latency_s", math.nan), "videos": t.get("videos", 0),
            **{m: _mean(fidelity.get(folder), m) for m in ("psnr", "ssim", "lpips")},
        })
    return rows


def eligible(row: dict[str, Any], metric: str) -> bool:
    """Whether a candidate can be the best by ``metric``: it skipped something (a candidate that computed every
    forward is the baseline again), and has a value for ``metric`` that is not noise."""
    return not row.get("skipped_nothing") and not math.isnan(row[metric]) and metric not in row.get("noise", ())


def _tie_speed(row: dict[str, Any]) -> float:
    """The speedup that breaks a tie: the measured one, or for noise the ideal (the most it can be)."""
    value = row["ideal_speedup"] if "speedup" in row.get("noise", ()) else row["speedup"]
    return -math.inf if math.isnan(value) else value


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The candidate (never the baseline, the first row) that is best by ``metric`` among the :func:`eligible`
    ones; a tie (e.g. PSNR 100 dB: identical videos) goes to the larger speedup. None if none is eligible."""
    scored = [r for r in rows[1:] if eligible(r, metric)]
    sign = 1.0 if METRICS[metric] is max else -1.0
    return max(scored, key=lambda r: (sign * r[metric], _tie_speed(r))) if scored else None


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The table as CSV; ``noise`` names the speedup columns whose value is above the ideal (not a result)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_fmt(r[c], 6) for c in COLUMNS])
    return buf.getvalue()


def to_markdown(rows: list[dict[str, Any]], metric: str, best: dict[str, Any] | None, note: str | None) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [noise_text(r[c], r["ideal_speedup"]) if c in r["noise"] else _fmt(r[c]) for c in COLUMNS]
        if best is not None and r is best:
            cells[0] = f"**{cells[0]}** (best)"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if best is None:
        valued = any(not math.isnan(r[metric]) for r in rows[1:])
        lines.append(f"No candidate has a value for {metric}" + (" that is not noise, from a candidate that skipped "
                                                                 "something" if valued else "")
                     + (f" ({note})." if note else "."))
    else:
        tied = [r["label"] for r in rows[1:] if r is not best and eligible(r, metric) and r[metric] == best[metric]]
        tie = f" (tied with {', '.join(tied)}; the larger speedup wins)" if tied else ""
        lines.append(f"Best by {metric}: {best['label']} ({best['mode']}), {metric} = {_fmt(best[metric])}{tie}.")
    if any(r["noise"] for r in rows):
        lines.append("Noise: a speedup above the ideal of the DiT forwards its candidate skipped (the most it can be) "
                     "is not a result: the times varied more than what was skipped saved.")
    skipped_nothing = [r["label"] for r in rows[1:] if r.get("skipped_nothing")]
    if skipped_nothing:
        lines.append(f"Not candidates for best (they skipped nothing): {', '.join(skipped_nothing)}.")
    if note:
        lines.append(f"Note: {note}.")
    return "\n".join(lines) + "\n"


def write_best(root: Path, rows: list[dict[str, Any]], metric: str, settings: Any,
               model_dir: str | None = None) -> Path | None:
    """``best_config.json`` (the best candidate, its numbers, and the ``--modes`` value of a full batch run with it:
    baseline and best, by mode: a folder of its own) and ``best_modes.txt`` (that value alone, for ``--modes "$(cat
    best_modes.txt)"``); its batch command carries ``model_dir`` where the sweep was given one. None, and nothing
    written, when no candidate has a value for ``metric``."""
    best = best_row(rows, metric)
    if best is None:
        return None
    baseline = rows[0]["mode"]
    modes = f"{baseline},{split_folder(best['mode'])[1] or best['mode']}"
    data = {
        "metric": metric, "label": best["label"], "mode": best["mode"], "baseline": baseline,
        **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in best.items()
           if k not in ("label", "mode")},
        "num_steps": getattr(settings, "num_steps", None),
        "modes": modes,
        "batch_command": batch_command_line(modes, model_dir),
    }
    with atomic_path(root / BEST_CONFIG) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    with atomic_path(root / BEST_MODES) as tmp:
        tmp.write_text(modes + "\n")
    return root / BEST_CONFIG


def sweep_options(f: Any) -> Any:
    """The reference mini-experiment's options, besides those the sweep shares with the batch command."""
    for option in reversed([
        click.option("--seed", type=click.IntRange(0, SEED_MAX), default=None,
                     help="Seed of the videos (the reference script's name for --generation-seed)."),
        click.option("--start-idx", "--start_idx", "start_idx", type=click.IntRange(min=0), default=0,
                     show_default=True, help="First prompt of the sweep (index into the prompt list)."),
        click.option("--end-idx", "--end_idx", "end_idx", type=click.IntRange(min=1), default=None,
                     help="End of the prompt range, exclusive (default: --start-idx + --num-prompts). Prompt "
                          "indices, not the reference's job indices: split the jobs with --gpu-id/--total-gpus."),
        click.option("--gpu-id", "--gpu_id", "gpu_id", type=click.IntRange(min=0), default=None,
                     help="With --total-gpus: run only this share of the cost-balanced split (one process per "
                          "GPU); the process that finds every video done writes the table."),
        click.option("--total-gpus", "--total_gpus", "total_gpus", type=click.IntRange(min=1), default=1,
                     show_default=True, help="Number of shares for a split by hand (see --gpu-id)."),
        click.option("--baseline", default=BASELINE, show_default=True,
                     help="Folder (mode name) of the uncached baseline; any name that means no caching."),
    ]):
        f = option(f)
    return f


def check_sweep_options(o: dict[str, Any]) -> int:
    """Validate the options of :func:`sweep_options` (before any model loads; the shares are checked as batch's);
    returns the generation seed."""
    seed = o["generation_seed"]
    if o["seed"] is not None:
        if seed not in (0, o["seed"]):
            raise click.BadParameter(f"--seed {o['seed']} and --generation-seed {seed} disagree: give one of them",
                                     param_hint="--seed")
        seed = o["seed"]
    if not is_baseline(o["baseline"]):
        raise click.BadParameter(f"{o['baseline']!r} is not the uncached baseline: use e.g. mochi_baseline",
                                 param_hint="--baseline")
    return seed


def plot_rows(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    """The sweep's Pareto plot: every candidate's end-to-end speedup against its PSNR and LPIPS, each method in its
    own colour and marker (:func:`genmo_teacache.eval.plots.plot_pareto`, drawn from the table's rows); a speedup
    that is noise is not drawn but named on the figure. None when nothing can be drawn (no fidelity, or matplotlib
    missing)."""
    try:
        from genmo_teacache.eval import plots, scoring
        from genmo_teacache.eval.tables import Comparison, ModeResults
    except ImportError as e:  # the evaluation extras are not installed
        logger.warning("no sweep plot: %s", e)
        return None
    results = {}
    for r in rows:
        fidelity = {m: {"mean": r[m]} for m in ("psnr", "ssim", "lpips") if not math.isnan(r[m])}
        noisy = "speedup" in r["noise"]
        speedup = {"end_to_end": r["speedup"]} if not (math.isnan(r["speedup"]) or noisy) else {}
        results[r["mode"]] = ModeResults(mode=r["mode"], raw={}, aggregate=scoring.aggregate({}),
                                         fidelity=fidelity or None, speedup=speedup,
                                         noise={"end_to_end": r["speedup"]} if noisy else {},
                                         ideal_speedup=None if math.isnan(r["ideal_speedup"]) else r["ideal_speedup"])
    comp = Comparison(baseline=rows[0]["mode"], modes=[r["mode"] for r in rows], results=results)
    labels = {r["mode"]: r["label"] for r in rows}
    return plots.plot_pareto(comp, out_png, labels, title="Sweep: speedup against fidelity, every method")


def batch_command_line(modes: str, model_dir: str | None = None) -> str:
    """The full batch run with the chosen modes (on the sweep's weights, where it was given them)."""
    return "genmo-teacache batch" + (f" --model_dir {model_dir}" if model_dir else "") + f" --modes {modes}"


def run_sweep(plan: BatchPlan, candidates: list[tuple[str, str]], metric: str,
              device: str | None = None, baseline: str = BASELINE,
              model_dir: str | None = None) -> dict[str, Any] | None:
    """After generation: fidelity, the table (CSV + Markdown, printed) and the best candidate's files; returns the
    best row (or None). With videos of the sweep still missing (other shares of a split), it only says so."""
    root = plan.root
    missing = [job for job in plan.all_jobs if not job.video_path(root).exists()]
    if missing:
        click.echo(f"\n{len(missing)} video(s) of the sweep are missing (other shares of --gpu-id/--total-gpus, or "
                   "failed jobs): fidelity and the table are written when every video exists; run the same command "
                   "without --gpu-id once all shares are done.")
        return None
    wanted = {(job.mode, job.prompt, job.sample) for job in plan.all_jobs}
    runs = [r for r in read_logs(root) if (r.get("mode"), r.get("prompt"), r.get("sample", 0)) in wanted]
    fidelity, note = compute_fidelity(plan, [baseline] + [m for _, m in candidates], device, baseline)
    rows = sweep_rows(runs, candidates, fidelity, baseline)
    best = best_row(rows, metric)
    markdown = to_markdown(rows, metric, best, note)
    for name, text in (("sweep_results.csv", to_csv(rows)), ("sweep_results.md", markdown)):
        with atomic_path(root / name) as tmp:
            tmp.write_text(text)
    best_file = write_best(root, rows, metric, plan.settings, model_dir)
    plot = plot_rows(rows, root / PARETO_PLOT)
    tail = f"\nPareto plot: {plot}" if plot is not None else ""
    if best_file is not None:
        modes = (root / BEST_MODES).read_text().strip()
        tail += (f"\nBest configuration: {best_file}; full run with it: {batch_command_line(modes, model_dir)} "
                 f"(or --modes \"$(cat {root / BEST_MODES})\")")
    click.echo("\n" + markdown + f"Tables: {root / 'sweep_results.csv'}, {root / 'sweep_results.md'}" + tail)
    if best is None:  # the sweep chose nothing: never a silent success
        raise click.ClickException(f"no candidate has a value for {metric}" + (f": {note}" if note else "")
                                   + f"; see {root / 'sweep_results.md'} and the results in {root / 'fidelity'}")
    return best
