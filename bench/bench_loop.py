"""Full denoising loops with CFG (unbatched, upstream's default): the baseline against forced skip patterns
(PatternPolicy: the same steps skipped on every run), measured speedup against the ideal steps/computed, and
peak memory with and without caching. ``--modes`` runs the patterns as each method's skips (its indicator, and
what it reuses): the skipped-step cost of every method.

    python bench/bench_loop.py --frames 31 --steps 64 --skips 0,0.25,0.5,0.75
    python bench/bench_loop.py --frames 163 --steps 8 --skips 0,0.5 --modes fixed_0.1,easycache_0.05,fbcache_0.1
    python bench/bench_loop.py --tiny                                       # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from genmo_teacache.caches import CacheConfig, parse_mode  # noqa: E402
from genmo_teacache.caches.pattern import PatternPolicy  # noqa: E402
from genmo_teacache.generate import GenerationSettings  # noqa: E402
from genmo_teacache.sampler import sample_model  # noqa: E402
from genmo_teacache.speed import SpeedOptions, check_speed_options, parse_speed  # noqa: E402
from genmo_teacache.tiny import TINY_DIT_KWARGS  # noqa: E402

from common import conditioning, full_size_dit, peak_gib, reset_peak, sync, table, write_results


def config_of(mode: str, steps: int) -> CacheConfig:
    """The cache config a mode names (its method and modifiers); methods that take a calibration file get a flat
    one (timing only)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"coefficients": [1.0, 0.0], "mag_ratios": [1.0] * steps}, f)
    return parse_mode(mode, f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=31)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--skips", default="0,0.25,0.5,0.75", help="fractions of steps skipped")
    ap.add_argument("--modes", default="fixed_0.1", help="skip as these methods do (their indicator and reuse)")
    ap.add_argument("--name", default=None, help="result file name (default bench_loop_<frames>f_<steps>s)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--dit_dtype", default="fp32")
    ap.add_argument("--sdpa_backend", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--warm_frames", type=int, default=None, help="frames of the warm-up runs (default --frames)")
    ap.add_argument("--speed", default=None, help="a speed preset or spec (fast, bf16+fa3+compile, ...) instead")
    args = ap.parse_args()

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    speed = (parse_speed(args.speed) if args.speed else
             SpeedOptions(dit_dtype=args.dit_dtype, sdpa_backend=args.sdpa_backend, compile_dit=args.compile))
    check_speed_options(speed, device)
    dit = full_size_dit(device, model_kwargs=TINY_DIT_KWARGS if args.tiny else None, speed=speed)
    w, h = (64, 64) if args.tiny else (848, 480)
    settings = GenerationSettings(width=w, height=h, num_frames=args.frames, num_steps=args.steps)
    cond = conditioning(device)

    def run(policy, config, s=settings):
        reset_peak()
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = sample_model(device, dit, {k: dict(v) for k, v in cond.items()}, cache=config, policy=policy,
                               progress=False, **s.sampler_args(0))
        sync()
        return time.perf_counter() - t0, res.report, peak_gib()

    warm = GenerationSettings(width=w, height=h, num_frames=args.warm_frames or args.frames, num_steps=4)
    configs = [config_of(m, args.steps) for m in args.modes.split(",")]
    full = GenerationSettings(width=w, height=h, num_frames=args.frames, num_steps=4)
    for i, config in enumerate(configs):  # warm-up: the first at full size, the others' phases on --warm_frames
        run(PatternPolicy.skipping(4, 0.5, config.method), config, warm if i else full)
    rows = []
    fractions = [float(f) for f in args.skips.split(",")]
    for config in configs:
        for frac in fractions:
            if frac == 0 and rows:
                continue  # one baseline for all methods
            policy = None if frac == 0 else PatternPolicy.skipping(args.steps, frac, config.method)
            seconds, report, peak = run(policy, config) if policy else run_baseline(dit, device, settings, cond)
            computed = [s for r, s in zip(report.steps, report.step_seconds) if r.computed]
            skipped = [s for r, s in zip(report.steps, report.step_seconds) if not r.computed]
            rows.append({"mode": config.name if frac else "baseline", "skip_fraction": frac,
                         "computed_steps": report.computed_steps, "dit_forwards": report.dit_calls,
                         "denoise_s": seconds, "mean_computed_step_s": sum(computed) / len(computed),
                         "mean_skipped_step_s": sum(skipped) / len(skipped) if skipped else None,
                         "ideal_speedup": report.ideal_speedup, "peak_gib": peak})
            print(table(rows[-1:], list(rows[-1])), flush=True)
    base = rows[0]["denoise_s"]
    for r in rows:
        r["speedup"] = base / r["denoise_s"]
        r["speedup_vs_ideal"] = r["speedup"] / r["ideal_speedup"]
        r["skipped_step_of_computed"] = (r["mean_skipped_step_s"] / r["mean_computed_step_s"]
                                         if r["mean_skipped_step_s"] is not None else None)
    print("\n" + table(rows, ["mode", "skip_fraction", "computed_steps", "denoise_s", "speedup", "ideal_speedup",
                              "speedup_vs_ideal", "mean_computed_step_s", "mean_skipped_step_s",
                              "skipped_step_of_computed", "peak_gib"]))
    write_results(args.name or f"bench_loop_{args.frames}f_{args.steps}s",
                  {"frames": args.frames, "steps": args.steps, "cfg": "unbatched", "speed": speed.spec(),
                   "rows": rows})


def run_baseline(dit, device, settings, cond):
    """The uncached loop: no policy override, the baseline config (no indicator, no residuals)."""
    reset_peak()
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        res = sample_model(device, dit, {k: dict(v) for k, v in cond.items()}, cache=CacheConfig.baseline(),
                           progress=False, **settings.sampler_args(0))
    sync()
    return time.perf_counter() - t0, res.report, peak_gib()


if __name__ == "__main__":
    main()
