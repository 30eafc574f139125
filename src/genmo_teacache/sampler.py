"""The native Euler sampler (upstream ``pipelines.sample_model``) with a step cache.

With caching off it gives latents bit-identical to upstream's: the same operations, except that what does not
change between steps (pooled text, RoPE) is computed once per generation. With caching on, each denoising step
makes one decision for all CFG branches, all context-parallel ranks and all CFG-parallel ranks: the method's
indicator is summed over every branch and every rank before its policy decides, so batched, unbatched and
CFG-parallel CFG decide alike.

The sampler names no method and no indicator: it drives what the cache config declares, each a registered plug-in.

* the indicator (``caches.indicators``, one per generation): ``measure`` before the decision, ``update`` once the
  step's outputs are known (what it returns goes to the policy's ``observe``);
* the policy (``caches.base.Policy``): ``reset``, ``decide`` once per step, ``observe``;
* the reuse point (``caches.reuse``): a computed step runs the DiT from its ``entry`` on and caches, per branch, the
  difference across the part a skipped step reuses (fp32); a skipped step adds that cached difference (or a
  modifier's forecast of it) to the entry instead of running that part, and ``finish`` makes the output;
* modifiers (``caches.base.ModifierState``) may drop a branch on a computed step and fill in its output (CFG cache),
  or forecast what a skip reuses.

Plug-ins see this step through :class:`_StepCache`, the ``caches.indicators.StepContext``: the DiT's phases memoised
per CFG branch (``inputs``, ``first_block``) and the sums over branches and ranks (``relative_l1``). Observe-only runs
(delta-TEMNI plots, calibration) measure as the observed method does (``caches.observed_method``) and skip nothing.

Step hooks: anything that needs per-step state inside the DiT (e.g. an attention kernel with dense warm-up steps that
records what it did) registers itself on the DiT (``model.TeaCacheAsymmDiTJoint.add_step_hook``); the sampler calls
every hook of the DiT it samples with, on every step and every rank, whatever the cache::

    hook.begin_step(info: model.StepInfo) -> None                   # before any DiT call of the step
    hook.end_step(info: model.StepInfo, record: StepRecord) -> None # after the step's outputs; may fill the record

``StepInfo(step, num_steps, sigma, grid)``: the step index (0-based), the number of steps, its sigma and the visual
token grid of the whole video (latent frames, rows and columns after patching). ``record`` is the step's
:class:`~genmo_teacache.caches.base.StepRecord`, written to the report's ``steps``. The untimed warm-up pass of a new
input shape (:func:`warm_up`) is bracketed the same way, with ``info.warm_up`` True and ``record`` None, so that a
hook can warm what its steps will run.

CFG-parallel (``branch_group``): the two CFG branches run on two ranks (each with the whole model, or its own
context-parallel group); each step's outputs are exchanged once, and both ranks combine them exactly as one GPU
does, so the latents are bit-identical to one GPU's.

Timing: each step's time is taken after synchronising its device (on a GPU a step's kernels would otherwise run on
into the next step's time), on every rank. What the first call of an input shape costs beyond the work itself
(torch.compile, lazy CUDA / cuBLAS / cuDNN initialisation, kernel loading) is taken by an untimed warm-up pass
(:func:`warm_up`) and reported apart (``CacheReport.warmup_s``), out of every step time.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from einops import repeat

from genmo_teacache.caches import CacheConfig, StepRecord, observed_method
from genmo_teacache.caches.base import ModifierState, Policy
from genmo_teacache.caches.indicators import indicator_for
from genmo_teacache.caches.reuse import reuse_point_for
from genmo_teacache.model import StepInfo
from genmo_teacache.upstream import cp, dit_latents_to_vae_latents, get_new_progress_bar, pipelines

SPATIAL_DOWNSAMPLE = 8
TEMPORAL_DOWNSAMPLE = 6
IN_CHANNELS = 12


@dataclass
class CacheReport:
    """What the cache did during one generation."""

    config: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    dit_calls: int = 0  # DiT forwards over all CFG branches (a batched-CFG call counts once)
    warnings: list[str] = field(default_factory=list)
    warmup_s: float = 0.0  # the warm-up pass before step 0 (0 when the DiT had run this shape before)

    @property
    def computed_steps(self) -> int:
        return sum(r.computed for r in self.steps)

    @property
    def skipped_steps(self) -> int:
        return len(self.steps) - self.computed_steps

    @property
    def forwards_per_step(self) -> int:
        """DiT forwards of a step that runs every CFG branch (2 unbatched, 1 batched)."""
        return max((len(r.branches or ()) for r in self.steps), default=1) or 1

    @property
    def cond_only_steps(self) -> int:
        """Computed steps on which a CFG cache ran the cond branch alone."""
        return sum(r.computed and len(r.branches or ()) < self.forwards_per_step for r in self.steps)

    @property
    def ideal_speedup(self) -> float:
        """Denoising speedup if a skipped step (or branch) cost nothing: the baseline's forwards / forwards run."""
        return len(self.steps) * self.forwards_per_step / max(self.dit_calls, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.config.get("mode"),
            "cache": self.config,
            "num_steps": len(self.steps),
            "computed_steps": self.computed_steps,
            "skipped_steps": self.skipped_steps,
            "cond_only_steps": self.cond_only_steps,
            "ideal_speedup": self.ideal_speedup,
            "dit_calls": self.dit_calls,
            "warmup_s": self.warmup_s,
            "warnings": self.warnings,
            "steps": [dict(r.to_dict(), seconds=s) for r, s in zip(self.steps, self.step_seconds)],
        }

    def summary(self) -> str:
        n = len(self.steps)
        skipped = [r.step for r in self.steps if not r.computed]
        cond_only = f" ({self.cond_only_steps} cond-only)" if self.cond_only_steps else ""
        return (f"{self.config.get('mode')}: computed {self.computed_steps}/{n} steps{cond_only}, skipped "
                f"{len(skipped)} ({100 * len(skipped) / max(n, 1):.0f}%), {self.dit_calls} DiT forwards; ideal "
                f"denoising speedup {self.ideal_speedup:.2f}x" + (f"; skipped steps {skipped}" if skipped else ""))


@dataclass
class SampleResult:
    latents: torch.Tensor
    report: CacheReport


def _all_reduce_sum(t: torch.Tensor, branch_group: Any = None) -> torch.Tensor:
    """Sum over the context-parallel group (token shards) and the CFG-parallel group (branches)."""
    if cp.is_cp_active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=cp.get_cp_group())
    if branch_group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=branch_group)
    return t


def relative_l1(current: list[torch.Tensor], previous: list[torch.Tensor], branch_group: Any = None) -> float:
    """sum |cur - prev| / sum |prev| over all tensors (CFG branches) and all ranks. Each tensor's sums are taken in
    fp32 and added in fp64, so the CFG branches give the same number on one GPU and split over two."""
    num = sum((c.float() - p.float()).abs().sum().double() for c, p in zip(current, previous))
    den = sum(p.float().abs().sum().double() for p in previous)
    num, den = _all_reduce_sum(torch.stack([num, den]), branch_group).tolist()
    return num / den if den > 0 else float("inf")


class _Branch:
    """One CFG branch ("cond", "uncond", or "batched" for both in one call) and what the cache keeps for it."""

    def __init__(self, name: str, cond: dict[str, Any], shared: dict[str, Any]):
        self.name, self.cond = name, cond
        self.memo: dict[str, Any] = {"shared": shared}  # step-invariant conditioning (see model.prepare_step)
        self.history: list[tuple[int, torch.Tensor]] = []  # (step, fp32 cached difference) of computed steps


class _StepCache:
    """Runs the DiT for one denoising step under the cache: measure, decide, compute or reuse per branch. It is the
    ``StepContext`` the indicator and the reuse point see."""

    def __init__(self, dit, method, policy: Policy, modifiers: list[ModifierState], branches: list[_Branch],
                 local: list[_Branch], report: CacheReport, observe_only: bool, branch_group: Any,
                 num_steps: int, grid: tuple[int, int, int]):
        self.dit, self.policy, self.mods = dit, policy, modifiers
        self.indicator, self.reuse_point = indicator_for(method), reuse_point_for(method)
        self.every, self.local, self.report = branches, local, report
        self.by_name = {b.name: b for b in branches}
        self.observe_only, self.branch_group = observe_only, branch_group
        self.caching = method.enabled or observe_only
        self.keep = max([1] + [m.history for m in modifiers])
        # the modifier that forecasts what a skip reuses, if any (else the last cached difference, unchanged)
        self.forecaster = next((m for m in modifiers if type(m).estimate is not ModifierState.estimate), None)
        self.hooks = tuple(getattr(dit, "step_hooks", ()))  # see the module docstring
        self.num_steps, self.grid = num_steps, grid

    def outputs(self, z: torch.Tensor, sigma_t: torch.Tensor, step: int, sigma: float) -> dict[str, torch.Tensor]:
        """The DiT output (fp32) of every CFG branch for this step."""
        self.z, self.sigma_t, self._inputs, self._first = z, sigma_t, {}, {}
        info = StepInfo(step, self.num_steps, sigma, self.grid)
        for hook in self.hooks:
            hook.begin_step(info)
        record = self.policy.decide(step, sigma, self.indicator.measure(self))
        ran = [b.name for b in self.every] if record.computed else []
        for m in self.mods:
            ran = m.run_branches(step, ran) if record.computed else ran
        record.branches = ran
        self.report.steps.append(record)
        self.report.dit_calls += len(ran)
        last = {b.name: b.history[-1][1] for b in self.local if b.history} if self.observe_only else {}
        outs = {}
        for b in self.local:
            if not record.computed:
                outs[b.name] = self.reuse(b, step)
            elif b.name in ran:
                outs[b.name] = self.compute(b, step)
        if self.branch_group is not None:
            outs = self.exchange(outs, ran)
        for m in self.mods:
            m.fill(step, outs, ran)
            m.annotate(record)
        if last:
            self.residual_stats(record, last)
        learnt = self.indicator.update(self, step, record.computed, outs)
        if learnt is not None:
            self.policy.observe(step, learnt)
        for hook in self.hooks:
            hook.end_step(info, record)
        return outs

    # -- the StepContext of the indicator and the reuse point ------------------------------------------------
    @property
    def branches(self) -> list[str]:
        return [b.name for b in self.local]

    def inputs(self, name: str):
        if name not in self._inputs:
            c, memo = self.by_name[name].cond, self.by_name[name].memo
            self._inputs[name] = self.dit(self.z, self.sigma_t, c["y_feat"], c["y_mask"], c["packed_indices"], memo,
                                          phase="prepare")
        return self._inputs[name]

    def first_block(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._first:
            self._first[name] = self.dit(self.inputs(name), phase="first_block")
        return self._first[name]

    def relative_l1(self, current: list[torch.Tensor], previous: list[torch.Tensor]) -> float:
        return relative_l1(current, previous, self.branch_group)

    # -- computed and skipped steps ----------------------------------------------------------------------------
    def compute(self, b: _Branch, step: int) -> torch.Tensor:
        entry = self.reuse_point.entry(self, b.name)
        out, after = self.reuse_point.compute(self, b.name, entry)
        if self.caching:
            b.history = (b.history + [(step, after.float() - entry[0].float())])[-self.keep:]
        return out

    def reuse(self, b: _Branch, step: int) -> torch.Tensor:
        a = self.reuse_point.entry(self, b.name)[0]
        delta = self.forecaster.estimate(step, b.history) if self.forecaster else b.history[-1][1]
        return self.reuse_point.finish(self, b.name, (a.float() + delta).to(a.dtype))

    def residual_stats(self, record: StepRecord, last: dict[str, torch.Tensor]) -> None:
        """Observe-only: how the blocks' residual changed from the previous step (calibration's y and MagCache's
        magnitude ratio), over every branch and rank."""
        names = list(last)
        now = {b.name: b.history[-1][1] for b in self.local}
        record.residual_change = relative_l1([now[n] for n in names], [last[n] for n in names], self.branch_group)
        sums = [_all_reduce_sum(torch.stack([r[n].abs().sum().double() for n in names]).sum(), self.branch_group)
                .item() for r in (now, last)]
        record.residual_ratio = sums[0] / sums[1] if sums[1] > 0 else float("inf")

    # -- CFG-parallel --------------------------------------------------------------------------------------------
    def exchange(self, outs: dict[str, torch.Tensor], ran: list[str]) -> dict[str, torch.Tensor]:
        """Every rank of the CFG group gets every branch's output (one broadcast per branch that has one)."""
        have = [b.name for b in self.every if b.name in ran or not ran]
        full = {}
        for rank, b in enumerate(self.every):
            if b.name not in have:
                continue
            t = outs[b.name] if b.name in outs else torch.empty(self.z.shape, dtype=torch.float32,
                                                                device=self.z.device)
            dist.broadcast(t, src=dist.get_global_rank(self.branch_group, rank), group=self.branch_group)
            full[b.name] = t
        return full


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compiled(dit: torch.nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in dit.modules())


def warm_up(dit: torch.nn.Module, local: list[_Branch], z: torch.Tensor, sigma_t: torch.Tensor, warm: set,
            info: StepInfo | None = None) -> float:
    """Run the DiT once on step 0's inputs for each local CFG branch whose input shape it has not run before
    (outputs dropped, no cache state touched, the conditioning not memoised); ``warm`` holds the shapes it ran, kept
    by the pipeline across generations. Returns the seconds it took (0.0 when every branch was warm).

    A shape is the latent's, and with compiled blocks (``dynamic=False``) also the branch's text length: they compile
    again for each (the cond and uncond branches apart, and the cond branch for each prompt's length). Ranks that
    share a branch share its key, so their collectives stay in step."""
    compiled = _compiled(dit)
    cold = []
    for b in local:
        texts = tuple(b.cond["y_mask"][0].sum(dim=-1).tolist()) if compiled else None
        key = (tuple(z.shape), str(z.device), texts)
        if key not in warm and key not in [k for k, _ in cold]:
            cold.append((key, b))
    if not cold:
        return 0.0
    hooks = tuple(getattr(dit, "step_hooks", ())) if info is not None else ()
    _sync(z.device)
    t0 = time.perf_counter()
    for hook in hooks:
        hook.begin_step(info)
    for key, b in cold:
        c = b.cond
        inputs = dit(z, sigma_t, c["y_feat"], c["y_mask"], c["packed_indices"], {}, phase="prepare")
        dit(dit(inputs, phase="blocks"), inputs, phase="finish")
        warm.add(key)
    for hook in hooks:
        hook.end_step(info, None)
    _sync(z.device)
    return time.perf_counter() - t0


def sample_model(device: torch.device | str, dit: torch.nn.Module, conditioning: dict[str, Any], *,
                 cache: CacheConfig | None = None, observe_only: bool = False, progress: bool = True,
                 policy: Policy | None = None, branch_group: Any = None, warm: set | None = None,
                 **args: Any) -> SampleResult:
    """Upstream ``sample_model`` plus caching. Returns latents (as upstream returns them) and the cache report.

    ``observe_only`` records the observed method's indicator (``caches.observed_method``) on every step without
    skipping (and, per step, how the blocks' residual changed: calibration). ``policy`` replaces the one ``cache``
    describes (benchmarks: ``PatternPolicy``, which measures and reuses as its ``method`` does). ``branch_group``: a
    process group of 2 ranks over which the cond (its rank 0) and uncond (its rank 1) branches are split
    (CFG-parallel). ``warm``: the input shapes the DiT has run (the pipeline's); given, a shape not in it gets an
    untimed warm-up pass first (:func:`warm_up`), reported as ``report.warmup_s``. Every step is timed after
    synchronising the device."""
    device = torch.device(device)
    cache = cache or CacheConfig.baseline()
    random.seed(args["seed"])
    np.random.seed(args["seed"])
    torch.manual_seed(args["seed"])

    w, h, t = args["width"], args["height"], args["num_frames"]
    sample_steps = args["num_inference_steps"]
    cfg_schedule = args["cfg_schedule"]
    sigma_schedule = args["sigma_schedule"]
    if len(cfg_schedule) != sample_steps:
        raise ValueError(f"cfg_schedule has {len(cfg_schedule)} entries, num_inference_steps={sample_steps}")
    if (t - 1) % 6 != 0:
        raise ValueError(f"num_frames={t}: Mochi needs num_frames - 1 divisible by 6 (e.g. 19, 31, 85, 163)")
    if len(sigma_schedule) != sample_steps + 1:
        raise ValueError(f"sigma_schedule has {len(sigma_schedule)} entries, needs num_inference_steps + 1")

    B = 1
    latent_t = ((t - 1) // TEMPORAL_DOWNSAMPLE) + 1
    latent_w, latent_h = w // SPATIAL_DOWNSAMPLE, h // SPATIAL_DOWNSAMPLE
    z = torch.randn((B, IN_CHANNELS, latent_t, latent_h, latent_w), device=device, dtype=torch.float32)

    num_latents = latent_t * latent_h * latent_w
    shared: dict[str, Any] = {}  # step-invariant conditioning both branches share (RoPE)
    if "cond" in conditioning:
        branches = [_Branch("cond", conditioning["cond"], shared), _Branch("uncond", conditioning["null"], shared)]
    else:
        if branch_group is not None:
            raise ValueError("CFG-parallel runs one branch per rank: it cannot batch the branches (drop --batch_cfg)")
        branches = [_Branch("batched", conditioning["batched"], shared)]
        z = repeat(z, "b ... -> (repeat b) ...", repeat=2)
    for b in branches:
        b.cond["packed_indices"] = pipelines.compute_packed_indices(device, b.cond["y_mask"][0], num_latents)
    batched = branches[0].name == "batched"
    local = [branches[dist.get_rank(branch_group)]] if branch_group is not None else branches

    warnings = cache.check(sample_steps, batch_cfg=batched)  # raises for what cannot run (+cfg with batched CFG)
    method = (policy.method if policy is not None else None) or cache.method
    if observe_only:  # the observed method's indicator on every step, nothing skipped
        observed = observed_method()
        method = method if isinstance(method, observed) else observed.observer()
    if policy is not None:
        report = CacheReport(config=policy.describe())
        if cache.modifiers:
            report.config["modifiers"] = [m.to_dict() for m in cache.modifiers]
    else:
        policy = method.policy(observe_only=True) if observe_only else method.policy()
        report = CacheReport(config=cache.to_dict(sample_steps), warnings=warnings)
    if observe_only:
        report.config["observe_only"] = True
    policy.reset(sample_steps)
    modifiers = [m.state() for m in cache.modifiers]
    for m in modifiers:
        m.reset(sample_steps, list(sigma_schedule))
    grid = (latent_t, latent_h // dit.patch_size, latent_w // dit.patch_size)  # the visual tokens, for step hooks
    stepper = _StepCache(dit, method, policy, modifiers, branches, local, report, observe_only, branch_group,
                         sample_steps, grid)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def model_fn(*, z, sigma_t, cfg_scale, step, sigma):
        with autocast:
            outs = stepper.outputs(z, sigma_t, step, sigma)
        if batched:
            out_cond, out_uncond = torch.chunk(outs["batched"], chunks=2, dim=0)
        else:
            out_cond, out_uncond = outs["cond"], outs["uncond"]
        assert out_cond.shape == out_uncond.shape
        return out_uncond + cfg_scale * (out_cond - out_uncond)

    def sigma_t(sigma: float) -> torch.Tensor:
        return torch.full([B * 2] if batched else [B], sigma, device=z.device)

    if warm is not None:
        with autocast:
            report.warmup_s = warm_up(dit, local, z, sigma_t(sigma_schedule[0]), warm,
                                      StepInfo(0, sample_steps, sigma_schedule[0], grid, warm_up=True))
    _sync(device)
    steps = range(0, sample_steps)
    bar = get_new_progress_bar(steps, desc=f"Sampling ({cache.name})") if progress else steps
    for i in bar:
        t0 = time.perf_counter()
        sigma = sigma_schedule[i]
        dsigma = sigma - sigma_schedule[i + 1]
        pred = model_fn(z=z, sigma_t=sigma_t(sigma), cfg_scale=cfg_schedule[i], step=i, sigma=sigma)
        assert pred.dtype == torch.float32
        z = z + dsigma * pred
        _sync(device)  # the step's kernels finish in its own time, not the next step's
        report.step_seconds.append(time.perf_counter() - t0)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(computed=report.computed_steps, skipped=report.skipped_steps, refresh=False)

    z = z[:B] if batched else z
    return SampleResult(dit_latents_to_vae_latents(z), report)
