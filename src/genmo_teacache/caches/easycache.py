"""EasyCache (Zhou et al. 2025, "Less is Enough: Training-Free Video Diffusion Acceleration via Runtime-Adaptive
Caching", github H-EmbodVis/EasyCache): no calibration; the model's own recent behaviour predicts how much a
skipped step gets wrong.

After a computed step the sampler keeps, per CFG branch, the *transformation vector* ``out - x`` (DiT output minus
DiT input latent), and the *transformation rate* ``k = mean|out_t - out_c| / mean|x_t - x_c|`` between this computed
step ``t`` and the previous computed step ``c`` (cond branch; handed to :meth:`EasyCachePolicy.observe`). On every
later step the sampler measures ``raw = mean|x_t - x_{t-1}| / mean|out_c|`` (input change from the previous step,
over the magnitude of the last computed cond output; indicator ``model_io``) and the policy::

    pred = k * raw                       # the estimated relative change of the output
    acc += pred
    skip while acc < tau; otherwise compute and acc = 0

A skipped step returns ``x_t + (out_c - x_c)`` per branch: nothing of the DiT runs (reuse point ``model``). The
first ``warmup`` steps and the last step are always computed, as is any step while ``k`` is not known yet (fewer
than two computed steps, recorded with reason ``warmup``). ``tau = 0`` computes every step.

This is the rule of the reference code (EasyCache4Wan2.2/easycache_generate.py, EasyCache4HunyuanVideo/
easycache_sample_video.py): ``x_{t-1}`` is the previous step's input whether or not it was computed; the output norm
and ``k`` use the last computed cond output; the uncond call follows the cond call's decision and keeps its own
transformation vector; the warm-up (``ret_steps``) and the last step are computed.

Choices the native pipeline forces or allows:

* **CFG.** Upstream's native sampler runs the branches unbatched (two DiT calls a step) or batched (one call of two
  latents): either way the decision is taken once from the cond latent (the first half of a batched call) and both
  branches follow it, each reusing its own vector; the reference does the same with its even/odd calls.
* **Context parallelism.** Every rank holds the whole input latent, and the DiT's output is all-gathered before the
  unpatchify, so every rank computes the same norms over the whole video: no all-reduce is needed and all ranks
  decide alike (the reference's sequence-parallel Wan runs likewise compute them on full tensors).
* **Sums for means.** ``mean|a| / mean|b|`` over tensors of the same size is computed as ``sum|a| / sum|b|`` (fp32
  tensors, fp64 sums).

Mode names: ``easycache_0.05`` (tau = 0.05, warm-up :data:`DEFAULT_WARMUP` steps), ``easycache_0.05_w10`` (10 warm-up
steps). The reference's settings: HunyuanVideo tau 0.025 with 5 warm-up steps of 50; Wan2.2 tau 0.05 (TI2V-5B) and
0.06 (T2V-A14B) with 7 warm-up steps. Published: HunyuanVideo 2.21x at PSNR 32.66 / LPIPS 0.053 (TeaCache 1.67x,
23.85, 0.173); Wan2.1-1.3B 2.54x at PSNR 25.24 (TeaCache 2.00x, 22.57). Mochi defaults: see docs/METHODS.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from genmo_teacache.caches.base import NUM, Method, Policy, StepRecord, check_threshold, fmt
from genmo_teacache.caches.indicators import ModelIO
from genmo_teacache.caches.reuse import Model

# About 10% of Mochi's 64 native steps, as the reference's 5 of HunyuanVideo's 50. Mochi's first half moves sigma
# from 1.0 to only 0.975 (linear-quadratic schedule) and TeaCache's Mochi reference skips hardest there, so a longer
# warm-up buys little; not measured with real weights (sweep it: easycache_<tau>_w<n>).
DEFAULT_WARMUP = 6
# Cost model: the typical predicted relative output change per step, fitted to the published HunyuanVideo run
# (tau 0.025, 5 warm-up steps of 50, 2.21x: 16.6 computed of the 44 free steps -> 0.015 / (0.015 + 0.025)).
TYPICAL_CHANGE = 0.015
_EASY = re.compile(rf"easycache_{NUM}(?:_w(\d+))?")


@dataclass(frozen=True)
class EasyCache(Method):
    key: ClassVar[str] = "easycache"
    prefixes: ClassVar[tuple[str, ...]] = ("easycache_",)
    syntax: ClassVar[str] = "easycache_<tau>[_w<warm-up steps>]"
    indicator: ClassVar[str] = ModelIO.name
    reuse: ClassVar[str] = Model.name
    test_modes: ClassVar[tuple[str, ...]] = ("easycache_0.2_w2", "easycache_0.0")

    threshold: float = 0.05  # tau
    warmup: int = DEFAULT_WARMUP  # steps always computed at the start

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold, " (EasyCache tau)"))
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"EasyCache warm-up {self.warmup!r}: use a whole number of steps >= 0 "
                             f"(easycache_<t>_w<n>)")

    @classmethod
    def parse(cls, name: str, calibration: Any = None) -> EasyCache:
        m = _EASY.fullmatch(name)
        if m is None:
            raise ValueError(f"mode {name!r} is not an EasyCache mode: use {cls.syntax}, e.g. easycache_0.05")
        return cls(threshold=float(m.group(1)), warmup=int(m.group(2)) if m.group(2) else DEFAULT_WARMUP)

    @property
    def name(self) -> str:
        w = "" if self.warmup == DEFAULT_WARMUP else f"_w{self.warmup}"
        return f"easycache_{fmt(self.threshold)}{w}"

    def fields(self, num_steps: int | None = None) -> dict[str, Any]:
        return dict(threshold=self.threshold, warmup=self.warmup)

    def check(self, num_steps: int) -> list[str]:
        if self.warmup < num_steps - 1:
            return []
        return [f"{self.name}: the warm-up of {self.warmup} steps covers the whole {num_steps}-step run: every step "
                f"is computed (use a shorter warm-up, easycache_{fmt(self.threshold)}_w<n>)"]

    def policy(self) -> EasyCachePolicy:
        return EasyCachePolicy(self)

    def computed_fraction(self, num_steps: int) -> float:
        """The warm-up and the last step, then a compute about once every ``1 + tau / r`` steps for a typical
        predicted change ``r`` per step (:data:`TYPICAL_CHANGE`, fitted to the published HunyuanVideo run). Rough:
        it only orders and balances batch jobs."""
        forced = min(num_steps, max(self.warmup, 1) + 1)
        free = num_steps - forced
        return (forced + free * TYPICAL_CHANGE / (TYPICAL_CHANGE + self.threshold)) / max(num_steps, 1)


class EasyCachePolicy(Policy):
    """Accumulate ``k * raw``; skip while the sum stays below tau. ``observe`` takes the rate after computed steps."""

    def __init__(self, config: EasyCache):
        self.config = config

    def reset(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.accumulated = 0.0
        self.rate: float | None = None

    def observe(self, step: int, rate: float) -> None:
        """The transformation rate k measured at computed step ``step`` (used from the next step on)."""
        self.rate = float(rate)

    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        if step == 0 or raw is None:
            return self._compute(step, sigma, raw, None, "first")
        if step == self.num_steps - 1:
            return self._compute(step, sigma, raw, None, "last")
        if step < self.config.warmup or self.rate is None:
            return self._compute(step, sigma, raw, None, "warmup")
        predicted = self.rate * raw
        self.accumulated += predicted
        if math.isnan(self.accumulated) or self.accumulated >= self.config.threshold:
            return self._compute(step, sigma, raw, predicted, "threshold", self.accumulated)
        return StepRecord(step, sigma, self.config.threshold, raw, predicted, self.accumulated, False, "skip",
                          rate=self.rate)

    def _compute(self, step: int, sigma: float, raw: float | None, predicted: float | None, reason: str,
                 accumulated: float = 0.0) -> StepRecord:
        self.accumulated = 0.0
        return StepRecord(step, sigma, self.config.threshold, raw, predicted, accumulated, True, reason,
                          rate=self.rate)
