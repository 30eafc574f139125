"""Install a sparse attention on a DiT (per block instance, as ``speed.set_attention``), its per-step state, removal.

    state = install_sparse_attention(dit, SparseTile(0.17))   # after speed options, before compile
    state.reset(num_steps)                                      # per generation
    state.begin_step(i); ...DiT calls...; record = state.end_step()   # per step (the sampler's step hook)
    remove_sparse_attention(dit)                                # upstream's (or the speed kernel's) attention back

Every block's ``attn.sdpa_attention`` becomes one shared router (outside ``torch.compile``: a graph break, as the
FA3 kernels are). A DiT forward pre-hook learns the token grid from the latent it is given (phases ``full`` and
``prepare``) and which block comes next (``full``, ``first_block``: 0; ``blocks``: its ``start``), so the router
knows the layer of each call. Dense warm-up steps and dense layers call the attention the block had before
(``fastest``: FA3 FP8); the rest run the block-sparse kernel on the tile order (``layout``).

Context parallelism: each rank attends the whole sequence with its share of the heads (upstream's all-to-all), so
the static pattern is the same on every rank and the head classification is per head, hence rank-local; the step
record sums the ranks' head counts and averages their densities.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from genmo_teacache.sparse.config import SparseConfig, SparseHeads, SparseTopK
from genmo_teacache.sparse.kernel import (
    block_mask,
    block_sparse_attention,
    classify_heads,
    pattern_errors,
    sampled_rows,
    topk_blocks,
)
from genmo_teacache.sparse.layout import TILE, fit_window, token_layout

log = logging.getLogger(__name__)

SPATIAL_AXES, TEMPORAL_AXES = (0,), (1, 2)  # the axes each head pattern narrows (the others stay whole)


@dataclass(eq=False)
class _Plan:
    """What one sequence shape (grid, text length) needs on the attention's device."""

    perm: torch.Tensor
    inverse: torch.Tensor
    block: int
    visual: int
    seq_len: int
    keep: torch.Tensor  # (P, blocks, blocks) bool: the tile window (P=1), the spatial and temporal patterns, or none
    densities: torch.Tensor  # (P,) float32
    window: str
    text_blocks: torch.Tensor  # (blocks,) bool
    static_mask: Any = None  # the tile window's BlockMask, built on first use


@dataclass(eq=False)
class _StepLog:
    dense_step: bool
    density: list[list[Any]] = field(default_factory=list)  # per layer: floats or 0-d tensors, one per call
    spatial: list[list[Any]] = field(default_factory=list)
    windows: set[str] = field(default_factory=set)


class SparseAttentionState:
    """The sparse attention of one DiT: its config (``None``: dense everywhere), the token grid, the step, and the
    densities each step achieved (``records``)."""

    def __init__(self, config: SparseConfig | None, depth: int, *, tile: tuple[int, int, int] = TILE,
                 compiled: bool = False, seed: int = 0):
        self.config = config
        self.depth, self.tile, self.compiled, self.seed = depth, tile, compiled, seed
        self.grid: tuple[int, int, int] | None = None
        self.num_steps: int | None = None
        self.step: int | None = None
        self.layer = 0  # the block whose attention comes next (set by the DiT pre-hook)
        self.records: list[dict[str, Any]] = []
        self.warming = False  # inside the sampler's warm-up pass (begin_warm_up)
        self._plans: dict[tuple, _Plan] = {}
        self._log: _StepLog | None = None

    # -- the step protocol (the sampler's per-step hook) ---------------------------------------------------------
    def reset(self, num_steps: int) -> None:
        """A new generation of ``num_steps`` steps."""
        self.num_steps, self.step, self.records, self._log = num_steps, None, [], None

    def begin_warm_up(self) -> None:
        """The sampler's untimed warm-up pass (before step 0 of a new input shape): until :meth:`end_warm_up`, every
        call runs the dense path and the sparse one (so that both compile there, not in a timed step), returns the
        sparse one's output and records nothing."""
        self.warming, self._log = True, None

    def end_warm_up(self) -> None:
        self.warming = False

    def begin_step(self, step: int) -> None:
        self.warming = False
        if self._log is not None:
            self.end_step()
        self.step = step
        self._log = _StepLog(self.warmup_step(step), [[] for _ in range(self.depth)],
                             [[] for _ in range(self.depth)])

    def end_step(self) -> dict[str, Any] | None:
        """The step's record (also appended to ``records``), for the sampler's step record: ``density`` is the mean
        over the step's attention calls of the kept block share (1.0 for a dense call), ``layer_density`` per block
        (None where no call ran: a skipped step has none), ``spatial_heads`` per block (sparse_heads: spatial heads
        per sparse call, summed over context-parallel ranks; None for a dense block or step)."""
        lg, self._log = self._log, None
        if lg is None:
            return None
        counts = [len(c) for c in lg.density]
        spatial = [[x for x in calls if x is not None] for calls in lg.spatial]  # sparse calls only
        spatial_counts = [len(c) for c in spatial]
        sums = [sum(calls) for calls in _as_floats(lg.density + spatial)]
        density_sums, spatial_sums = _across_ranks(sums[:self.depth], sums[self.depth:])
        layer_density = [round(s / n, 5) if n else None for s, n in zip(density_sums, counts)]
        record: dict[str, Any] = {
            "token": self.config.token if self.config else None, "step": self.step, "dense_step": lg.dense_step,
            "calls": sum(counts),
            "density": round(sum(density_sums) / sum(counts), 5) if sum(counts) else None,
            "layer_density": layer_density, "windows": sorted(lg.windows),
        }
        if isinstance(self.config, SparseHeads):
            record["spatial_heads"] = [round(s / n, 3) if n else None for s, n in zip(spatial_sums, spatial_counts)]
        self.records.append(record)
        return record

    # -- decisions --------------------------------------------------------------------------------------------
    def warmup_step(self, step: int) -> bool:
        if self.config is None:
            return True
        if self.config.warmup is None and self.num_steps is None:
            raise RuntimeError(f"{self.config.token}: its dense warm-up is a share of the steps; call "
                               f"state.reset(num_steps) at the start of the generation")
        return step < self.config.warmup_steps(self.num_steps or 0)

    def dense_at(self, layer: int) -> bool:
        if self.config is None:
            return True
        if self._log is None:
            raise RuntimeError(f"{self.config.token}: no step begun: the sampler calls state.begin_step(step) before "
                               f"the step's DiT calls (or use follow_sigma_schedule)")
        return self._log.dense_step or layer < self.config.dense_layers(self.depth)

    def next_layer(self) -> int:
        layer = self.layer
        if layer >= self.depth:
            raise RuntimeError(f"sparse attention: attention call {layer + 1} since the DiT's last forward, but it "
                               f"has {self.depth} blocks; call the DiT as a module (dit(...)) so its pre-hook runs")
        self.layer += 1
        return layer

    def note(self, layer: int, density: Any, spatial: Any = None, window: str | None = None) -> None:
        if self._log is not None:
            self._log.density[layer].append(density)
            self._log.spatial[layer].append(spatial)
            if window:
                self._log.windows.add(window)

    # -- the sparse attention -------------------------------------------------------------------------------------
    def plan(self, seq_len: int, device: torch.device) -> _Plan:
        if self.grid is None:
            raise RuntimeError("sparse attention: the token grid is unknown; the DiT's pre-hook learns it from the "
                               "latent of a full or prepare call (or set state.grid = (T, H, W) in tokens)")
        visual = math.prod(self.grid)
        if seq_len < visual:
            raise ValueError(f"sparse attention: {seq_len} tokens in the attention, fewer than the {visual} visual "
                             f"tokens of the grid {self.grid}: the grid is stale (call the DiT with this latent)")
        key = (self.grid, seq_len, str(device), self.config)
        if key not in self._plans:
            layout = token_layout(self.grid, seq_len - visual, self.tile)
            target = self.config.density
            if isinstance(self.config, SparseHeads):
                fits = [fit_window(layout, target, SPATIAL_AXES), fit_window(layout, target, TEMPORAL_AXES)]
                names = ["spatial ", "temporal "]
            elif isinstance(self.config, SparseTopK):
                fits, names = [], []
            else:
                fits, names = [fit_window(layout, target)], [""]
            window = " / ".join(n + "x".join(map(str, f.window)) + " tiles" for n, f in zip(names, fits)) or "top-k"
            nb = layout.num_blocks
            self._plans[key] = _Plan(
                layout.perm.to(device), layout.inverse.to(device), layout.block, visual, seq_len,
                torch.stack([f.keep for f in fits]).to(device) if fits else torch.zeros(0, nb, nb, dtype=torch.bool),
                torch.tensor([f.density for f in fits], device=device), window, layout.text_blocks.to(device))
            log.info("%s on %s tokens + %d text: window %s, density %s", self.config.token,
                     "x".join(map(str, self.grid)), layout.text, window,
                     ", ".join(f"{f.density:.3f}" for f in fits) or "per call")
        return self._plans[key]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        plan = self.plan(q.shape[-2], q.device)
        qt, kt, vt = (x.index_select(-2, plan.perm) for x in (q, k, v))
        exact = not self.compiled
        if isinstance(self.config, SparseTopK):
            keep = topk_blocks(qt, kt, plan.block, self.config.density, self.config.SIM_THRESHOLD)
            keep[:, :, plan.text_blocks] = True
            keep[:, :, :, plan.text_blocks] = True
            mask, density, spatial = block_mask(keep, plan.seq_len, plan.block, exact=exact), keep.float().mean(), 0.0
        elif plan.keep.shape[0] == 1:
            if plan.static_mask is None:
                plan.static_mask = block_mask(plan.keep[None], plan.seq_len, plan.block, exact=exact)
            mask, density, spatial = plan.static_mask, plan.densities[0], 0.0
        else:
            seed = (self.seed * 1_000_003 + (self.step or 0)) * 1009 + layer
            rows = sampled_rows(plan.visual, SparseHeads.SAMPLED_ROWS, seed, q.device)
            choice = classify_heads(pattern_errors(qt, kt, vt, rows, plan.keep, plan.block))  # (B, heads)
            mask = block_mask(plan.keep[choice], plan.seq_len, plan.block, exact=exact)  # per batch and head
            density, spatial = plan.densities[choice].mean(), (choice == 0).sum(dim=-1).float().mean()
        self.note(layer, density, spatial, plan.window)
        out = block_sparse_attention(qt, kt, vt, mask, compiled=self.compiled)
        return out.index_select(-2, plan.inverse)


def _as_floats(lists: list[list[Any]]) -> list[list[float]]:
    """Python floats for lists of floats and 0-d tensors, with one device-to-host copy for all the tensors."""
    tensors = [x for calls in lists for x in calls if isinstance(x, torch.Tensor)]
    values = iter(torch.stack([t.float() for t in tensors]).tolist() if tensors else [])
    return [[next(values) if isinstance(x, torch.Tensor) else float(x) for x in calls] for calls in lists]


def _across_ranks(density: list[float], spatial: list[float]) -> tuple[list[float], list[float]]:
    """Under context parallelism each rank has its own heads: average the densities, add the head counts."""
    import genmo.mochi_preview.dit.joint_model.context_parallel as cp

    if not cp.is_cp_active():
        return density, spatial
    _, size = cp.get_cp_rank_size()
    t = torch.tensor(density + spatial, dtype=torch.float64)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(cp.get_cp_group()) == "nccl" \
        else torch.device("cpu")
    t = t.to(device)
    dist.all_reduce(t, group=cp.get_cp_group())
    values = t.cpu().tolist()
    n = len(density)
    return [x / size for x in values[:n]], values[n:]


# -- installing ------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Installed:
    state: SparseAttentionState
    hook: Any
    previous: list[Callable | None]  # each block's instance-level sdpa_attention before (None: upstream's method)


def _pre_hook(state: SparseAttentionState, patch: int, module: Any, args: tuple, kwargs: dict) -> None:
    phase = kwargs.get("phase", "full")
    if phase in ("full", "prepare"):
        x = args[0] if args else kwargs["x"]
        T, H, W = x.shape[-3:]
        state.grid = (T, H // patch, W // patch)
    if phase in ("full", "first_block"):
        state.layer = 0
    elif phase == "blocks":
        state.layer = kwargs.get("start", 0)


def _router(state: SparseAttentionState, dense: list[Callable]) -> Callable:
    @torch.compiler.disable
    def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        layer = state.next_layer()
        if state.warming and state.config is not None:
            dense[layer](q, k, v)
            return state.attend(layer, q, k, v)
        if state.dense_at(layer):
            state.note(layer, 1.0)
            return dense[layer](q, k, v)
        return state.attend(layer, q, k, v)

    return sdpa_attention


def install_sparse_attention(dit: torch.nn.Module, config: SparseConfig | None, *, tile: tuple[int, int, int] = TILE,
                             compiled: bool | None = None, compile_dense: bool = False,
                             seed: int = 0) -> SparseAttentionState:
    """Route every block's joint attention through the sparse attention ``config`` (None: dense, the state only
    records). Call after the speed options' attention kernel is set (it becomes the dense path) and before the blocks
    are compiled. ``compiled``: FlexAttention through ``torch.compile`` (default: on CUDA). ``compile_dense``: compile
    the dense path too (with compiled blocks, so that FP8 attention's quantisation stays fused)."""
    if getattr(dit, "_sparse_attention", None) is not None:
        raise ValueError("sparse attention is already installed on this DiT: remove_sparse_attention(dit) first")
    modes = {b.attn.attention_mode for b in dit.blocks}
    if modes != {"sdpa"}:
        raise ValueError(f"sparse attention replaces the DiT's sdpa attention; this DiT was built with attention_mode "
                         f"{sorted(modes)}: build it with attention_mode='sdpa'")
    device = next(dit.parameters()).device
    state = SparseAttentionState(config, len(dit.blocks), tile=tile,
                                 compiled=device.type == "cuda" if compiled is None else compiled, seed=seed)
    previous = [b.attn.__dict__.get("sdpa_attention") for b in dit.blocks]
    dense: list[Callable] = [p if p is not None else b.attn.sdpa_attention for p, b in zip(previous, dit.blocks)]
    if compile_dense:
        compiled_fns: dict[int, Callable] = {}
        dense = [compiled_fns.setdefault(id(fn), torch.compile(fn, dynamic=False)) if p is not None else fn
                 for fn, p in zip(dense, previous)]
    router = _router(state, dense)
    for b in dit.blocks:
        b.attn.sdpa_attention = router
    hook = dit.register_forward_pre_hook(partial(_pre_hook, state, dit.patch_size), with_kwargs=True)
    dit._sparse_attention = _Installed(state, hook, previous)
    if config is not None:
        log.info("sparse attention %s installed (%s)", config.token, config.published)
    return state


def installed_state(dit: torch.nn.Module) -> SparseAttentionState | None:
    installed = getattr(dit, "_sparse_attention", None)
    return installed.state if installed is not None else None


def remove_sparse_attention(dit: torch.nn.Module) -> SparseAttentionState | None:
    """Put back each block's attention as it was before the install; returns the removed state (its records)."""
    installed = getattr(dit, "_sparse_attention", None)
    if installed is None:
        return None
    installed.hook.remove()
    for b, fn in zip(dit.blocks, installed.previous):
        if fn is None:
            b.attn.__dict__.pop("sdpa_attention", None)
        else:
            b.attn.sdpa_attention = fn
    dit._sparse_attention = None
    return installed.state


class SparseStepHook:
    """The sampler's step-hook protocol (``model.StepHooks``: ``begin_step(info)`` before a step's DiT calls,
    ``end_step(info, record)`` after its outputs; ``info`` has ``step``, ``num_steps`` and ``grid``) around a state:
    step 0 (or a new step count) starts a new generation, the grid comes from the sampler, and the step's densities go
    to ``record.sparse_attention`` (the report's step entry). Register: ``dit.add_step_hook(SparseStepHook(state))``.
    """

    def __init__(self, state: SparseAttentionState):
        self.state = state

    def begin_step(self, info: Any) -> None:
        if getattr(info, "warm_up", False):
            self.state.reset(info.num_steps)
            self.state.grid = tuple(info.grid)
            self.state.begin_warm_up()
            return
        if info.step == 0 or self.state.num_steps != info.num_steps:
            self.state.reset(info.num_steps)
        self.state.grid = tuple(info.grid)
        self.state.begin_step(info.step)

    def end_step(self, info: Any, record: Any) -> None:
        if record is None:  # the warm-up pass
            self.state.end_warm_up()
            return
        record.sparse_attention = self.state.end_step()


def follow_sigma_schedule(dit: torch.nn.Module, state: SparseAttentionState, sigma_schedule: list[float]) -> Any:
    """For a caller without a per-step hook (upstream's ``sample_model``, a benchmark loop): begin step ``i`` when
    the DiT is called with ``sigma_schedule[i]`` (its ``full`` or ``prepare`` call; one GPU sync per call). Call
    ``state.end_step()`` after the last step. Returns the hook handle (``.remove()``)."""
    sigmas = [float(s) for s in sigma_schedule]
    state.reset(len(sigmas) - 1)

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        if kwargs.get("phase", "full") not in ("full", "prepare"):
            return
        sigma = float((args[1] if len(args) > 1 else kwargs["sigma"]).flatten()[0])
        step = min(range(len(sigmas) - 1), key=lambda i: abs(sigmas[i] - sigma))
        if step != state.step or state._log is None:
            state.begin_step(step)

    return dit.register_forward_pre_hook(hook, with_kwargs=True)
