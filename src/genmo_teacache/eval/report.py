"""``report.html``: one page with everything an evaluation wrote, for a browser.

The summary table (and the fidelity and VBench tables), the plots (speedup against PSNR / LPIPS, VBench bars,
delta-TEMNI curves), and per video the side-by-side grid (:mod:`.grid`) with its numbers, the video with the
largest quality loss first. Plain HTML and CSS: no script, no font or style sheet fetched, every link relative to
the report, so the results folder can be copied or served as it is. Videos are ``preload="none"`` with a small
poster image and images ``loading="lazy"``, so that the page opens at once with 33 prompts x 5 modes.
"""

from __future__ import annotations

import datetime
import html
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from genmo_teacache.eval.grid import GridOptions, GridResult, grid_results, make_grids, plan_grids
from genmo_teacache.eval.tables import (
    FIDELITY_TABLE,
    RESULTS_TABLE,
    SUMMARY_TABLE,
    VBENCH_TABLE,
    Comparison,
    collect,
    fidelity_rows,
    summary_rows,
    vbench_rows,
)
from genmo_teacache.files import atomic_path

logger = logging.getLogger(__name__)

REPORT = "report.html"
GRIDS_DIR = "grids"
PLOTS = (("speedup_vs_psnr.png", "Speedup against PSNR (Pareto front marked)"),
         ("speedup_vs_lpips.png", "Speedup against LPIPS (Pareto front marked)"),
         ("vbench_dimensions.png", "VBench per dimension"))

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d1d1f; background: #f6f6f4; }
main { max-width: 1960px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; margin: 0 0 6px; }
nav a, .files a { margin-right: 14px; }
.muted { color: #666; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 10px; }
th, td { border: 1px solid #d4d4d4; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #ecece8; }
td.worst { background: #fde2e1; font-weight: 600; }
.wide { overflow-x: auto; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots figure { margin: 0; background: #fff; padding: 6px; border: 1px solid #ddd; width: 420px; }
.plots img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #555; }
ol.toc { columns: 2 420px; padding-left: 28px; }
section.video { background: #fff; border: 1px solid #ddd; padding: 10px 12px; margin: 14px 0; }
section.video video { max-width: 100%; height: auto; display: block; background: #181818; margin-top: 6px; }
.prompt { font-weight: 600; }
code { font-size: 12px; }
"""


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "\u2014" if value is None else f"{value:{spec}}{suffix}"


def _url(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, percent-encoded, for an ``href`` / ``src`` attribute (then html-escaped).
    Taken on the paths as they are, never with symbolic links resolved: a linked ``grids/`` stays ``grids/...``,
    inside the results folder, so that the folder can be copied or served as it is."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return html.escape(quote(Path(rel).as_posix()), quote=True)


def _table(rows: Sequence[Sequence[str]], classes: Sequence[Sequence[str]] | None = None) -> str:
    header, *body = rows
    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for r, row in enumerate(body):
        cells = []
        for c, cell in enumerate(row):
            cls = classes[r][c] if classes else ""
            cells.append(f"<td class=\"{cls}\">{html.escape(cell)}</td>" if cls else f"<td>{html.escape(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def quality_loss(numbers: Sequence[dict[str, Any]]) -> tuple[int, float]:
    """Sort key of a video, largest loss first: the highest LPIPS of any mode against the baseline; where no
    mode has an LPIPS, the lowest PSNR; videos without numbers last."""
    modes = [n for n in numbers if not n.get("baseline")]
    lpips = [n["lpips"] for n in modes if isinstance(n.get("lpips"), int | float) and math.isfinite(n["lpips"])]
    if lpips:
        return 0, -max(lpips)
    psnr = [n["psnr"] for n in modes if isinstance(n.get("psnr"), int | float) and math.isfinite(n["psnr"])]
    if psnr:
        return 1, min(psnr)
    return 2, 0.0


def _video_section(rank: int, result: GridResult, root: Path) -> str:
    job, numbers = result.job, result.tile_numbers()
    worst_lpips = max((n["lpips"] for n in numbers if n.get("lpips") is not None and not n.get("baseline")),
                      default=None)
    worst_psnr = min((n["psnr"] for n in numbers if n.get("psnr") is not None and not n.get("baseline")),
                     default=None)
    rows = [["Mode", "Speedup", "PSNR (dB)", "SSIM", "LPIPS"]]
    classes = []
    for n in numbers:
        if n.get("baseline"):
            rows.append([f"{n['mode']} (baseline)", _fmt(n.get("speedup"), ".2f", "x"), "", "", ""])
        elif n.get("missing"):
            rows.append([n["mode"], "no video", "", "", ""])
        else:
            rows.append([n["mode"], _fmt(n.get("speedup"), ".2f", "x"), _fmt(n.get("psnr"), ".2f"),
                         _fmt(n.get("ssim"), ".4f"), _fmt(n.get("lpips"), ".4f")])
        worst = not n.get("baseline") and not n.get("missing")
        classes.append(["", "", "worst" if worst and n.get("psnr") is not None and n.get("psnr") == worst_psnr else "",
                        "", "worst" if worst and n.get("lpips") is not None and n.get("lpips") == worst_lpips else ""])
    sample = f", sample {job.sample}" if job.sample is not None else ""
    parts = [f'<section class="video" id="v{rank}">',
             f'<h3>{rank}. <span class="prompt">{html.escape(job.prompt)}</span>{html.escape(sample)}</h3>',
             f'<div class="muted"><code>{html.escape(job.name)}</code></div>',
             _table(rows, classes)]
    if result.mp4 is not None and result.poster is not None:
        layout = result.info.get("layout", {})
        size = ""
        if layout.get("width") and layout.get("height"):
            size = f' width="{int(layout["width"])}" height="{int(layout["height"])}"'
        frames = result.info.get("frames")
        parts.append(f'<video preload="none" controls muted loop playsinline{size} '
                     f'poster="{_url(result.poster, root)}" src="{_url(result.mp4, root)}"></video>')
        parts.append(f'<div class="muted">{frames} frames at {result.info.get("fps", 0):g} fps; '
                     f'<a href="{_url(result.mp4, root)}">grid mp4</a></div>')
    else:
        parts.append(f'<p class="muted">No side-by-side video ({html.escape(result.reason or "not made")}).</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _toc_line(rank: int, result: GridResult) -> str:
    numbers = result.tile_numbers()
    kind, value = quality_loss(numbers)
    worst = ""
    if kind == 0:
        mode = next(n["mode"] for n in numbers if not n.get("baseline") and n.get("lpips") == -value)
        worst = f" \u2014 worst LPIPS {-value:.4f} ({html.escape(mode)})"
    elif kind == 1:
        mode = next(n["mode"] for n in numbers if not n.get("baseline") and n.get("psnr") == value)
        worst = f" \u2014 worst PSNR {value:.2f} dB ({html.escape(mode)})"
    return f'<li><a href="#v{rank}">{html.escape(result.job.prompt)}</a>{worst}</li>'


def write_report(out_dir: str | os.PathLike, comp: Comparison, grids: Sequence[GridResult]) -> Path:
    """Write ``{out_dir}/report.html`` from the comparison, the plots and tables in ``out_dir`` and the grids."""
    root = Path(os.path.abspath(out_dir))
    title = f"{comp.baseline} against {len(comp.modes) - 1} mode(s)"
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = [f"<h1>Evaluation: {html.escape(title)}</h1>",
            f'<p class="muted">Written {html.escape(now)} by <code>genmo-teacache evaluate</code>. Modes: '
            f"{html.escape(', '.join(comp.modes[1:]) or '(none)')}.</p>",
            '<nav><a href="#summary">Summary</a><a href="#plots">Plots</a><a href="#videos">Videos</a></nav>',
            '<h2 id="summary">Summary</h2>',
            f'<p class="muted">Speedups against {html.escape(comp.baseline)} from the generation logs; fidelity '
            "(PSNR, SSIM higher is better; LPIPS lower is better) averaged over the videos.</p>",
            f'<div class="wide">{_table(summary_rows(comp, {}))}</div>']
    unavailable = [(m, d, r) for m in comp.modes for d, r in comp.results[m].unavailable.items()]
    if unavailable:
        body.append("<details><summary>VBench dimensions that could not run (n/a)</summary><ul>"
                    + "".join(f"<li>{html.escape(m)} / {html.escape(d)}: {html.escape(r)}</li>"
                              for m, d, r in unavailable) + "</ul></details>")
    body.append(f"<details><summary>Fidelity table</summary><div class=\"wide\">{_table(fidelity_rows(comp, {}))}"
                "</div></details>")
    body.append(f"<details><summary>VBench table</summary><div class=\"wide\">{_table(vbench_rows(comp, {}))}"
                "</div></details>")
    files = [root / name for name in (SUMMARY_TABLE, FIDELITY_TABLE, VBENCH_TABLE, RESULTS_TABLE,
                                      "all_comparison_results.json") if (root / name).is_file()]
    if files:
        body.append('<p class="files">Files: ' + "".join(f'<a href="{_url(p, root)}">{html.escape(p.name)}</a>'
                                                          for p in files) + "</p>")

    body.append('<h2 id="plots">Plots</h2>')
    plots = [(root / "plots" / name, caption) for name, caption in PLOTS if (root / "plots" / name).is_file()]
    plots += [(p, f"delta-TEMNI: {p.stem[len('delta_temni_'):]}") for p in sorted((root / "plots").glob(
        "delta_temni_*.png")) if not p.name.startswith(".")]
    if plots:
        figures = [f'<figure><a href="{_url(p, root)}"><img loading="lazy" src="{_url(p, root)}" '
                   f'alt="{html.escape(c)}"></a><figcaption>{html.escape(c)} (click for full size)</figcaption>'
                   "</figure>" for p, c in plots]
        body.append('<div class="plots">' + "".join(figures) + "</div>")
    else:
        body.append('<p class="muted">No plots (they need speedups with fidelity results, or VBench scores).</p>')

    body.append('<h2 id="videos">Videos</h2>')
    ranked = sorted(grids, key=lambda r: (quality_loss(r.tile_numbers()), r.job.name))
    if ranked:
        body.append(f'<p class="muted">{len(ranked)} video(s), the largest quality loss first: the highest LPIPS '
                    "of any mode against the baseline (the lowest PSNR where there is no LPIPS). Each grid shows "
                    "the baseline and every mode, time-aligned; labels give the mode's speedup and this video's "
                    "PSNR / LPIPS. Videos load when played.</p>")
        body.append('<ol class="toc">' + "".join(_toc_line(i, r) for i, r in enumerate(ranked, 1)) + "</ol>")
        body.extend(_video_section(i, r, root) for i, r in enumerate(ranked, 1))
    else:
        body.append('<p class="muted">No baseline videos.</p>')

    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body) + "\n</main>\n</body>\n</html>\n")
    path = root / REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def grids_and_report(
    videos_dir: str | os.PathLike,
    baseline: str,
    modes: Sequence[str],
    out_dir: str | os.PathLike,
    log_dir: str | os.PathLike | None,
    make: bool = True,
    report: bool = True,
    options: GridOptions | None = None,
) -> dict[str, Path]:
    """What ``evaluate`` does last: the grids of every baseline video (``make``; grids that are up to date are
    kept, whatever options ``compare-videos`` made them with) and ``report.html`` (``report``), from the results in
    ``out_dir`` (``fidelity_metrics/``, ``vbench_scores/``, ``plots/``, the tables). Returns name -> path."""
    out_dir = Path(out_dir)
    fidelity_dir, scores_dir, grids_dir = out_dir / "fidelity_metrics", out_dir / "vbench_scores", out_dir / GRIDS_DIR
    jobs = plan_grids(videos_dir, baseline, modes, fidelity_dir, log_dir)
    written: dict[str, Path] = {}
    if make and modes:  # a grid of the baseline alone shows nothing the video does not
        results = make_grids(jobs, grids_dir, options, keep_any_look=True)
        if results:
            written[GRIDS_DIR] = grids_dir
    else:
        results = grid_results(jobs, grids_dir)
    if report:
        comp = collect(modes, baseline, scores_dir, fidelity_dir, log_dir)
        written[REPORT] = write_report(out_dir, comp, results)
    return written
