"""Rescale polynomials that map the raw TeaCache indicator to an estimate of the model output's change.

The raw indicator is the relative L1 change of block 0's modulated input between consecutive steps; the
polynomial turns it into the expected relative change of the model's output, which is what accumulates.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# TeaCache's fit for Mochi 1 (ali-vilab/TeaCache, TeaCache4Mochi/teacache_mochi.py), highest power first.
# Fitted by the TeaCache authors on diffusers' MochiTransformer3DModel with batched CFG (scale 4.5),
# 163 frames 480x848, 64 steps. Its fitted x range is not published.
TEACACHE_MOCHI_COEFFICIENTS: tuple[float, ...] = (
    -3.51241319e03,
    8.11675948e02,
    -6.09400215e01,
    2.42429681e00,
    3.05291719e-03,
)


def _first_peak(coefficients: tuple[float, ...], hi: float = 1.0) -> float:
    """The smallest x > 0 where the polynomial stops increasing (its first local maximum), or ``hi``."""
    xs = np.linspace(0.0, hi, 100_001)
    dy = np.diff(np.polyval(coefficients, xs))
    falling = np.nonzero(dy < 0)[0]
    return float(xs[falling[0]]) if len(falling) else hi


POSITIVITY_GRID = 1001  # points at which a rescale polynomial is checked over its range


def check_positive(coefficients: tuple[float, ...], lo: float, hi: float) -> None:
    """Raise ValueError if the polynomial is nowhere positive on ``[lo, hi]``: TeaCache accumulates its values (the
    estimated relative change of the output), so a change of the input would never add up to a compute and the
    cache would skip every step. (Negative values in part of the range, as TeaCache's own Mochi fit has past 0.144,
    are left to the range guard.)"""
    values = np.polyval(coefficients, np.linspace(lo, hi, POSITIVITY_GRID))
    if not (values > 0).any():
        raise ValueError(f"the rescale polynomial is zero or negative all over its range [{lo:.4g}, {hi:.4g}] (at "
                         f"most {float(np.nanmax(values)):.3g}): its values never add up to a compute, so the cache "
                         "would skip every step. Calibrate again with more prompts (or steps)")


def _read_json(path: Path, what: str, hint: str = "") -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist{hint}") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a directory: give the JSON file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}): give the JSON file "
                         f"that `genmo-teacache calibrate` wrote{hint}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}{hint}") from None


@dataclass(frozen=True)
class Rescale:
    """A rescale polynomial and the range of raw values over which it can be trusted.

    ``x_max`` bounds the range guard: beyond it the polynomial was not fitted (or, for TeaCache's Mochi fit,
    starts to fall and turns negative past ~0.144, so a large change would never force a compute).
    """

    coefficients: tuple[float, ...] = TEACACHE_MOCHI_COEFFICIENTS
    x_max: float = field(default=math.nan)
    source: str = "teacache-mochi"
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.coefficients or not all(math.isfinite(c) for c in self.coefficients):
            raise ValueError(f"rescale coefficients must be a non-empty list of finite numbers, got "
                             f"{list(self.coefficients)}")
        if math.isnan(self.x_max):
            object.__setattr__(self, "x_max", _first_peak(self.coefficients))
        if not self.x_max > 0:
            raise ValueError(f"x_max must be > 0, got {self.x_max}")

    def __call__(self, raw: float) -> float:
        return float(np.polyval(self.coefficients, raw))

    def in_range(self, raw: float) -> bool:
        return raw <= self.x_max

    def to_dict(self) -> dict[str, Any]:
        return {"coefficients": list(self.coefficients), "x_max": self.x_max, "source": self.source, **self.info}

    @classmethod
    def load(cls, path: str | os.PathLike) -> Rescale:
        """Load a coefficients JSON: ``{"coefficients": [highest power first...], "x_range": [lo, hi], ...}``
        (``x_max`` is accepted instead of ``x_range``). Other keys are kept as information."""
        path = Path(path)
        data = _read_json(path, "coefficients file")
        if not isinstance(data, dict) or "coefficients" not in data:
            raise ValueError(f"coefficients file {path} must be a JSON object with a 'coefficients' list "
                             f"(highest power first), got {str(data)[:80]}")
        coeffs = data["coefficients"]
        if not isinstance(coeffs, list) or not coeffs or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in coeffs
        ):
            raise ValueError(f"coefficients file {path}: 'coefficients' must be a non-empty list of numbers, "
                             f"got {coeffs!r}")
        x_range = data.get("x_range", [0.0, math.nan])
        ok = isinstance(x_range, list) and len(x_range) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_range)
        x_min, x_max = (x_range[0], data.get("x_max", x_range[1])) if ok else (0.0, data.get("x_max"))
        if not isinstance(x_max, (int, float)) or isinstance(x_max, bool) or (not ok and "x_range" in data):
            raise ValueError(f"coefficients file {path}: 'x_range' must be a list [lo, hi] of two numbers (or "
                             f"'x_max' a number), got x_range={data.get('x_range')!r} x_max={data.get('x_max')!r}")
        info = {k: v for k, v in data.items() if k not in ("coefficients", "x_max", "source")}
        rescale = cls(tuple(float(c) for c in coeffs), float(x_max), str(path), info)
        try:
            check_positive(rescale.coefficients, min(float(x_min), rescale.x_max), rescale.x_max)
        except ValueError as e:
            raise ValueError(f"coefficients file {path}: {e}") from None
        return rescale


# -- magnitude ratios (MagCache) --------------------------------------------------------------------------------

MAG_RATIOS_KEY = "mag_ratios"  # the key of the per-step ratio curve in a calibration file


def _calibrate_hint() -> str:
    return ("run `genmo-teacache calibrate --model_dir WEIGHTS --prompts PROMPTS --out cal.json` with your generation "
            "settings and pass the file with --mag_ratios cal.json")


def validate_mag_ratios(ratios: Any, where: str = "mag_ratios") -> tuple[float, ...]:
    """``ratios`` as a tuple of floats; raises ValueError unless it is a list of at least 2 finite numbers > 0."""
    if isinstance(ratios, (str, bytes)) or not hasattr(ratios, "__len__"):
        raise ValueError(f"{where} must be a list of per-step magnitude ratios, got {str(ratios)[:80]!r}")
    values = list(ratios)
    if len(values) < 2 or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in values):
        raise ValueError(f"{where} must be a list of at least 2 numbers (one per denoising step), got "
                         f"{str(values)[:80]}")
    bad = [(i, r) for i, r in enumerate(values) if not (math.isfinite(r) and r > 0)]
    if bad:
        raise ValueError(f"{where}: every ratio must be a finite number > 0; step {bad[0][0]} has {bad[0][1]}")
    return tuple(float(r) for r in values)


def load_mag_ratios(path: str | os.PathLike) -> tuple[float, ...]:
    """The per-step residual magnitude ratios (``"mag_ratios"``, one per step, the first 1.0) of a calibration
    file written by ``genmo-teacache calibrate``."""
    path = Path(path)
    data = _read_json(path, "magnitude-ratio file", hint=f": {_calibrate_hint()}")
    if not isinstance(data, dict) or MAG_RATIOS_KEY not in data:
        raise ValueError(f"{path} has no {MAG_RATIOS_KEY!r} list: {_calibrate_hint()}")
    return validate_mag_ratios(data[MAG_RATIOS_KEY], where=f"{path}: {MAG_RATIOS_KEY!r}")


def resample_ratios(ratios: tuple[float, ...], num_steps: int) -> tuple[float, ...]:
    """A ratio curve calibrated for ``len(ratios)`` steps mapped onto ``num_steps`` steps by nearest index (as
    MagCache's reference code does when the step count differs). Unchanged when the lengths agree."""
    if len(ratios) == num_steps:
        return tuple(ratios)
    if num_steps == 1:
        return (ratios[-1],)
    scale = (len(ratios) - 1) / (num_steps - 1)
    return tuple(ratios[int(np.round(i * scale))] for i in range(num_steps))
