"""A whole video (T5 encoding, the 64-step DiT loop, decoding) with ``--low_memory`` under a GPU memory cap, and the
same video without the option and without the cap, for comparison. ONE command on an H200:

    python bench/bench_low_memory.py                     # 163 frames, 480x848, 64 steps, fastest, cap 24 GiB
    python bench/bench_low_memory.py --speed fast        # bf16 weights without FP8 linears: does it fit too?
    python bench/bench_low_memory.py --tiny              # CPU smoke test (tiny model, tiny sizes, no cap)

What runs: the model directory made by ``make-tiny-model --full-size-random-dit --full-size-random-t5
--full-size-random-decoder`` (full-size architectures, RANDOM weights: time and memory only, the video is noise)
unless ``--model_dir`` is given. Each of the two runs loads its pipeline through ``generate.load_pipeline`` (the
user's path), warms up untimed (``--warmup_steps`` denoising steps: compile, kernels), then makes one video with
``pipeline.generate``, the generation the CLI makes, minus the mp4 (no ffmpeg needed). The run with the option
holds ``torch.cuda.set_per_process_memory_fraction`` at ``--cap_gib`` from before loading to the end, so anything
more fails (an out-of-memory error is recorded, not raised). ``peak_gib`` is the most memory allocated at any
time of the run: loading, warm-up and each phase of the video (``details`` has each).

The cache: ``--cache_mode skip_half`` (default) computes half the steps, evenly spread, whatever the indicator says
(``PatternPolicy.skipping``, TeaCache's indicator measured on every step, as bench/bench_headline.py), because
thresholds mean nothing on random weights; any mode name works too. Both runs use it.

Writes ``$OUT/low_memory_<frames>f.json`` (``docs/bench_results/`` keeps it): ``device``, ``frames``, ``steps``,
``memory_cap_gib``, ``peak_gib``, ``denoise_s``, ``total_s``, ``options`` of the run with the option;
``without_option`` the same fields for the other run (``memory_cap_gib`` null); ``comparison``: whether both runs'
latents are identical (they must be: a memory option changes no number) and how far their frames are apart
(decoding in time chunks rounds differently in the last bits); ``details``: load and warm-up times, each phase's
peak and time, step counts.

``--comparison_steps N`` shortens the run without the option to N denoising steps (its ``steps`` says so; its
latents are then not compared). Expected on an H200 with the defaults: about 7 minutes (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from genmo_teacache.caches import CacheConfig, parse_mode  # noqa: E402
from genmo_teacache.caches.pattern import PatternPolicy  # noqa: E402
from genmo_teacache.generate import GenerationSettings, load_pipeline  # noqa: E402
from genmo_teacache.sampler import sample_model  # noqa: E402
from genmo_teacache.speed import parse_speed  # noqa: E402
from genmo_teacache.tiny import make_tiny_model  # noqa: E402
from genmo_teacache.upstream import progress_bar  # noqa: E402

from common import write_results

SKIP_HALF = "skip_half"
PROMPT = "A hand with delicate fingers picks up a bright yellow lemon from a wooden bowl"
GIB = 1024**3


def peak() -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None


def run_one(model_dir: str, *, low_memory: bool, cap_gib: float | None, speed_spec: str, cache_mode: str,
            settings: GenerationSettings, warmup_steps: int, device: str) -> dict[str, Any]:
    """Load, warm up and generate one video: the fields of the results file, ``details``, ``latents`` and
    ``video`` (the frames)."""
    speed = parse_speed(speed_spec)
    cuda = device.startswith("cuda")
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total) if cap_gib else 1.0, device)
        torch.cuda.reset_peak_memory_stats(device)
    policy = None
    if cache_mode == SKIP_HALF:
        cache, policy = CacheConfig.baseline(), PatternPolicy.skipping(settings.num_steps, 0.5)
    else:
        cache = parse_mode(cache_mode)
    options = {"low_memory": low_memory, "speed": speed.spec(), "speed_options": asdict(speed),
               "cache_mode": cache_mode, "width": settings.width, "height": settings.height,
               "batch_cfg": settings.batch_cfg, "warmup_steps": warmup_steps}
    fields: dict[str, Any] = {"frames": settings.num_frames, "steps": settings.num_steps,
                              "memory_cap_gib": cap_gib if cuda else None, "peak_gib": None, "denoise_s": None,
                              "total_s": None, "options": options}
    details: dict[str, Any] = {}
    pipe = out = None
    try:
        t0 = time.perf_counter()
        pipe = load_pipeline(model_dir, device=device, speed=speed, low_memory=low_memory)
        details.update(load_s=time.perf_counter() - t0, load_peak_gib=peak())
        options["decode_type"] = pipe.decode_type
        if warmup_steps:
            t0 = time.perf_counter()
            warm = replace(settings, num_steps=warmup_steps)
            with torch.inference_mode():
                cond = pipe.encode(batch_cfg=settings.batch_cfg, prompt=PROMPT, negative_prompt="")
                with pipe.placed(pipe.dit):
                    sample_model(pipe.device, pipe.dit, cond, progress=False, **warm.sampler_args(0))
                del cond
            details.update(warmup_s=time.perf_counter() - t0, warmup_peak_gib=peak())
        with progress_bar(type="tqdm"):
            out = pipe.generate(batch_cfg=settings.batch_cfg, prompt=PROMPT, negative_prompt="", cache=cache,
                                policy=policy, **settings.sampler_args(0))
    except torch.OutOfMemoryError as e:
        details["error"] = f"out of memory: {str(e).splitlines()[0][:300]}"
        details["error_peak_gib"] = peak()
        traceback.print_exc()
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    result: dict[str, Any] = {"details": details, "latents": None, "video": None}
    if out is not None:
        peaks = [p for p in (details.get("load_peak_gib"), details.get("warmup_peak_gib"),
                             *out.phase_peaks_gb.values()) if p is not None]
        fields.update(peak_gib=max(peaks) if peaks else None, denoise_s=out.timings["denoising_s"],
                      total_s=out.timings["total_s"])
        report = out.report
        computed = [s for r, s in zip(report.steps, report.step_seconds) if r.computed]
        details.update(timings=out.timings, phase_peaks_gib=out.phase_peaks_gb, computed_steps=report.computed_steps,
                       dit_calls=report.dit_calls, first_step_s=report.step_seconds[0],
                       computed_step_median_s=sorted(computed)[len(computed) // 2] if computed else None)
        result.update(latents=out.latents.cpu(), video=torch.from_numpy(out.frames))
    del pipe, out
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    print({k: v for k, v in fields.items() if k != "options"}, details, flush=True)
    return {**fields, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", default=None,
                    help="weights directory (default: full-size random DiT, T5 and decoder made in a temp folder)")
    ap.add_argument("--speed", default="fastest", help="speed preset or spec of both runs (default: fastest)")
    ap.add_argument("--cache_mode", default=SKIP_HALF,
                    help=f"{SKIP_HALF} (half the steps computed, forced) or a mode name, for both runs")
    ap.add_argument("--cap_gib", type=float, default=24.0, help="memory cap of the run with --low_memory (GiB)")
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--comparison_steps", type=int, default=None,
                    help="denoising steps of the run without the option (default: --steps; 0: no such run)")
    ap.add_argument("--warmup_steps", type=int, default=2, help="untimed warm-up steps per pipeline (0: none)")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU smoke test: the tiny model at 64x64, 31 frames, 4 steps, speed bf16+fp8_mm")
    ap.add_argument("--name", default=None, help="results file name (default: low_memory_<frames>f)")
    args = ap.parse_args()
    if args.tiny:
        args.frames, args.steps, args.width, args.height = 31, 4, 64, 64
        args.speed = "bf16+fp8_mm" if args.speed == "fastest" else args.speed
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    settings = GenerationSettings(width=args.width, height=args.height, num_frames=args.frames, num_steps=args.steps)
    comparison_steps = args.steps if args.comparison_steps is None else args.comparison_steps

    with tempfile.TemporaryDirectory(prefix="lowmem_model_") as tmp:
        model_dir = args.model_dir or str(make_tiny_model(
            Path(tmp) / "m", full_size_random_dit=not args.tiny, full_size_random_t5=not args.tiny,
            full_size_random_decoder=not args.tiny))
        common = dict(speed_spec=args.speed, cache_mode=args.cache_mode, warmup_steps=args.warmup_steps,
                      device=device)
        with_option = run_one(model_dir, low_memory=True, cap_gib=args.cap_gib, settings=settings, **common)
        # the run with the option is the result; written now too, so a run stopped during the comparison keeps it
        write_results((args.name or f"low_memory_{args.frames}f") + "_with_option_only", {
            k: with_option[k] for k in ("frames", "steps", "memory_cap_gib", "peak_gib", "denoise_s", "total_s",
                                        "options", "details")})
        without = None
        if comparison_steps:
            without = run_one(model_dir, low_memory=False, cap_gib=None,
                              settings=replace(settings, num_steps=comparison_steps), **common)

    comparison: dict[str, Any] = {}
    if without is not None and with_option["latents"] is not None and without["latents"] is not None:
        if comparison_steps == args.steps:
            comparison["same_latents"] = torch.equal(with_option["latents"], without["latents"])
            comparison["frames_max_abs_diff"] = (with_option["video"] - without["video"]).abs().max().item()
        else:
            comparison["note"] = f"the run without the option ran {comparison_steps} steps: not compared"
    keys = ("frames", "steps", "memory_cap_gib", "peak_gib", "denoise_s", "total_s", "options")
    results = {k: with_option[k] for k in keys}
    results["without_option"] = None if without is None else {k: without[k] for k in keys}
    results.update(comparison=comparison, details={"with_option": with_option["details"],
                                                   "without_option": without and without["details"]},
                   note="random weights (time and memory only); peak_gib: the most allocated at any time of the run "
                        "(loading, warm-up, text encoding, denoising, decoding); the cap holds for the whole run")
    write_results(args.name or f"low_memory_{args.frames}f", results)


if __name__ == "__main__":
    main()
