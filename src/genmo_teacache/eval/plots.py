"""PNG plots of a comparison (matplotlib's Agg canvas; pyplot and its global backend are never touched).

- ``speedup_vs_psnr.png`` / ``speedup_vs_lpips.png``: each mode's speedup against its fidelity to the baseline, the
  Pareto front (modes no other mode beats on both speed and fidelity) joined and labelled, each cache method in its
  own colour and marker (from the mode names through the method registry). One panel per kind of speedup the logs
  allow: end-to-end, and denoising only. ``plot_pareto`` draws both metrics on one figure (the sweep's). A speedup
  that is noise (above the ideal of the forwards its mode skipped) is not drawn; the figure names it.
- ``vbench_dimensions.png``: raw VBench score per dimension, one bar per mode, plus quality / semantic / total.
- ``plot_delta_temni``: the rescaled TeaCache indicator per denoising step of several videos on one figure (input:
  ``<video>_delta_TEMNI.txt`` files with one value per line, as the generate command writes them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from genmo_teacache.eval import scoring
from genmo_teacache.eval.tables import Comparison
from genmo_teacache.files import atomic_path

logger = logging.getLogger(__name__)

SPEEDUP_KINDS = (("end_to_end", "end-to-end speedup"), ("denoising", "denoising speedup"))
FIDELITY_PLOTS = (("psnr", "PSNR vs baseline (dB), higher is better", True),
                  ("lpips", "LPIPS vs baseline, lower is better", False))
TEMNI_SUFFIX = "_delta_TEMNI.txt"
MARKERS = "osD^vP*Xph"  # one per cache method (with the colours C0-C9)


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    out_png = Path(out_png)
    FigureCanvasAgg(fig)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return out_png


def pareto_front(xs: Sequence[float], ys: Sequence[float], higher_y_better: bool = True) -> list[int]:
    """Indices of the points that no other point beats: a point is dominated when another has x >= and y at least as
    good, and is strictly better in one of them. Sorted by x."""
    sign = 1.0 if higher_y_better else -1.0
    front = []
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        dominated = any(
            xj >= xi and sign * yj >= sign * yi and (xj > xi or sign * yj > sign * yi)
            for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: xs[i])


def method_styles(modes: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """``{mode: (group, colour, marker)}``: one colour and marker per cache method (and modifier combination) the
    mode names run, in the registry's order, so that every plot draws a method alike; "other" for unknown names."""
    from genmo_teacache.caches import METHODS, method_key

    order = {m.key: i for i, m in enumerate(METHODS)}
    groups = {mode: method_key(mode) or "other" for mode in modes}
    ranked = sorted(set(groups.values()), key=lambda g: (order.get(g.split("+")[0], len(order)), g))
    style = {g: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, g in enumerate(ranked)}
    return {mode: (g, *style[g]) for mode, g in groups.items()}


def _fidelity_panel(ax, modes: Sequence[str], xs: Sequence[float], ys: Sequence[float], metric: str,
                    xlabel: str, baseline_label: str, labels: Mapping[str, str]) -> None:
    """Speedup (x) against one fidelity metric (y): every mode in its method's colour and marker (filled on the
    Pareto front, hollow when dominated), the front joined, each point labelled."""
    ylabel, higher_better = {m: (lbl, hb) for m, lbl, hb in FIDELITY_PLOTS}[metric]
    front = pareto_front(xs, ys, higher_better)
    styles = method_styles(modes)
    ax.axvline(1.0, color="0.6", linestyle="--", linewidth=1)
    ax.text(1.0, 0.02, f"{baseline_label} (1.00x) ", transform=ax.get_xaxis_transform(), rotation=90, va="bottom",
            ha="right", fontsize=8, color="0.4")
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="0.25", linewidth=1.2, label="Pareto front",
            zorder=3)
    for group in dict.fromkeys(styles[m][0] for m in modes):
        idx = [i for i, m in enumerate(modes) if styles[m][0] == group]
        colour, marker = styles[modes[idx[0]]][1:]
        ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], s=50, marker=marker, edgecolors=colour,
                   facecolors=[colour if i in front else "none" for i in idx], linewidths=1.4, label=group, zorder=4)
    for x, y, m in zip(xs, ys, modes, strict=True):
        ax.annotate(labels.get(m, m), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.margins(y=0.12)
    if xs:
        lo, hi = min(list(xs) + [1.0]), max(list(xs) + [1.0])
        ax.set_xlim(lo - 0.08 * (hi - lo + 0.5), hi + 0.25 * (hi - lo + 0.5))
    ax.legend(loc="best", fontsize=8, title="filled: on the front", title_fontsize=7)


def _fidelity_points(comp: Comparison, kind: str, metric: str) -> tuple[list[str], list[float], list[float]]:
    modes = [m for m in comp.modes if m != comp.baseline and kind in comp.results[m].speedup
             and comp.results[m].fidelity and comp.results[m].fidelity.get(metric, {}).get("mean") is not None]
    return (modes, [comp.results[m].speedup[kind] for m in modes],
            [comp.results[m].fidelity[metric]["mean"] for m in modes])


def _noise_note(fig: Figure, comp: Comparison, kinds: Sequence[str], labels: Mapping[str, str]) -> None:
    """Name, under the figure, the modes whose speedup is noise (above the ideal of the forwards they skipped): they
    are not drawn, as they are not a result."""
    names = dict(SPEEDUP_KINDS)
    noisy = [f"{labels.get(m, m)} ({names[k]} {r.noise[k]:.2f}x > ideal {r.ideal_speedup:.2f}x)"
             for m in comp.modes if m != comp.baseline for k in kinds if k in (r := comp.results[m]).noise]
    if noisy:
        fig.text(0.5, -0.01, "Not drawn, speedup is noise (above the ideal of the forwards skipped): "
                 + "; ".join(noisy), ha="center", va="top", fontsize=8, color="0.3", wrap=True)


def plot_speedup_vs_fidelity(comp: Comparison, metric: str, out_png: str | os.PathLike,
                             labels: Mapping[str, str] | None = None) -> Path | None:
    """Speedup against ``metric`` ("psnr" or "lpips"), one panel per kind of speedup; None (and nothing written)
    without modes having both."""
    labels = labels or {}
    kinds = [(k, name) for k, name in SPEEDUP_KINDS
             if any(k in comp.results[m].speedup and comp.results[m].fidelity for m in comp.modes)]
    if not kinds:
        logger.info("no mode has both a speedup and a fidelity result: %s not drawn", Path(out_png).name)
        return None
    base = labels.get(comp.baseline, comp.baseline)
    fig = Figure(figsize=(6.0 * len(kinds), 4.6))
    for col, (kind, kind_name) in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), col + 1)
        _fidelity_panel(ax, *_fidelity_points(comp, kind, metric), metric, f"{kind_name} vs {base} (x)", base,
                        labels)
        ax.set_title(f"{metric.upper()} against {kind_name}")
    fig.tight_layout()
    _noise_note(fig, comp, [k for k, _ in kinds], labels)
    return _save(fig, out_png)


def plot_pareto(comp: Comparison, out_png: str | os.PathLike, labels: Mapping[str, str] | None = None,
                kind: str = "end_to_end", title: str | None = None) -> Path | None:
    """One figure for a sweep across methods: ``kind`` speedup against PSNR (left) and LPIPS (right), every mode in
    its method's colour and marker, the Pareto front of each panel joined. None (and nothing written) when no mode
    has both a speedup and a PSNR or LPIPS."""
    labels = labels or {}
    panels = [(metric, *_fidelity_points(comp, kind, metric)) for metric, _, _ in FIDELITY_PLOTS]
    panels = [p for p in panels if p[1]]
    if not panels:
        logger.info("no mode has both a %s speedup and a fidelity result: %s not drawn", kind, Path(out_png).name)
        return None
    base = labels.get(comp.baseline, comp.baseline)
    kind_name = dict(SPEEDUP_KINDS).get(kind, kind)
    fig = Figure(figsize=(6.0 * len(panels), 4.8))
    for col, (metric, modes, xs, ys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), col + 1)
        _fidelity_panel(ax, modes, xs, ys, metric, f"{kind_name} vs {base} (x)", base, labels)
        ax.set_title(f"{metric.upper()} against {kind_name}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _noise_note(fig, comp, [kind], labels)
    return _save(fig, out_png)


def plot_vbench_dimensions(comp: Comparison, out_png: str | os.PathLike,
                           labels: Mapping[str, str] | None = None) -> Path | None:
    """Grouped bars of the raw VBench scores (one group per dimension, one bar per mode) and the aggregates."""
    labels = labels or {}
    modes = [m for m in comp.modes if comp.results[m].raw or comp.results[m].unavailable]
    if not any(comp.results[m].raw for m in modes):
        logger.info("no VBench scores: %s not drawn", Path(out_png).name)
        return None
    dims = [d for d in scoring.ALL_DIMENSIONS
            if any(d in comp.results[m].raw or d in comp.results[m].unavailable for m in modes)]
    fig = Figure(figsize=(max(8.0, 0.9 * len(dims) + 4.5), 5.2))
    grid = fig.add_gridspec(1, 2, width_ratios=[max(len(dims), 3), 2.5])
    ax, ax_agg = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    width = 0.8 / len(modes)
    colors = [f"C{i % 10}" for i in range(len(modes))]
    for i, m in enumerate(modes):
        r = comp.results[m]
        x = np.arange(len(dims)) + (i - (len(modes) - 1) / 2) * width
        vals = [r.raw.get(d, np.nan) for d in dims]
        ax.bar(x, vals, width, label=labels.get(m, m), color=colors[i])
        for xi, d in zip(x, dims, strict=True):
            if d not in r.raw:
                ax.text(xi, 0.02, "n/a" if d in r.unavailable else "-", rotation=90, ha="center", va="bottom",
                        fontsize=7, color="0.3")
        agg = [r.aggregate.quality, r.aggregate.semantic, r.aggregate.total]
        xa = np.arange(3) + (i - (len(modes) - 1) / 2) * width
        ax_agg.bar(xa, [v if v is not None else np.nan for v in agg], width, color=colors[i])
        for xi, v in zip(xa, agg, strict=True):
            if v is None:
                ax_agg.text(xi, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.3")
    ax.set_xticks(np.arange(len(dims)), [d.replace("_", "\n", 1) for d in dims], fontsize=8)
    ax.set_ylabel("raw VBench score")
    ax.set_xlim(-0.6, len(dims) - 0.4)  # NaN bars (n/a) do not widen the axis by themselves
    ax.set_ylim(0, 1.05)
    ax.set_title("VBench per dimension")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(modes), 5))
    ax_agg.set_xticks(np.arange(3), ["quality", "semantic", "total"], fontsize=8)
    ax_agg.set_xlim(-0.6, 2.6)
    ax_agg.set_ylim(0, 1.05)
    ax_agg.set_title("normalised scores\n(over the dimensions present)", fontsize=10)
    ax_agg.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_png)


def read_delta_temni(path: str | os.PathLike) -> np.ndarray:
    """One float per non-empty line."""
    with open(path) as f:
        return np.array([float(line) for line in f if line.strip()], dtype=np.float64)


def plot_delta_temni(txt_paths: Sequence[str | os.PathLike], out_png: str | os.PathLike,
                     title: str = "Rescaled TeaCache indicator per denoising step") -> Path:
    """Draw the delta-TEMNI curve of each file (one prompt each) on one figure."""
    if not txt_paths:
        raise ValueError("plot_delta_temni needs at least one *_delta_TEMNI.txt file")
    fig = Figure(figsize=(9.0, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    for i, path in enumerate(txt_paths):
        values = read_delta_temni(path)
        name = Path(path).name
        label = name[: -len(TEMNI_SUFFIX)] if name.endswith(TEMNI_SUFFIX) else Path(path).stem
        label = label if len(label) <= 45 else label[:42] + "..."
        ax.plot(np.arange(len(values)), values, "-", marker="o", markersize=2.5, linewidth=1.2,
                color=f"C{i % 10}", label=label)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("rescaled indicator (poly of rel. L1 change)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    return _save(fig, out_png)


def find_delta_temni(*folders: str | os.PathLike | None) -> dict[str, list[Path]]:
    """``*_delta_TEMNI.txt`` files under the given folders, grouped by the folder that holds them."""
    found: dict[str, set[Path]] = {}
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        for path in Path(folder).rglob(f"*{TEMNI_SUFFIX}"):
            if not path.name.startswith("."):
                found.setdefault(path.parent.name, set()).add(path.resolve())
    return {group: sorted(paths) for group, paths in sorted(found.items())}


def write_plots(comp: Comparison, out_dir: str | os.PathLike, labels: Mapping[str, str] | None = None,
                temni_groups: Mapping[str, Sequence[Path]] | None = None, max_curves: int = 8) -> dict[str, Path]:
    """Every plot the data allow; returns name -> path of what was written."""
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for metric, _, _ in FIDELITY_PLOTS:
        path = plot_speedup_vs_fidelity(comp, metric, out_dir / f"speedup_vs_{metric}.png", labels)
        if path is not None:
            written[path.name] = path
    path = plot_vbench_dimensions(comp, out_dir / "vbench_dimensions.png", labels)
    if path is not None:
        written[path.name] = path
    for group, paths in (temni_groups or {}).items():
        if paths:
            shown = list(paths)[:max_curves]
            name = group if group.lower().startswith("delta_temni") else f"delta_temni_{group}"  # a folder named so
            path = plot_delta_temni(shown, out_dir / f"{name}.png",
                                    title=f"Rescaled TeaCache indicator per step: {group} "
                                          f"({len(shown)} of {len(paths)} videos)")
            written[path.name] = path
    return written
