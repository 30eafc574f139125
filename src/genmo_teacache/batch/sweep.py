"""The threshold mini-experiment: a few prompts x (baseline + candidate cache configs), generated through the batch
machinery (so it is resumable and can run on Ray), then fidelity of every candidate against the baseline (when
``genmo_teacache.eval.fidelity`` is installed) and a table naming the best candidate by a chosen metric.

Outputs under ``<output-dir>``: the batch layout (videos/, reports/, logs/), ``fidelity/`` (the fidelity module's
files), and ``sweep_results.csv`` / ``sweep_results.md``.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import logging
import math
from pathlib import Path
from typing import Any

import click

from genmo_teacache.batch.runner import BatchPlan
from genmo_teacache.batch.state import read_json, summarize
from genmo_teacache.config import DEFAULT_HIGH_STEPS, CacheConfig
from genmo_teacache.video import atomic_path

logger = logging.getLogger(__name__)

# The reference mini-experiment's adaptive (high, low) candidates.
REFERENCE_CANDIDATES: tuple[tuple[str, float, float], ...] = (
    ("c1", 0.08, 0.04),
    ("c2", 0.20, 0.10),
    ("c3", 0.12, 0.04),
    ("c4", 0.16, 0.10),
)
REFERENCE_STEPS = 64  # the reference's high phase: 34 of 64 steps
BASELINE = "baseline"
FIDELITY_MODULE = "genmo_teacache.eval.fidelity"
METRICS = {"psnr": max, "ssim": max, "lpips": min, "speedup": max}
COLUMNS = ("label", "mode", "speedup", "denoising_speedup", "computed_fraction", "latency_s", "psnr", "ssim", "lpips",
           "videos")


def default_candidates(num_steps: int, high_steps: int | None = None) -> list[tuple[str, str]]:
    """The reference c1-c4 as (label, mode name); the high phase lasts ``high_steps`` steps (default 34 of 64,
    scaled to ``num_steps``)."""
    if high_steps is None:
        high_steps = max(1, DEFAULT_HIGH_STEPS * num_steps // REFERENCE_STEPS)
    return [(label, CacheConfig.two_phase(high, low, high_steps).name) for label, high, low in REFERENCE_CANDIDATES]


def parse_candidates(text: str) -> list[tuple[str, str]]:
    """``"c1=adaptive_0.08_0.04,fixed_0.06"`` -> [("c1", "adaptive_0.08_0.04"), ("fixed_0.06", "fixed_0.06")].
    Raises ValueError naming a bad mode or a repeated label."""
    out: list[tuple[str, str]] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        label, sep, mode = item.partition("=")
        label, mode = (label.strip(), mode.strip()) if sep else (item, item)
        CacheConfig.from_mode(mode)
        if mode == BASELINE or not CacheConfig.from_mode(mode).enabled:
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


def compute_fidelity(root: Path, modes: list[str], device: str | None) -> tuple[dict[str, Any], str | None]:
    """({mode: fidelity summary}, why it is missing or None)."""
    if not fidelity_available():
        return {}, f"{FIDELITY_MODULE} is not installed: no PSNR / SSIM / LPIPS"
    fidelity = importlib.import_module(FIDELITY_MODULE)
    try:
        results = fidelity.run_fidelity(root / "videos", BASELINE, modes, root / "fidelity",
                                        device=device or "auto")
    except Exception as e:  # e.g. LPIPS weights that cannot be fetched: keep the speedup table
        logger.exception("fidelity failed")
        return {}, f"fidelity failed: {type(e).__name__}: {e}"
    return results, None


def _mean(result: dict[str, Any] | None, metric: str) -> float:
    value = (result or {}).get(metric, {})
    value = value.get("mean") if isinstance(value, dict) else value
    return float(value) if isinstance(value, int | float) else math.nan


def sweep_rows(runs: list[dict[str, Any]], candidates: list[tuple[str, str]],
               fidelity: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per candidate (baseline first) from log runs and fidelity results."""
    timing = {r["mode"]: r for r in summarize(runs, [BASELINE] + [m for _, m in candidates], baseline=BASELINE)}
    rows = []
    for label, mode in [(BASELINE, BASELINE)] + candidates:
        t = timing.get(mode, {})
        rows.append({
            "label": label, "mode": mode,
            "speedup": t.get("speedup", math.nan), "denoising_speedup": t.get("denoising_speedup", math.nan),
            "computed_fraction": t.get("computed_fraction", math.nan),
            "latency_s": t.get("latency_s", math.nan), "videos": t.get("videos", 0),
            **{m: _mean(fidelity.get(mode), m) for m in ("psnr", "ssim", "lpips")},
        })
    return rows


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The candidate (never the baseline) that is best by ``metric``; None if no candidate has a value."""
    scored = [r for r in rows if r["mode"] != BASELINE and not math.isnan(r[metric])]
    return METRICS[metric](scored, key=lambda r: r[metric]) if scored else None


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_fmt(r[c], 6) for c in COLUMNS])
    return buf.getvalue()


def to_markdown(rows: list[dict[str, Any]], metric: str, best: dict[str, Any] | None, note: str | None) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [_fmt(r[c]) for c in COLUMNS]
        if best is not None and r is best:
            cells[0] = f"**{cells[0]}** (best)"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if best is None:
        lines.append(f"No candidate has a value for {metric}" + (f" ({note})." if note else "."))
    else:
        lines.append(f"Best by {metric}: {best['label']} ({best['mode']}), {metric} = {_fmt(best[metric])}.")
    if note:
        lines.append(f"Note: {note}.")
    return "\n".join(lines) + "\n"


def run_sweep(plan: BatchPlan, candidates: list[tuple[str, str]], metric: str,
              device: str | None = None) -> dict[str, Any] | None:
    """After generation: fidelity, the table (CSV + Markdown, printed); returns the best row (or None)."""
    root = plan.root
    log = read_json(plan.log_path) or {}
    runs = log.get("runs", [])
    fidelity, note = compute_fidelity(root, [BASELINE] + [m for _, m in candidates], device)
    rows = sweep_rows(runs, candidates, fidelity)
    best = best_row(rows, metric)
    markdown = to_markdown(rows, metric, best, note)
    for name, text in (("sweep_results.csv", to_csv(rows)), ("sweep_results.md", markdown)):
        with atomic_path(root / name) as tmp:
            tmp.write_text(text)
    click.echo("\n" + markdown + f"Tables: {root / 'sweep_results.csv'}, {root / 'sweep_results.md'}")
    return best
