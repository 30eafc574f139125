"""Context parallelism on one machine: per-step time of the baseline and of a fixed skip pattern on 1 GPU and on
N GPUs (our sampler in every rank, FSDP, Ray), upstream's forward through the same model for reference, equal
decisions on all ranks, and a full-length run that must not hang.

    genmo-teacache make-tiny-model /tmp/bench_model --full-size-random-dit
    python bench/bench_cp.py --model_dir /tmp/bench_model --world 2 --frames 163 --steps 6
"""

from __future__ import annotations

import argparse
import time

import torch

from genmo_teacache.caches import CacheConfig  # noqa: E402
from genmo_teacache.caches.pattern import PatternPolicy  # noqa: E402
from genmo_teacache.generate import GenerationSettings  # noqa: E402
from genmo_teacache.multigpu import TeaCacheMultiGPUPipeline  # noqa: E402
from genmo_teacache.pipelines import TeaCacheSingleGPUPipeline, factories_for, up  # noqa: E402
from genmo_teacache.sampler import sample_model  # noqa: E402

from common import conditioning, sync, table, time_fn, write_results


def measure(ctx, *, frames: int, steps: int, skip: float, width: int, height: int) -> dict:
    """Runs on every rank (or the single pipeline): identical random inputs everywhere (fixed seeds)."""
    device, dit = ctx.device, ctx.dit
    settings = GenerationSettings(width=width, height=height, num_frames=frames, num_steps=steps)
    cond = conditioning(device)
    lt, lh, lw = (frames - 1) // 6 + 1, height // 8, width // 8
    z = torch.randn(1, 12, lt, lh, lw, device=device, generator=torch.Generator(device=device).manual_seed(0))
    c = cond["cond"]
    packed = up.compute_packed_indices(device, c["y_mask"][0], lt * lh * lw)

    def forward():  # upstream's forward computation (no memo), through the FSDP root when wrapped
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            return dit(z, torch.full([1], 0.7, device=device), c["y_feat"], c["y_mask"], packed)

    out = {"upstream_forward": time_fn(forward, repeats=2)}
    for name, policy in (("baseline", None), (f"skip{round(100 * skip)}pct", PatternPolicy.skipping(steps, skip))):
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = sample_model(device, dit, {k: dict(v) for k, v in cond.items()}, cache=CacheConfig.baseline(),
                               policy=policy, progress=False, **settings.sampler_args(0))
        sync()
        rep = res.report
        computed = [s for r, s in zip(rep.steps, rep.step_seconds) if r.computed][1:]  # step 0 also memoises
        out[name] = {"denoise_s": time.perf_counter() - t0, "computed_steps": rep.computed_steps,
                     "ideal_speedup": rep.ideal_speedup, "mean_computed_step_s": sum(computed) / len(computed),
                     "decisions": [r.computed for r in rep.steps]}
    return out


def full_run(pipe, *, frames: int, steps: int, skip: float, width: int, height: int) -> dict:
    settings = GenerationSettings(width=width, height=height, num_frames=frames, num_steps=steps)
    t0 = time.perf_counter()
    pipe.generate(batch_cfg=False, prompt="a bench", negative_prompt="", cache=CacheConfig.baseline(),
                  policy=PatternPolicy.skipping(steps, skip), progress=False, **settings.sampler_args(0))
    decisions = [r["decisions"] for r in pipe.rank_results] if hasattr(pipe, "rank_results") else None
    return {"frames": frames, "steps": steps, "seconds": time.perf_counter() - t0,
            "ranks_agree": decisions is None or all(d == decisions[0] for d in decisions)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip", type=float, default=0.5)
    ap.add_argument("--full-run-frames", type=int, default=31)
    ap.add_argument("--full-run-steps", type=int, default=64)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: smoke test on CPU ranks")
    args = ap.parse_args()
    kw = dict(frames=args.frames, steps=args.steps, skip=args.skip, width=args.width, height=args.height)
    results = {}

    device = "cuda:0" if args.device == "cuda" else "cpu"
    single = TeaCacheSingleGPUPipeline(**factories_for(args.model_dir), device=device, decode_type="full")
    results[1] = measure(single, **kw)
    print("1 GPU:", {k: v for k, v in results[1].items()}, flush=True)
    del single
    if args.device == "cuda":
        torch.cuda.empty_cache()

    multi = TeaCacheMultiGPUPipeline(**factories_for(args.model_dir), world_size=args.world, device_type=args.device)
    try:
        per_rank = multi._wait([ctx.run.remote(measure, **kw) for ctx in multi.ctxs])
        results[args.world] = per_rank[0]
        agree = all(r[k]["decisions"] == per_rank[0][k]["decisions"]
                    for r in per_rank for k in r if k != "upstream_forward")
        full = full_run(multi, frames=args.full_run_frames, steps=args.full_run_steps, skip=args.skip,
                        width=args.width, height=args.height)
    finally:
        multi.close()

    rows = []
    skip_key = f"skip{round(100 * args.skip)}pct"
    for world, r in results.items():
        base, cached = r["baseline"], r[skip_key]
        rows.append({"gpus": world, "upstream_forward_s": r["upstream_forward"]["mean_s"],
                     "baseline_step_s": base["mean_computed_step_s"],
                     "baseline_denoise_s": base["denoise_s"], f"{skip_key}_denoise_s": cached["denoise_s"],
                     "cached_speedup": base["denoise_s"] / cached["denoise_s"], "ideal": cached["ideal_speedup"]})
    one, many = rows[0], rows[-1]
    summary = {"cp_scaling_baseline": one["baseline_denoise_s"] / many["baseline_denoise_s"],
               "cp_scaling_upstream_forward": one["upstream_forward_s"] / many["upstream_forward_s"],
               "cached_speedup_ratio_multi_vs_single": many["cached_speedup"] / one["cached_speedup"],
               "ranks_agree": agree, "full_run": full}
    print("\n" + table(rows, list(rows[0])))
    print(summary)
    write_results(f"bench_cp_{args.world}gpu", {"frames": args.frames, "steps": args.steps, "rows": rows,
                                                  "summary": summary, "raw": {str(k): v for k, v in results.items()}})


if __name__ == "__main__":
    main()
