"""The per-step decision: indicator -> rescale -> accumulate -> compute or skip, and its trace.

Pure Python on numbers the sampler hands in: no genmo import, no tensors kept. A policy is stateful for one
generation; the sampler calls :meth:`StepPolicy.reset` at the start of every generation. New policies (a
magnitude-ratio cache, first-block cache) implement the same small interface.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

from genmo_teacache.config import CacheConfig


@dataclass
class StepRecord:
    """One denoising step as the policy saw it. ``reason``: first, last, threshold, skip, max_skips,
    out_of_range, no_cache (baseline), observe (indicator recorded, skipping off)."""

    step: int
    sigma: float
    threshold: float
    raw: float | None  # relative L1 change of block 0's modulated input (None on the first step)
    rescaled: float | None
    accumulated: float
    computed: bool
    reason: str
    # filled by the sampler in observe-only runs (calibration): relative L1 change of the blocks' residual
    # (sum over branches) and the ratio of its mean magnitude to the previous step's
    residual_change: float | None = None
    residual_ratio: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class StepPolicy(Protocol):
    needs_indicator: bool

    def reset(self, num_steps: int) -> None: ...

    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord: ...


class NoCachePolicy:
    """The baseline: every step computed, no indicator."""

    needs_indicator = False

    def reset(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        return StepRecord(step, sigma, 0.0, None, None, 0.0, True, "no_cache")


class TeaCachePolicy:
    """TeaCache: accumulate the rescaled indicator; skip while the sum stays below the step's threshold.

    The first and last steps are always computed. ``observe_only`` records the indicator without ever skipping
    (for the delta-TEMNI plot and calibration).
    """

    needs_indicator = True

    def __init__(self, config: CacheConfig, observe_only: bool = False):
        self.config = config
        self.observe_only = observe_only

    def reset(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.thresholds = self.config.thresholds(num_steps)
        self.accumulated = 0.0
        self.consecutive_skips = 0

    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        cfg = self.config
        threshold = self.thresholds[step]
        rescaled = None if raw is None else cfg.rescale(raw)
        if step == 0 or raw is None:
            return self._compute(step, sigma, threshold, raw, rescaled, 0.0, "first")
        if step == self.num_steps - 1:
            return self._compute(step, sigma, threshold, raw, rescaled, 0.0, "last")
        if self.observe_only:
            return self._compute(step, sigma, threshold, raw, rescaled, rescaled, "observe")
        if not math.isfinite(raw) or (cfg.range_guard and not cfg.rescale.in_range(raw)):
            return self._compute(step, sigma, threshold, raw, rescaled, self.accumulated, "out_of_range")
        self.accumulated += rescaled
        if self.accumulated >= threshold:
            return self._compute(step, sigma, threshold, raw, rescaled, self.accumulated, "threshold")
        if cfg.max_skips is not None and self.consecutive_skips >= cfg.max_skips:
            return self._compute(step, sigma, threshold, raw, rescaled, self.accumulated, "max_skips")
        self.consecutive_skips += 1
        return StepRecord(step, sigma, threshold, raw, rescaled, self.accumulated, False, "skip")

    def _compute(self, step, sigma, threshold, raw, rescaled, accumulated, reason) -> StepRecord:
        """A computed step: the accumulator and the run of skips start again."""
        self.accumulated = 0.0
        self.consecutive_skips = 0
        return StepRecord(step, sigma, threshold, raw, rescaled, accumulated, True, reason)


def make_policy(config: CacheConfig, observe_only: bool = False) -> StepPolicy:
    if not config.enabled and not observe_only:
        return NoCachePolicy()
    if observe_only and not config.enabled:
        config = CacheConfig.fixed(0.0)
    if config.policy == "teacache":
        return TeaCachePolicy(config, observe_only=observe_only)
    raise ValueError(f"no policy implements {config.policy!r}")
