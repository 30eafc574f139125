"""First-block cache (FBCache; ParaAttention's ``first_block_cache``, diffusers' ``FirstBlockCacheHook``): block 0
runs on every step, and its residual tells whether the other blocks need to.

On every step the sampler runs block 0 and measures (indicator ``first_block_residual``)::

    raw = sum |r_t - r_c| / sum |r_c|,    r = block 0's output - its input (visual tokens)

where ``c`` is the last *computed* step (ParaAttention and diffusers store the first block's residual only when the
remaining blocks ran, so the distance grows over a run of skips; ``compare_with_last_computed``). Numerator and
denominator are summed over both CFG branches and all-reduced over the context-parallel ranks before the division,
so every rank and both CFG layouts decide alike (ParaAttention all-reduces the two means likewise). The policy skips
when ``raw < threshold``; a skipped step returns the final layer (with this step's modulation) of block 0's output
plus the residual of blocks 1..N cached at the last computed step, per CFG branch (reuse point
``after_first_block``). ``threshold = 0`` never skips (ParaAttention: a threshold <= 0 disables the cache).

What is cached, and why the text stream is not: Mochi's blocks update two streams, the visual tokens ``x`` and the
text tokens ``y``. Only ``x`` reaches the final layer, and the last block is built with ``update_y=False`` (its text
output is not used), so nothing after the blocks reads ``y``. The cached residual is therefore that of the visual
tokens alone; ParaAttention and diffusers also keep the encoder stream's residual because their block stacks hand
it on, which Mochi's does not.

Deviation: the first step (nothing to compare with) and the **last step** are always computed, as in every method of
this package (the contract suite requires it); ParaAttention and diffusers do not force the last step. It costs one
forward of the run. ParaAttention's optional warm-up (default 0 steps) is not offered.

Mode names: ``fbcache_0.1``. ParaAttention's defaults: Mochi 0.06 (its diffusers adapter, batched CFG at 4.5),
HunyuanVideo 0.06, FLUX.1-dev 0.08. Published (ParaAttention README / diffusers docs, NVIDIA L20): FLUX.1-dev 28 steps
1.55x at 0.08 (1.91x at 0.12) "with nearly zero quality loss"; HunyuanVideo 720p 129 frames 30 steps 1.62x at 0.06.
No PSNR/LPIPS is published.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from genmo_teacache.caches.base import NUM, Method, Policy, StepRecord, check_threshold, fmt
from genmo_teacache.caches.indicators import FirstBlockResidual
from genmo_teacache.caches.reuse import AfterFirstBlock

# Cost model: the typical relative change of block 0's residual per step, fitted to the published HunyuanVideo run
# (threshold 0.06, 30 steps, 1.62x: about 16.5 computed of the 28 free steps -> 0.086 / (0.086 + 0.06)), rounded.
TYPICAL_CHANGE = 0.1
_FB = re.compile(rf"fbcache_{NUM}")


@dataclass(frozen=True)
class FirstBlockCache(Method):
    key: ClassVar[str] = "fbcache"
    prefixes: ClassVar[tuple[str, ...]] = ("fbcache_",)
    syntax: ClassVar[str] = "fbcache_<threshold>"
    indicator: ClassVar[str] = FirstBlockResidual.name
    reuse: ClassVar[str] = AfterFirstBlock.name
    compare_with_last_computed: ClassVar[bool] = True
    # fbcache_0.44 computes steps 0, 1, skips 2, 3 of the tests' tiny run: forecasts have two values
    test_modes: ClassVar[tuple[str, ...]] = ("fbcache_0.44", "fbcache_0.0")

    threshold: float = 0.06

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold, " (first-block cache)"))

    @classmethod
    def parse(cls, name: str, calibration: Any = None) -> FirstBlockCache:
        m = _FB.fullmatch(name)
        if m is None:
            raise ValueError(f"mode {name!r} is not a first-block cache mode: use {cls.syntax}, e.g. fbcache_0.1")
        return cls(threshold=float(m.group(1)))

    @property
    def name(self) -> str:
        return f"fbcache_{fmt(self.threshold)}"

    def fields(self, num_steps: int | None = None) -> dict[str, Any]:
        return dict(threshold=self.threshold)

    def policy(self) -> FirstBlockCachePolicy:
        return FirstBlockCachePolicy(self)

    def computed_fraction(self, num_steps: int) -> float:
        """The first and last step, then a compute about once every ``1 + t / r`` steps for a typical residual
        change ``r`` per step (:data:`TYPICAL_CHANGE`); block 0 runs on every step (1/48 of a forward at full size,
        left out). Rough: it only orders and balances batch jobs."""
        if num_steps <= 2:
            return 1.0
        return (2.0 + (num_steps - 2) * TYPICAL_CHANGE / (TYPICAL_CHANGE + self.threshold)) / num_steps


class FirstBlockCachePolicy(Policy):
    """Skip when block 0's residual moved less than the threshold from the last computed step's."""

    def __init__(self, config: FirstBlockCache):
        self.config = config

    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        threshold = self.config.threshold
        if step == 0 or raw is None:
            return StepRecord(step, sigma, threshold, raw, None, 0.0, True, "first")
        if step == self.num_steps - 1:
            return StepRecord(step, sigma, threshold, raw, None, raw, True, "last")
        if threshold > 0 and math.isfinite(raw) and raw < threshold:
            return StepRecord(step, sigma, threshold, raw, None, raw, False, "skip")
        return StepRecord(step, sigma, threshold, raw, None, raw, True, "threshold")
