"""Batch throughput on one machine: videos per hour with 1 Ray worker against N (one per GPU), and the batch
machinery's per-video overhead over the generation itself (the queue, the log, and whatever of writing the video
and report is not hidden), with the videos encoded in the background while the next one generates (the default)
and, for comparison, in the foreground (``--writes background,foreground``).

    genmo-teacache make-tiny-model /tmp/bench_model --full-size-random-dit
    python bench/bench_batch.py --model_dir /tmp/bench_model --workers 1,2 --videos 6 --num_frames 31 --num_steps 16

Per row: ``mean_batch_overhead_s`` is the time between a worker's consecutive generations that is not spent
inside ``generate()`` (log entries' ``finished_unix`` is when a generation ended), ``overhead_fraction`` that over
the mean generation time (issue 14's target: under 2%); ``mean_write_s`` is the encode + verify + report time of a
video, which background writing overlaps with the next generation. On a CPU-only machine the encoder competes
with generation for cores (``mean_generation_s`` grows): compare ``videos_per_hour_steady`` there.
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


def run_batch(model_dir: str, workers: int, videos: int, frames: int, steps: int, size: list[str],
              write: str = "background") -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"batch{workers}-{write}-"))
    prompts = out / "prompts.txt"
    prompts.write_text("".join(f"benchmark prompt number {i}\n" for i in range(videos)))
    write_flag = "--background-write" if write == "background" else "--no-background-write"
    cmd = [sys.executable, "-m", "genmo_teacache.cli", "batch", "--model_dir", model_dir, "--prompts-file",
           str(prompts), "--modes", "baseline", "--output-dir", str(out), "--num_frames", str(frames),
           "--num_steps", str(steps), "--ray", "--num-workers", str(workers), write_flag, *size]
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
    writes = [r["write_s"] for r in runs if isinstance(r.get("write_s"), int | float)]
    return {"workers": workers, "write": write, "videos": len(runs), "wall_s": wall,
            "videos_per_hour_wall": 3600 * len(runs) / wall,
            "videos_per_hour_steady": 3600 * steady_videos / steady_span if steady_span > 0 else None,
            "mean_generation_s": statistics.mean(gen),
            "mean_write_s": statistics.mean(writes) if writes else None,
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
    ap.add_argument("--writes", default="background",
                    help="comma-separated: background (the default of batch), foreground (--no-background-write)")
    args = ap.parse_args()
    rows = [run_batch(args.model_dir, int(w), args.videos, args.num_frames, args.num_steps, args.size.split(), write)
            for write in args.writes.split(",") for w in args.workers.split(",")]
    for r in rows:
        first = next(x for x in rows if x["write"] == r["write"])  # 1 worker, the same way of writing
        steady, steady1 = r["videos_per_hour_steady"] or 0, first["videos_per_hour_steady"] or 1
        r["throughput_vs_1_worker_steady"] = steady / steady1
        r["throughput_vs_1_worker_wall"] = r["videos_per_hour_wall"] / first["videos_per_hour_wall"]
    print("\n" + table(rows, list(rows[0])))
    write_results("bench_batch", {"frames": args.num_frames, "steps": args.num_steps, "rows": rows})


if __name__ == "__main__":
    main()
