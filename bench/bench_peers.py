"""Peers, side by side on the same GPU in the same run: what a user would pick instead of this project.

- ours: upstream's DiT and our sampler (CFG unbatched, as upstream), upstream's default options and a speed
  preset; skipped steps forced with ``PatternPolicy`` (the TeaCache indicator is still computed);
- diffusers' ``MochiTransformer3DModel`` (bf16, as its pipeline loads it) in a flow-matching Euler loop with
  batched CFG (as diffusers' MochiPipeline runs it), plain and with
  cache-dit DBCache (F1B0: block 0 decides) and DBCache + TaylorSeer (order 1), its ``steps_computation_mask``
  forcing the same computed steps (static policy), and with ParaAttention's first-block cache, its decision
  forced to the same steps (the first block is still computed on a skipped step, as FBCache does).

All models full size with random weights: timings only. Peers are not dependencies of the package: install
diffusers, cache-dit and para-attn beside it (``pip install genmo-teacache[bench]``).

    python bench/bench_peers.py --frames 163 --steps 4 --computed 2     # GPU; JSON goes to $OUT
    python bench/bench_peers.py --tiny                                  # CPU smoke test of this script
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from genmo_teacache.caches import CacheConfig  # noqa: E402
from genmo_teacache.caches.pattern import PatternPolicy  # noqa: E402
from genmo_teacache.generate import GenerationSettings  # noqa: E402
from genmo_teacache.model import AsymmDiTJoint  # noqa: E402
from genmo_teacache.pipelines import up  # noqa: E402
from genmo_teacache.sampler import sample_model  # noqa: E402
from genmo_teacache.speed import apply_speed_options, parse_speed  # noqa: E402
from genmo_teacache.tiny import TINY_DIT_KWARGS  # noqa: E402

from common import FRAMES_480P, conditioning, full_size_dit, peak_gib, reset_peak, sync, table, write_results

# diffusers' MochiTransformer3DModel defaults are the full-size model; the tiny one matches TINY_DIT_KWARGS' scale
TINY_DIFFUSERS = dict(num_layers=2, num_attention_heads=4, attention_head_dim=32, pooled_projection_dim=64)


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    fn()
    sync()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps of every loop")
    ap.add_argument("--computed", type=int, default=2, help="steps computed in the cached loops (forced)")
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards after one warm-up")
    ap.add_argument("--preset", default="fast", help="our speed preset for the second 'ours' system ('' for none)")
    ap.add_argument("--budget_s", type=float, default=300, help="start no new system after this many seconds")
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks the script runs")
    args = ap.parse_args()

    t_start = time.perf_counter()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    frames, steps = (7 if args.tiny else args.frames), args.steps
    w, h = (64, 64) if args.tiny else (848, 480)
    lt, lh, lw = (frames - 1) // 6 + 1, h // 8, w // 8
    if not args.tiny:
        assert lt == FRAMES_480P[frames]
    pattern = PatternPolicy.skipping(steps, 1 - args.computed / steps)
    mask = [int(s in pattern.computed or s in (0, steps - 1)) for s in range(steps)]
    assert sum(mask) == args.computed, mask
    settings = GenerationSettings(width=w, height=h, num_frames=frames, num_steps=steps)
    sampler_args = settings.sampler_args(0)
    sigmas = sampler_args["sigma_schedule"]
    conds = conditioning(device)
    rows: list[dict[str, Any]] = []
    print(f"{frames} frames, {steps} steps, forced computed steps {mask}", flush=True)

    def out_of_time(system: str) -> bool:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            rows.append({"system": system, "skipped": f"time budget ({elapsed:.0f} s elapsed)"})
            return True
        return False

    def record(system: str, fn: Callable[[], dict[str, Any]]) -> None:
        if out_of_time(system):
            return
        try:
            row = {"system": system, **fn()}
        except Exception as e:  # noqa: BLE001 - a peer that fails here is a result
            traceback.print_exc()
            row = {"system": system, "error": f"{type(e).__name__}: {e}"[:2000]}
        rows.append(row)
        print(table([row], [k for k in row if k != "step_s"]), flush=True)
        write()

    def write() -> None:
        notes = {"weights": "random (timings only)", "steps": steps, "forced_computed_mask": mask,
                 "ours_cfg": "unbatched (two DiT calls per step, as upstream)",
                 "diffusers_cfg": "batched (one call of batch 2 per step, as diffusers' MochiPipeline)",
                 "forward_s": "one DiT forward of batch 1 (median after a warm-up)",
                 "peak_gib": "largest memory allocated during the loop; for diffusers rows without our DiT, which "
                             "stays resident on the GPU meanwhile"}
        ours = {r.get("group"): r for r in rows if r["system"].startswith("ours") and "loop_s" in r}
        for r in rows:
            if r["system"].startswith("ours") or "loop_s" not in r:
                continue
            ref = ours.get(r.get("group"))
            if ref:
                r["ours_over_peer_loop"] = ref["loop_s"] / r["loop_s"]
            if r.get("group") == "cached" and ours.get("cached_preset"):
                r["ours_preset_over_peer_loop"] = ours["cached_preset"]["loop_s"] / r["loop_s"]
            if r.get("forward_s") and ours.get("uncached", {}).get("forward_s"):
                r["ours_over_peer_forward"] = ours["uncached"]["forward_s"] / r["forward_s"]
        write_results("peers_163f" if not args.tiny else "peers_tiny",
                      {"frames": frames, "steps": steps, "computed_steps_forced": args.computed, "rows": rows,
                       "notes": notes, "elapsed_s": time.perf_counter() - t_start})

    # -- ours --------------------------------------------------------------------------------------------------
    dit = full_size_dit(device, model_kwargs=TINY_DIT_KWARGS if args.tiny else None)
    cond = conds["cond"]
    g = torch.Generator(device=device).manual_seed(0)
    z0 = torch.randn(1, 12, lt, lh, lw, device=device, generator=g)
    packed = up.compute_packed_indices(device, cond["y_mask"][0], lt * lh * lw)

    def ours_forward() -> torch.Tensor:
        with torch.inference_mode(), autocast:
            return AsymmDiTJoint.forward(dit, z0, torch.full([1], 0.7, device=device), cond["y_feat"], cond["y_mask"],
                                         packed)

    def ours_loop(policy) -> dict[str, Any]:
        reset_peak()
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = sample_model(device, dit, {k: dict(v) for k, v in conds.items()}, progress=False,
                               cache=CacheConfig.baseline() if policy is None else None,
                               policy=policy, **sampler_args)
        sync()
        loop_s = time.perf_counter() - t0
        rep = res.report
        computed = [s for r, s in zip(rep.steps, rep.step_seconds) if r.computed]
        skipped = [s for r, s in zip(rep.steps, rep.step_seconds) if not r.computed]
        return {"loop_s": loop_s, "computed_steps": rep.computed_steps, "peak_gib": peak_gib(),
                "computed_step_s": statistics.mean(computed), "skipped_step_s": statistics.mean(skipped) if skipped
                else None, "step_s": rep.step_seconds}

    def ours_system(label: str, policy, with_forward: bool) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            extra = {}
            if with_forward:
                reset_peak()
                extra["forward_s"], _ = median_time(ours_forward, args.repeats)
                extra["forward_peak_gib"] = peak_gib()
            return {**extra, **ours_loop(policy), "group": label}
        return run

    record("ours (upstream default options), no cache", ours_system("uncached", None, True))
    record("ours (upstream default options), forced skips", ours_system("cached", pattern, False))

    def preset_system() -> dict[str, Any]:  # run last: it changes our DiT in place
        apply_speed_options(dit, parse_speed(args.preset))
        t0 = time.perf_counter()
        ours_forward()
        sync()
        first = time.perf_counter() - t0
        # compile specialises on shapes: the uncond branch (fewer text tokens) compiles on the loop's first step,
        # so one untimed loop first, as a 64-step video amortises it
        warm = ours_loop(pattern)["loop_s"]
        return {**ours_system("cached_preset", pattern, True)(), "first_call_s": first, "warmup_loop_s": warm}

    # -- diffusers and its cache libraries ---------------------------------------------------------------------
    try:
        from diffusers import MochiTransformer3DModel
    except ImportError as e:
        rows.append({"system": "diffusers", "error": f"not installed: {e}"})
        write()
        return
    # our DiT stays resident (its preset row runs last): diffusers' peaks are reported without its memory
    resident_gib = torch.cuda.memory_allocated() / 1024**3 if device.type == "cuda" else 0.0
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly, as its pipeline loads it
    try:
        with torch.device(device):
            tr = MochiTransformer3DModel(**(TINY_DIFFUSERS if args.tiny else {})).eval()
    finally:
        torch.set_default_dtype(default_dtype)

    def own_peak() -> float | None:
        peak = peak_gib()
        return None if peak is None else peak - resident_gib
    y = conds["cond"]["y_feat"][0].to(torch.bfloat16)
    ym = conds["cond"]["y_mask"][0]
    y2 = torch.cat([y, conds["null"]["y_feat"][0].to(torch.bfloat16)])
    ym2 = torch.cat([ym, conds["null"]["y_mask"][0]])

    def d_forward(z: torch.Tensor, sigma: float, batch: int) -> torch.Tensor:
        t = torch.full([batch], 1000.0 * (1 - sigma), device=device)
        enc, m = (y, ym) if batch == 1 else (y2, ym2)
        with torch.inference_mode(), autocast:
            return tr(hidden_states=z.to(torch.bfloat16), encoder_hidden_states=enc, timestep=t,
                      encoder_attention_mask=m, return_dict=False)[0]

    def d_loop(before_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        reset_peak()
        z = z0.clone()
        sync()
        t0 = time.perf_counter()
        step_s = []
        for i in range(steps):
            ts = time.perf_counter()
            if before_step:
                before_step(i)
            pred = d_forward(torch.cat([z, z]), sigmas[i], 2).float()
            cond_pred, uncond_pred = pred.chunk(2)
            pred = uncond_pred + sampler_args["cfg_schedule"][i] * (cond_pred - uncond_pred)
            z = z + (sigmas[i] - sigmas[i + 1]) * pred
            sync()
            step_s.append(time.perf_counter() - ts)
        return {"loop_s": time.perf_counter() - t0, "peak_gib": own_peak(), "step_s": step_s}

    def with_mask(result: dict[str, Any]) -> dict[str, Any]:
        computed = [s for s, m in zip(result["step_s"], mask) if m]
        skipped = [s for s, m in zip(result["step_s"], mask) if not m]
        return {**result, "computed_steps": sum(mask), "computed_step_s": statistics.mean(computed),
                "skipped_step_s": statistics.mean(skipped) if skipped else None}

    def diffusers_plain() -> dict[str, Any]:
        reset_peak()
        fwd, _ = median_time(lambda: d_forward(z0, 0.7, 1), args.repeats)
        fpeak = own_peak()
        res = d_loop()
        return {"forward_s": fwd, "forward_peak_gib": fpeak, **res, "computed_steps": steps,
                "computed_step_s": statistics.mean(res["step_s"]), "skipped_step_s": None, "group": "uncached"}

    record("diffusers MochiTransformer3DModel (bf16), no cache", diffusers_plain)

    def cache_dit_system(taylorseer: bool) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            import cache_dit
            from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern, TaylorSeerCalibratorConfig

            config = DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=0,
                                   residual_diff_threshold=0.08, enable_separate_cfg=False, num_inference_steps=steps,
                                   steps_computation_mask=mask, steps_computation_policy="static")
            calibrator = TaylorSeerCalibratorConfig(taylorseer_order=1) if taylorseer else None
            adapter = BlockAdapter(transformer=tr, blocks=tr.transformer_blocks,
                                   forward_pattern=ForwardPattern.Pattern_0)
            cache_dit.enable_cache(adapter, cache_config=config, calibrator_config=calibrator)
            try:  # the plain diffusers loop before it warmed the kernels and the allocator
                res = with_mask(d_loop())
                try:
                    res["cache_dit_cached_steps"] = [list(s.cached_steps) for s in cache_dit.summary(tr)][:1]
                except Exception as e:  # noqa: BLE001 - the summary is informative only
                    res["cache_dit_cached_steps"] = f"unavailable: {e}"
            finally:
                cache_dit.disable_cache(adapter)
            return {**res, "group": "cached"}
        return run

    record("diffusers + cache-dit DBCache F1B0 (forced mask)", cache_dit_system(False))

    def para_attn_fbcache() -> dict[str, Any]:
        from para_attn.first_block_cache import utils as fbc
        from para_attn.first_block_cache.diffusers_adapters.mochi import apply_cache_on_transformer

        apply_cache_on_transformer(tr)
        decided = []

        def forced(first_hidden_states_residual, parallelized=False):  # FBCache's decision, forced to the mask
            ctx = fbc.get_current_cache_context()
            use = not mask[ctx.get_current_step()] and fbc.get_first_hidden_states_residual() is not None
            decided.append(use)
            return use

        real = fbc.get_can_use_cache
        fbc.get_can_use_cache = torch.compiler.disable(forced)
        try:
            with fbc.cache_context(fbc.create_cache_context(residual_diff_threshold=0.08, num_inference_steps=steps)):
                res = d_loop()
        finally:
            fbc.get_can_use_cache = real
            tr.__dict__.pop("forward", None)  # undo apply_cache_on_transformer's per-instance forward
            tr._is_cached = False
        assert decided == [not m for m in mask], decided
        return {**with_mask(res), "group": "cached"}

    record("diffusers + ParaAttention first-block cache (forced)", para_attn_fbcache)
    record("diffusers + cache-dit DBCache F1B0 + TaylorSeer order 1 (forced mask)", cache_dit_system(True))
    tr = None  # frees diffusers' model before ours runs again
    reset_peak()
    if args.preset and not args.tiny:
        record(f"ours (--speed_preset {args.preset}), forced skips", preset_system)

    print("\n" + table(rows, ["system", "forward_s", "loop_s", "computed_steps", "computed_step_s", "skipped_step_s",
                              "peak_gib", "ours_over_peer_loop", "error", "skipped"]))


if __name__ == "__main__":
    main()
