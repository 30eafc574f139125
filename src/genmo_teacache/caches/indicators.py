"""Indicators as plug-ins: what the sampler measures before each step's decision, registered by name as methods are.

A method names its indicator (``Method.indicator``); the sampler makes one :class:`Indicator` of that name per
generation (:func:`indicator_for`) and calls it on every step:

* ``measure(ctx)`` before the decision: the number handed to the policy's ``decide`` (``raw``), summed over every
  CFG branch and context-parallel rank so that all of them decide alike; None when there is nothing to compare with
  yet (the first step) or nothing to measure;
* ``update(ctx, step, computed, outputs)`` once the step's outputs are known (every branch's, after a CFG-parallel
  exchange and the modifiers): keep what the next step compares with; a value it returns goes to the policy's
  ``observe`` (EasyCache's transformation rate).

``ctx`` (:class:`StepContext`) is what the sampler offers for the step at hand: the DiT's phases, memoised per CFG
branch, and the sums over branches and ranks. Nothing here imports upstream: the sampler does the collectives.

=========================  ==========================================================================================
``none``                   nothing: the policy decides from the step index (MagCache's calibrated ratios)
``modulated_input``        relative L1 change of block 0's modulated input from the previous step (TeaCache)
``first_block_residual``   relative L1 change of block 0's residual from the previous step, or from the last computed
                           one (``Method.compare_with_last_computed``: first-block cache)
``model_io``               the DiT's input change from the previous step over the last computed output's magnitude,
                           and after each computed step the output-over-input change rate (EasyCache)
=========================  ==========================================================================================

Adding one: a subclass here with its ``name``, one entry in :data:`INDICATORS`, and the method that names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import torch


class StepContext(Protocol):
    """What the sampler offers indicators and reuse points during one denoising step (see sampler.py)."""

    dit: Any  # model.TeaCacheAsymmDiTJoint (or FSDP around it): its phases, called as dit(..., phase=...)
    z: torch.Tensor  # this step's input latent (both CFG halves when CFG is batched)
    branches: list[str]  # the CFG branches this rank runs: "cond" and "uncond", one of them, or "batched"

    def inputs(self, branch: str) -> Any:
        """``model.StepInputs`` of the branch (the ``prepare`` phase), once per step."""

    def first_block(self, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Block 0's output (visual tokens, text tokens) for the branch, once per step."""

    def relative_l1(self, current: list[torch.Tensor], previous: list[torch.Tensor]) -> float:
        """sum |current - previous| / sum |previous| over the tensors (one per branch) and every rank."""


class Indicator:
    """Base of an indicator: one per generation. The default measures nothing (``none``)."""

    name: ClassVar[str] = "none"

    def __init__(self, compare_with_last_computed: bool = False):
        self.compare_with_last_computed = compare_with_last_computed

    def measure(self, ctx: StepContext) -> float | None:
        return None

    def update(self, ctx: StepContext, step: int, computed: bool, outputs: dict[str, torch.Tensor]) -> float | None:
        return None


class _RelativeChange(Indicator):
    """The relative L1 change of a per-branch tensor (``signal``) from the one kept at the previous step, or at the
    last computed step (``compare_with_last_computed``)."""

    def __init__(self, compare_with_last_computed: bool = False):
        super().__init__(compare_with_last_computed)
        self.kept: dict[str, torch.Tensor] = {}
        self.current: dict[str, torch.Tensor] = {}

    def signal(self, ctx: StepContext, branch: str) -> torch.Tensor:
        raise NotImplementedError

    def measure(self, ctx: StepContext) -> float | None:
        self.current = {b: self.signal(ctx, b) for b in ctx.branches}
        if any(b not in self.kept for b in ctx.branches):
            return None
        return ctx.relative_l1([self.current[b] for b in ctx.branches], [self.kept[b] for b in ctx.branches])

    def update(self, ctx: StepContext, step: int, computed: bool, outputs: dict[str, torch.Tensor]) -> float | None:
        if computed or not self.compare_with_last_computed:
            self.kept.update(self.current)
        self.current = {}
        return None


class ModulatedInput(_RelativeChange):
    name: ClassVar[str] = "modulated_input"

    def signal(self, ctx: StepContext, branch: str) -> torch.Tensor:
        return ctx.dit(ctx.inputs(branch), phase="modulated_input")


class FirstBlockResidual(_RelativeChange):
    name: ClassVar[str] = "first_block_residual"

    def signal(self, ctx: StepContext, branch: str) -> torch.Tensor:
        return ctx.first_block(branch)[0].float() - ctx.inputs(branch).x.float()


def _cond(t: torch.Tensor) -> torch.Tensor:
    return t[:1]  # the cond half of a batched call, or the one latent of an unbatched branch


def _abs_sum(t: torch.Tensor) -> float:
    return t.float().abs().sum().double().item()


class ModelIO(Indicator):
    """EasyCache's input change ``mean |x_t - x_{t-1}| / mean |last computed cond output|`` (x: the DiT's input), and
    after a computed step the transformation rate ``k = |out_t - out_last| / |x_t - x_last|`` between the last two
    computed steps (cond branch). Every rank holds the whole latent and output: no sums over ranks are needed."""

    name: ClassVar[str] = "model_io"

    def __init__(self, compare_with_last_computed: bool = False):
        super().__init__(compare_with_last_computed)
        self.previous_input: torch.Tensor | None = None
        self.input: torch.Tensor | None = None  # of the last computed step
        self.output: torch.Tensor | None = None  # its cond output

    def measure(self, ctx: StepContext) -> float | None:
        if self.output is None or self.previous_input is None:
            return None
        return _abs_sum(_cond(ctx.z) - _cond(self.previous_input)) / _abs_sum(self.output)

    def update(self, ctx: StepContext, step: int, computed: bool, outputs: dict[str, torch.Tensor]) -> float | None:
        self.previous_input = ctx.z
        if not computed:
            return None
        out = _cond(outputs["batched"] if "batched" in outputs else outputs["cond"])
        rate = None
        if self.output is not None:
            input_change = _abs_sum(_cond(ctx.z) - _cond(self.input))
            rate = _abs_sum(out - self.output) / input_change if input_change > 0 else float("inf")
        self.output, self.input = out, ctx.z
        return rate


INDICATORS: dict[str, type[Indicator]] = {cls.name: cls for cls in (Indicator, ModulatedInput, FirstBlockResidual,
                                                                      ModelIO)}


def indicator_for(method: Any) -> Indicator:
    """A new indicator (one generation) of the kind ``method`` (a ``caches.base.Method``) names."""
    try:
        cls = INDICATORS[method.indicator]
    except KeyError:
        raise ValueError(f"method {method.key} names the indicator {method.indicator!r}, which is not registered: use "
                         f"one of {', '.join(INDICATORS)} (caches.indicators)") from None
    return cls(compare_with_last_computed=method.compare_with_last_computed)
