"""The headline loop: the full 64-step denoising loop at 163 frames with the best measured options (``--speed fast``),
unbatched CFG, full-size DiT with random weights (timings only), run twice with forced patterns:

* ``skip_half``: half the steps skipped (``PatternPolicy.skipping``: 32 computed, 64 DiT forwards);
* ``cfg_pattern``: the same computed steps, every second of them cond-only (the CFG cache's work): 48 forwards.

Each step is timed (synchronised), so the JSON also has the full, cond-only and skipped step times; the uncached
loop is NOT run here (it would take 128 forwards): ``uncached_estimate_s`` is 64 x the median full step measured in
the same loop, an estimate, and says so.

    python bench/bench_headline.py --frames 163 --steps 64 --speed fast
    python bench/bench_headline.py --tiny --frames 7 --steps 8 --speed default      # CPU smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict

import torch

from genmo_teacache.caches import CacheConfig  # noqa: E402
from genmo_teacache.caches.pattern import CondOnlyPattern, PatternPolicy  # noqa: E402
from genmo_teacache.caches.teacache import TeaCache  # noqa: E402
from genmo_teacache.generate import GenerationSettings  # noqa: E402
from genmo_teacache.sampler import sample_model  # noqa: E402
from genmo_teacache.speed import check_speed_options, parse_speed  # noqa: E402
from genmo_teacache.tiny import TINY_DIT_KWARGS  # noqa: E402

from common import conditioning, full_size_dit, peak_gib, reset_peak, sync, table, write_results


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--speed", default="fast", help="speed preset or spec (default: fast, the best measured)")
    ap.add_argument("--tiny", action="store_true", help="the tiny DiT at 64x64 (a CPU smoke test)")
    args = ap.parse_args()

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    speed = parse_speed(args.speed)
    check_speed_options(speed, device)
    dit = full_size_dit(device, model_kwargs=TINY_DIT_KWARGS if args.tiny else None, speed=speed)
    w, h = (64, 64) if args.tiny else (848, 480)
    cond = conditioning(device)
    method = TeaCache.fixed(0.0)  # the patterns measure and reuse as TeaCache does

    def run(steps: int, cond_only: bool) -> tuple[float, object, float | None]:
        policy = PatternPolicy.skipping(steps, 0.5, method)
        cache = CacheConfig(method, (CondOnlyPattern.every_other(policy.computed),) if cond_only else ())
        settings = GenerationSettings(width=w, height=h, num_frames=args.frames, num_steps=steps)
        reset_peak()
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = sample_model(device, dit, {k: dict(v) for k, v in cond.items()}, cache=cache, policy=policy,
                               progress=False, **settings.sampler_args(0))
        sync()
        return time.perf_counter() - t0, res.report, peak_gib()

    run(4, True)  # warm-up: compile, kernels, the allocator, the FFT path
    runs = []
    for name, cond_only in (("skip_half", False), ("cfg_pattern", True)):
        seconds, report, peak = run(args.steps, cond_only)
        full, cond_only_s, skipped = [], [], []
        for r, s in zip(report.steps, report.step_seconds):
            if not r.computed:
                skipped.append(s)
            elif len(r.branches) < 2:
                cond_only_s.append(s)
            elif r.step > 0:  # step 0 also memoises the conditioning
                full.append(s)
        estimate = args.steps * median(full)
        runs.append({"name": name, "dit_forwards": report.dit_calls, "denoise_s": seconds,
                     "computed_steps": report.computed_steps, "cond_only_steps": len(cond_only_s),
                     "full_step_s": median(full), "cond_only_step_s": median(cond_only_s),
                     "skipped_step_s": median(skipped), "ideal_speedup": report.ideal_speedup,
                     "uncached_estimate_s": estimate, "speedup_vs_estimate": estimate / seconds,
                     "of_ideal": estimate / seconds / report.ideal_speedup, "peak_gib": peak})
        print(table(runs[-1:], list(runs[-1])), flush=True)
    print("\n" + table(runs, ["name", "dit_forwards", "denoise_s", "full_step_s", "cond_only_step_s",
                              "skipped_step_s", "speedup_vs_estimate", "ideal_speedup", "of_ideal"]))
    head = runs[0]
    write_results(f"headline_{args.frames}f_{args.steps}s", {
        "frames": args.frames, "steps": args.steps, "dit_forwards": head["dit_forwards"],
        "denoise_s": head["denoise_s"], "options": speed.spec(), "options_expanded": asdict(speed),
        "cfg_pattern": {k: runs[1][k] for k in ("dit_forwards", "denoise_s")}, "runs": runs,
        "note": "random weights; unbatched CFG; forced patterns (PatternPolicy, TeaCache's indicator computed on "
                "every step); top-level dit_forwards/denoise_s are the skip_half run; uncached_estimate_s = steps x "
                "the median full step of the same loop (the uncached loop was not run)"})


if __name__ == "__main__":
    main()
