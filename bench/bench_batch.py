"""Batch throughput on one machine: videos per hour with 1 Ray worker against N (one per GPU), and the batch
machinery's per-video overhead over the generation itself (writing the video and report, the queue).

    genmo-teacache make-tiny-model /tmp/bench_model --full-size-random-dit
    python bench/bench_batch.py --model_dir /tmp/bench_model --workers 1,2 --videos 6 --num_frames 31 --num_steps 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table, write_results


def run_batch(model_dir: str, workers: int, videos: int, frames: int, steps: int, size: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"batch{workers}-"))
    prompts = out / "prompts.txt"
    prompts.write_text("".join(f"benchmark prompt number {i}\n" for i in range(videos)))
    cmd = [sys.executable, "-m", "genmo_teacache.cli", "batch", "--model_dir", model_dir, "--prompts-file",
           str(prompts), "--modes", "baseline", "--output-dir", str(out), "--num_frames", str(frames),
           "--num_steps", str(steps), "--ray", "--num-workers", str(workers), *size]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    runs = [r for log in (out / "logs").glob("generation_log_*.json") for r in json.loads(log.read_text())["runs"]]
    runs.sort(key=lambda r: r["finished_unix"])
    gen = [r["timings"]["total_s"] for r in runs]
    by_worker: dict[str, list] = {}
    for r in runs:
        by_worker.setdefault(r["worker"], []).append(r)
    # steady state: between a worker's consecutive videos, the time not spent inside generate() is the batch's
    gaps = [(b["finished_unix"] - a["finished_unix"]) - b["timings"]["total_s"]
            for rs in by_worker.values() for a, b in zip(rs, rs[1:])]
    first_done = [rs[0]["finished_unix"] for rs in by_worker.values()]
    steady_span = runs[-1]["finished_unix"] - max(first_done)
    steady_videos = len(runs) - len(by_worker)
    return {"workers": workers, "videos": len(runs), "wall_s": wall,
            "videos_per_hour_wall": 3600 * len(runs) / wall,
            "videos_per_hour_steady": 3600 * steady_videos / steady_span if steady_span > 0 else None,
            "mean_generation_s": statistics.mean(gen),
            "mean_batch_overhead_s": statistics.mean(gaps) if gaps else None,
            "overhead_fraction": statistics.mean(gaps) / statistics.mean(gen) if gaps else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--num_frames", type=int, default=31)
    ap.add_argument("--num_steps", type=int, default=16)
    ap.add_argument("--size", default="", help="extra options, e.g. '--width 64 --height 64 --device cpu'")
    args = ap.parse_args()
    rows = [run_batch(args.model_dir, int(w), args.videos, args.num_frames, args.num_steps, args.size.split())
            for w in args.workers.split(",")]
    for r in rows:
        steady, steady1 = r["videos_per_hour_steady"] or 0, rows[0]["videos_per_hour_steady"] or 1
        r["throughput_vs_1_worker_steady"] = steady / steady1
        r["throughput_vs_1_worker_wall"] = r["videos_per_hour_wall"] / rows[0]["videos_per_hour_wall"]
    print("\n" + table(rows, list(rows[0])))
    write_results("bench_batch", {"frames": args.num_frames, "steps": args.num_steps, "rows": rows})


if __name__ == "__main__":
    main()
