"""Forecasting what a skipped step reuses (TaylorSeer: Liu et al., "From Reusing to Forecasting: Accelerating
Diffusion Models with TaylorSeers", ICCV 2025, github Shenyi-Z/TaylorSeer; diffusers' ``TaylorSeerCacheConfig``
hook computes the same): instead of the cached quantity of the last computed step unchanged, a skipped step uses a
Taylor expansion of it around that step, with derivatives estimated by finite differences over the last computed
steps.

The quantity is whatever the method reuses (``caches.base`` reuse points): the blocks' residual (TeaCache, MagCache),
the residual of blocks 1..N (first-block cache), the DiT's output minus its input (EasyCache). The sampler keeps it,
per CFG branch, for the last ``order + 1`` computed steps.

TaylorSeer's recursion, at each computed step k with value F_k at coordinate x_k (the step index, or its sigma)::

    D_0 = F_k;   D_{j+1} = (D_j - D_j') / (x_k - x_{k-1})     (D_j': the factors of the previous computed step)

so D_1 = (F_k - F_{k-1}) / (x_k - x_{k-1}) and D_2 = (D_1 - D_1') / (x_k - x_{k-1}), divided by the latest distance
both times (TaylorSeer and diffusers alike). A skipped step at x forecasts ``sum_j D_j h^j / j!``, h = x - x_k.
With fewer computed steps than ``order + 1`` so far, the order drops to what there is (as TaylorSeer's does).
The forecast is linear in the F's: its weights are worked out in float64 and applied as one weighted sum, so a
forecast costs one pass over the ``order + 1`` cached tensors and no temporaries besides its result.

Mode suffix: ``+taylor1`` / ``+taylor2`` (order 1 or 2 in the step index), ``+taylor1s`` / ``+taylor2s`` (in sigma),
``+taylor0`` (order 0: the plain reuse, for comparisons; bit-identical to no modifier).

Memory: ``order`` more cached tensors per CFG branch than the plain method, plus the forecast while a skipped step
uses it. At 163 frames (480x848) an fp32 residual of one branch is 44,520 x 3,072 x 4 B = 0.51 GiB: +1.02 GiB for
``taylor1`` and +2.04 GiB for ``taylor2`` with unbatched CFG's two branches, plus 0.51 GiB transient.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from genmo_teacache.caches.base import Modifier, ModifierState

MAX_ORDER = 2
_TAYLOR = re.compile(r"taylor(\d)(s?)")


def taylor_weights(xs: list[float], x: float, order: int) -> list[float]:
    """Weights w (one per point, oldest first) such that the order-``order`` TaylorSeer forecast at ``x`` from
    values F at coordinates ``xs`` is ``sum_i w_i F_i``. Uses the last ``order + 1`` points (fewer if fewer)."""
    xs = list(xs)[-(order + 1):]
    n = len(xs)
    if n == 0:
        raise ValueError("a forecast needs at least one computed step")

    def unit(i: int) -> list[float]:
        return [1.0 if j == i else 0.0 for j in range(n)]

    factors = [unit(0)]  # D_0, D_1, ... as weight vectors over the points, updated point by point
    for k in range(1, n):
        dx = xs[k] - xs[k - 1]
        if dx == 0:
            raise ValueError(f"two computed steps at the same coordinate {xs[k]}: cannot take differences")
        new = [unit(k)]
        for j in range(min(len(factors), order)):
            new.append([(a - b) / dx for a, b in zip(new[j], factors[j])])
        factors = new
    h = x - xs[-1]
    weights = [0.0] * n
    for j, d in enumerate(factors):
        c = h**j / math.factorial(j)
        weights = [w + c * v for w, v in zip(weights, d)]
    return weights


def forecast(history: list[tuple[int, torch.Tensor]], x: float, order: int, coordinate=float) -> torch.Tensor:
    """The forecast at coordinate ``x`` from ``history`` = [(step, value), ...] of computed steps, newest last;
    ``coordinate(step)`` maps a step to its coordinate (the step itself, or its sigma)."""
    points = history[-(order + 1):]
    weights = taylor_weights([coordinate(s) for s, _ in points], x, order)
    out = points[-1][1] * weights[-1]
    for (_, value), w in zip(points[:-1], weights[:-1]):
        out.add_(value, alpha=w)
    return out


@dataclass(frozen=True)
class Taylor(Modifier):
    key: ClassVar[str] = "taylor"
    prefixes: ClassVar[tuple[str, ...]] = ("taylor",)
    syntax: ClassVar[str] = "taylor<order 0-2>[s] (s: in sigma, else in the step index)"

    order: int = 1
    in_sigma: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.order <= MAX_ORDER:
            raise ValueError(f"Taylor forecast order {self.order}: use 0, 1 or 2 (+taylor1, +taylor2)")

    @classmethod
    def parse(cls, text: str) -> Taylor:
        m = _TAYLOR.fullmatch(text)
        if m is None:
            raise ValueError(f"modifier +{text} is not a forecast: use +{cls.syntax}, e.g. +taylor1 or +taylor2s")
        return cls(order=int(m.group(1)), in_sigma=bool(m.group(2)))

    @property
    def name(self) -> str:
        return f"taylor{self.order}{'s' if self.in_sigma else ''}"

    def fields(self) -> dict[str, Any]:
        return dict(order=self.order, variable="sigma" if self.in_sigma else "step")

    def state(self) -> TaylorState:
        return TaylorState(self)


class TaylorState(ModifierState):
    def __init__(self, config: Taylor):
        self.config = config
        self.history = config.order + 1

    def reset(self, num_steps: int, sigmas: list[float]) -> None:
        self.sigmas = list(sigmas)

    def coordinate(self, step: int) -> float:
        return float(self.sigmas[step]) if self.config.in_sigma else float(step)

    def estimate(self, step: int, history: list) -> torch.Tensor:
        return forecast(history, self.coordinate(step), self.config.order, self.coordinate)
