"""Reuse points as plug-ins: what a skipped step adds its cached difference to, registered by name as methods are.

A method names its reuse point (``Method.reuse``). Per CFG branch, a computed step runs the DiT from the reuse point's
``entry`` on (``compute``) and the sampler caches, in fp32, the difference between what ``compute`` returns after the
reused part and the entry; a skipped step adds that difference (or a modifier's forecast of it) to the entry and
``finish`` turns the sum into the DiT's output. ``ctx`` is the sampler's :class:`~.indicators.StepContext`.

=====================  ==============================================================================================
``blocks``             embedded tokens + cached residual of all blocks; the final layer runs with this step's
                       modulation
``after_first_block``  block 0's output + cached residual of blocks 1..N; block 0 and the final layer run
``model``              DiT input latent + cached (output - input): nothing of the DiT runs
=====================  ==============================================================================================

Adding one: a subclass here with its ``name`` and one entry in :data:`REUSE_POINTS`, and the method that names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from genmo_teacache.caches.indicators import StepContext


class ReusePoint:
    """Stateless: one instance serves every generation."""

    name: ClassVar[str]

    def entry(self, ctx: StepContext, branch: str) -> tuple[torch.Tensor, Any]:
        """What a skip adds the cached difference to, and what the DiT's part after it needs besides (or None)."""
        raise NotImplementedError

    def compute(self, ctx: StepContext, branch: str, entry: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
        """Run the DiT from ``entry`` on: (its output in fp32, the value after the reused part)."""
        raise NotImplementedError

    def finish(self, ctx: StepContext, branch: str, value: torch.Tensor) -> torch.Tensor:
        """The DiT's output (fp32) of a skipped step from ``value``, the entry plus the cached difference."""
        return ctx.dit(value, ctx.inputs(branch), phase="finish").float()


class Blocks(ReusePoint):
    name: ClassVar[str] = "blocks"

    def entry(self, ctx: StepContext, branch: str) -> tuple[torch.Tensor, Any]:
        return ctx.inputs(branch).x, None

    def compute(self, ctx: StepContext, branch: str, entry: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
        x = ctx.dit(ctx.inputs(branch), phase="blocks")
        return ctx.dit(x, ctx.inputs(branch), phase="finish").float(), x


class AfterFirstBlock(ReusePoint):
    name: ClassVar[str] = "after_first_block"

    def entry(self, ctx: StepContext, branch: str) -> tuple[torch.Tensor, Any]:
        return ctx.first_block(branch)

    def compute(self, ctx: StepContext, branch: str, entry: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
        x = ctx.dit(ctx.inputs(branch), phase="blocks", start=1, state=entry)
        return ctx.dit(x, ctx.inputs(branch), phase="finish").float(), x


class Model(ReusePoint):
    name: ClassVar[str] = "model"

    def entry(self, ctx: StepContext, branch: str) -> tuple[torch.Tensor, Any]:
        return ctx.z, None

    def compute(self, ctx: StepContext, branch: str, entry: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
        x = ctx.dit(ctx.inputs(branch), phase="blocks")
        out = ctx.dit(x, ctx.inputs(branch), phase="finish").float()
        return out, out

    def finish(self, ctx: StepContext, branch: str, value: torch.Tensor) -> torch.Tensor:
        return value.float()


REUSE_POINTS: dict[str, ReusePoint] = {p.name: p for p in (Blocks(), AfterFirstBlock(), Model())}


def reuse_point_for(method: Any) -> ReusePoint:
    """The reuse point ``method`` (a ``caches.base.Method``) names."""
    try:
        return REUSE_POINTS[method.reuse]
    except KeyError:
        raise ValueError(f"method {method.key} names the reuse point {method.reuse!r}, which is not registered: use "
                         f"one of {', '.join(REUSE_POINTS)} (caches.reuse)") from None
