"""One DiT forward: upstream's forward against ours with caching off, the cost of a skipped step, peak memory,
and the speed options (SDPA backend, bf16 weights, torch.compile) with their distance from the plain forward.

    python bench/bench_dit.py --frames 31,85,163 --speed        # on a GPU machine; JSON goes to $OUT
    python bench/bench_dit.py --tiny                            # CPU smoke test of this script
"""

from __future__ import annotations

import argparse
import time

import torch

from genmo_teacache.model import AsymmDiTJoint  # noqa: E402
from genmo_teacache.pipelines import up  # noqa: E402  (upstream's pipelines module, after our shims)
from genmo_teacache.sampler import relative_l1  # noqa: E402
from genmo_teacache.speed import SpeedOptions, apply_speed_options  # noqa: E402
from genmo_teacache.tiny import TINY_DIT_KWARGS  # noqa: E402

from common import FRAMES_480P, conditioning, full_size_dit, peak_gib, reset_peak, table, time_fn, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="31,85,163", help="video frame counts at 480x848")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speed", action="store_true", help="also time the speed options at the largest size")
    ap.add_argument("--backends", default="cudnn,flash,efficient", help="SDPA backends tried with --speed")
    ap.add_argument("--compile", action="store_true", help="with --speed, also time torch.compile of the blocks")
    ap.add_argument("--tiny", action="store_true", help="tiny model, tiny latents, CPU: checks the script runs")
    args = ap.parse_args()

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    dit = full_size_dit(device, model_kwargs=TINY_DIT_KWARGS if args.tiny else None)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in dit.parameters())
    print(f"DiT with {params / 1e9:.2f} B random parameters built on {device} in {build_s:.0f} s", flush=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    cond = conditioning(device)["cond"]
    rows, outputs = [], {}

    def inputs(frames: int):
        lt, lh, lw = (2, 8, 8) if args.tiny else (FRAMES_480P[frames], 60, 106)
        g = torch.Generator(device=device).manual_seed(0)
        z = torch.randn(1, 12, lt, lh, lw, device=device, generator=g)
        packed = up.compute_packed_indices(device, cond["y_mask"][0], lt * lh * lw)
        return z, torch.full([1], 0.7, device=device), packed, lt * lh * lw // 4

    frame_list = [int(f) for f in args.frames.split(",")]
    for frames in frame_list:
        z, sigma, packed, tokens = inputs(frames)
        memo: dict = {"shared": {}}

        def upstream():
            with torch.inference_mode(), autocast:
                return AsymmDiTJoint.forward(dit, z, sigma, cond["y_feat"], cond["y_mask"], packed)

        def ours():
            with torch.inference_mode(), autocast:
                inp = dit(z, sigma, cond["y_feat"], cond["y_mask"], packed, memo, phase="prepare")
                return dit(dit(inp, phase="blocks"), inp, phase="finish")

        with torch.inference_mode(), autocast:  # what a skipped step reuses
            inp0 = dit(z, sigma, cond["y_feat"], cond["y_mask"], packed, memo, phase="prepare")
            prev = [dit(inp0, phase="modulated_input")]
            residual = dit(inp0, phase="blocks").float() - inp0.x.float()

        def skipped():
            with torch.inference_mode(), autocast:
                inp = dit(z, sigma * 0.99, cond["y_feat"], cond["y_mask"], packed, memo, phase="prepare")
                raw = relative_l1([dit(inp, phase="modulated_input")], prev)
                x = (inp.x.float() + residual).to(inp.x.dtype)
                return dit(x, inp, phase="finish"), raw

        for name, fn in (("upstream forward", upstream), ("ours, caching off", ours), ("skipped step", skipped)):
            reset_peak()
            t = time_fn(fn, repeats=args.repeats)
            rows.append({"frames": frames, "tokens": tokens, "variant": name, **t, "peak_gib": peak_gib()})
            print(table(rows[-1:], ["frames", "variant", "mean_s", "min_s", "peak_gib"]), flush=True)
        base = next(r for r in rows if r["frames"] == frames and r["variant"] == "upstream forward")
        for r in rows[-2:]:
            r["vs_upstream"] = r["mean_s"] / base["mean_s"]
        outputs[frames] = upstream().float()

    speed_rows = []
    if args.speed:
        frames = max(frame_list)
        z, sigma, packed, tokens = inputs(frames)
        reference = outputs[frames]

        def forward():
            with torch.inference_mode(), autocast:
                return AsymmDiTJoint.forward(dit, z, sigma, cond["y_feat"], cond["y_mask"], packed)

        def measure(label: str, repeats: int = args.repeats) -> dict:
            reset_peak()
            t = time_fn(forward, repeats=repeats)
            out = forward().float()
            d = (out - reference).abs()
            row = {"frames": frames, "variant": label, **t, "peak_gib": peak_gib(), "max_abs_diff": d.max().item(),
                   "mean_abs_diff": d.mean().item(), "mean_abs_out": reference.abs().mean().item()}
            speed_rows.append(row)
            print(table([row], ["variant", "mean_s", "peak_gib", "max_abs_diff", "mean_abs_diff"]), flush=True)
            return row

        measure("default (upstream)")
        for backend in args.backends.split(","):
            apply_speed_options(dit, SpeedOptions(sdpa_backend=backend))
            measure(f"sdpa {backend}")
        best = min((r for r in speed_rows if r["variant"].startswith("sdpa")), key=lambda r: r["mean_s"])
        best_backend = best["variant"].split()[1]
        apply_speed_options(dit, SpeedOptions(dit_dtype="bf16", sdpa_backend=best_backend))
        measure(f"bf16 weights + sdpa {best_backend}")
        if args.compile:
            t0 = time.perf_counter()
            apply_speed_options(dit, SpeedOptions(compile_dit=True))
            forward()
            compile_s = time.perf_counter() - t0
            measure(f"bf16 weights + sdpa {best_backend} + compile", repeats=max(args.repeats - 1, 1))
            speed_rows[-1]["compile_and_first_call_s"] = compile_s
        for r in speed_rows:
            r["speedup_vs_default"] = speed_rows[0]["mean_s"] / r["mean_s"]

    print("\n" + table(rows, ["frames", "tokens", "variant", "mean_s", "min_s", "vs_upstream", "peak_gib"]))
    if speed_rows:
        print("\n" + table(speed_rows, ["variant", "mean_s", "speedup_vs_default", "peak_gib", "max_abs_diff",
                                        "mean_abs_diff", "mean_abs_out"]))
    write_results("bench_dit", {"params": params, "build_s": build_s, "forward": rows, "speed_options": speed_rows})


if __name__ == "__main__":
    main()
