"""No caching: every step computed, nothing measured. With it the sampler gives upstream's latents, bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from genmo_teacache.caches.base import Method, Policy, StepRecord


@dataclass(frozen=True)
class Baseline(Method):
    key: ClassVar[str] = "baseline"
    prefixes: ClassVar[tuple[str, ...]] = ("baseline",)
    syntax: ClassVar[str] = "baseline"
    enabled: ClassVar[bool] = False
    test_modes: ClassVar[tuple[str, ...]] = ("baseline", "baseline")

    @classmethod
    def parse(cls, name: str, calibration: Any = None) -> Baseline:
        if name != "baseline":
            raise ValueError(f"mode {name!r}: the uncached mode is called baseline")
        return cls()

    @property
    def name(self) -> str:
        return "baseline"

    def policy(self) -> NoCachePolicy:
        return NoCachePolicy()

    def computed_fraction(self, num_steps: int) -> float:
        return 1.0


class NoCachePolicy(Policy):
    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        return StepRecord(step, sigma, 0.0, None, None, 0.0, True, "no_cache")
