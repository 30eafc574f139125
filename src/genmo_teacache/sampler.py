"""The native Euler sampler (upstream ``pipelines.sample_model``) with a step cache.

With caching off it gives latents bit-identical to upstream's: the same operations, except that what does
not change between steps (pooled text, RoPE) is computed once per generation. With caching on, each
denoising step makes one decision for all CFG branches (and all context-parallel ranks):

    indicator = sum |m_t - m_{t-1}| / sum |m_{t-1}|   over every branch's block-0 modulated input m
                (and, under context parallelism, over every rank's tokens: the two sums are all-reduced)

so batched and unbatched CFG decide alike. A computed step runs the blocks and caches, per branch, the
residual ``blocks(x) - x`` (fp32, before the final layer); a skipped step adds its branch's cached residual to
the current embedding and still applies the final layer with the current step's modulation.
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

from genmo_teacache import compat

compat.apply()

import genmo.mochi_preview.dit.joint_model.context_parallel as cp  # noqa: E402
from genmo.lib.progress import get_new_progress_bar  # noqa: E402
from genmo.mochi_preview.pipelines import compute_packed_indices  # noqa: E402
from genmo.mochi_preview.vae.vae_stats import dit_latents_to_vae_latents  # noqa: E402

from genmo_teacache.config import CacheConfig  # noqa: E402
from genmo_teacache.policy import NoCachePolicy, StepPolicy, StepRecord, make_policy  # noqa: E402

SPATIAL_DOWNSAMPLE = 8
TEMPORAL_DOWNSAMPLE = 6
IN_CHANNELS = 12


@dataclass
class CacheReport:
    """What the cache did during one generation."""

    config: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    dit_calls: int = 0

    @property
    def computed_steps(self) -> int:
        return sum(r.computed for r in self.steps)

    @property
    def skipped_steps(self) -> int:
        return len(self.steps) - self.computed_steps

    @property
    def ideal_speedup(self) -> float:
        """Denoising speedup if a skipped step cost nothing: steps / computed steps."""
        return len(self.steps) / max(self.computed_steps, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.config.get("mode"),
            "cache": self.config,
            "num_steps": len(self.steps),
            "computed_steps": self.computed_steps,
            "skipped_steps": self.skipped_steps,
            "ideal_speedup": self.ideal_speedup,
            "dit_calls": self.dit_calls,
            "steps": [dict(r.to_dict(), seconds=s) for r, s in zip(self.steps, self.step_seconds)],
        }

    def summary(self) -> str:
        n = len(self.steps)
        skipped = [r.step for r in self.steps if not r.computed]
        return (f"{self.config.get('mode')}: computed {self.computed_steps}/{n} steps, skipped {len(skipped)} "
                f"({100 * len(skipped) / max(n, 1):.0f}%); ideal denoising speedup {self.ideal_speedup:.2f}x"
                + (f"; skipped steps {skipped}" if skipped else ""))


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if cp.is_cp_active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=cp.get_cp_group())
    return t


def relative_l1(current: list[torch.Tensor], previous: list[torch.Tensor]) -> float:
    """sum |cur - prev| / sum |prev| over all tensors (CFG branches) and all context-parallel ranks."""
    sums = torch.stack([
        sum((c.float() - p.float()).abs().sum() for c, p in zip(current, previous)),
        sum(p.float().abs().sum() for p in previous),
    ]).double()
    num, den = _all_reduce_sum(sums).tolist()
    return num / den if den > 0 else float("inf")


def sample_model(device: torch.device | str, dit: torch.nn.Module, conditioning: dict[str, Any], *,
                 cache: CacheConfig | None = None, observe_only: bool = False, progress: bool = True,
                 synchronize_steps: bool = False, policy: StepPolicy | None = None, **args: Any):
    """Upstream ``sample_model`` plus caching. Returns a ``SampleResult`` (latents as upstream returns them, and
    the cache report). ``observe_only`` records the indicator on every step without skipping; ``policy``
    replaces the one ``cache`` describes (benchmarks: ``PatternPolicy``)."""
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
    if "cond" in conditioning:
        branches = {"cond": conditioning["cond"], "uncond": conditioning["null"]}
    else:
        branches = {"batched": conditioning["batched"]}
        z = repeat(z, "b ... -> (repeat b) ...", repeat=2)
    for cond in branches.values():
        cond["packed_indices"] = compute_packed_indices(device, cond["y_mask"][0], num_latents)
    batched = "batched" in branches

    if policy is None:
        policy = make_policy(cache, observe_only=observe_only)
        report = CacheReport(config=cache.to_dict(sample_steps) if cache.enabled else cache.to_dict())
    else:
        report = CacheReport(config=policy.describe())
    policy.reset(sample_steps)
    caching = not isinstance(policy, NoCachePolicy)
    if observe_only:
        report.config["observe_only"] = True
    previous: dict[str, torch.Tensor] = {}
    residual: dict[str, torch.Tensor] = {}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    shared: dict[str, Any] = {}  # step-invariant conditioning, computed on the first step (see prepare_step)
    memos: dict[str, dict[str, Any]] = {name: {"shared": shared} for name in branches}

    def branch_outputs(z_in: torch.Tensor, sigma_t: torch.Tensor, step: int, sigma: float) -> dict[str, Any]:
        inputs = {name: dit(z_in, sigma_t, cond["y_feat"], cond["y_mask"], cond["packed_indices"], memos[name],
                            phase="prepare") for name, cond in branches.items()}
        raw = None
        if policy.needs_indicator:
            modulated = {name: dit(inp, phase="modulated_input") for name, inp in inputs.items()}
            raw = relative_l1(list(modulated.values()), [previous[n] for n in modulated]) if previous else None
            previous.update(modulated)
        record = policy.decide(step, sigma, raw)
        report.steps.append(record)
        outs = {}
        last_residual = dict(residual) if observe_only else {}
        for name, inp in inputs.items():
            if record.computed:
                x = dit(inp, phase="blocks")
                if caching:
                    residual[name] = x.float() - inp.x.float()
                report.dit_calls += 1
            else:
                x = (inp.x.float() + residual[name]).to(inp.x.dtype)
            outs[name] = dit(x, inp, phase="finish")
        if last_residual:
            names = list(inputs)
            record.residual_change = relative_l1([residual[n] for n in names], [last_residual[n] for n in names])
            mean_abs = [_all_reduce_sum(torch.stack([r[n].abs().sum() for n in names]).sum().double()).item()
                        for r in (residual, last_residual)]
            record.residual_ratio = mean_abs[0] / mean_abs[1] if mean_abs[1] > 0 else float("inf")
        return outs

    def model_fn(*, z, sigma_t, cfg_scale, step, sigma):
        with autocast:
            outs = branch_outputs(z, sigma_t, step, sigma)
        if batched:
            out_cond, out_uncond = torch.chunk(outs["batched"], chunks=2, dim=0)
        else:
            out_cond, out_uncond = outs["cond"], outs["uncond"]
        assert out_cond.shape == out_uncond.shape
        out_uncond = out_uncond.to(z)
        out_cond = out_cond.to(z)
        return out_uncond + cfg_scale * (out_cond - out_uncond)

    steps = range(0, sample_steps)
    bar = get_new_progress_bar(steps, desc=f"Sampling ({cache.name})") if progress else steps
    for i in bar:
        t0 = time.perf_counter()
        sigma = sigma_schedule[i]
        dsigma = sigma - sigma_schedule[i + 1]
        pred = model_fn(z=z, sigma_t=torch.full([B * 2] if batched else [B], sigma, device=z.device),
                        cfg_scale=cfg_schedule[i], step=i, sigma=sigma)
        assert pred.dtype == torch.float32
        z = z + dsigma * pred
        if synchronize_steps and device.type == "cuda":
            torch.cuda.synchronize(device)
        report.step_seconds.append(time.perf_counter() - t0)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(computed=report.computed_steps, skipped=report.skipped_steps, refresh=False)

    z = z[:B] if batched else z
    return SampleResult(dit_latents_to_vae_latents(z), report)


@dataclass
class SampleResult:
    latents: torch.Tensor
    report: CacheReport
