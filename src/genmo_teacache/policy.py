"""The per-step decision: indicator -> rescale -> accumulate -> compute or skip, and its trace.

Pure Python on numbers the sampler hands in: no genmo import, no tensors kept. A policy is stateful for one
generation; the sampler calls :meth:`StepPolicy.reset` at the start of every generation. Two policies implement
the interface: :class:`TeaCachePolicy` (runtime indicator, rescale polynomial) and :class:`MagCachePolicy`
(calibrated magnitude ratios, no runtime indicator); others (first-block cache) can plug in the same way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Protocol

from genmo_teacache.coefficients import resample_ratios
from genmo_teacache.config import CacheConfig

log = logging.getLogger(__name__)


@dataclass
class StepRecord:
    """One denoising step as the policy saw it. ``reason``: first, last, threshold, skip, max_skips,
    out_of_range, no_cache (baseline), observe (indicator recorded, skipping off), retention (MagCache: within the
    first steps that are always computed). For MagCache ``accumulated`` is the accumulated error and ``mag_ratio``
    the calibrated ratio of the step."""

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
    mag_ratio: float | None = None  # MagCache: the calibrated magnitude ratio gamma_t this step used

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


class MagCachePolicy:
    """MagCache (Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache").

    The residual a skipped step reuses differs from the one it stands for by a factor that an uncached run
    measures: the per-step magnitude ratio gamma_t = mean|r_t| / mean|r_{t-1}| (``config.mag_ratios``, from a
    calibration file). On each candidate step the policy multiplies the accumulated ratio by gamma_t, adds
    |1 - accumulated ratio| to the accumulated error and counts one more skip; it skips while the error stays
    <= the threshold and the count <= K (``config.max_skips``), and otherwise computes and resets all three.
    The first ``floor(retention * num_steps)`` steps, the first step and the last step are always computed.

    No runtime indicator is needed (``raw`` is ignored), but the sampler must cache residuals (the config is
    enabled). A ratio curve calibrated for another step count is mapped onto this one by nearest index.
    """

    needs_indicator = False

    def __init__(self, config: CacheConfig):
        if config.policy != "mag" or config.mag_ratios is None:
            raise ValueError(f"MagCachePolicy needs a 'mag' config with mag_ratios, got {config.name}")
        self.config = config

    def reset(self, num_steps: int) -> None:
        cfg = self.config
        assert cfg.mag_ratios is not None
        if len(cfg.mag_ratios) != num_steps:
            log.warning("MagCache ratios from %s were calibrated for %d steps; mapping them onto %d steps by nearest "
                        "index (calibrate with --num_steps %d for an exact curve)", cfg.mag_source or "the config",
                        len(cfg.mag_ratios), num_steps, num_steps)
        self.num_steps = num_steps
        self.ratios = resample_ratios(cfg.mag_ratios, num_steps)
        self.threshold = cfg.thresholds(num_steps)[0]
        self.retention_steps = math.floor(cfg.mag_retention * num_steps + 1e-9)
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
        if error > self.threshold:
            return self._compute(step, sigma, gamma, error, "threshold")
        if self.consecutive_skips > self.config.max_skips:
            return self._compute(step, sigma, gamma, error, "max_skips")
        return StepRecord(step, sigma, self.threshold, raw, None, error, False, "skip", mag_ratio=gamma)

    def _compute(self, step: int, sigma: float, gamma: float, error: float, reason: str) -> StepRecord:
        self._start_over()
        return StepRecord(step, sigma, self.threshold, None, None, error, True, reason, mag_ratio=gamma)


class PatternPolicy:
    """A fixed set of computed steps, whatever the indicator says: for benchmarks that need the same skip
    pattern on every run and every device (random weights make threshold decisions meaningless). The
    indicator is still computed, so a skipped step costs what a TeaCache skip costs."""

    needs_indicator = True

    def __init__(self, computed_steps: set[int] | list[int], name: str = "pattern"):
        self.computed = set(computed_steps)
        self.name = name

    @classmethod
    def skipping(cls, num_steps: int, fraction: float) -> PatternPolicy:
        """Skip ``round(fraction * num_steps)`` steps spread evenly; the first and last step are computed."""
        n_skip = min(round(fraction * num_steps), num_steps - 2)
        inner = list(range(1, num_steps - 1))
        skipped = {inner[round(i * (len(inner) - 1) / max(n_skip - 1, 1))] for i in range(n_skip)} if n_skip else set()
        while len(skipped) < n_skip:  # rounding collisions: take the next free step
            skipped.add(next(s for s in inner if s not in skipped))
        return cls(set(range(num_steps)) - skipped, name=f"skip{round(100 * fraction)}pct")

    def reset(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        computed = step in self.computed or step in (0, self.num_steps - 1)
        return StepRecord(step, sigma, 0.0, raw, None, 0.0, computed, "pattern" if computed else "skip")

    def describe(self) -> dict:
        return {"mode": self.name, "policy": "pattern", "computed": sorted(self.computed)}


def make_policy(config: CacheConfig, observe_only: bool = False) -> StepPolicy:
    """The policy of ``config``. ``observe_only`` always gives a TeaCache observer (every step computed, the
    indicator recorded); for a non-TeaCache config it uses TeaCache's default polynomial."""
    if not config.enabled and not observe_only:
        return NoCachePolicy()
    if observe_only and config.policy != "teacache":
        config = CacheConfig.fixed(0.0)
    if config.policy == "teacache":
        return TeaCachePolicy(config, observe_only=observe_only)
    if config.policy == "mag":
        return MagCachePolicy(config)
    raise ValueError(f"no policy implements {config.policy!r}")
