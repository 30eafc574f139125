"""A fixed set of computed steps, whatever the indicator says: for benchmarks that need the same skip pattern on
every run and every device (random weights make threshold decisions meaningless). The sampler still measures the
indicator of the method it stands in for and reuses what that method reuses, so a skipped step costs what that
method's skip costs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from genmo_teacache.caches.base import Method, Policy, StepRecord
from genmo_teacache.caches.cfgcache import CfgCache
from genmo_teacache.caches.teacache import TeaCache


class PatternPolicy(Policy):
    """Computes ``computed_steps`` (and the first and last step); measures and reuses as ``method`` does (default:
    TeaCache's fixed_0.0, its indicator every step and the blocks' residual)."""

    def __init__(self, computed_steps: set[int] | list[int], name: str = "pattern", method: Method | None = None):
        self.computed = set(computed_steps)
        self.name = name
        self.method = method or TeaCache.fixed(0.0)

    @classmethod
    def skipping(cls, num_steps: int, fraction: float, method: Method | None = None) -> PatternPolicy:
        """Skip ``round(fraction * num_steps)`` steps spread evenly; the first and last step are computed."""
        n_skip = min(round(fraction * num_steps), num_steps - 2)
        inner = list(range(1, num_steps - 1))
        skipped = {inner[round(i * (len(inner) - 1) / max(n_skip - 1, 1))] for i in range(n_skip)} if n_skip else set()
        while len(skipped) < n_skip:  # rounding collisions: take the next free step
            skipped.add(next(s for s in inner if s not in skipped))
        return cls(set(range(num_steps)) - skipped, name=f"skip{round(100 * fraction)}pct", method=method)

    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        computed = step in self.computed or step in (0, self.num_steps - 1)
        return StepRecord(step, sigma, 0.0, raw, None, 0.0, computed, "pattern" if computed else "skip")

    def describe(self) -> dict:
        return {"mode": self.name, "method": "pattern", "as": self.method.key, "computed": sorted(self.computed)}


@dataclass(frozen=True)
class CondOnlyPattern(CfgCache):
    """The CFG cache (``+cfg``) on a fixed set of steps, for benchmarks: those of them that the step cache computes
    run the cond branch alone once a difference is cached, and rebuild the uncond output as ``+cfg`` does (same
    work, same weights). Not a mode name: pass it in a :class:`~genmo_teacache.caches.CacheConfig` by hand."""

    prefixes: ClassVar[tuple[str, ...]] = ()
    steps: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "steps", frozenset(self.steps))

    @classmethod
    def every_other(cls, computed_steps: set[int] | list[int]) -> CondOnlyPattern:
        """Every second computed step, starting with the second (the first runs both branches, caching the
        difference): half of them cond-only."""
        return cls(steps=frozenset(sorted(computed_steps)[1::2]))

    @property
    def name(self) -> str:
        return f"cfgpattern{len(self.steps)}"

    def cond_only(self, step: int, num_steps: int) -> bool:
        return step in self.steps

    def fields(self) -> dict:
        return dict(super().fields(), steps=sorted(self.steps))
