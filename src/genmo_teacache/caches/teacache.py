"""TeaCache (Liu et al. 2025, ali-vilab/TeaCache): skip while the accumulated, rescaled change of block 0's modulated
input stays below a threshold; a skipped step reuses the blocks' residual.

Mode names (a schedule of thresholds over the steps):

=====================================  ======================================================================
``fixed_0.09``                          one threshold for every step
``adaptive_0.12_0.04``                  0.12 for the first 34 steps (0-33), then 0.04 (the reference's modes)
``adaptive_0.12_0.04_h20``              the same with a high phase of 20 steps
``adaptive_f34s14l16[_0.2_0.1]``        high/low/high phases of 34, 14 and 16 steps (0.12 / 0.04 by default)
``schedule_34x0.12_14x0.04_16x0.12``    any schedule; ``restx0.04`` as the last segment covers the steps left
suffix ``-max3``, ``-noguard``          at most 3 consecutive skips; switch off the range guard
=====================================  ======================================================================

A schedule longer than the run is cut at the run's last step, as the reference does (a 16-step run of
``adaptive_0.12_0.04`` is 16 steps at 0.12, with a warning that the low phase never starts); a schedule of fixed
length shorter than the run is an error. The rescale polynomial (TeaCache's Mochi fit, or one from a calibration
file) is not part of the name; ``to_dict`` records it next to every output.

The decision: ``acc += poly(raw)``; compute and reset when ``acc >= threshold``, else skip. The first and the last
step are always computed. The range guard forces a compute when ``raw`` leaves the polynomial's trusted range
(TeaCache's Mochi polynomial peaks near 0.108 and turns negative past 0.144, so without it a large change would
never force a compute).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from genmo_teacache.caches.base import NUM, Method, Policy, StepRecord, check_threshold, fmt
from genmo_teacache.caches.indicators import ModulatedInput
from genmo_teacache.coefficients import Rescale

DEFAULT_HIGH_STEPS = 34  # reference implementation: high threshold for steps 0-33
F_S_L_DEFAULTS = (0.12, 0.04)  # reference mode mochi_adaptive_f34s14l16: 0.12 / 0.04 / 0.12
TYPICAL_INCREMENT = 0.1  # cost model: typical rescaled indicator added per step

Segment = tuple[int | None, float]  # (number of steps, or None for "all remaining steps"; threshold)

_FIXED = re.compile(rf"fixed_{NUM}")
_ADAPTIVE = re.compile(rf"adaptive_{NUM}_{NUM}(?:_h(\d+))?")
_FSL = re.compile(rf"adaptive_f(\d+)s(\d+)l(\d+)(?:_{NUM}_{NUM})?")
_SCHEDULE = re.compile(rf"schedule_((?:(?:\d+|rest)x{NUM}_?)+)")
_SUFFIX = re.compile(r"-(max\d+|noguard)$")


@dataclass(frozen=True)
class TeaCache(Method):
    """``schedule``: segments ``(steps, threshold)``; a last segment with ``steps=None`` covers what remains."""

    key: ClassVar[str] = "teacache"
    prefixes: ClassVar[tuple[str, ...]] = ("fixed_", "adaptive_", "schedule_")
    syntax: ClassVar[str] = ("fixed_<t>, adaptive_<high>_<low>[_h<steps>], adaptive_f<n>s<n>l<n>[_<high>_<low>], "
                             "schedule_<n>x<t>_..._restx<t>, each with optional -max<N> / -noguard")
    indicator: ClassVar[str] = ModulatedInput.name
    uses_calibration: ClassVar[bool] = True
    observed: ClassVar[bool] = True  # delta-TEMNI plots and calibration record TeaCache's indicator
    # fixed_0.05 computes steps 0, 2, 4, 5, 6, 7 of the tests' tiny run
    test_modes: ClassVar[tuple[str, ...]] = ("fixed_0.05", "fixed_0.0")
    cli_flags: ClassVar[str] = "--teacache_thresh/_high/_low/_schedule"

    schedule: tuple[Segment, ...] = ((None, 0.09),)
    max_skips: int | None = None
    range_guard: bool = True
    rescale: Rescale = field(default_factory=Rescale)

    def __post_init__(self) -> None:
        schedule = tuple((None if n is None else int(n), float(t)) for n, t in self.schedule)
        object.__setattr__(self, "schedule", schedule)
        if not schedule:
            raise ValueError("a TeaCache schedule needs at least one segment, e.g. ((None, 0.09),)")
        for i, (n, t) in enumerate(schedule):
            check_threshold(t, f" (segment {i + 1})" if len(schedule) > 1 else "")
            if n is None and i != len(schedule) - 1:
                raise ValueError("only the last schedule segment may cover 'the remaining steps'")
            if n is not None and n < 1:
                raise ValueError(f"segment {i + 1} has {n} steps: each segment needs at least 1 step")
        if self.max_skips is not None and self.max_skips < 1:
            raise ValueError(f"max_skips={self.max_skips}: use a positive number of consecutive skips, or None")

    # -- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def fixed(cls, threshold: float, **kw: Any) -> TeaCache:
        return cls(schedule=((None, threshold),), **kw)

    @classmethod
    def two_phase(cls, high: float, low: float, high_steps: int = DEFAULT_HIGH_STEPS, **kw: Any) -> TeaCache:
        if high == low:
            return cls.fixed(high, **kw)
        return cls(schedule=((high_steps, high), (None, low)), **kw)

    @classmethod
    def from_schedule_string(cls, text: str, **kw: Any) -> TeaCache:
        """Parse ``34:0.12,14:0.04,16:0.12`` (``rest:0.04`` or ``*:0.04`` may end it)."""
        segments: list[Segment] = []
        for part in text.split(","):
            steps, sep, thr = part.strip().partition(":")
            try:
                if not sep:
                    raise ValueError
                segments.append((None if steps.strip() in ("rest", "*") else int(steps), float(thr)))
            except ValueError:
                raise ValueError(f"schedule segment {part.strip()!r} in {text!r} is not STEPS:THRESHOLD "
                                 f"(example: 34:0.12,14:0.04,16:0.12)") from None
        return cls(schedule=tuple(segments), **kw)

    @classmethod
    def parse(cls, name: str, calibration: str | Path | None = None) -> TeaCache:
        kw: dict[str, Any] = {} if calibration is None else {"rescale": Rescale.load(calibration)}
        base, seen = name, set()
        while m := _SUFFIX.search(base):
            opt, base = m.group(1), base[: m.start()]
            kind = "noguard" if opt == "noguard" else "max"
            if kind in seen:
                raise ValueError(f"mode {name!r} gives -{kind}... twice: keep one")
            seen.add(kind)
            if kind == "noguard":
                kw["range_guard"] = False
            else:
                kw["max_skips"] = int(opt[3:])
        if m := _FIXED.fullmatch(base):
            return cls.fixed(float(m.group(1)), **kw)
        if m := _ADAPTIVE.fullmatch(base):
            high_steps = int(m.group(3)) if m.group(3) else DEFAULT_HIGH_STEPS
            return cls(schedule=((high_steps, float(m.group(1))), (None, float(m.group(2)))), **kw)
        if m := _FSL.fullmatch(base):
            f, s, last = (int(m.group(i)) for i in (1, 2, 3))
            high, low = (float(m.group(4)), float(m.group(5))) if m.group(4) else F_S_L_DEFAULTS
            return cls(schedule=((f, high), (s, low), (last, high)), **kw)
        if m := _SCHEDULE.fullmatch(base):
            parts = [p.split("x", 1) for p in m.group(1).strip("_").split("_")]
            return cls(schedule=tuple((None if n == "rest" else int(n), float(t)) for n, t in parts), **kw)
        raise ValueError(f"mode {name!r} is not a TeaCache mode: use {cls.syntax}")

    # -- string form -----------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        s = self.schedule
        if len(s) == 1 and s[0][0] is None:
            base = f"fixed_{fmt(s[0][1])}"
        elif len(s) == 2 and s[1][0] is None and s[0][0] is not None:
            h = "" if s[0][0] == DEFAULT_HIGH_STEPS else f"_h{s[0][0]}"
            base = f"adaptive_{fmt(s[0][1])}_{fmt(s[1][1])}{h}"
        elif len(s) == 3 and None not in (s[0][0], s[1][0], s[2][0]) and s[0][1] == s[2][1]:
            thr = "" if (s[0][1], s[1][1]) == F_S_L_DEFAULTS else f"_{fmt(s[0][1])}_{fmt(s[1][1])}"
            base = f"adaptive_f{s[0][0]}s{s[1][0]}l{s[2][0]}{thr}"
        else:
            base = "schedule_" + "_".join(f"{'rest' if n is None else n}x{fmt(t)}" for n, t in s)
        if self.max_skips is not None:
            base += f"-max{self.max_skips}"
        if not self.range_guard:
            base += "-noguard"
        return base

    @classmethod
    def observer(cls) -> TeaCache:
        return cls.fixed(0.0)

    @classmethod
    def click_options(cls) -> list[Callable[[Any], Any]]:
        """The TeaCache flags of upstream's TeaCache demo (``demos/cli_teacache.py``)."""
        import click

        return [
            click.option("--teacache_thresh", type=float, default=None, help="One TeaCache threshold for every step."),
            click.option("--teacache_thresh_high", type=float, default=None,
                         help="Threshold of the first --teacache_high_steps steps (two-phase schedule)."),
            click.option("--teacache_thresh_low", type=float, default=None, help="Threshold of the remaining steps."),
            click.option("--teacache_high_steps", type=int, default=DEFAULT_HIGH_STEPS, show_default=True,
                         help="Length of the high-threshold phase (34 = steps 0-33, as the reference; cut at "
                              "--num_steps)."),
            click.option("--teacache_schedule", default=None,
                         help="Any schedule as STEPS:THRESHOLD segments, e.g. 34:0.12,14:0.04,16:0.12 (rest:T ends "
                              "it)."),
        ]

    @classmethod
    def from_flags(cls, options: Mapping[str, Any], calibration: str | Path | None = None) -> TeaCache | None:
        return cls.from_options(thresh=options.get("teacache_thresh"), high=options.get("teacache_thresh_high"),
                                low=options.get("teacache_thresh_low"),
                                high_steps=options.get("teacache_high_steps", DEFAULT_HIGH_STEPS),
                                schedule=options.get("teacache_schedule"), calibration=calibration)

    @classmethod
    def from_options(cls, *, thresh: float | None = None, high: float | None = None, low: float | None = None,
                     high_steps: int = DEFAULT_HIGH_STEPS, schedule: str | None = None,
                     calibration: str | Path | None = None) -> TeaCache | None:
        """The config of the demo's TeaCache flags (upstream-compatible CLI), or None when none is given."""
        given = [n for n, v in (("--teacache_thresh", thresh), ("--teacache_schedule", schedule),
                                ("--teacache_thresh_high/low", None if (high, low) == (None, None) else 1))
                 if v is not None]
        if not given:
            return None
        if len(given) > 1:
            raise ValueError(f"give one way to set the TeaCache schedule, not {' and '.join(given)}")
        kw: dict[str, Any] = {} if calibration is None else {"rescale": Rescale.load(calibration)}
        if thresh is not None:
            return cls.fixed(thresh, **kw)
        if schedule is not None:
            return cls.from_schedule_string(schedule, **kw)
        if high is None or low is None:
            raise ValueError("two-phase caching needs both thresholds: add "
                             + ("--teacache_thresh_low" if low is None else "--teacache_thresh_high"))
        return cls.two_phase(high, low, high_steps, **kw)

    # -- use -------------------------------------------------------------------------------------------------
    def with_options(self, *, max_skips: int | None = None, range_guard: bool = True) -> TeaCache:
        return replace(self, max_skips=self.max_skips if max_skips is None else max_skips,
                       range_guard=self.range_guard and range_guard)

    def effective_schedule(self, num_steps: int) -> list[Segment]:
        """The segments as they apply to ``num_steps`` steps: cut at the last step; raises if too short."""
        fixed_total = sum(n for n, _ in self.schedule if n is not None)
        if self.schedule[-1][0] is not None and fixed_total < num_steps:
            raise ValueError(f"cache schedule {self.name} covers {fixed_total} steps but num_steps={num_steps}: "
                             f"use segments that add up to at least {num_steps} (schedule_<n>x<t>_..._restx<t>, or "
                             f"adaptive_<hi>_<lo>_h<n>: n steps of <hi>, the rest <lo>)")
        out: list[Segment] = []
        left = num_steps
        for n, t in self.schedule:
            take = left if n is None else min(n, left)
            if take:
                out.append((take, t))
            left -= take
        return out

    def thresholds(self, num_steps: int) -> list[float]:
        """The threshold in force at every step."""
        return [t for n, t in self.effective_schedule(num_steps) for _ in range(n)]

    def check(self, num_steps: int) -> list[str]:
        effective = self.effective_schedule(num_steps)
        dropped = len(self.schedule) - len(effective)
        if not dropped and sum(n for n, _ in self.schedule if n is not None) <= num_steps:
            return []
        cut = ", ".join(f"{n} x {t}" for n, t in effective)
        never = f"; {dropped} later phase(s) never start" if dropped else ""
        return [f"{self.name}: the schedule is longer than the {num_steps} steps of this run and is cut there "
                f"(effective: {cut}){never}"]

    def fields(self, num_steps: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = dict(
            schedule=[{"steps": n, "threshold": t} for n, t in self.schedule], max_skips=self.max_skips,
            range_guard=self.range_guard, rescale=self.rescale.to_dict())
        if num_steps is not None:
            d["effective_schedule"] = [{"steps": n, "threshold": t} for n, t in self.effective_schedule(num_steps)]
            d["thresholds"] = self.thresholds(num_steps)
        return d

    def policy(self, observe_only: bool = False) -> TeaCachePolicy:
        return TeaCachePolicy(self, observe_only=observe_only)

    def computed_fraction(self, num_steps: int) -> float:
        """A step is computed about once every ``1 + t / r`` steps for a typical increment ``r`` (0.1 here): with
        the first and last steps always computed this predicts 1.36x for fixed_0.04, 2.0x for fixed_0.12 and 1.64x
        for adaptive_0.12_0.04 at 64 steps (reference: 1.27x, 2.44x, 1.43x): rough, but it orders jobs."""
        if num_steps <= 2:
            return 1.0
        floor = 0.0 if self.max_skips is None else 1.0 / (1.0 + self.max_skips)
        middle = self.thresholds(num_steps)[1:-1]
        expected = sum(max(floor, min(1.0, TYPICAL_INCREMENT / (TYPICAL_INCREMENT + t))) for t in middle)
        return (2.0 + expected) / num_steps


class TeaCachePolicy(Policy):
    """Accumulate the rescaled indicator; skip while the sum stays below the step's threshold. ``observe_only``
    records the indicator on every step without skipping (delta-TEMNI plots and calibration)."""

    def __init__(self, config: TeaCache, observe_only: bool = False):
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
