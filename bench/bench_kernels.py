"""Attention and linear kernels behind speed options, in ONE process on one GPU: upstream's default forward,
the exact-kernel reference (SDPA flash against cuDNN), each kernel alone, and combined with bf16 weights and
torch.compile; forward time (median after a warm-up), peak memory, the output's distance from upstream's, and
the latents' relative difference after an 8-step loop of our sampler (same seed).

    python bench/bench_kernels.py --frames 31,85,163 --budget_s 420       # GPU; JSON goes to $OUT
    python bench/bench_kernels.py --tiny                                  # CPU smoke test of this script

Random weights: timings only. Variants run in priority order and a time budget skips the rest (recorded).
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from dataclasses import asdict
from typing import Any

import torch

from genmo_teacache.caches import CacheConfig  # noqa: E402
from genmo_teacache.generate import GenerationSettings  # noqa: E402
from genmo_teacache.model import AsymmDiTJoint  # noqa: E402
from genmo_teacache.pipelines import up  # noqa: E402
from genmo_teacache.sampler import sample_model  # noqa: E402
from genmo_teacache.speed import (  # noqa: E402
    PRESETS,
    SpeedOptionError,
    SpeedOptions,
    check_speed_options,
    parse_speed,
    quantize_fp8_linears,
    restore_linears,
    set_attention,
    use_fp8_mm,
)
from genmo_teacache.tiny import TINY_DIT_KWARGS  # noqa: E402

from common import FRAMES_480P, conditioning, full_size_dit, peak_gib, reset_peak, sync, table, write_results

UPSTREAM = "upstream_default"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="31,85,163", help="frame counts at 480x848; the largest gets every variant")
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards per variant after one warm-up")
    ap.add_argument("--loop_frames", type=int, default=31, help="frames of the 8-step quality loop")
    ap.add_argument("--loop_steps", type=int, default=8)
    ap.add_argument("--budget_s", type=float, default=420, help="start no new variant after this many seconds")
    ap.add_argument("--name", default="bench_kernels", help="name of the full result file")
    ap.add_argument("--plan", default=None,
                    help="variants to run instead of the full list, in order: 'SPEC:FRAMES:LOOP;...', e.g. "
                         "'default:163,31:1;fa3_fp8:163:1;bf16+compile:163:0' (fp32 specs before bf16 ones)")
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU (sdpa variants only): checks the script")
    args = ap.parse_args()

    t_start = time.perf_counter()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    setattr(torch._dynamo.config, "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit")
            else "cache_size_limit", 64)
    dit = full_size_dit(device, model_kwargs=TINY_DIT_KWARGS if args.tiny else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    conds = conditioning(device)
    cond = conds["cond"]
    frame_list = sorted(int(f) for f in args.frames.split(","))
    top = frame_list[-1]
    w, h = (64, 64) if args.tiny else (848, 480)

    inputs_cache: dict[int, tuple] = {}

    def inputs(frames: int):
        if frames not in inputs_cache:
            lt, lh, lw = (2, 8, 8) if args.tiny else (FRAMES_480P[frames], 60, 106)
            g = torch.Generator(device=device).manual_seed(0)
            z = torch.randn(1, 12, lt, lh, lw, device=device, generator=g)
            packed = up.compute_packed_indices(device, cond["y_mask"][0], lt * lh * lw)
            inputs_cache[frames] = (z, torch.full([1], 0.7, device=device), packed)
        return inputs_cache[frames]

    def forward(frames: int) -> torch.Tensor:
        z, sigma, packed = inputs(frames)
        with torch.inference_mode(), autocast:
            return AsymmDiTJoint.forward(dit, z, sigma, cond["y_feat"], cond["y_mask"], packed)

    def loop() -> torch.Tensor:
        s = GenerationSettings(width=w, height=h, num_frames=7 if args.tiny else args.loop_frames,
                               num_steps=args.loop_steps)
        with torch.inference_mode():
            res = sample_model(device, dit, {k: dict(v) for k, v in conds.items()}, cache=CacheConfig.baseline(),
                               progress=False, **s.sampler_args(0))
        return res.latents.float()

    references: dict[int, torch.Tensor] = {}
    reference_loop: list[torch.Tensor] = []
    rows: list[dict[str, Any]] = []
    state = {"compiled": False, "fp8": None, "fp8_mm": None, "dtype": "fp32"}

    def configure(o: SpeedOptions) -> None:
        """Move the one DiT to ``o``: attention and compile are undone and redone; bf16 weights are one-way
        (variants are ordered so that fp32 ones come first); FP8 linears (torchao's, ours) are swapped in and out."""
        if state["compiled"]:
            for block in dit.blocks:
                block._compiled_call_impl = None
            torch._dynamo.reset()
            state["compiled"] = False
        if o.dit_dtype == "bf16" and state["dtype"] == "fp32":
            up.cast_dit(dit, torch.bfloat16)
            state["dtype"] = "bf16"
        assert o.dit_dtype == state["dtype"], "fp32 variants must come before bf16 ones"
        if o.fp8_linear and state["fp8"] is None:
            saved = {(i, n): m.weight for i, b in enumerate(dit.blocks) for n, m in b.named_modules()
                     if n in ("attn.qkv_x", "attn.proj_x", "mlp_x.w1", "mlp_x.w2")}
            for block in dit.blocks:
                quantize_fp8_linears(block)
            state["fp8"] = saved
        elif not o.fp8_linear and state["fp8"] is not None:
            for (i, n), weight in state["fp8"].items():
                dit.blocks[i].get_submodule(n).weight = weight
            state["fp8"] = None
        if o.fp8_mm and state["fp8_mm"] is None:
            state["fp8_mm"] = use_fp8_mm(dit)
        elif not o.fp8_mm and state["fp8_mm"] is not None:
            restore_linears(dit, state["fp8_mm"])
            state["fp8_mm"] = None
        set_attention(dit, o.attention_kernel, o.sdpa_backend)
        if o.compile_dit:
            for block in dit.blocks:
                block.compile(dynamic=False)
            state["compiled"] = True

    def time_forward(frames: int) -> dict[str, Any]:
        reset_peak()
        sync()
        t0 = time.perf_counter()
        forward(frames)  # warm-up: compile, kernel JIT, allocator
        sync()
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = forward(frames)
            sync()
            times.append(time.perf_counter() - t0)
        return {"forward_s": statistics.median(times), "times_s": times, "first_call_s": first,
                "peak_gib": peak_gib(), "out": out.float()}

    def measure(name: str, o: SpeedOptions, frames_wanted: list[int], with_loop: bool) -> None:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            rows.append({"name": name, "spec": o.spec(), "skipped": f"time budget ({elapsed:.0f} s elapsed)"})
            print(f"skip {name}: time budget", flush=True)
            return
        try:
            check_speed_options(o, device)
            configure(o)
            for frames in frames_wanted:
                r = time_forward(frames)
                out = r.pop("out")
                if name == UPSTREAM:
                    references[frames] = out
                ref = references[frames]
                d = (out - ref).abs()
                row = {"name": name, "spec": o.spec(), "options": asdict(o), "frames": frames, **r,
                       "max_abs_diff": d.max().item(),
                       "mean_abs_diff": d.mean().item(), "rel_l2_diff": ((out - ref).norm() / ref.norm()).item(),
                       "mean_abs_out": ref.abs().mean().item()}
                del out, d
                if with_loop and frames == frames_wanted[-1]:
                    t0 = time.perf_counter()
                    z = loop()
                    row["loop_s"] = time.perf_counter() - t0
                    if name == UPSTREAM:
                        reference_loop.append(z)
                    zr = reference_loop[0]
                    row["loop_latents_rel_diff"] = ((z - zr).norm() / zr.norm()).item()
                    row["loop_frames"] = args.loop_frames
                rows.append(row)
                print(table([row], ["name", "frames", "forward_s", "first_call_s", "peak_gib", "max_abs_diff",
                                    "mean_abs_diff", "loop_latents_rel_diff"]), flush=True)
        except (SpeedOptionError, Exception) as e:  # noqa: BLE001 - a kernel that fails is a result, not a crash
            rows.append({"name": name, "spec": o.spec(), "error": f"{type(e).__name__}: {e}"[:2000]})
            print(f"FAILED {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            set_attention(dit)
        write()

    def write() -> None:
        top_rows = [r for r in rows if r.get("frames") == top or "frames" not in r]
        variants = [{k: r.get(k) for k in ("name", "spec", "options", "forward_s", "peak_gib", "mean_abs_diff",
                                           "max_abs_diff", "rel_l2_diff", "first_call_s", "times_s",
                                           "loop_latents_rel_diff", "error", "skipped") if k in r} for r in top_rows]
        base = next((r["forward_s"] for r in top_rows if r["name"] == UPSTREAM and "forward_s" in r), None)
        for v in variants:
            if base and v.get("forward_s"):
                v["speedup_vs_upstream_default"] = base / v["forward_s"]
        notes = {"weights": "random (timings only)", "loop": f"{args.loop_steps} steps at {args.loop_frames} frames, "
                 "our sampler, seed 0, CFG unbatched; relative L2 difference of the final latents from "
                 "upstream_default's", "reference_pair": "sdpa_flash against upstream_default (cuDNN on Hopper): "
                 "the distance between two exact kernels"}
        write_results("forward_163f" if not args.tiny else "forward_tiny",
                      {"frames": top, "variants": variants, "notes": notes})
        write_results(args.name, {"frames": frame_list, "rows": rows, "notes": notes,
                                  "elapsed_s": time.perf_counter() - t_start})

    kernels = ("fa3_fp8", "fa3", "fa4", "sage") if not args.tiny else ()
    small = frame_list[:-1]
    plan: list[tuple[str, SpeedOptions, list[int], bool]] = [
        (UPSTREAM, SpeedOptions(), [*small, top], True),
        ("sdpa_flash", SpeedOptions(sdpa_backend="flash"), [top], True),
        *[(k, SpeedOptions(attention_kernel=k), [*small, top], True) for k in kernels],
        ("bf16", SpeedOptions(dit_dtype="bf16"), [top], False),
        ("fast", PRESETS["fast"], [*small, top], True),
        ("bf16+compile", SpeedOptions(dit_dtype="bf16", compile_dit=True), [top], True),
        ("fast_bf16", PRESETS["fast_bf16"], [top], True),
        *[(s, parse_speed(s), [top], False) for s in (
            "bf16+fa3_fp8+compile", "bf16+fp8_linear+compile", "bf16+fp8_linear", "bf16+fa4+compile",
            "bf16+sage+compile", "bf16+fa3+fp8_linear+compile", "bf16+fp8_mm", "bf16+fp8_mm+compile",
            "bf16+fa3_fp8+fp8_mm+compile")],
    ]
    if args.plan:
        plan = []
        for entry in args.plan.split(";"):
            spec, frames_text, with_loop = entry.split(":")
            o = parse_speed(spec)
            wanted = sorted(int(f) for f in frames_text.split(","))
            plan.append((UPSTREAM if o.is_default else o.spec(), o, wanted, with_loop == "1"))
    if args.tiny:
        plan = [p for p in plan if p[1].attention_kernel == "sdpa" and not p[1].fp8_linear and not p[1].compile_dit]
    seen = set()
    for name, o, frames_wanted, with_loop in plan:
        if o in seen:
            continue
        seen.add(o)
        measure(name, o, frames_wanted, with_loop)

    print("\n" + table([r for r in rows if "forward_s" in r],
                       ["name", "frames", "forward_s", "peak_gib", "mean_abs_diff", "max_abs_diff", "rel_l2_diff",
                        "loop_latents_rel_diff"]))
    for r in rows:
        if "error" in r or "skipped" in r:
            print(r["name"], r.get("error") or r.get("skipped"))


if __name__ == "__main__":
    main()
