"""Time the side-by-side comparison videos (``genmo_teacache.eval.grid``) on synthetic videos, on the CPU, and
estimate the grids of a whole evaluation from it.

    python bench/bench_grids.py --modes 5 --frames 163 --height 480 --width 848 --prompts 1

Writes ``<prompts>`` baseline videos and their ``<modes>`` mode videos (a moving colour gradient over a fixed
texture; each mode adds its own noise, so that the differences are not zero), then times making their grids:
as ``evaluate`` does (per-video fidelity results present: the labels read them) and as ``compare-videos`` does
without them (PSNR computed while making the grid), and with the difference row. Writing the inputs is not timed.
Prints wall time and CPU time (this process and the ffmpeg processes it ran); on a shared machine the CPU time is
the steadier number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from genmo_teacache.eval.fidelity import file_stamp  # noqa: E402
from genmo_teacache.eval.grid import GridOptions, make_grids, plan_grids  # noqa: E402
from genmo_teacache.files import write_json  # noqa: E402
from genmo_teacache.video import write_video  # noqa: E402


def synthetic(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    texture = rng.normal(0, 12, (height, width, 1))
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        base = np.stack([np.sin(2 * np.pi * (x / width + 0.4 * y / height) + c + 0.08 * t) for c in range(3)], -1)
        out[t] = np.clip(127 + 90 * base + texture, 0, 255).astype(np.uint8)
    return out


def cpu_seconds() -> float:
    """User + system time of this process and its finished children (the ffmpeg encoders and decoders)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", type=int, default=5, help="modes besides the baseline")
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--variants", default="evaluate,no_fidelity,diff",
                    help="evaluate: fidelity results present; no_fidelity: PSNR computed; diff: + difference row")
    ap.add_argument("--estimate-videos", type=int, default=33, help="prompts x samples of the estimate")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_grids-"))
    videos, fidelity = root / "videos", root / "results" / "fidelity_metrics"
    modes = [f"mode_{k}" for k in range(args.modes)]
    t0 = time.perf_counter()
    for p in range(args.prompts):
        base = synthetic(args.frames, args.height, args.width, seed=p)
        write_video(videos / "baseline" / f"prompt {p}-0.mp4", base)
        for k, mode in enumerate(modes):
            noise = np.random.default_rng(100 * p + k).normal(0, 2 + 2 * k, base.shape[1:])
            write_video(videos / mode / f"prompt {p}-0.mp4", np.clip(base + noise, 0, 255).astype(np.uint8))
    print(f"inputs written in {time.perf_counter() - t0:.1f} s ({root})", flush=True)

    def per_video(mode: str) -> list[dict]:  # as fidelity.py writes them: with the files they were measured on
        names = [f"prompt {p}-0.mp4" for p in range(args.prompts)]
        return [{"video": n, "psnr": 30.0, "ssim": 0.9, "lpips": 0.1, "baseline_file": file_stamp(
            videos / "baseline" / n), "mode_file": file_stamp(videos / mode / n)} for n in names]

    results = {}
    for variant in args.variants.split(","):
        if variant == "evaluate" or variant == "diff":
            for mode in modes:
                write_json(fidelity / "per_video" / f"{mode}_vs_baseline.json", per_video(mode))
        else:
            for path in (fidelity / "per_video").glob("*.json"):
                path.unlink()
        jobs = plan_grids(videos, "baseline", modes, fidelity, None)
        out = root / f"grids_{variant}"
        t0, c0 = time.perf_counter(), cpu_seconds()
        made = make_grids(jobs, out, GridOptions(diff=variant == "diff"), overwrite=True)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        assert all(r.status == "made" for r in made), [r.reason for r in made]
        info = made[0].info
        per_grid = wall / len(made)
        results[variant] = {"grids": len(made), "wall_s": wall, "per_grid_s": per_grid,
                            "cpu_s": cpu, "per_grid_cpu_s": cpu / len(made),
                            "grid_size": [info["layout"]["width"], info["layout"]["height"]],
                            "grid_frames": info["frames"],
                            "grid_mb": statistics.mean(r.mp4.stat().st_size for r in made) / 1e6,
                            "estimate_s": per_grid * args.estimate_videos}
        print(f"{variant}: {len(made)} grid(s) in {wall:.1f} s = {per_grid:.1f} s per grid, "
              f"{cpu / len(made):.1f} CPU-s per grid "
              f"({info['layout']['width']}x{info['layout']['height']}, {info['frames']} frames, "
              f"{results[variant]['grid_mb']:.1f} MB); {args.estimate_videos} grids: "
              f"{per_grid * args.estimate_videos / 60:.1f} min", flush=True)

    name = args.name or f"bench_grids_{args.modes}m_{args.frames}f_{args.height}x{args.width}"
    out_json = Path(os.environ.get("OUT", "bench_results")) / f"{name}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    device = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "load_1min_at_end": load,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    out_json.write_text(json.dumps({"device": device, "command": " ".join(sys.argv), "modes": args.modes,
                                    "prompts": args.prompts, "frames": args.frames,
                                    "size": [args.height, args.width], "results": results}, indent=2))
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
