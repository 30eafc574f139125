"""CFG cache (FasterCache's CFG-Cache: Lv et al., "FasterCache: Training-Free Video Diffusion Model Acceleration
with High Quality", ICLR 2025, github Vchitect/FasterCache): on some computed steps only the conditional branch runs
the DiT, and the unconditional output is rebuilt from the conditional one and the cond-uncond difference cached at
the last step where both branches ran, split into low and high spatial frequencies that are weighted apart.

What FasterCache's patched copy of Genmo's native Mochi sampler does (``sample_model_fastercache`` in
``fastercache/models/genmo/mochi_preview/pipelines.py``, Vchitect/FasterCache commit 02d05ef; 64 steps, unbatched
CFG), and what this modifier does:

* **Which steps are cond-only:** ``step >= 22 and step % 5 != 0 and step != 63`` (63: the last step): 33 of the
  64 steps (22-62 except 25, 30, ..., 60). Here: ``step >= start``, ``step % interval != 0``, not the last step, on a
  step the step cache computes, once a difference is cached, and only while that difference is fresh: measured
  fewer than ``interval`` steps before (see below).
* **The cached difference:** on a step where both branches run, each output (B, C, T, H, W) is transformed per
  latent frame and channel with a 2-D FFT over (H, W) and shifted (zero frequency in the centre). The low band is
  the disc of radius ``min(H, W) // 5`` around the centre (``(x - W//2)^2 + (y - H//2)^2 <= r^2``), the high band
  the rest; ``dLF = LF(uncond) - LF(cond)``, ``dHF = HF(uncond) - HF(cond)``. FasterCache records them from step 20
  on (no earlier step uses them); here on every step where both branches run, which gives the same result when every
  step is computed.
* **The reconstruction** on a cond-only step, with the Mochi sampler's weights: first ``dHF *= 1.25`` if
  ``step >= 30`` and ``dLF *= 1.15`` if ``step <= 50`` (the cached differences themselves are scaled, so the weights
  compound over consecutive cond-only steps until the next full step records fresh ones), then
  ``uncond = Re IFFT2(ifftshift((dLF + LF(cond)) + (dHF + HF(cond))))``. The same operations in the same order. (The
  1.2 / 1.05 weights elsewhere in that repository are those of its other models' samplers: Open-Sora-Plan, Vchitect.)
* **Stale differences:** FasterCache refreshes the difference every ``interval`` steps (the multiples of 5 run both
  branches), so a cond-only step never uses one older than 4 steps. A step cache may skip those refresh steps; then a
  computed step whose cached difference is ``interval`` or more steps old runs both branches (and caches a fresh
  one) instead of rebuilding uncond from it. Each cond-only step records the age of the difference it used
  (``difference_age`` in the step record: its step minus the step that measured it).
* FasterCache also reuses attention outputs inside the blocks (its other half); the step caches stand in for that.
  With batched CFG its Mochi code computes both branches on every step; here ``+cfg`` with batched CFG is refused
  before anything loads (one batched call cannot drop half of itself).

Mode suffix: ``+cfg`` = ``+cfg_s22_i5_h30_l50``, FasterCache's schedule for Mochi's 64 steps (the step numbers are
absolute, whatever the run's length). ``_s<step>`` the first cond-only step, ``_i<n>`` every n-th step runs both
branches (``_i1``: never cond-only), ``_h<step>`` the first step whose cond-only reconstruction scales dHF,
``_l<step>`` the last that scales dLF. Only what differs from the default is written.

Under context parallelism the outputs are whole on every rank (``finish`` all-gathers), decisions depend on the step
index alone, so every rank rebuilds the same tensor; under CFG-parallel the uncond rank idles on cond-only steps and
rebuilds the uncond output from the cond output it receives. Memory: the two differences, complex64 of the latent's
size (2 x 17 MB at 163 frames, 480x848).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from genmo_teacache.caches.base import Modifier, ModifierState, StepRecord

# FasterCache's Mochi sampler: Vchitect/FasterCache 02d05ef, fastercache/models/genmo/mochi_preview/pipelines.py,
# sample_model_fastercache (``cnt >= 22 and cnt % 5 != 0 and cnt != 63``; ``if cnt >= 30: cfg_delta_high *= 1.25``;
# ``if cnt <= 50: cfg_delta_low *= 1.15``)
DEFAULT_START = 22  # the first cond-only step
DEFAULT_INTERVAL = 5  # steps divisible by 5 run both branches
DEFAULT_HIGH_FROM = 30  # dHF *= HIGH_WEIGHT on cond-only steps from here
DEFAULT_LOW_UNTIL = 50  # dLF *= LOW_WEIGHT on cond-only steps up to here
HIGH_WEIGHT = 1.25
LOW_WEIGHT = 1.15
RADIUS_DIVISOR = 5  # low band: radius min(H, W) // 5 around the centre of the shifted spectrum
_CFG = re.compile(r"cfg(?:_s(\d+))?(?:_i(\d+))?(?:_h(\d+))?(?:_l(\d+))?")


def low_frequency_mask(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) bool: True inside the disc of radius ``min(H, W) // 5`` around the centre of a shifted spectrum."""
    radius = min(height, width) // RADIUS_DIVISOR
    y = torch.arange(height, device=device)[:, None]
    x = torch.arange(width, device=device)[None, :]
    return (x - width // 2) ** 2 + (y - height // 2) ** 2 <= radius**2


def split_frequencies(t: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high): the shifted 2-D spectrum over the last two dims of ``t`` (fp32) inside and outside ``mask``."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(t.float()), dim=(-2, -1))
    return spectrum * mask, spectrum * ~mask


def frequency_difference(cond: torch.Tensor, uncond: torch.Tensor, mask: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dLF, dHF) = the uncond output's low / high band minus the cond output's."""
    low_u, high_u = split_frequencies(uncond, mask)
    low_c, high_c = split_frequencies(cond, mask)
    return low_u - low_c, high_u - high_c


def reconstruct_uncond(cond: torch.Tensor, delta_low: torch.Tensor, delta_high: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """FasterCache's unconditional output from this step's cond output and the (weighted) cached differences."""
    low_c, high_c = split_frequencies(cond, mask)
    combined = (delta_low + low_c) + (delta_high + high_c)
    return torch.fft.ifft2(torch.fft.ifftshift(combined, dim=(-2, -1))).real.contiguous()


@dataclass(frozen=True)
class CfgCache(Modifier):
    key: ClassVar[str] = "cfgcache"
    prefixes: ClassVar[tuple[str, ...]] = ("cfg",)
    syntax: ClassVar[str] = "cfg[_s<first step>][_i<interval>][_h<step>][_l<step>] (default cfg_s22_i5_h30_l50)"

    start: int = DEFAULT_START
    interval: int = DEFAULT_INTERVAL
    high_from: int = DEFAULT_HIGH_FROM
    low_until: int = DEFAULT_LOW_UNTIL

    def __post_init__(self) -> None:
        if self.start < 1:
            raise ValueError(f"CFG cache start step {self.start}: use 1 or more (a step where both branches ran "
                             f"must come first)")
        if self.interval < 1:
            raise ValueError(f"CFG cache interval {self.interval}: use 1 or more (every n-th step runs both "
                             f"branches; 1 = never cond-only)")
        for name in ("high_from", "low_until"):
            if getattr(self, name) < 0:
                raise ValueError(f"CFG cache {name}={getattr(self, name)}: use a step number >= 0")

    @classmethod
    def parse(cls, text: str) -> CfgCache:
        m = _CFG.fullmatch(text)
        if m is None:
            raise ValueError(f"modifier +{text} is not a CFG cache: use +{cls.syntax}")
        values = [None if g is None else int(g) for g in m.groups()]
        defaults = (DEFAULT_START, DEFAULT_INTERVAL, DEFAULT_HIGH_FROM, DEFAULT_LOW_UNTIL)
        return cls(*(d if v is None else v for v, d in zip(values, defaults)))

    @property
    def name(self) -> str:
        parts = [(tag, v) for tag, v, d in (("s", self.start, DEFAULT_START), ("i", self.interval, DEFAULT_INTERVAL),
                                           ("h", self.high_from, DEFAULT_HIGH_FROM),
                                           ("l", self.low_until, DEFAULT_LOW_UNTIL)) if v != d]
        return "cfg" + "".join(f"_{tag}{v}" for tag, v in parts)

    def cond_only(self, step: int, num_steps: int) -> bool:
        """Whether ``step`` runs the cond branch alone (if the step cache computes it and a difference measured
        fewer than ``interval`` steps before is cached)."""
        return step >= self.start and step % self.interval != 0 and step != num_steps - 1

    def cond_only_steps(self, num_steps: int) -> list[int]:
        return [s for s in range(num_steps) if self.cond_only(s, num_steps)]

    def extra_forward_fraction(self, num_steps: int) -> float:
        """Half the forwards of the cond-only share of the steps (the uncond branch of each)."""
        return 0.5 * len(self.cond_only_steps(num_steps)) / num_steps if num_steps else 0.0

    def check(self, num_steps: int, *, batch_cfg: bool = False) -> list[str]:
        if batch_cfg:
            raise ValueError(f"+{self.name} skips the unconditional DiT call on some steps, which batched CFG does "
                             f"not make (both branches are one call): drop --batch_cfg, or the +{self.name} modifier")
        if not self.cond_only_steps(num_steps):
            return [f"+{self.name}: no step of this {num_steps}-step run is cond-only (the schedule starts at step "
                    f"{self.start}; lower it with +cfg_s<step>)"]
        return []

    def fields(self) -> dict[str, Any]:
        return dict(start=self.start, interval=self.interval, high_from=self.high_from, low_until=self.low_until,
                    high_weight=HIGH_WEIGHT, low_weight=LOW_WEIGHT, low_band_radius=f"min(H, W) // {RADIUS_DIVISOR}")

    def state(self) -> CfgCacheState:
        return CfgCacheState(self)


class CfgCacheState(ModifierState):
    """Per generation: the cached frequency differences (and the step that measured them), and the decision per
    computed step."""

    def __init__(self, config: CfgCache):
        self.config = config

    def reset(self, num_steps: int, sigmas: list[float]) -> None:
        self.num_steps = num_steps
        self.delta: tuple[torch.Tensor, torch.Tensor] | None = None  # (dLF, dHF) of the last full step, weighted since
        self.delta_step: int | None = None  # the step where both branches ran and measured it
        self.age: int | None = None  # this step's: the age of the difference a cond-only step used
        self.masks: dict[tuple, torch.Tensor] = {}

    def mask(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.shape[-2], t.shape[-1], t.device)
        if key not in self.masks:
            self.masks[key] = low_frequency_mask(t.shape[-2], t.shape[-1], t.device)
        return self.masks[key]

    def run_branches(self, step: int, branches: list[str]) -> list[str]:
        if self.delta is None or not {"cond", "uncond"} <= set(branches):
            return branches
        if not self.config.cond_only(step, self.num_steps):
            return branches
        if step - self.delta_step >= self.config.interval:  # stale: a step cache skipped FasterCache's refresh
            return branches
        return [b for b in branches if b != "uncond"]

    def fill(self, step: int, outputs: dict, ran: list[str]) -> None:
        self.age = None
        if "cond" not in ran:
            return  # a skipped step (each branch reused its cache) or batched CFG
        cond = outputs["cond"]
        if "uncond" in ran:
            self.delta = frequency_difference(cond, outputs["uncond"], self.mask(cond))
            self.delta_step = step
            return
        self.age = step - self.delta_step
        delta_low, delta_high = self.delta
        if step >= self.config.high_from:
            delta_high = delta_high * HIGH_WEIGHT
        if step <= self.config.low_until:
            delta_low = delta_low * LOW_WEIGHT
        self.delta = (delta_low, delta_high)
        outputs["uncond"] = reconstruct_uncond(cond, delta_low, delta_high, self.mask(cond))

    def annotate(self, record: StepRecord) -> None:
        record.difference_age = self.age
