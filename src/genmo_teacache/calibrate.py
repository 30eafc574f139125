"""Calibration for the native model: fit TeaCache's rescale polynomial and measure MagCache's magnitude ratios.

TeaCache's Mochi polynomial was fitted on diffusers' port (batched CFG, scale 4.5, 163 frames, 64 steps). The native
pipeline defaults to unbatched CFG at 6.0, and users change resolution, frames and steps. ``genmo-teacache
calibrate`` runs the uncached model in observe-only mode on a few prompts and records, per denoising step (from the
second on), over both CFG branches as the sampler sees them:

* x = ``raw``: relative L1 change of block 0's modulated input (TeaCache's indicator),
* y = ``residual_change``: relative L1 change of the blocks' residual (what a skipped step gets wrong),
* ``residual_ratio``: mean |residual_t| / mean |residual_{t-1}| (MagCache's magnitude ratio).

It fits ``np.polyfit(x, y, 4)`` (the TeaCache authors' recipe) and writes a JSON that ``--teacache_coefficients``
(polynomial and fitted x range) and ``--mag_ratios`` (per-step mean ratio curve) both read, a plot of the fit beside
it (``<out stem>.png``) and the raw points (``<out stem>_points.json``) for refitting without the model.

Prompts run one after another in one process (with ``--num_gpus N`` each prompt is spread over N GPUs by context
parallelism). The batch package's job machinery writes finished videos per mode and has no observe-only runs, so it
is not used here; see docs/CALIBRATION.md.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm import tqdm

from genmo_teacache import __version__
from genmo_teacache.cliutils import setup_logging
from genmo_teacache.coefficients import MAG_RATIOS_KEY, Rescale, check_positive
from genmo_teacache.files import atomic_path, check_output_file, write_json
from genmo_teacache.options import generation_options

log = logging.getLogger(__name__)

DEGREE = 4  # TeaCache's recipe: np.polyfit(x, y, 4)
MIN_POINTS = DEGREE + 1  # fewer points (or distinct x values) leave a degree-4 fit undetermined
DEFAULT_SEED = 0  # the reference experiment's seed (also batch's default)
COMPARE_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)  # where the printed table compares with TeaCache's polynomial
X_DESCRIPTION = "relative L1 change of block 0's modulated input between steps, over both CFG branches"
Y_DESCRIPTION = "relative L1 change of the transformer blocks' residual between steps, over both CFG branches"


class CalibrationError(ValueError):
    """Calibration data that cannot give a trustworthy fit; the message says why and what to change."""


# -- prompts --------------------------------------------------------------------------------------------------

def read_calibration_prompts(path: str | os.PathLike, num_prompts: int | None = None) -> list[str]:
    """The distinct prompts of a plain text file (one a line) or a VBench full-info JSON (``prompt_en``), the first
    ``num_prompts`` of them if given. Raises ValueError (naming the file) for an empty or unreadable file."""
    from genmo_teacache.batch.prompts import load_prompts

    if num_prompts is not None and num_prompts < 1:
        raise ValueError(f"--num-prompts {num_prompts}: use at least 1 prompt")
    prompts = [entry.text for entry in load_prompts(path)]  # refuses an empty file, naming it
    return prompts[:num_prompts] if num_prompts is not None else prompts


# -- observation ----------------------------------------------------------------------------------------------

@dataclass
class PromptTrace:
    """What one observe-only generation recorded, one entry per denoising step (None where undefined)."""

    prompt: str
    raw: list[float | None]
    residual_change: list[float | None]
    residual_ratio: list[float | None]

    @classmethod
    def from_report(cls, prompt: str, report: dict[str, Any]) -> PromptTrace:
        steps = report["steps"]
        return cls(prompt, [s.get("raw") for s in steps], [s.get("residual_change") for s in steps],
                   [s.get("residual_ratio") for s in steps])


def observe(pipe: Any, prompts: list[str], settings: Any, seed: int = DEFAULT_SEED,
            progress: bool = True) -> list[PromptTrace]:
    """Run the uncached model in observe-only mode on every prompt (same seed for each), in order."""
    from genmo_teacache.caches import CacheConfig
    from genmo_teacache.generate import generate

    traces = []
    bar = tqdm(prompts, desc="Calibrating", unit="prompt", disable=not progress)
    for prompt in bar:
        result = generate(pipe, prompt=prompt, cache=CacheConfig.baseline(), seed=seed, settings=settings,
                          observe_only=True, progress=False)
        traces.append(PromptTrace.from_report(prompt, result.report))
        bar.set_postfix(denoising_s=f"{result.timings['denoising_s']:.1f}", refresh=False)
    return traces


# -- fitting --------------------------------------------------------------------------------------------------

def _check_finite(value: float | None, what: str, prompt: str, step: int) -> float:
    if value is None or not math.isfinite(value):
        raise CalibrationError(f"{what} is {value} at step {step} of prompt {prompt[:60]!r}: the model produced "
                               f"non-finite values (NaN/inf; check the weights, dtype and settings); refusing to fit")
    return float(value)


def collect_points(traces: list[PromptTrace]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, step) of every step that has both values (all steps but the first). Refuses NaN/inf."""
    xs, ys, steps = [], [], []
    for trace in traces:
        for step, (x, y) in enumerate(zip(trace.raw, trace.residual_change, strict=True)):
            if x is None and y is None:
                continue  # the first step has no predecessor
            xs.append(_check_finite(x, "the indicator (raw)", trace.prompt, step))
            ys.append(_check_finite(y, "the residual change", trace.prompt, step))
            steps.append(step)
    return np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64), np.array(steps, dtype=np.int64)


@dataclass(frozen=True)
class PolynomialFit:
    coefficients: tuple[float, ...]  # highest power first
    x_range: tuple[float, float]
    r2: float | None  # None when y is constant (R^2 undefined)
    num_points: int

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return np.polyval(self.coefficients, x)


def fit_polynomial(x: np.ndarray, y: np.ndarray, degree: int = DEGREE) -> PolynomialFit:
    """``np.polyfit(x, y, degree)`` with its R^2; refuses too few points, too few distinct x, NaN, and a fit that
    TeaCache could not use (negative on the fitted range, or zero all over it: :func:`.check_positive`), so that
    such a file is never written."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise CalibrationError(f"x and y must be 1-D and of equal length, got {x.shape} and {y.shape}")
    need = degree + 1
    if len(x) < need:
        raise CalibrationError(f"only {len(x)} calibration points: a degree-{degree} fit needs at least {need} "
                               f"(points = prompts x (num_steps - 1)); add prompts or steps")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise CalibrationError("calibration points contain NaN or inf: refusing to fit")
    if len(np.unique(x)) < need:
        raise CalibrationError(f"only {len(np.unique(x))} distinct indicator values: a degree-{degree} fit needs at "
                               f"least {need}")
    coefficients = np.polyfit(x, y, degree)
    if not np.isfinite(coefficients).all():
        raise CalibrationError(f"the fit gave non-finite coefficients {coefficients.tolist()}: refusing to write them")
    try:
        check_positive(tuple(coefficients), float(x.min()), float(x.max()))
    except ValueError as e:
        raise CalibrationError(f"the fitted polynomial cannot be used: {e}") from None
    ss_res = float(np.sum((y - np.polyval(coefficients, x)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    if r2 is None:
        log.warning("every residual change is the same value: R^2 is undefined")
    return PolynomialFit(tuple(float(c) for c in coefficients), (float(x.min()), float(x.max())), r2, len(x))


def mag_ratio_curve(traces: list[PromptTrace], num_steps: int) -> tuple[list[float], list[float]]:
    """Per-step mean (and std) over prompts of the residual magnitude ratio; the first step is 1.0 by definition."""
    means, stds = [1.0], [0.0]
    for step in range(1, num_steps):
        values = [_check_finite(t.residual_ratio[step], "the residual magnitude ratio", t.prompt, step)
                  for t in traces]
        means.append(float(np.mean(values)))
        stds.append(float(np.std(values)))
    bad = [(i, r) for i, r in enumerate(means) if not r > 0]
    if bad:
        raise CalibrationError(f"magnitude ratio {bad[0][1]} at step {bad[0][0]} is not positive: the residual "
                               f"vanished")
    return means, stds


# -- the result -----------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """A fit and the data behind it; :meth:`to_dict` is the calibration file."""

    fit: PolynomialFit
    mag_ratios: list[float]
    mag_ratios_std: list[float]
    settings: dict[str, Any]
    traces: list[PromptTrace] = field(repr=False)
    points: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False)

    def comparison(self, default: Rescale | None = None) -> list[dict[str, float]]:
        """The calibrated polynomial and TeaCache's default at a few quantiles of the fitted x."""
        default = default or Rescale()
        x = self.points[0]
        rows = []
        for q in COMPARE_QUANTILES:
            xq = float(np.quantile(x, q))
            rows.append({"quantile": q, "x": xq, "calibrated": float(self.fit(xq)), "teacache_default": default(xq)})
        return rows

    def to_dict(self) -> dict[str, Any]:
        prompts = [t.prompt for t in self.traces]
        return {
            "coefficients": list(self.fit.coefficients),
            "x_range": list(self.fit.x_range),
            "r2": self.fit.r2,
            "num_points": self.fit.num_points,
            "degree": len(self.fit.coefficients) - 1,
            "x": X_DESCRIPTION,
            "y": Y_DESCRIPTION,
            MAG_RATIOS_KEY: self.mag_ratios,
            "mag_ratios_std": self.mag_ratios_std,
            "settings": {**self.settings, "num_prompts": len(prompts),
                         "prompts_sha256": hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()},
            "comparison_with_teacache_default": self.comparison(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tool": f"genmo-teacache {__version__} calibrate",
        }


def check_point_count(num_prompts: int, num_steps: int) -> None:
    """Refuse, before any work, a run that cannot give enough points for the fit."""
    expected = num_prompts * (num_steps - 1)
    if expected < MIN_POINTS:
        raise CalibrationError(f"{num_prompts} prompt(s) x {num_steps - 1} step changes = {expected} points: a "
                               f"degree-{DEGREE} fit needs at least {MIN_POINTS}; add prompts or steps")


def calibrate(pipe: Any, prompts: list[str], settings: Any, *, seed: int = DEFAULT_SEED,
              info: dict[str, Any] | None = None, progress: bool = True) -> Calibration:
    """Observe the uncached model on ``prompts`` and fit. ``info`` is recorded with the settings (model_dir, ...)."""
    check_point_count(len(prompts), settings.num_steps)
    traces = observe(pipe, prompts, settings, seed=seed, progress=progress)
    points = collect_points(traces)
    fit = fit_polynomial(points[0], points[1])
    mag, mag_std = mag_ratio_curve(traces, settings.num_steps)
    recorded = dict(asdict(settings))
    recorded.update(seed=seed, **(info or {}))
    return Calibration(fit, mag, mag_std, recorded, traces, points)


def output_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The calibration JSON, its plot and its points file."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        raise ValueError(f"--out {out}: give the JSON path (the plot is written beside it as .png)")
    return {"json": out, "plot": out.with_suffix(".png"), "points": out.with_name(f"{out.stem}_points.json")}


def write_calibration(calibration: Calibration, out: str | os.PathLike) -> dict[str, Path]:
    """Write the calibration JSON, its plot and its points (atomically). Returns the paths."""
    paths = output_paths(out)
    write_json(paths["json"], calibration.to_dict())
    x, y, steps = calibration.points
    write_json(paths["points"], {
        "x": x.tolist(), "y": y.tolist(), "step": steps.tolist(),
        "prompts": [asdict(t) for t in calibration.traces],
    })
    plot_calibration(calibration, paths["plot"])
    return paths


def plot_calibration(calibration: Calibration, path: str | os.PathLike, default: Rescale | None = None) -> Path:
    """Left: the points (coloured by step), the fitted polynomial and TeaCache's default polynomial.
    Right: the per-step magnitude ratio curve (MagCache)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    default = default or Rescale()
    fit, (x, y, steps) = calibration.fit, calibration.points
    lo, hi = fit.x_range
    grid = np.linspace(0.0, hi * 1.1, 400)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    sc = ax.scatter(x, y, c=steps, cmap="viridis", s=14, alpha=0.8, label=f"observed ({fit.num_points} points)")
    fig.colorbar(sc, ax=ax, label="denoising step")
    r2 = "undefined" if fit.r2 is None else f"{fit.r2:.4f}"
    ax.plot(grid, fit(grid), color="C3", lw=2, label=f"calibrated degree-{DEGREE} fit (R$^2$ = {r2})")
    ax.plot(grid, np.polyval(default.coefficients, grid), color="0.3", ls="--", lw=1.5,
            label="TeaCache's Mochi polynomial (diffusers, batched CFG 4.5)")
    ax.axvspan(lo, hi, color="C0", alpha=0.07, label=f"fitted x range [{lo:.3g}, {hi:.3g}]")
    span = max(float(y.max()), float(np.max(fit(np.linspace(lo, hi, 100))))) - min(0.0, float(y.min()))
    ax.set_ylim(min(0.0, float(y.min())) - 0.1 * span, max(float(y.max()), 0.0) + 0.25 * span)
    ax.set_xlim(0.0, hi * 1.1)
    ax.set_xlabel("x: rel. L1 change of block 0's modulated input")
    ax.set_ylabel("y: rel. L1 change of the blocks' residual")
    s = calibration.settings
    ax.set_title(f"{s.get('width')}x{s.get('height')}, {s.get('num_frames')} frames, {s.get('num_steps')} steps, "
                 f"cfg {s.get('cfg_scale')}{' batched' if s.get('batch_cfg') else ''}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ratios, std = np.array(calibration.mag_ratios), np.array(calibration.mag_ratios_std)
    ax2.plot(range(len(ratios)), ratios, marker=".", color="C2", label="mean over prompts")
    ax2.fill_between(range(len(ratios)), ratios - std, ratios + std, color="C2", alpha=0.2, label="+- std")
    ax2.axhline(1.0, color="0.5", lw=0.8)
    ax2.set_xlabel("denoising step")
    ax2.set_ylabel("mean|residual_t| / mean|residual_{t-1}|")
    ax2.set_title("MagCache magnitude ratios", fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


def summary_lines(calibration: Calibration) -> list[str]:
    """What the command prints: x range, R^2, points, a comparison with TeaCache's default, the ratio curve."""
    fit = calibration.fit
    r2 = "undefined (constant y)" if fit.r2 is None else f"{fit.r2:.4f}"
    lines = [
        f"Fitted {fit.num_points} points from {len(calibration.traces)} prompt(s): x range "
        f"[{fit.x_range[0]:.4g}, {fit.x_range[1]:.4g}], R^2 = {r2}",
        "coefficients (highest power first): " + ", ".join(f"{c:.6g}" for c in fit.coefficients),
        "rescaled value at x (calibrated vs TeaCache's Mochi default):",
        f"  {'quantile':>8} {'x':>10} {'calibrated':>11} {'default':>11} {'ratio':>8}",
    ]
    for row in calibration.comparison():
        ratio = row["calibrated"] / row["teacache_default"] if row["teacache_default"] else math.nan
        lines.append(f"  {row['quantile']:>8.2f} {row['x']:>10.4g} {row['calibrated']:>11.4g} "
                     f"{row['teacache_default']:>11.4g} {ratio:>8.3g}")
    lo, hi = fit.x_range
    if float(np.min(fit(np.linspace(lo, hi, 200)))) < 0:
        lines.append("warning: the calibrated polynomial is negative somewhere in its fitted range (the accumulator "
                     "would shrink there); more prompts may give a steadier fit")
    lines.append("magnitude ratios per step: " + ", ".join(f"{r:.4g}" for r in calibration.mag_ratios))
    return lines


# -- the command ----------------------------------------------------------------------------------------------

@click.command("calibrate")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(dir_okay=False),
              help="Prompt file: plain text (one prompt a line) or a VBench full-info JSON (list of {\"prompt_en\": "
                   "...}). Duplicate prompts are used once.")
@click.option("--num-prompts", "--num_prompts", "num_prompts", type=int, default=None,
              help="Use only the first N prompts of the file (default: all).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Calibration JSON to write (coefficients, x_range, R^2, mag_ratios, settings); the plot goes to "
                   "<out stem>.png and the raw points to <out stem>_points.json.")
@click.option("--seed", default=DEFAULT_SEED, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of every prompt's generation.")
@generation_options
@click.pass_context
def calibrate_command(ctx: click.Context, **options: Any) -> None:
    """Fit TeaCache's rescale polynomial and MagCache's magnitude ratios for your model and settings.

    Runs the uncached model (observe-only) on each prompt, one after another, and writes a file that
    `generate --calibration FILE` reads (TeaCache's polynomial; MagCache's ratios with --cache_mode mag_<t>).
    """
    from genmo_teacache.generate import load_pipeline
    from genmo_teacache.options import apply_model_defaults, pipeline_kwargs, resolve_model_dir, settings_from_options

    setup_logging(plain=True)
    options = apply_model_defaults(ctx, resolve_model_dir(options))
    settings = settings_from_options(**options)
    try:
        paths = output_paths(options["out"])
        for path in paths.values():  # before the model loads, not after the whole calibration
            check_output_file(path, "--out")
        prompts = read_calibration_prompts(options["prompts_file"], options["num_prompts"])
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    try:
        check_point_count(len(prompts), settings.num_steps)
    except CalibrationError as e:
        raise click.BadParameter(str(e)) from None
    try:
        pipe = load_pipeline(options["model_dir"], **pipeline_kwargs(options))
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    info = {"model_dir": str(options["model_dir"]), "prompts_file": str(options["prompts_file"]),
            **{k: options[k] for k in ("attention_mode", "num_gpus", "device")}}
    try:
        calibration = calibrate(pipe, prompts, settings, seed=options["seed"], info=info)
    except CalibrationError as e:
        raise click.ClickException(str(e)) from None
    write_calibration(calibration, paths["json"])
    for line in summary_lines(calibration):
        click.echo(line)
    click.echo(f"  calibration: {paths['json']}\n  plot: {paths['plot']}\n  points: {paths['points']}")
    click.echo(f"Use it with: genmo-teacache generate --calibration {paths['json']} ... (TeaCache modes) or "
               f"--cache_mode mag_0.06 --calibration {paths['json']}")
