"""MagCache (Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache").

The residual a skipped step reuses differs from the one it stands for by a factor that an uncached run measures:
the per-step magnitude ratio gamma_t = mean|r_t| / mean|r_{t-1}| of the blocks' residual. Its calibration file
(``genmo-teacache calibrate``, key ``mag_ratios``) gives that curve; none is published for Mochi, so there is no
default. On each candidate step the policy multiplies the accumulated ratio by gamma_t, adds |1 - accumulated ratio|
to the accumulated error and counts one more skip; it skips while the error stays <= the threshold and the count
<= K, and otherwise computes and resets all three. The first ``floor(retention * num_steps)`` steps, the first and
the last step are always computed. A curve calibrated for another step count is mapped by nearest index.

Mode names: ``mag_0.06`` (K = 2, retention 0.2), ``mag_0.06_k4_r0.1``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from genmo_teacache.caches.base import NUM, Method, Policy, StepRecord, check_threshold, fmt
from genmo_teacache.coefficients import load_mag_ratios, resample_ratios, validate_mag_ratios

log = logging.getLogger(__name__)

DEFAULT_K = 2  # at most this many consecutive skips
DEFAULT_RETENTION = 0.2  # the first 20% of the steps are always computed
_MAG = re.compile(rf"mag_{NUM}(?:_k(\d+))?(?:_r{NUM})?")


@dataclass(frozen=True)
class MagCache(Method):
    key: ClassVar[str] = "magcache"
    prefixes: ClassVar[tuple[str, ...]] = ("mag_",)
    syntax: ClassVar[str] = "mag_<t>[_k<K>][_r<retention>] (needs a calibration file)"
    uses_calibration: ClassVar[bool] = True  # its indicator is "none": the calibrated ratios decide
    # K = 2 on ratios 1 +- 0.01: computes steps 0, 3, 6, 7 of the tests' tiny run
    test_modes: ClassVar[tuple[str, ...]] = ("mag_0.1_r0.0", "mag_0.0")

    threshold: float = 0.06
    mag_ratios: tuple[float, ...] = ()
    k: int = DEFAULT_K
    retention: float = DEFAULT_RETENTION
    source: str | None = field(default=None, compare=False)  # where the ratios came from (not identity)

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold, " (MagCache)"))
        if self.k < 1:
            raise ValueError(f"MagCache K={self.k}: use at least 1 consecutive skip (mag_<t>_k<K>)")
        r = float(self.retention)
        if not 0.0 <= r < 1.0:
            raise ValueError(f"MagCache retention {self.retention} must be in [0, 1): the share of the first steps "
                             f"that are always computed")
        object.__setattr__(self, "retention", r)
        if not self.mag_ratios:
            raise ValueError(
                f"mode {self.name} needs the per-step magnitude ratios of an uncached run of your model and settings "
                f"(none are published for Mochi): run `genmo-teacache calibrate --model_dir WEIGHTS --prompts "
                f"PROMPTS --out cal.json` and pass --calibration cal.json")
        object.__setattr__(self, "mag_ratios", validate_mag_ratios(self.mag_ratios))

    @classmethod
    def parse(cls, name: str, calibration: str | Path | None = None) -> MagCache:
        m = _MAG.fullmatch(name)
        if m is None:
            raise ValueError(f"mode {name!r} is not a MagCache mode: use {cls.syntax}")
        ratios = load_mag_ratios(calibration) if calibration is not None else ()
        return cls(threshold=float(m.group(1)), mag_ratios=ratios, k=int(m.group(2) or DEFAULT_K),
                   retention=float(m.group(3)) if m.group(3) else DEFAULT_RETENTION,
                   source=None if calibration is None else str(calibration))

    @property
    def name(self) -> str:
        k = "" if self.k == DEFAULT_K else f"_k{self.k}"
        r = "" if self.retention == DEFAULT_RETENTION else f"_r{fmt(self.retention)}"
        return f"mag_{fmt(self.threshold)}{k}{r}"

    def fields(self, num_steps: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = dict(threshold=self.threshold, max_skips=self.k, retention=self.retention,
                                 mag_ratios=list(self.mag_ratios), mag_source=self.source)
        if num_steps is not None and len(self.mag_ratios) != num_steps:
            d["mag_ratios_resampled"] = list(resample_ratios(self.mag_ratios, num_steps))
        return d

    def with_options(self, *, max_skips: int | None = None, range_guard: bool = True) -> MagCache:
        return self if max_skips is None else replace(self, k=max_skips)

    def check(self, num_steps: int) -> list[str]:
        if len(self.mag_ratios) == num_steps:
            return []
        return [f"{self.name}: magnitude ratios from {self.source or 'the config'} were calibrated for "
                f"{len(self.mag_ratios)} steps and are mapped onto {num_steps} by nearest index (calibrate with "
                f"--num_steps {num_steps} for an exact curve)"]

    def policy(self) -> MagCachePolicy:
        return MagCachePolicy(self)

    def computed_fraction(self, num_steps: int) -> float:
        """At most K skips between computes, after the retained steps: about 1 / (1 + K) of the rest."""
        if num_steps <= 2:
            return 1.0
        kept = max(math.floor(self.retention * num_steps + 1e-9), 1) + 1
        return min(1.0, (kept + (num_steps - kept) / (1.0 + self.k)) / num_steps)


class MagCachePolicy(Policy):
    def __init__(self, config: MagCache):
        self.config = config

    def reset(self, num_steps: int) -> None:
        cfg = self.config
        for warning in cfg.check(num_steps):
            log.warning(warning)
        self.num_steps = num_steps
        self.ratios = resample_ratios(cfg.mag_ratios, num_steps)
        self.retention_steps = math.floor(cfg.retention * num_steps + 1e-9)
        self._start_over()

    def _start_over(self) -> None:
        self.accumulated_ratio = 1.0
        self.accumulated_error = 0.0
        self.consecutive_skips = 0

    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        gamma = self.ratios[step]
        if step == 0:
            return self._compute(step, sigma, gamma, 0.0, "first")
        if step == self.num_steps - 1:
            return self._compute(step, sigma, gamma, 0.0, "last")
        if step < self.retention_steps:
            return self._compute(step, sigma, gamma, 0.0, "retention")
        self.accumulated_ratio *= gamma
        self.accumulated_error += abs(1.0 - self.accumulated_ratio)
        self.consecutive_skips += 1
        error = self.accumulated_error
        if error > self.config.threshold:
            return self._compute(step, sigma, gamma, error, "threshold")
        if self.consecutive_skips > self.config.k:
            return self._compute(step, sigma, gamma, error, "max_skips")
        return StepRecord(step, sigma, self.config.threshold, raw, None, error, False, "skip", mag_ratio=gamma)

    def _compute(self, step: int, sigma: float, gamma: float, error: float, reason: str) -> StepRecord:
        self._start_over()
        return StepRecord(step, sigma, self.config.threshold, None, None, error, True, reason, mag_ratio=gamma)
