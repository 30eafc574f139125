"""The modifiers' costs (+cfg: FasterCache's CFG cache; +taylor<n>: TaylorSeer forecasts) with unbatched CFG, full-size
DiT with random weights (timings only). Three parts, each timed step by step (synchronised):

* ``step``: a 14-step loop with a forced pattern (computed 0-3, 7, 8, 13; steps 7 and 8 cond-only; the others
  skipped), run as the plain cache, the cache with ``+cfg``'s work, and that plus ``+taylor1`` / ``+taylor2``: the
  cost of a cond-only step against a full step (target <= 51%), the forecast's overhead per skipped step (target
  <= 1% of a forward), and peak memory of each against a short uncached loop.
* ``baseline``: the uncached loop of ``--loop_steps`` steps (128 forwards at 64 steps).
* ``pattern``: the same loop computing half the steps (``PatternPolicy.skipping``), every second computed step
  cond-only (at 64 steps: 32 computed, 16 of them cond-only, 48 forwards): its speedup over ``baseline`` against the
  ideal 128 / 48 (target: within 3%). Without ``baseline`` in the same command, ``--baseline_from`` names the JSON
  of an earlier ``--parts baseline`` run.

    python bench/bench_modifiers.py --frames 163                     # everything (about 15 min on an H200)
    # or as two commands of under 10 minutes each (the second reads the first's JSON):
    python bench/bench_modifiers.py --frames 163 --parts baseline
    python bench/bench_modifiers.py --frames 163 --parts step,pattern --baseline_from B.json
    python bench/bench_modifiers.py --tiny                           # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from genmo_teacache.caches import CacheConfig  # noqa: E402
from genmo_teacache.caches.pattern import CondOnlyPattern, PatternPolicy  # noqa: E402
from genmo_teacache.caches.taylor import Taylor  # noqa: E402
from genmo_teacache.caches.teacache import TeaCache  # noqa: E402
from genmo_teacache.generate import GenerationSettings  # noqa: E402
from genmo_teacache.sampler import sample_model  # noqa: E402
from genmo_teacache.speed import SpeedOptions  # noqa: E402
from genmo_teacache.tiny import TINY_DIT_KWARGS  # noqa: E402

from common import conditioning, full_size_dit, peak_gib, reset_peak, sync, table, write_results

STEP_PATTERN = dict(steps=14, computed={0, 1, 2, 3, 7, 8, 13}, cond_only={7, 8})
PARTS = ("step", "baseline", "pattern")


def kinds(report) -> dict[str, list[float]]:
    """Step seconds by kind: full (every branch ran; step 0 left out, it also memoises the conditioning),
    cond-only, skipped."""
    full = report.forwards_per_step
    out: dict[str, list[float]] = {"full": [], "cond_only": [], "skipped": []}
    for r, s in zip(report.steps, report.step_seconds):
        kind = "skipped" if not r.computed else "full" if len(r.branches) == full else "cond_only"
        if not (kind == "full" and r.step == 0):
            out[kind].append(s)
    return out


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=None, help="video frames (default 163; 7 with --tiny)")
    ap.add_argument("--loop_steps", type=int, default=64, help="steps of the baseline and pattern loops")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--baseline_from", default=None,
                    help="JSON of an earlier --parts baseline run (same frames, steps and options) for the pattern's "
                         "speedup")
    ap.add_argument("--name", default=None, help="result file name (default bench_modifiers_<frames>f[_<parts>])")
    ap.add_argument("--tiny", action="store_true", help="the tiny DiT at 64x64 (a CPU smoke test)")
    ap.add_argument("--dit_dtype", default="fp32")
    ap.add_argument("--sdpa_backend", default="auto")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--parts {args.parts!r}: use some of {', '.join(PARTS)}")
    frames = args.frames or (7 if args.tiny else 163)
    base_from = json.loads(Path(args.baseline_from).read_text()) if args.baseline_from else None
    if base_from is not None and (base_from["frames"], base_from["loop_steps"]) != (frames, args.loop_steps):
        ap.error(f"--baseline_from {args.baseline_from} ran {base_from['frames']} frames, {base_from['loop_steps']} "
                 f"steps: give a baseline of {frames} frames, {args.loop_steps} steps")

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    speed = SpeedOptions(dit_dtype=args.dit_dtype, sdpa_backend=args.sdpa_backend, compile_dit=args.compile)
    if base_from is not None and base_from["speed"] != str(speed):
        ap.error(f"--baseline_from {args.baseline_from} ran with {base_from['speed']}, this run with {speed}")
    dit = full_size_dit(device, model_kwargs=TINY_DIT_KWARGS if args.tiny else None, speed=speed)
    w, h = (64, 64) if args.tiny else (848, 480)
    cond = conditioning(device)

    def run(cache: CacheConfig, policy: PatternPolicy | None, steps: int) -> tuple[float, Any, float | None]:
        settings = GenerationSettings(width=w, height=h, num_frames=frames, num_steps=steps)
        reset_peak()
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = sample_model(device, dit, {k: dict(v) for k, v in cond.items()}, cache=cache, policy=policy,
                               progress=False, **settings.sampler_args(0))
        sync()
        return time.perf_counter() - t0, res.report, peak_gib()

    cache_method = TeaCache.fixed(0.0)  # PatternPolicy's stand-in: TeaCache's indicator every step, its reuse

    def patterned(computed: set[int], cond_only: set[int] | None, order: int | None) -> CacheConfig:
        mods: list = [] if cond_only is None else [CondOnlyPattern(steps=frozenset(cond_only))]
        mods += [] if order is None else [Taylor(order=order)]
        return CacheConfig(cache_method, tuple(mods))

    # warm-up: kernels, the allocator, the FFT and forecast paths
    run(patterned({0, 1, 3}, {3}, 2), PatternPolicy({0, 1, 3}), 4)
    results: dict[str, Any] = {"frames": frames, "loop_steps": args.loop_steps, "cfg": "unbatched",
                               "speed": str(speed), "parts": parts}

    if "step" in parts:
        p = STEP_PATTERN
        policy = PatternPolicy(p["computed"])
        _, _, uncached_peak = run(CacheConfig.baseline(), None, 2)
        rows = []
        for variant, cond_only, order in (("cache", None, None), ("cache+cfg", p["cond_only"], None),
                                          ("cache+cfg+taylor1", p["cond_only"], 1),
                                          ("cache+cfg+taylor2", p["cond_only"], 2)):
            seconds, report, peak = run(patterned(p["computed"], cond_only, order), policy, p["steps"])
            k = kinds(report)
            rows.append({"variant": variant, "forwards": report.dit_calls, "loop_s": seconds,
                         "full_step_s": median(k["full"]), "cond_only_step_s": median(k["cond_only"]),
                         "skipped_step_s": median(k["skipped"]), "skipped_steps": len(k["skipped"]),
                         "peak_gib": peak})
            print(table(rows[-1:], list(rows[-1])), flush=True)
        by = {r["variant"]: r for r in rows}
        cfg = by["cache+cfg"]
        forward_s = cfg["full_step_s"] / 2
        summary: dict[str, Any] = {
            "forward_s": forward_s,
            "cond_only_of_full_step": cfg["cond_only_step_s"] / cfg["full_step_s"],
            "uncached_peak_gib": uncached_peak,
        }
        for order in (1, 2):
            extra = by[f"cache+cfg+taylor{order}"]["skipped_step_s"] - cfg["skipped_step_s"]
            summary[f"taylor{order}_overhead_per_skip_s"] = extra
            summary[f"taylor{order}_overhead_of_forward"] = extra / forward_s
        if uncached_peak is not None:
            summary["peak_added_gib"] = {
                "cache (plain, vs uncached)": by["cache"]["peak_gib"] - uncached_peak,
                "+cfg (vs plain cache)": cfg["peak_gib"] - by["cache"]["peak_gib"],
                "+taylor1 (vs cache+cfg)": by["cache+cfg+taylor1"]["peak_gib"] - cfg["peak_gib"],
                "+taylor2 (vs cache+cfg)": by["cache+cfg+taylor2"]["peak_gib"] - cfg["peak_gib"],
            }
        results["step"] = {"pattern": {k: sorted(v) if isinstance(v, set) else v for k, v in p.items()},
                           "rows": rows, "summary": summary}
        print(json.dumps(summary, indent=2), flush=True)

    loop: dict[str, Any] = {}
    if "baseline" in parts:
        seconds, report, peak = run(CacheConfig.baseline(), None, args.loop_steps)
        loop["baseline"] = {"loop_s": seconds, "forwards": report.dit_calls, "peak_gib": peak}
        print(f"baseline loop: {seconds:.2f} s, {report.dit_calls} forwards", flush=True)
    elif base_from is not None:
        loop["baseline"] = dict(base_from["loop"]["baseline"], source=args.baseline_from)
    if "pattern" in parts:
        policy = PatternPolicy.skipping(args.loop_steps, 0.5)
        cache = CacheConfig(cache_method, (CondOnlyPattern.every_other(policy.computed),))
        seconds, report, peak = run(cache, policy, args.loop_steps)
        k = kinds(report)
        loop["pattern"] = {"loop_s": seconds, "forwards": report.dit_calls, "computed_steps": report.computed_steps,
                           "cond_only_steps": report.cond_only_steps, "ideal_speedup": report.ideal_speedup,
                           "full_step_s": median(k["full"]), "cond_only_step_s": median(k["cond_only"]),
                           "skipped_step_s": median(k["skipped"]), "peak_gib": peak}
        print(f"pattern loop: {seconds:.2f} s, {report.dit_calls} forwards", flush=True)
        if "baseline" in loop:
            speedup = loop["baseline"]["loop_s"] / seconds
            loop["pattern"] |= {"speedup": speedup, "of_ideal": speedup / report.ideal_speedup}
            print(table([loop["pattern"]], ["forwards", "loop_s", "speedup", "ideal_speedup", "of_ideal"]))
    if loop:
        results["loop"] = loop
    suffix = "" if parts == list(PARTS) else "_" + "_".join(parts)
    write_results(args.name or f"bench_modifiers_{frames}f{suffix}", results)


if __name__ == "__main__":
    main()
