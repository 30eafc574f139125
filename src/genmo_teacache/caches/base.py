"""What every cache method declares, and what its policy records.

A method is one module in this package: a frozen config dataclass (subclass of :class:`Method`) that parses and
prints its mode names, validates itself, names the indicator the sampler measures for it (``indicator``, one of
:mod:`.indicators`) and the point a skipped step reuses from (``reuse``, one of :mod:`.reuse`), makes its policy,
and says how the test suites exercise it (``test_modes``). A policy (:class:`Policy`) is pure Python on the numbers
the sampler hands in (no tensors, no genmo import): ``reset`` at the start of a generation, ``decide`` once per
denoising step, and ``observe`` after a computed step with what the indicator learnt (EasyCache's rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from genmo_teacache.caches.indicators import Indicator
from genmo_teacache.caches.reuse import Blocks

NUM = r"(\d+(?:\.\d*)?(?:e-?\d+)?)"  # a non-negative number as mode names write it


def fmt(value: float) -> str:
    """A number as mode names write it: ``repr`` of the float, so names round-trip exactly."""
    return repr(float(value))


def check_threshold(value: float, where: str = "") -> float:
    """``value`` as a float; raises ValueError naming it unless it is finite and >= 0."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"threshold {value}{where} must be a finite number >= 0")
    return value


@dataclass
class StepRecord:
    """One denoising step as the policy saw it.

    ``reason``: first, last, threshold, skip, max_skips, out_of_range, no_cache (baseline), observe (indicator
    recorded, skipping off), warmup / retention (steps a method always computes), pattern (benchmarks).
    ``raw`` is the indicator the sampler measured (None on the first step or for indicator ``none``), ``rescaled``
    what the policy made of it, ``accumulated`` the policy's running sum when it decided.
    """

    step: int
    sigma: float
    threshold: float
    raw: float | None
    rescaled: float | None
    accumulated: float
    computed: bool
    reason: str
    # observe-only runs (calibration): relative L1 change of the blocks' residual (sum over branches) and the
    # ratio of its mean magnitude to the previous step's
    residual_change: float | None = None
    residual_ratio: float | None = None
    mag_ratio: float | None = None  # MagCache: the calibrated magnitude ratio this step used
    rate: float | None = None  # EasyCache: the transformation rate k in force when it decided
    # CFG cache, on a cond-only step: how many steps before this one the reused cond-uncond difference was measured
    difference_age: int | None = None
    # which CFG branches ran the DiT this step (filled by the sampler; a CFG-cache modifier may drop one)
    branches: list[str] | None = None
    # what a step hook recorded for this step (sparse attention: the density each step achieved, per block)
    sparse_attention: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Policy:
    """Everything the sampler calls on a policy: ``reset`` at the start of a generation, ``decide`` once per denoising
    step (``raw``: the indicator's value, None on the first step or for the indicator ``none``), ``observe`` after a
    computed step with what the indicator learnt (EasyCache's transformation rate; ignored by default). A policy
    handed to the sampler in place of its config's (benchmarks: :class:`~.pattern.PatternPolicy`) names the method
    whose indicator and reuse point it runs with (``method``; None: the config's) and what its report records as
    the cache config (``describe``)."""

    method: Method | None = None

    def reset(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def decide(self, step: int, sigma: float, raw: float | None) -> StepRecord:
        raise NotImplementedError

    def observe(self, step: int, value: float) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"mode": type(self).__name__, "method": getattr(self.method, "key", None)}


class Method:
    """Base of every method's frozen config dataclass. Subclasses set the class attributes and implement
    ``parse``, ``name``, ``policy`` and ``computed_fraction``; ``to_dict`` adds their fields."""

    key: ClassVar[str]  # the method's name in sidecars and tables ("teacache", "magcache", ...)
    prefixes: ClassVar[tuple[str, ...]]  # mode-name prefixes it parses ("fixed_", "adaptive_", ...)
    # other tools' names it also parses (the reference workflow's), taken with a note and never offered as a choice
    aliases: ClassVar[tuple[str, ...]] = ()
    syntax: ClassVar[str]  # its mode grammar, for error messages
    indicator: ClassVar[str] = Indicator.name  # a name in indicators.INDICATORS
    reuse: ClassVar[str] = Blocks.name  # a name in reuse.REUSE_POINTS
    compare_with_last_computed: ClassVar[bool] = False  # indicator against the last computed step, not the previous
    uses_calibration: ClassVar[bool] = False  # reads a calibration file (genmo-teacache calibrate)
    enabled: ClassVar[bool] = True
    # Observe-only runs (delta-TEMNI plots, calibration) record this method's indicator on every step, whatever the
    # mode: exactly one registered method sets it (caches.observed_method), and implements ``observer`` and
    # ``policy(observe_only=True)`` (every step computed, the indicator recorded).
    observed: ClassVar[bool] = False
    # The modes the test suites run on their 8-step tiny model (tests/caches, tests/multigpu; TeaCache's default
    # polynomial, magnitude ratios 1 +- 0.01): [0] computes some steps and skips others, with two computed steps before
    # a skip; [1], its "threshold 0", computes every step.
    test_modes: ClassVar[tuple[str, ...]] = ()
    # Its own command-line flags, if any (TeaCache: those of upstream's TeaCache demo), and how errors name them.
    cli_flags: ClassVar[str] = ""

    @classmethod
    def parse(cls, name: str, calibration: Any = None) -> Method:
        """The config a mode name (without ``mochi_`` and modifiers) describes; ValueError naming it if malformed.
        ``calibration`` is a :class:`genmo_teacache.coefficients.Calibration` or None."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        raise NotImplementedError

    def policy(self) -> Policy:
        raise NotImplementedError

    @classmethod
    def observer(cls) -> Method:
        """The config whose policy observe-only runs of other methods' modes use (the ``observed`` method only)."""
        raise NotImplementedError(f"{cls.key} is not the observed method")

    @classmethod
    def click_options(cls) -> list[Callable[[Any], Any]]:
        """click decorators of the method's own flags (``options.cache_options`` adds those of every method)."""
        return []

    @classmethod
    def from_flags(cls, options: Mapping[str, Any], calibration: Any = None) -> Method | None:
        """The config the method's own flags describe (``options``: the command's keyword arguments), or None when
        none of them is given. ValueError naming a bad or conflicting flag."""
        return None

    def computed_fraction(self, num_steps: int) -> float:
        """Expected share of the denoising steps computed (1.0 for the baseline): batch's cost model."""
        raise NotImplementedError

    def check(self, num_steps: int) -> list[str]:
        """Raise ValueError if the config cannot run ``num_steps`` steps; return warnings for what it will not do."""
        return []

    def fields(self, num_steps: int | None = None) -> dict[str, Any]:
        return {}

    def with_options(self, *, max_skips: int | None = None, range_guard: bool = True) -> Method:
        """The generic command-line overrides: at most ``max_skips`` consecutive skips, the range guard on or off.
        A method applies those it has and ignores the others."""
        return self

    def to_dict(self, num_steps: int | None = None) -> dict[str, Any]:
        return {"mode": self.name, "method": self.key, **self.fields(num_steps)}

    def __str__(self) -> str:
        return self.name


class Modifier:
    """Base of a modifier's frozen config dataclass: something any method can take, written as a ``+<name>``
    suffix of the mode name (``fixed_0.06+cfg``, ``easycache_0.05+taylor1``). ``state()`` makes the per-generation
    object the sampler drives (see :class:`ModifierState`)."""

    key: ClassVar[str]  # "cfgcache", "taylor", ...
    prefixes: ClassVar[tuple[str, ...]]  # what its suffix starts with ("cfg", "taylor")
    aliases: ClassVar[tuple[str, ...]] = ()  # as Method.aliases
    syntax: ClassVar[str]

    @classmethod
    def parse(cls, text: str) -> Modifier:
        raise NotImplementedError

    @property
    def name(self) -> str:
        raise NotImplementedError

    def state(self) -> ModifierState:
        raise NotImplementedError

    def extra_forward_fraction(self, num_steps: int) -> float:
        """Batch's cost model: the share of a computed step's DiT forwards this modifier removes (0 by default)."""
        return 0.0

    def check(self, num_steps: int, *, batch_cfg: bool = False) -> list[str]:
        """Raise ValueError if it cannot run ``num_steps`` steps (or with batched CFG); return warnings."""
        return []

    def fields(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"modifier": self.key, "name": self.name, **self.fields()}


class ModifierState:
    """What a modifier may change in the sampler, per generation; the defaults change nothing.

    * ``run_branches``: on a computed step, the CFG branches that run the DiT (a CFG cache drops ``uncond``);
    * ``fill``: afterwards, put the outputs of branches that did not run into ``outputs`` (and learn from those that
      did); called on every step with the branches that ran (none on a skipped step);
    * ``annotate``: then write what it did this step into the step's record (the sidecar's per-step fields);
    * ``history``: how many cached values (the reused quantity of past computed steps) the sampler keeps per branch,
      newest last, and ``estimate``: what a skipped step reuses, from that history (forecasting).
    """

    history: int = 1

    def reset(self, num_steps: int, sigmas: list[float]) -> None:
        pass

    def run_branches(self, step: int, branches: list[str]) -> list[str]:
        return branches

    def fill(self, step: int, outputs: dict, ran: list[str]) -> None:
        pass

    def annotate(self, record: StepRecord) -> None:
        pass

    def estimate(self, step: int, history: list) -> Any:
        return history[-1][1]
