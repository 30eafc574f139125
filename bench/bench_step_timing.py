"""Are the step times the user's command records true? The demo CLI's path (``generate.load_pipeline`` then
``generate.generate``, with its progress bar) generates one video with a cache mode that computes some steps and
skips others, on a fresh pipeline (so its warm-up pass runs too), and in the same run every step is timed from
outside the sampler: hooks record a CUDA event at each step's first DiT call and at the decoder's first call
(which ends the last step); on a CPU, the wall clock there. Writes ``step_timing_<frames>f.json`` (``$OUT``, else
``bench_results/``) with ``device``, ``frames``, ``steps``, ``sidecar_computed_step_s`` / ``synced_computed_step_s``
(medians over the computed steps after step 0, which also memoises the conditioning), ``sidecar_skipped_step_s`` /
``synced_skipped_step_s`` (medians over the skipped steps), ``warmup_s`` (the warm-up the sidecar reports apart), and
the per-step lists, the relative differences and ``within_3pct``.

The model: ``--model_dir``, else a fresh ``make-tiny-model --full-size-random-dit`` folder (the full-size DiT with
random weights: timings only), or the tiny DiT with ``--tiny`` (a CPU smoke test).

    python bench/bench_step_timing.py --speed fast   # H200: 163 frames, 64 steps, fixed_0.1 (on random weights
                                                     # 16 computed, 48 skipped): about 2 minutes
    python bench/bench_step_timing.py                 # the same without a preset (upstream's defaults): about 3
    python bench/bench_step_timing.py --tiny --frames 7 --width 64 --height 64 --steps 8    # CPU, seconds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from genmo_teacache.caches import parse_mode  # noqa: E402
from genmo_teacache.generate import GenerationSettings, generate, load_pipeline  # noqa: E402
from genmo_teacache.speed import parse_speed  # noqa: E402
from genmo_teacache.tiny import make_tiny_model  # noqa: E402

from common import write_results

TOLERANCE = 0.03  # the sidecar's figures must come within 3% of the synchronised ones


class StepClock:
    """Marks, from outside the sampler, the start of every DiT input preparation with a new sigma tensor (the
    sampler makes one per step, and one for its warm-up pass) and the decoder's first call: a CUDA event recorded on
    the current stream there (GPU), or the wall clock (CPU). Reads nothing from the device, so it adds no sync."""

    def __init__(self, pipe: Any, cuda: bool):
        self.cuda, self.marks, self.sigma = cuda, [], None
        self.hooks = [pipe.dit.register_forward_pre_hook(self._dit, with_kwargs=True),
                      pipe.decoder.register_forward_pre_hook(self._decoder)]

    def _mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def _dit(self, module, args, kwargs) -> None:
        if kwargs.get("phase") == "prepare" and args[1] is not self.sigma:
            self.sigma = args[1]  # kept alive, so that a new tensor is never taken for this one
            self._mark()

    def _decoder(self, module, args) -> None:
        if self.hooks:
            self._mark()
            for h in self.hooks:
                h.remove()
            self.hooks = []

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def rel(a: float | None, b: float | None) -> float | None:
    return abs(a - b) / b if a is not None and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", default=None, help="weights folder (default: a fresh full-size random-DiT one)")
    ap.add_argument("--tiny", action="store_true", help="with no --model_dir: the tiny DiT (a CPU smoke test)")
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--mode", default="fixed_0.1", help="a cache mode that computes some steps and skips others")
    ap.add_argument("--speed", default=None, help="--speed_preset of the pipeline (default: none, upstream's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--name", default=None, help="results file name (default step_timing_<frames>f)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_step_timing-") as tmp:
        model_dir = args.model_dir or str(make_tiny_model(Path(tmp) / "model", full_size_random_dit=not args.tiny))
        pipe = load_pipeline(model_dir, device=args.device, speed=parse_speed(args.speed) if args.speed else None)
        cuda = pipe.device.type == "cuda"
        settings = GenerationSettings(width=args.width, height=args.height, num_frames=args.frames,
                                      num_steps=args.steps)
        clock = StepClock(pipe, cuda)
        t0 = time.perf_counter()
        result = generate(pipe, prompt="a red fox runs through fresh snow at dawn", cache=parse_mode(args.mode),
                          seed=0, settings=settings)
        generate_s = time.perf_counter() - t0
    steps = result.report["steps"]  # what the sidecar's "steps" holds (generate.save_result writes it as it is)
    marks = clock.intervals()
    warmed = len(marks) == len(steps) + 1  # the first interval is the warm-up pass, up to step 0
    if len(marks) != len(steps) + warmed:
        raise SystemExit(f"{len(marks)} intervals for {len(steps)} steps: the hooks missed a step boundary")
    synced = marks[1:] if warmed else marks
    computed = [s["step"] for s in steps[1:] if s["computed"]]
    skipped = [s["step"] for s in steps if not s["computed"]]
    if not computed or not skipped:
        raise SystemExit(f"{args.mode} computed {len(computed) + 1} and skipped {len(skipped)} of {len(steps)} steps: "
                         "pick a --mode that does both")
    sidecar = {i: steps[i]["seconds"] for i in range(len(steps))}
    out = {
        "frames": args.frames, "steps": args.steps,
        "sidecar_computed_step_s": median([sidecar[i] for i in computed]),
        "synced_computed_step_s": median([synced[i] for i in computed]),
        "sidecar_skipped_step_s": median([sidecar[i] for i in skipped]),
        "synced_skipped_step_s": median([synced[i] for i in skipped]),
        "warmup_s": result.timings.get("warmup_s"),
        "dit_warmup_s": result.report["warmup_s"],  # the sampler's warm-up pass (warmup_s adds the text encoder's)
        "synced_warmup_to_step0_s": marks[0] if warmed else None,
        "mode": args.mode, "speed": args.speed, "width": args.width, "height": args.height,
        "synced_by": ("CUDA events" if cuda else "the wall clock") + " at each step's first DiT call",
        "computed_steps": [s["step"] for s in steps if s["computed"]],
        "dit_forwards": result.report["dit_calls"],
        "timings": result.timings,
        "sidecar_step_s": [sidecar[i] for i in range(len(steps))],
        "synced_step_s": synced,
        "generate_s": generate_s,
    }
    out["computed_rel_diff"] = rel(out["sidecar_computed_step_s"], out["synced_computed_step_s"])
    out["skipped_rel_diff"] = rel(out["sidecar_skipped_step_s"], out["synced_skipped_step_s"])
    out["within_3pct"] = all(d is not None and d <= TOLERANCE for d in (out["computed_rel_diff"],
                                                                          out["skipped_rel_diff"]))
    out["elapsed_s"] = time.perf_counter() - t_start
    for key in ("computed_step_s", "skipped_step_s"):
        print(f"{key}: sidecar {out['sidecar_' + key]:.4f} s, synchronised {out['synced_' + key]:.4f} s")
    print(f"warm-up {out['warmup_s']:.2f} s apart; within 3%: {out['within_3pct']}", flush=True)
    write_results(args.name or f"step_timing_{args.frames}f", out)


if __name__ == "__main__":
    main()
