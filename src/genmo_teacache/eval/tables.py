"""Comparison tables: VBench scores, fidelity, a compact summary, and the combined results JSON.

Inputs are only files: VBench result folders (``{scores_dir}/{mode}/{dim}_eval_results.json``) with the driver's
``vbench_status.json``, fidelity results (``{fidelity_dir}/{mode}_vs_{baseline}.json`` / ``all_fidelity_results.json``)
and generation logs. Columns and number formats are those of the reference comparison script:

- ``vbench_scores_table.csv``: Mode, the 16 raw dimension scores (``.4f``), Quality/Semantic/Total Score (``.2f%``),
  Latency (``.0f`` s). A dimension that was tried and could not run reads ``n/a`` (the reason is in
  ``vbench_status.json`` and under the Markdown table); one never tried is empty.
- ``fidelity_table.csv``: Mode, PSNR, SSIM, LPIPS (means, ``.4f``), Latency; ``—`` where there is nothing.
- ``summary_table.csv``: Mode, Speedup (end-to-end, ``.2f`` x), Latency (s), VBench Total, PSNR, SSIM, LPIPS, and,
  when the logs have denoising timings, Denoising (s) and Denoising Speedup. A speedup above the ideal of the DiT
  forwards the mode skipped reads ``noise (3.68x > ideal 2.00x)``: it is not a result (:mod:`genmo_teacache.speedup`).
- ``results_table.csv``: one row per metric, one column per mode (the reference's older layout).
- ``all_comparison_results.json``: per mode ``vbench_raw``, ``vbench_quality_score``, ``vbench_semantic_score``,
  ``vbench_total_score``, ``fidelity``, ``timing`` as the reference writes them, plus ``speedup``, ``speedup_noise``
  (the measured speedups above the ideal, flagged apart), ``ideal_speedup`` and ``vbench_unavailable``
  (dimension -> reason) where there is something to say.

Each CSV also gets a Markdown twin (``.md``). Speedups are always taken against the baseline the user names.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genmo_teacache.eval import scoring
from genmo_teacache.eval.timing import ModeTiming, load_timings, shared_videos, speedups
from genmo_teacache.eval.vbench_runner import load_status, unavailable_dimensions
from genmo_teacache.files import atomic_path, write_json
from genmo_teacache.speedup import noise_text

logger = logging.getLogger(__name__)

DASH = "\u2014"  # the reference's placeholder for "no value"
NA = "n/a"
FIDELITY_METRICS = ("psnr", "ssim", "lpips")
SPEEDUP_KEYS = ("end_to_end", "denoising")

VBENCH_TABLE = "vbench_scores_table.csv"
FIDELITY_TABLE = "fidelity_table.csv"
SUMMARY_TABLE = "summary_table.csv"
RESULTS_TABLE = "results_table.csv"
COMPARISON_JSON = "all_comparison_results.json"


@dataclass
class ModeResults:
    """Everything known about one mode, read from files."""

    mode: str
    raw: dict[str, float]
    aggregate: scoring.VBenchAggregate
    fidelity: dict[str, Any] | None = None
    timing: ModeTiming | None = None
    speedup: dict[str, float] = field(default_factory=dict)  # kind ("end_to_end", "denoising") -> x, noise left out
    noise: dict[str, float] = field(default_factory=dict)  # kind -> a measured speedup above the ideal: not a result
    ideal_speedup: float | None = None  # the most a speedup can be, from the DiT forwards skipped
    unavailable: dict[str, str] = field(default_factory=dict)  # dimension -> why it could not run
    vbench_videos: int | None = None  # videos its VBench scores cover (None: the result files do not list them)
    left_out: dict[str, dict[str, str]] = field(default_factory=dict)  # video -> {dimension: why not compared}


@dataclass
class Comparison:
    baseline: str
    modes: list[str]  # baseline first
    results: dict[str, ModeResults]
    warnings: list[str] = field(default_factory=list)  # what makes columns empty that the user should fix
    notes: list[str] = field(default_factory=list)  # what the numbers cover, where the modes' videos differ


def _read_result(path: Path) -> Any:
    """A result file's JSON, or None (with a warning naming it) when it cannot be read: a broken file costs its own
    numbers, never the table."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("skipping unreadable result file %s (%s: %s): delete it, or recompute it with --overwrite",
                       path, type(err).__name__, err)
        return None


def read_fidelity_files(fidelity_dir: str | os.PathLike) -> dict[tuple[str, str | None], dict[str, Any]]:
    """``{(mode, baseline): fidelity result}`` of every result in the folder, from ``all_fidelity_results.json`` and
    the per-mode files ``{mode}_vs_{baseline}.json`` (which win): keyed by what each was measured against, so that
    results against several baselines in one folder never hide each other."""
    fidelity_dir = Path(fidelity_dir)
    found: dict[tuple[str, str | None], dict[str, Any]] = {}
    combined = fidelity_dir / "all_fidelity_results.json"
    data = _read_result(combined) if combined.is_file() else None
    for mode, result in (data.items() if isinstance(data, dict) else ()):
        if isinstance(result, dict):
            found[(str(result.get("mode", mode)), result.get("baseline"))] = result
    if fidelity_dir.is_dir():
        for path in sorted(fidelity_dir.glob("*_vs_*.json")):
            if path.name.startswith("."):
                continue
            result = _read_result(path)
            if isinstance(result, dict) and "mode" in result:
                found[(result["mode"], result.get("baseline"))] = result
    return found


def load_fidelity(fidelity_dir: str | os.PathLike, baseline: str) -> dict[str, dict[str, Any]]:
    """``{mode: fidelity result}`` measured against ``baseline`` (:func:`read_fidelity_files`)."""
    found = read_fidelity_files(fidelity_dir)
    out = {mode: result for (mode, against), result in found.items() if against == baseline}
    others = sorted({mode for (mode, against) in found if against != baseline} - set(out) - {baseline})
    if others:
        logger.info("fidelity results of %s in %s are against other baselines than %s: not shown", ", ".join(others),
                    fidelity_dir, baseline)
    return out


def _not_scored(mode: str, dim: str, video: str, status: dict[str, Any], name: str) -> str:
    """``name`` plus why ``mode`` has no score for ``video`` in ``dim``, when the driver recorded it."""
    why = (status.get(mode, {}).get(dim, {}).get("left_out") or {}).get(video)
    return f"{name} ({why})" if why else name


def compare_vbench(modes: Sequence[str], scores_dir: str | os.PathLike, status: dict[str, Any]
                   ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]], dict[str, set[str]],
                              dict[str, dict[str, dict[str, str]]]]:
    """Per dimension, every mode's score on the videos all modes with a result for it have scores for.

    VBench's means are kept where a mode's videos are exactly those; otherwise the mean is taken again over the
    shared videos from the per-video scores (:func:`scoring.mean_over`), or the dimension is ``n/a`` for that mode
    when that is not possible. Returns (raw scores, unavailable reasons, videos covered, left out: {mode: {video:
    {dimension: why}}})."""
    results = {m: scoring.load_dimension_results(Path(scores_dir) / m) for m in modes}
    raw: dict[str, dict[str, float]] = {m: {} for m in modes}
    unavailable: dict[str, dict[str, str]] = {m: {} for m in modes}
    covered: dict[str, set[str]] = {m: set() for m in modes}
    left_out: dict[str, dict[str, dict[str, str]]] = {m: {} for m in modes}
    dims = [d for d in scoring.ALL_DIMENSIONS if any(d in r for r in results.values())]
    dims += sorted({d for r in results.values() for d in r} - set(dims))
    for dim in dims:
        having = [m for m in modes if dim in results[m]]
        sets = {m: set(results[m][dim].per_video or ()) for m in having}
        if any(results[m][dim].per_video is None for m in having):
            for m in having:  # the files do not say which videos were scored: VBench's means as they are
                raw[m][dim] = results[m][dim].mean
            continue
        common = set.intersection(*sets.values()) if sets else set()
        every = set.union(*sets.values()) if sets else set()
        for m in having:
            result = results[m][dim]
            if sets[m] == common:
                raw[m][dim] = result.mean
            else:
                value = scoring.mean_over(result, common)
                if value is None:
                    unavailable[m][dim] = (f"scored on {len(sets[m])} videos, other modes on fewer; its per-video "
                                           "scores do not give VBench's mean, so it cannot be compared on the "
                                           f"{len(common)} they share" if common else
                                           "no video has a score in every mode compared")
                    continue
                raw[m][dim] = value
            covered[m] |= common
            for video in sorted(every - common):
                if video in sets[m]:
                    lacking = [_not_scored(o, dim, video, status, o) for o in having if video not in sets[o]]
                    why = "no score in " + ", ".join(lacking)
                else:
                    why = _not_scored(m, dim, video, status, "no score here")
                left_out[m].setdefault(video, {})[dim] = why
    for m in modes:
        order = {d: i for i, d in enumerate(dims)}
        raw[m] = dict(sorted(raw[m].items(), key=lambda kv: order[kv[0]]))
    return raw, unavailable, covered, left_out


def collect(
    modes: Sequence[str],
    baseline: str,
    scores_dir: str | os.PathLike | None,
    fidelity_dir: str | os.PathLike | None,
    log_dir: str | os.PathLike | None,
) -> Comparison:
    """Read every result file for ``baseline`` and ``modes`` (the baseline is put first if not listed). VBench scores
    are compared on the videos all modes have (:func:`compare_vbench`), speedups on the videos both the mode and
    the baseline logged."""
    ordered = [baseline] + [m for m in modes if m != baseline]
    fidelity = load_fidelity(fidelity_dir, baseline) if fidelity_dir is not None else {}
    timings = load_timings(log_dir) if log_dir is not None else {}
    ups = speedups(timings, baseline)
    warnings, notes = [], []
    if log_dir is not None and not timings:
        warnings.append(f"no generation log (generation_log_*.json) in {log_dir}: the Latency and Speedup columns "
                        "are empty")
    elif timings and baseline not in timings:
        warnings.append(f"the generation logs in {log_dir} have no run of the baseline {baseline} (modes logged: "
                        f"{', '.join(sorted(timings))}): the Speedup column is empty")
    elif timings:
        for mode in ordered[1:]:
            if mode in timings:
                shared, own, base = shared_videos(timings, baseline, mode)
                if shared != own or shared != base:
                    notes.append(f"speedup of {mode} over the {shared} video(s) both it and the baseline logged "
                                 f"({mode}: {own}, {baseline}: {base})")
    status = load_status(scores_dir) if scores_dir is not None else {}
    if scores_dir is not None:
        raw, unavailable, covered, left_out = compare_vbench(ordered, scores_dir, status)
    else:
        raw, unavailable, covered, left_out = ({m: {} for m in ordered}, {m: {} for m in ordered},
                                               {m: set() for m in ordered}, {m: {} for m in ordered})
    results = {}
    for mode in ordered:
        results[mode] = ModeResults(
            mode=mode, raw=raw[mode], aggregate=scoring.aggregate(raw[mode]), fidelity=fidelity.get(mode),
            timing=timings.get(mode), **_split_speedups(ups.get(mode, {})),
            unavailable={**unavailable_dimensions(status.get(mode, {}), raw[mode]), **unavailable[mode]},
            vbench_videos=len(covered[mode]) if covered[mode] else None, left_out=left_out[mode],
        )
    return Comparison(baseline=baseline, modes=ordered, results=results, warnings=warnings, notes=notes)


def _split_speedups(entry: Mapping[str, float]) -> dict[str, Any]:
    """A :func:`speedups` entry as ModeResults' fields: the speedups, those that are noise, the ideal."""
    return dict(speedup={k: entry[k] for k in SPEEDUP_KEYS if k in entry},
                noise={k: entry[f"{k}_noise"] for k in SPEEDUP_KEYS if f"{k}_noise" in entry},
                ideal_speedup=entry.get("ideal"))


# ---------------------------------------------------------------- formatting


def speedup_text(r: ModeResults, kind: str) -> str:
    """A speedup as the tables show it: ``2.10x``, the noise flag (a measured speedup above its ideal), or a dash."""
    if kind in r.speedup:
        return f"{r.speedup[kind]:.2f}x"
    if kind in r.noise:
        return noise_text(r.noise[kind], r.ideal_speedup)
    return DASH


def _pct(value: float | None, missing: str = "") -> str:
    return f"{value * 100:.2f}%" if value is not None else missing


def _latency(timing: ModeTiming | None) -> str:
    return f"{timing.avg_time:.0f}s" if timing is not None else DASH


def _fid(fid: dict[str, Any] | None, metric: str, missing: str = DASH) -> str:
    if fid and metric in fid and fid[metric].get("mean") is not None:
        return f"{fid[metric]['mean']:.4f}"
    return missing


def _has_denoising(comp: Comparison) -> bool:
    return any(r.timing is not None and r.timing.avg_denoising_time is not None for r in comp.results.values())


def vbench_rows(comp: Comparison, labels: Mapping[str, str]) -> list[list[str]]:
    rows = [["Mode", *scoring.ALL_DIMENSIONS, "Quality Score", "Semantic Score", "Total Score", "Latency"]]
    for mode in comp.modes:
        r = comp.results[mode]
        row = [labels.get(mode, mode)]
        for dim in scoring.ALL_DIMENSIONS:
            if dim in r.raw:
                row.append(f"{r.raw[dim]:.4f}")
            else:
                row.append(NA if dim in r.unavailable else "")
        agg = r.aggregate
        row += [_pct(agg.quality), _pct(agg.semantic), _pct(agg.total), _latency(r.timing)]
        rows.append(row)
    return rows


def fidelity_rows(comp: Comparison, labels: Mapping[str, str]) -> list[list[str]]:
    rows = [["Mode", "PSNR", "SSIM", "LPIPS", "Latency"]]
    for mode in comp.modes:
        r = comp.results[mode]
        rows.append([labels.get(mode, mode), *(_fid(r.fidelity, m) for m in FIDELITY_METRICS), _latency(r.timing)])
    return rows


def summary_rows(comp: Comparison, labels: Mapping[str, str]) -> list[list[str]]:
    denoise = _has_denoising(comp)
    header = ["Mode", "Speedup", "Latency (s)", "VBench Total", "PSNR", "SSIM", "LPIPS"]
    if denoise:
        header += ["Denoising (s)", "Denoising Speedup"]
    rows = [header]
    for mode in comp.modes:
        r = comp.results[mode]
        row = [labels.get(mode, mode), speedup_text(r, "end_to_end"), _latency(r.timing),
               _pct(r.aggregate.total, DASH), *(_fid(r.fidelity, m) for m in FIDELITY_METRICS)]
        if denoise:
            t = r.timing
            row.append(f"{t.avg_denoising_time:.0f}s" if t is not None and t.avg_denoising_time is not None else DASH)
            row.append(speedup_text(r, "denoising"))
        rows.append(row)
    return rows


def results_rows(comp: Comparison, labels: Mapping[str, str]) -> list[list[str]]:
    """Metric rows x mode columns (the reference's ``results_table.csv``)."""
    res = [comp.results[m] for m in comp.modes]
    rows = [["metric", *(labels.get(m, m) for m in comp.modes)]]
    dims = sorted({d for r in res for d in r.raw} | {d for r in res for d in r.unavailable})
    for dim in dims:
        rows.append([dim, *(f"{r.raw[dim]:.4f}" if dim in r.raw else (NA if dim in r.unavailable else "")
                            for r in res)])
    if any(r.raw for r in res):
        for key in ("quality", "semantic", "total"):
            vals = [getattr(r.aggregate, key) for r in res]
            rows.append([f"{key}_score", *(f"{v:.4f}" if v is not None else "" for v in vals)])
    if any(r.fidelity for r in res):
        for metric in FIDELITY_METRICS:
            rows.append([f"fidelity_{metric}", *(_fid(r.fidelity, metric, "") for r in res)])
    if any(r.timing for r in res):
        rows.append(["avg_time_sec", *(f"{r.timing.avg_time:.1f}" if r.timing else "" for r in res)])
    if any(r.timing is not None and r.timing.avg_denoising_time is not None for r in res):
        rows.append(["avg_denoising_sec", *(f"{r.timing.avg_denoising_time:.1f}" if r.timing is not None
                                            and r.timing.avg_denoising_time is not None else "" for r in res)])
    return rows


def comparison_json(comp: Comparison) -> dict[str, Any]:
    """The reference ``all_comparison_results.json`` content (modes without any result are left out)."""
    out: dict[str, Any] = {}
    for mode in comp.modes:
        r = comp.results[mode]
        entry: dict[str, Any] = {}
        if r.raw:
            entry["vbench_raw"] = dict(r.raw)
            entry["vbench_quality_score"] = r.aggregate.quality
            entry["vbench_semantic_score"] = r.aggregate.semantic
            entry["vbench_total_score"] = r.aggregate.total
        if r.unavailable:
            entry["vbench_unavailable"] = dict(r.unavailable)
        if r.fidelity:
            entry["fidelity"] = r.fidelity
        if r.timing is not None:
            entry["timing"] = r.timing.to_dict()
        if r.speedup:
            entry["speedup"] = dict(r.speedup)
        if r.noise:  # measured above the ideal: flagged, not a result
            entry["speedup_noise"] = dict(r.noise)
        if r.ideal_speedup is not None:
            entry["ideal_speedup"] = r.ideal_speedup
        if r.vbench_videos is not None:
            entry["vbench_videos"] = r.vbench_videos
        if r.left_out:
            entry["vbench_left_out"] = {video: dict(dims) for video, dims in r.left_out.items()}
        if entry:
            out[mode] = entry
    return out


# ---------------------------------------------------------------- writing


def write_csv(path: str | os.PathLike, rows: Sequence[Sequence[str]]) -> Path:
    """CSV as Python's csv module writes it by default (``\\r\\n`` line ends, as the reference files), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    return path


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell if cell != "" else " " for cell in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _join(items: Sequence[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def na_lines(comp: Comparison, labels: Mapping[str, str] | None = None) -> list[str]:
    """Each reason for an ``n/a`` once, with the modes and dimensions it applies to."""
    labels = labels or {}
    by_reason: dict[str, dict[str, list[str]]] = {}
    for mode in comp.modes:
        for dim, reason in comp.results[mode].unavailable.items():
            by_reason.setdefault(reason, {}).setdefault(labels.get(mode, mode), []).append(dim)
    lines = []
    for reason, modes in by_reason.items():
        groups: dict[tuple[str, ...], list[str]] = {}
        for mode, dims in modes.items():
            groups.setdefault(tuple(dims), []).append(mode)
        where = "; ".join(f"{_join(ms)} / {_join(list(dims))}" for dims, ms in groups.items())
        lines.append(f"- {NA}: {where}: {reason}")
    return lines


def left_out_lines(comp: Comparison, labels: Mapping[str, str] | None = None) -> list[str]:
    """Per mode and reason, the videos its VBench scores leave out (as not every mode has them); the per-dimension
    detail is in the results JSON (``vbench_left_out``)."""
    labels = labels or {}
    lines = []
    for mode in comp.modes:
        grouped: dict[str, tuple[list[str], list[str]]] = {}
        for video, dims in comp.results[mode].left_out.items():
            for dim, why in dims.items():
                videos, dim_list = grouped.setdefault(why, ([], []))
                if video not in videos:
                    videos.append(video)
                if dim not in dim_list:
                    dim_list.append(dim)
        for why, (videos, dims) in grouped.items():
            lines.append(f"- {labels.get(mode, mode)}: {_join(videos, 4)} left out of {_join(dims)}: {why}")
    return lines


def _section(title: str, lines: Sequence[str]) -> str:
    return f"\n{title}\n\n" + "\n".join(lines) + "\n" if lines else ""


def _notes(comp: Comparison, labels: Mapping[str, str]) -> str:
    return (_section("Dimensions that could not run or be compared (scores average only the dimensions present):",
                     na_lines(comp, labels))
            + _section("Videos not compared (modes are compared on the videos they all have):",
                       left_out_lines(comp, labels)))


def console_report(comp: Comparison, labels: Mapping[str, str] | None = None) -> str:
    """What the commands print last: the summary table (with the videos each mode's numbers cover) and the notes
    that explain its empty or ``n/a`` cells, each reason once."""
    labels = dict(labels or {})
    rows = markdown_rows(comp, SUMMARY_TABLE, summary_rows(comp, labels))
    return (f"Summary (speedups against {labels.get(comp.baseline, comp.baseline)}):\n\n" + markdown_table(rows)
            + _notes(comp, labels) + _fidelity_notes(comp, labels)
            + _section("Speedups:", [f"- {n}" for n in comp.notes] + noise_lines(comp, labels)))


def fidelity_report(comp: Comparison) -> str:
    """What run_fidelity_metrics prints last: the fidelity table with the videos compared, and those left out."""
    rows = [row[:4] + row[5:] for row in markdown_rows(comp, FIDELITY_TABLE, fidelity_rows(comp, {}))]  # no Latency
    return f"Fidelity against {comp.baseline}:\n\n" + markdown_table(rows) + _fidelity_notes(comp, {})


def noise_lines(comp: Comparison, labels: Mapping[str, str]) -> list[str]:
    """One line per mode whose measured speedup is above the ideal of the forwards it skipped."""
    return [f"- {labels.get(m, m)}: " + ", ".join(f"{k.replace('_', '-')} {v:.2f}x" for k, v in r.noise.items())
            + f" measured, above the ideal {r.ideal_speedup:.2f}x of the DiT forwards it skipped (the most it can "
            "be): noise (the times varied more than what was skipped saved), not a result"
            for m in comp.modes if (r := comp.results[m]).noise]


def _summary_notes(comp: Comparison, labels: Mapping[str, str]) -> str:
    return (_notes(comp, labels) + _fidelity_notes(comp, labels)
            + _section("Speedups:", [f"- {n}" for n in comp.notes] + noise_lines(comp, labels))
            + _section("Warnings:", [f"- {w}" for w in comp.warnings]))


def _fidelity_notes(comp: Comparison, labels: Mapping[str, str]) -> str:
    lines = []
    for mode in comp.modes:
        fid = comp.results[mode].fidelity or {}
        problems = fid.get("problems") or []
        if problems:
            shown = "; ".join(f"{p.get('video')} ({p.get('reason')})" for p in problems[:5])
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            lines.append(f"- {labels.get(mode, mode)}: {fid.get('num_videos')} videos compared, {len(problems)} left "
                         f"out: {shown}{more}")
    return _section("Videos without a comparable partner (see the fidelity result files):", lines)


def _with_column(rows: Sequence[Sequence[str]], name: str, values: Sequence[str]) -> list[list[str]]:
    """``rows`` (header first) with one more column; for the Markdown tables, whose CSV twins keep the reference's
    columns."""
    return [[*rows[0], name]] + [[*row, value] for row, value in zip(rows[1:], values, strict=True)]


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) else DASH


def markdown_rows(comp: Comparison, name: str, rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """The Markdown version of a CSV table: the videos each mode's numbers cover as extra columns."""
    vbench = [_count(comp.results[m].vbench_videos) for m in comp.modes]
    fidelity = [_count((comp.results[m].fidelity or {}).get("num_videos")) for m in comp.modes]
    if name == VBENCH_TABLE:
        return _with_column(rows, "Videos", vbench)
    if name == FIDELITY_TABLE:
        return _with_column(rows, "Videos", fidelity)
    if name == SUMMARY_TABLE:
        return _with_column(_with_column(rows, "VBench videos", vbench), "Fidelity videos", fidelity)
    return [list(r) for r in rows]


def write_markdown(path: str | os.PathLike, title: str, rows: Sequence[Sequence[str]], notes: str = "") -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(f"# {title}\n\n" + markdown_table(rows) + notes, encoding="utf-8")
    return path


def write_tables(
    comp: Comparison,
    out_dir: str | os.PathLike,
    output_json: str | os.PathLike | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write the four CSV tables, their Markdown twins and the results JSON. Returns name -> path."""
    out_dir = Path(out_dir)
    labels = dict(labels or {})
    output_json = Path(output_json) if output_json is not None else out_dir / COMPARISON_JSON
    notes = _notes(comp, labels)
    tables = {
        VBENCH_TABLE: ("VBench scores (higher is better)", vbench_rows(comp, labels), notes),
        FIDELITY_TABLE: (f"Fidelity against {labels.get(comp.baseline, comp.baseline)} "
                         "(higher PSNR/SSIM and lower LPIPS are better)", fidelity_rows(comp, labels),
                         _fidelity_notes(comp, labels)),
        SUMMARY_TABLE: (f"Summary (speedups against {labels.get(comp.baseline, comp.baseline)})",
                        summary_rows(comp, labels), _summary_notes(comp, labels)),
        RESULTS_TABLE: ("All metrics", results_rows(comp, labels), notes),
    }
    written: dict[str, Path] = {}
    for name, (title, rows, note) in tables.items():
        written[name] = write_csv(out_dir / name, rows)
        md = Path(name).with_suffix(".md").name
        written[md] = write_markdown(out_dir / md, title, markdown_rows(comp, name, rows), note)
    write_json(output_json, comparison_json(comp))
    written[COMPARISON_JSON] = output_json
    return written
