"""Cache configuration: a frozen, validated dataclass with a stable string form (its mode name).

Mode names (a leading ``mochi_`` is accepted and dropped, as in the reference experiment's folder names):

=================================  =========================================================================
``baseline``                        no caching: every step computed (bit-identical to upstream)
``fixed_0.09``                      one threshold for every step
``adaptive_0.12_0.04``              two phases: 0.12 for the first 34 steps (0-33), then 0.04
``adaptive_0.12_0.04_h20``          the same with the high phase lasting 20 steps
``adaptive_f34s14l16``              three explicit phases high/low/high: 34 x 0.12, 14 x 0.04, 16 x 0.12
``adaptive_f34s14l16_0.2_0.1``      the same shape with other thresholds
``schedule_34x0.12_14x0.04_16x0.12``  any schedule; ``restx0.04`` as the last segment covers the steps left
``mag_0.06``                        MagCache (policy ``"mag"``): accumulated-error threshold 0.06, K=2, retention 0.2
``mag_0.06_k4_r0.1``                the same with at most 4 consecutive skips and 10% of the steps always computed
=================================  =========================================================================

Options append as suffixes to TeaCache modes: ``-max3`` (at most 3 consecutive skips), ``-noguard`` (switch off
the range guard). The rescale polynomial is not part of the name; ``to_dict()`` records it next to every output.

The MagCache policy (``mag_*``) reuses the fields it shares with TeaCache: its threshold is the single schedule
segment and its K (maximum consecutive skips) is ``max_skips``. It needs the per-step residual magnitude ratios of
an uncached run (``mag_ratios``, from ``genmo-teacache calibrate``); like the rescale polynomial, they are not part
of the name. No MagCache ratio curve has been published for Mochi, so there is no default.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from genmo_teacache.coefficients import Rescale, load_mag_ratios, resample_ratios, validate_mag_ratios

DEFAULT_HIGH_STEPS = 34  # reference implementation: high threshold for steps 0-33
F_S_L_DEFAULTS = (0.12, 0.04)  # reference mode mochi_adaptive_f34s14l16: 0.12 / 0.04 / 0.12
MAG_DEFAULT_K = 2  # MagCache: at most this many consecutive skips
MAG_DEFAULT_RETENTION = 0.2  # MagCache: the first 20% of the steps are always computed
POLICIES = ("none", "teacache", "mag")

Segment = tuple[int | None, float]  # (number of steps or None for "all remaining steps", threshold)

_NUM = r"(\d+(?:\.\d*)?(?:e-?\d+)?)"
_FIXED = re.compile(rf"fixed_{_NUM}")
_ADAPTIVE = re.compile(rf"adaptive_{_NUM}_{_NUM}(?:_h(\d+))?")
_FSL = re.compile(rf"adaptive_f(\d+)s(\d+)l(\d+)(?:_{_NUM}_{_NUM})?")
_SCHEDULE = re.compile(rf"schedule_((?:(?:\d+|rest)x{_NUM}_?)+)")
_MAG = re.compile(rf"mag_{_NUM}(?:_k(\d+))?(?:_r{_NUM})?")
_SUFFIX = re.compile(r"-(max\d+|noguard)$")


def _fmt(t: float) -> str:
    return repr(float(t))


@dataclass(frozen=True)
class CacheConfig:
    """What the sampler caches and when.

    ``schedule`` holds segments ``(steps, threshold)``; a final segment with ``steps=None`` covers whatever
    steps remain. ``policy="none"`` is the uncached baseline. ``policy="mag"`` is MagCache: one segment
    ``((None, threshold),)``, ``max_skips`` its K (default 2), ``mag_retention`` the share of first steps always
    computed, ``mag_ratios`` the calibrated per-step magnitude ratios (``mag_source`` says where they came from).
    """

    policy: str = "teacache"
    schedule: tuple[Segment, ...] = ((None, 0.09),)
    max_skips: int | None = None
    range_guard: bool = True
    rescale: Rescale = field(default_factory=Rescale)
    mag_retention: float = MAG_DEFAULT_RETENTION
    mag_ratios: tuple[float, ...] | None = None
    mag_source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown cache policy {self.policy!r}: use one of {', '.join(POLICIES)}")
        schedule = tuple((None if n is None else int(n), float(t)) for n, t in self.schedule)
        object.__setattr__(self, "schedule", schedule)
        if self.policy == "none":
            return
        if self.policy == "mag":
            self._check_mag()
        if not schedule:
            raise ValueError("a TeaCache schedule needs at least one segment, e.g. ((None, 0.09),)")
        for i, (n, t) in enumerate(schedule):
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"threshold {t} (segment {i + 1}) must be a finite number >= 0")
            if n is None and i != len(schedule) - 1:
                raise ValueError("only the last schedule segment may cover 'the remaining steps'")
            if n is not None and n < 1:
                raise ValueError(f"segment {i + 1} has {n} steps: each segment needs at least 1 step")
        if self.max_skips is not None and self.max_skips < 1:
            raise ValueError(f"max_skips={self.max_skips}: use a positive number of consecutive skips, or None")

    def _check_mag(self) -> None:
        if len(self.schedule) != 1 or self.schedule[0][0] is not None:
            raise ValueError(f"the MagCache policy takes one threshold for all steps, got schedule {self.schedule}")
        if self.max_skips is None:
            object.__setattr__(self, "max_skips", MAG_DEFAULT_K)
        r = float(self.mag_retention)
        if not 0.0 <= r < 1.0:
            raise ValueError(f"MagCache retention {self.mag_retention} must be in [0, 1): the share of the first "
                             f"steps that are always computed")
        object.__setattr__(self, "mag_retention", r)
        if self.mag_ratios is None:
            raise ValueError(
                f"mode mag_{_fmt(self.schedule[0][1])} needs the per-step magnitude ratios of an uncached run of "
                f"your model and settings (none are published for Mochi): run `genmo-teacache calibrate "
                f"--model_dir WEIGHTS --prompts PROMPTS --out cal.json` and pass --mag_ratios cal.json"
            )
        object.__setattr__(self, "mag_ratios", validate_mag_ratios(self.mag_ratios))

    # -- constructors --------------------------------------------------------------------------------------
    @classmethod
    def baseline(cls) -> CacheConfig:
        return cls(policy="none", schedule=())

    @classmethod
    def fixed(cls, threshold: float, **kw: Any) -> CacheConfig:
        return cls(schedule=((None, threshold),), **kw)

    @classmethod
    def two_phase(cls, high: float, low: float, high_steps: int = DEFAULT_HIGH_STEPS, **kw: Any) -> CacheConfig:
        if high == low:
            return cls.fixed(high, **kw)
        return cls(schedule=((high_steps, high), (None, low)), **kw)

    @classmethod
    def mag(cls, threshold: float, mag_ratios: Sequence[float], k: int = MAG_DEFAULT_K,
            retention: float = MAG_DEFAULT_RETENTION, source: str | None = None) -> CacheConfig:
        """MagCache with accumulated-error ``threshold``, at most ``k`` consecutive skips, the first
        ``retention`` share of the steps always computed, and the calibrated per-step ``mag_ratios``."""
        return cls(policy="mag", schedule=((None, threshold),), max_skips=k, mag_retention=retention,
                   mag_ratios=tuple(mag_ratios), mag_source=source)

    @classmethod
    def from_schedule_string(cls, text: str, **kw: Any) -> CacheConfig:
        """Parse ``34:0.12,14:0.04,16:0.12`` (``rest:0.04`` or ``*:0.04`` may end it)."""
        segments: list[Segment] = []
        for part in text.split(","):
            steps, sep, thr = part.strip().partition(":")
            try:
                if not sep:
                    raise ValueError
                n = None if steps.strip() in ("rest", "*") else int(steps)
                segments.append((n, float(thr)))
            except ValueError:
                raise ValueError(f"schedule segment {part.strip()!r} in {text!r} is not STEPS:THRESHOLD "
                                 f"(example: 34:0.12,14:0.04,16:0.12)") from None
        return cls(schedule=tuple(segments), **kw)

    @classmethod
    def from_mode(cls, mode: str, rescale: Rescale | None = None,
                  mag_ratios: Sequence[float] | str | os.PathLike | None = None) -> CacheConfig:
        """Parse a mode name (see the module docstring). Raises ValueError naming the mode if unknown.

        ``rescale`` applies to TeaCache modes, ``mag_ratios`` (a sequence, or the path of a calibration JSON) to
        ``mag_*`` modes; each is ignored by the other modes."""
        name = mode.strip()
        name = name[len("mochi_"):] if name.startswith("mochi_") else name
        if m := _MAG.fullmatch(name):
            return cls._mag_from_match(m, mag_ratios)
        if name.startswith("mag_") and _SUFFIX.search(name):
            raise ValueError(f"mode {mode!r}: MagCache modes take no -max/-noguard suffix; write mag_<t>_k<K> for "
                             f"at most K consecutive skips")
        kw: dict[str, Any] = {} if rescale is None else {"rescale": rescale}
        while m := _SUFFIX.search(name):
            opt, name = m.group(1), name[: m.start()]
            if opt == "noguard":
                kw["range_guard"] = False
            else:
                kw["max_skips"] = int(opt[3:])
        if name == "baseline":
            return cls.baseline()
        if m := _FIXED.fullmatch(name):
            return cls.fixed(float(m.group(1)), **kw)
        if m := _ADAPTIVE.fullmatch(name):
            high_steps = int(m.group(3)) if m.group(3) else DEFAULT_HIGH_STEPS
            return cls(schedule=((high_steps, float(m.group(1))), (None, float(m.group(2)))), **kw)
        if m := _FSL.fullmatch(name):
            f, s, last = (int(m.group(i)) for i in (1, 2, 3))
            high, low = (float(m.group(4)), float(m.group(5))) if m.group(4) else F_S_L_DEFAULTS
            return cls(schedule=((f, high), (s, low), (last, high)), **kw)
        if m := _SCHEDULE.fullmatch(name):
            parts = [p.split("x", 1) for p in m.group(1).strip("_").split("_")]
            return cls(schedule=tuple((None if n == "rest" else int(n), float(t)) for n, t in parts), **kw)
        raise ValueError(
            f"unknown mode {mode!r}: use baseline, fixed_<t>, adaptive_<high>_<low>[_h<steps>], "
            f"adaptive_f<n>s<n>l<n>[_<high>_<low>] or schedule_<n>x<t>_..., optionally with -max<N> / -noguard, "
            f"or mag_<t>[_k<K>][_r<retention>]"
        )

    @classmethod
    def _mag_from_match(cls, m: re.Match[str], mag_ratios: Sequence[float] | str | os.PathLike | None) -> CacheConfig:
        source = None
        if isinstance(mag_ratios, (str, os.PathLike)):
            source, mag_ratios = str(mag_ratios), load_mag_ratios(mag_ratios)
        k = int(m.group(2)) if m.group(2) else MAG_DEFAULT_K
        retention = float(m.group(3)) if m.group(3) else MAG_DEFAULT_RETENTION
        return cls(policy="mag", schedule=((None, float(m.group(1))),), max_skips=k, mag_retention=retention,
                   mag_ratios=None if mag_ratios is None else tuple(mag_ratios), mag_source=source)

    # -- string form ---------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.policy == "none":
            return "baseline"
        s = self.schedule
        if self.policy == "mag":
            k = "" if self.max_skips == MAG_DEFAULT_K else f"_k{self.max_skips}"
            r = "" if self.mag_retention == MAG_DEFAULT_RETENTION else f"_r{_fmt(self.mag_retention)}"
            return f"mag_{_fmt(s[0][1])}{k}{r}"
        if len(s) == 1 and s[0][0] is None:
            base = f"fixed_{_fmt(s[0][1])}"
        elif len(s) == 2 and s[1][0] is None and s[0][0] is not None:
            h = "" if s[0][0] == DEFAULT_HIGH_STEPS else f"_h{s[0][0]}"
            base = f"adaptive_{_fmt(s[0][1])}_{_fmt(s[1][1])}{h}"
        elif len(s) == 3 and None not in (s[0][0], s[1][0], s[2][0]) and s[0][1] == s[2][1]:
            thr = "" if (s[0][1], s[1][1]) == F_S_L_DEFAULTS else f"_{_fmt(s[0][1])}_{_fmt(s[1][1])}"
            base = f"adaptive_f{s[0][0]}s{s[1][0]}l{s[2][0]}{thr}"
        else:
            base = "schedule_" + "_".join(f"{'rest' if n is None else n}x{_fmt(t)}" for n, t in s)
        if self.max_skips is not None:
            base += f"-max{self.max_skips}"
        if not self.range_guard:
            base += "-noguard"
        return base

    def __str__(self) -> str:
        return self.name

    # -- use -----------------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.policy != "none"

    def thresholds(self, num_steps: int) -> list[float]:
        """The threshold in force at every step; raises if the schedule does not cover ``num_steps``."""
        if not self.enabled:
            return [0.0] * num_steps
        fixed_total = sum(n for n, _ in self.schedule if n is not None)
        open_end = self.schedule[-1][0] is None
        if fixed_total > num_steps or (not open_end and fixed_total != num_steps):
            raise ValueError(
                f"cache schedule {self.name} covers {fixed_total} steps but num_steps={num_steps}: "
                + ("shorten its segments (or --teacache_high_steps) or raise --num_steps" if open_end
                   else "make the segment lengths add up to --num_steps")
            )
        out: list[float] = []
        for n, t in self.schedule:
            out += [t] * (num_steps - len(out) if n is None else n)
        return out

    def with_options(self, **changes: Any) -> CacheConfig:
        return replace(self, **changes)

    def to_dict(self, num_steps: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"mode": self.name, "policy": self.policy}
        if self.policy == "mag":
            assert self.mag_ratios is not None
            d.update(threshold=self.schedule[0][1], max_skips=self.max_skips, retention=self.mag_retention,
                     mag_ratios=list(self.mag_ratios), mag_source=self.mag_source)
            if num_steps is not None:
                d["thresholds"] = self.thresholds(num_steps)
                if len(self.mag_ratios) != num_steps:
                    d["mag_ratios_resampled"] = list(resample_ratios(self.mag_ratios, num_steps))
            return d
        if self.enabled:
            d.update(
                schedule=[{"steps": n, "threshold": t} for n, t in self.schedule],
                max_skips=self.max_skips,
                range_guard=self.range_guard,
                rescale=self.rescale.to_dict(),
            )
            if num_steps is not None:
                d["thresholds"] = self.thresholds(num_steps)
        return d
