"""No caching: every step computed, nothing measured. With it the sampler gives upstream's latents, bit for bit."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from genmo_teacache.caches.base import Method, Policy, StepRecord

logger = logging.getLogger(__name__)

# The reference workflow's second batch named its baseline mochi_diff_baseline (diffusers' Mochi without TeaCache).
REFERENCE_ALIAS = "diff_baseline"
ALIAS_NOTE = ("mode {name!r} is the reference's name of its diffusers baseline; here the baseline is upstream's "
              "native sampler (bit for bit), as for 'baseline'")


@dataclass(frozen=True)
class Baseline(Method):
    key: ClassVar[str] = "baseline"
    prefixes: ClassVar[tuple[str, ...]] = ("baseline",)
    aliases: ClassVar[tuple[str, ...]] = (REFERENCE_ALIAS,)
    syntax: ClassVar[str] = f"baseline (or the reference's {REFERENCE_ALIAS})"
    enabled: ClassVar[bool] = False
    test_modes: ClassVar[tuple[str, ...]] = ("baseline", "baseline")

    @classmethod
    def parse(cls, name: str, calibration: Any = None) -> Baseline:
        if name == REFERENCE_ALIAS:
            _note_alias(name)
        elif name != "baseline":
            raise ValueError(f"mode {name!r}: the uncached mode is called baseline")
        return cls()

    @property
    def name(self) -> str:
        return "baseline"

    def policy(self) -> NoCachePolicy:
        return NoCachePolicy()

    def computed_fraction(self, num_steps: int) -> float:
        return 1.0


@functools.cache
def _note_alias(name: str) -> None:
    logger.warning(ALIAS_NOTE.format(name="mochi_" + name))


class NoCachePolicy(Policy):
    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        return StepRecord(step, sigma, 0.0, None, None, 0.0, True, "no_cache")
