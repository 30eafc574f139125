"""Sparse attention against dense FA3 FP8, in ONE process on one GPU: per frame count (31, 85, 163 at 480x848), the
attention time of one block call (cuDNN SDPA, FA3 FP8, and each sparse method on the q, k, v of a real block);
one DiT forward of upstream's default, of the ``fastest`` preset and of ``fastest`` + each sparse method (median
after a warm-up that compiles), each with its density and its output's distance from upstream's and from
``fastest``'s; and the latents' relative difference after an 8-step loop of our sampler at 31 frames.

    PYTHONPATH=src python bench/bench_sparse.py --budget_s 270   # H200, ~5 min (needs fa3-fwd); JSON to $OUT
    PYTHONPATH=src python bench/bench_sparse.py --tiny           # CPU, tiny model: checks this script

Writes ``sparse_attention_163f.json`` (``device``, ``frames``: 163, ``variants``: name, forward_s, density,
mean_abs_diff, ...) and ``sparse_attention_3sizes.json`` (every row). Random weights: timings only; a trained
model's attention is not a random one's, so the distances say nothing of quality (``evaluate`` does).
Stages run in priority order; one that would start after ``--budget_s`` is skipped and recorded as skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
import warnings
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from genmo_teacache.caches import CacheConfig  # noqa: E402
from genmo_teacache.generate import GenerationSettings  # noqa: E402
from genmo_teacache.pipelines import up  # noqa: E402
from genmo_teacache.sampler import sample_model  # noqa: E402
from genmo_teacache.sparse import (  # noqa: E402
    SparseAttentionState,
    SparseHeads,
    SparseTopK,
    follow_sigma_schedule,
    install_sparse_attention,
    parse_sparse,
    remove_sparse_attention,
)
from genmo_teacache.sparse.kernel import topk_blocks  # noqa: E402
from genmo_teacache.speed import _load_attention, apply_speed_options, check_speed_options, parse_speed  # noqa: E402
from genmo_teacache.tiny import TINY_DIT_KWARGS  # noqa: E402

from common import FRAMES_480P, conditioning, full_size_dit, peak_gib, reset_peak, sync, table, write_results

UPSTREAM = "upstream_default"
SDPA = "sdpa (cuDNN on Hopper)"
TINY_LATENTS = {31: (2, 16, 16), 85: (3, 16, 16), 163: (4, 16, 16)}  # --tiny: latent (T, H, W) per "frame count"
CAPTURE_BLOCK = 0.5  # the block whose q, k, v the attention timings use: the middle one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="163,85,31", help="frame counts at 480x848, in priority order")
    ap.add_argument("--methods", default="sparse_tile_0.17,sparse_heads_0.17,sparse_topk_0.17",
                    help="sparse-attention tokens to measure on top of --base")
    ap.add_argument("--base", default="fastest", help="the dense speed spec the sparse methods are added to")
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards per variant after one warm-up")
    ap.add_argument("--attn_repeats", type=int, default=5, help="timed attention calls per kernel")
    ap.add_argument("--loop_frames", type=int, default=31, help="frames of the 8-step quality loop (0: none)")
    ap.add_argument("--loop_steps", type=int, default=8)
    ap.add_argument("--budget_s", type=float, default=270, help="start no new stage after this many seconds")
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU (base bf16, no compile): checks the script")
    args = ap.parse_args()
    Bench(args).run()


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t0 = time.perf_counter()
        self.device = torch.device("cuda:0" if torch.cuda.is_available() and not args.tiny else "cpu")
        self.base = parse_speed("bf16" if args.tiny else args.base)
        self.base_name = self.base.spec()
        fields = asdict(self.base)  # the field is compile_dit on main after issue 21, compile before
        self.compiles = bool(fields.get("compile_dit", fields.get("compile", False)))
        self.methods = [parse_sparse(t) for t in args.methods.split(",")]
        if any(m is None for m in self.methods):
            raise SystemExit(f"--methods {args.methods!r}: use sparse_tile_, sparse_heads_, sparse_topk_<density>")
        self.frames = [int(f) for f in args.frames.split(",")]
        self.tile = (1, 2, 2) if args.tiny else None
        self.rows: list[dict[str, Any]] = []
        self.attention: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self.loops: dict[str, torch.Tensor] = {}
        self.qkv: dict[int, tuple[torch.Tensor, ...]] = {}
        self.conds = conditioning(self.device)
        self.state: SparseAttentionState | None = None

    # -- helpers -------------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)

    def within_budget(self, stage: str) -> bool:
        if self.elapsed() > self.args.budget_s:
            self.skipped.append(f"{stage} (time budget: {self.elapsed():.0f} s elapsed)")
            self.say(f"skip {stage}: time budget")
            return False
        return True

    def latent_shape(self, frames: int) -> tuple[int, int, int]:
        return TINY_LATENTS[frames] if self.args.tiny else (FRAMES_480P[frames], 60, 106)

    def inputs(self, frames: int):
        lt, lh, lw = self.latent_shape(frames)
        g = torch.Generator(device=self.device).manual_seed(0)
        z = torch.randn(1, 12, lt, lh, lw, device=self.device, generator=g)
        cond = self.conds["cond"]
        packed = up.compute_packed_indices(self.device, cond["y_mask"][0], lt * lh * lw)
        return z, torch.full([1], 0.7, device=self.device), cond, packed

    def forward(self, frames: int) -> torch.Tensor:
        z, sigma, cond, packed = self.inputs(frames)
        if self.state is not None and self.state.config is not None:
            self.state.reset(64)
            self.state.begin_step(32)  # a step after every published warm-up
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self.dit(z, sigma, cond["y_feat"], cond["y_mask"], packed).float()
        return out

    def timed(self, fn, repeats: int) -> tuple[float, float, list[float], Any]:
        sync()
        t = time.perf_counter()
        fn()  # warm-up: compile, allocator
        sync()
        first = time.perf_counter() - t
        times, out = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times), first, times, out

    # -- stages --------------------------------------------------------------------------------------------------
    def measure_forward(self, name: str, frames: int, density: float | None = 1.0) -> None:
        if not self.within_budget(f"{name} at {frames} frames"):
            return
        reset_peak()
        try:
            median, first, times, out = self.timed(lambda: self.forward(frames), self.args.repeats)
        except Exception as e:  # noqa: BLE001 - a variant that fails is a result
            self.rows.append({"name": name, "frames": frames, "error": f"{type(e).__name__}: {e}"[:2000]})
            self.say(f"FAILED {name} at {frames}: {e}")
            traceback.print_exc()
            return
        sparse = self.state is not None and self.state.config is not None
        record = self.state.end_step() if sparse else None  # the last forward's step
        self.outputs[(name, frames)] = out
        ref, base = self.outputs.get((UPSTREAM, frames)), self.outputs.get((self.base_name, frames))
        row: dict[str, Any] = {"name": name, "frames": frames, "forward_s": median, "times_s": times,
                               "first_call_s": first, "peak_gib": peak_gib(),
                               "density": record["density"] if record else density}
        if record:
            row["windows"] = record["windows"]
            row["layer_density"] = record["layer_density"]
            if "spatial_heads" in record:
                row["spatial_heads"] = record["spatial_heads"]
        if ref is not None:
            d = (out - ref).abs()
            row |= {"mean_abs_diff": d.mean().item(), "max_abs_diff": d.max().item(),
                    "rel_l2_diff": ((out - ref).norm() / ref.norm()).item(), "mean_abs_out": ref.abs().mean().item()}
            upstream_s = median if name == UPSTREAM else self.forward_s(UPSTREAM, frames)
            row["speedup_vs_upstream_default"] = upstream_s / median
        if base is not None and name != self.base_name:
            row["mean_abs_diff_vs_base"] = (out - base).abs().mean().item()
        self.rows.append(row)
        print(table([row], ["name", "frames", "forward_s", "first_call_s", "density", "mean_abs_diff",
                            "max_abs_diff", "speedup_vs_upstream_default"]), flush=True)
        self.write()

    def forward_s(self, name: str, frames: int) -> float:
        return next(r["forward_s"] for r in self.rows if r["name"] == name and r.get("frames") == frames
                    and "forward_s" in r)

    def capture_qkv(self, frames: int) -> None:
        """q, k, v of the middle block's attention in upstream's forward (bf16, upstream's layout)."""
        block = self.dit.blocks[int(len(self.dit.blocks) * CAPTURE_BLOCK)].attn
        original = block.sdpa_attention

        def keep(q, k, v):
            self.qkv[frames] = (q.clone(), k.clone(), v.clone())
            return original(q, k, v)

        block.sdpa_attention = keep
        try:
            self.forward(frames)
        finally:
            block.__dict__.pop("sdpa_attention", None)

    def measure_attention(self, frames: int) -> None:
        if frames not in self.qkv or not self.within_budget(f"attention at {frames} frames"):
            return
        q, k, v = self.qkv[frames]
        lt, lh, lw = self.latent_shape(frames)
        grid = (lt, lh // 2, lw // 2)
        n = self.args.attn_repeats
        kernels: list[tuple[str, Any, SparseAttentionState | None]] = [
            (SDPA, lambda: F.scaled_dot_product_attention(q, k, v), None)]
        if self.base.attention_kernel != "sdpa":
            dense = _load_attention(self.base.attention_kernel)
            if self.compiles:  # as in the compiled forward: FP8 attention's quantisation fused
                dense = torch.compile(dense, dynamic=False)
            kernels.append((self.base.attention_kernel, lambda: dense(q, k, v), None))
        layer = len(self.dit.blocks) // 2
        for config in self.methods:
            state = SparseAttentionState(config, len(self.dit.blocks), compiled=self.device.type == "cuda",
                                         **({"tile": self.tile} if self.tile else {}))
            state.grid = grid
            state.reset(64)
            state.begin_step(32)
            kernels.append((config.token, lambda s=state: s.attend(layer, q, k, v), state))
        reference = None
        for name, fn, state in kernels:
            try:
                with torch.inference_mode():
                    median, first, times, out = self.timed(fn, n)
            except Exception as e:  # noqa: BLE001 - a kernel that fails is a result
                self.attention.append({"kernel": name, "frames": frames, "error": f"{type(e).__name__}: {e}"[:500]})
                self.say(f"FAILED attention {name} at {frames}: {e}")
                traceback.print_exc()
                continue
            out = out.float()
            reference = out if reference is None else reference
            record = state.end_step() if state is not None else None
            row = {"kernel": name, "frames": frames, "tokens": q.shape[-2], "heads": q.shape[1],
                   "ms_per_call": median * 1e3, "times_ms": [t * 1e3 for t in times], "first_call_s": first,
                   "density": record["layer_density"][layer] if record else 1.0,
                   "mean_abs_diff_vs_sdpa": (out - reference).abs().mean().item(),
                   "max_abs_diff_vs_sdpa": (out - reference).abs().max().item()}
            if record:
                row["window"] = record["windows"]
                if "spatial_heads" in record:
                    row["spatial_heads"] = record["spatial_heads"][layer]
            self.attention.append(row)
            print(table([row], ["kernel", "frames", "tokens", "ms_per_call", "first_call_s", "density",
                                "mean_abs_diff_vs_sdpa", "max_abs_diff_vs_sdpa"]), flush=True)
        self.write()

    def kernel_check(self, frames: int) -> None:
        """The kernel path against an independent reference: SDPA with the same pattern as an element mask, on the
        reordered q, k, v, for the static window (one pattern for all heads) and the top-k selection (one per head).
        bf16 rounding gives ~1e-2 at most; a wrong block list gives differences of the size of the output."""
        if frames not in self.qkv or not self.within_budget(f"kernel check at {frames} frames"):
            return
        q, k, v = self.qkv[frames]
        lt, lh, lw = self.latent_shape(frames)
        layer = len(self.dit.blocks) // 2
        for config in self.methods:
            if isinstance(config, SparseHeads):
                continue  # its per-head patterns are the same block lists as top-k's
            state = SparseAttentionState(config, len(self.dit.blocks), compiled=self.device.type == "cuda",
                                         **({"tile": self.tile} if self.tile else {}))
            state.grid = (lt, lh // 2, lw // 2)
            state.reset(64)
            state.begin_step(32)
            with torch.inference_mode():
                out = state.attend(layer, q, k, v).float()
                plan = state.plan(q.shape[-2], q.device)
                qt, kt, vt = (x.index_select(-2, plan.perm) for x in (q, k, v))
                if isinstance(config, SparseTopK):
                    keep = topk_blocks(qt, kt, plan.block, config.density, config.SIM_THRESHOLD)
                    keep[:, :, plan.text_blocks] = True
                    keep[:, :, :, plan.text_blocks] = True
                else:
                    keep = plan.keep[None]
                blk = torch.arange(q.shape[-2], device=q.device) // plan.block
                mask = keep[:, :, blk][:, :, :, blk]
                ref = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask).index_select(-2, plan.inverse)
            d = (out - ref.float()).abs()
            row = {"kernel": f"{config.token} against SDPA with its mask", "frames": frames,
                   "max_abs_diff": d.max().item(), "mean_abs_diff": d.mean().item()}
            del mask, ref
            self.attention.append(row)
            self.say(f"kernel check {config.token} at {frames} frames: max abs diff {row['max_abs_diff']:.3g}")
        self.write()

    def loop(self, name: str, config=None) -> None:
        if not self.args.loop_frames or not self.within_budget(f"{self.args.loop_steps}-step loop {name}"):
            return
        s = GenerationSettings(width=64 if self.args.tiny else 848, height=64 if self.args.tiny else 480,
                               num_frames=7 if self.args.tiny else self.args.loop_frames,
                               num_steps=self.args.loop_steps)
        a = s.sampler_args(0)
        hook = None
        if self.state is not None:
            self.state.config = config
            if config is not None:
                hook = follow_sigma_schedule(self.dit, self.state, a["sigma_schedule"])
        t = time.perf_counter()
        try:
            with torch.inference_mode():
                res = sample_model(self.device, self.dit, {k: dict(v) for k, v in self.conds.items()},
                                   cache=CacheConfig.baseline(), progress=False, **a)
        finally:
            if hook is not None:
                hook.remove()
        seconds = time.perf_counter() - t
        z = res.latents.float()
        self.loops[name] = z
        row = next((r for r in self.rows if r["name"] == name and r.get("frames") == self.frames[0]), None)
        if row is None:
            return
        row["loop_s"] = seconds
        row["loop_frames"], row["loop_steps"] = s.num_frames, s.num_steps
        for other, key in ((UPSTREAM, "loop_latents_rel_diff"), (self.base_name, "loop_latents_rel_diff_vs_base")):
            if other in self.loops and other != name:
                zr = self.loops[other]
                row[key] = ((z - zr).norm() / zr.norm()).item()
        if config is not None:
            self.state.end_step()
            row["loop_warmup_steps"] = config.warmup_steps(s.num_steps)
            row["loop_density"] = [r["density"] for r in self.state.records]
        self.say(f"{name}: {s.num_steps}-step loop {seconds:.1f} s, rel diff from upstream "
                 f"{row.get('loop_latents_rel_diff')}")
        self.write()

    def write(self) -> None:
        top = self.frames[0]
        keys = ("name", "forward_s", "density", "mean_abs_diff", "max_abs_diff", "rel_l2_diff",
                "mean_abs_diff_vs_base", "speedup_vs_upstream_default", "first_call_s", "times_s", "peak_gib",
                "windows", "spatial_heads", "attention_ms_per_call", "loop_latents_rel_diff",
                "loop_latents_rel_diff_vs_base", "loop_warmup_steps", "loop_density", "error")
        variants = []
        for r in self.rows:
            if r.get("frames") != top:
                continue
            v = {k: r[k] for k in keys if k in r}
            kernel = r["name"].rsplit("+", 1)[-1] if "+sparse_" in r["name"] else (
                SDPA if r["name"] == UPSTREAM or self.base.attention_kernel == "sdpa" else self.base.attention_kernel)
            v["attention_ms_per_call"] = next((a["ms_per_call"] for a in self.attention
                                               if a["frames"] == top and a["kernel"] == kernel and "ms_per_call" in a),
                                              None)
            variants.append(v)
        notes = {"weights": "random (timings only; a trained model's attention is not a random one's)",
                 "forward": f"median of {self.args.repeats} after a warm-up (the warm-up compiles); sparse variants "
                            "at step 32 of 64 (after every published warm-up); density: the mean over the 48 blocks "
                            "of the kept share of attention blocks (sparse_heads: block 0 dense, as published)",
                 "attention": f"one call on the q, k, v of block {int(len(self.dit.blocks) * CAPTURE_BLOCK)} of "
                              "upstream's forward, with the cond branch's 40 text tokens; median of "
                              f"{self.args.attn_repeats}; sparse kernels include the reorder (and the head "
                              "classification for sparse_heads)",
                 "loop": f"{self.args.loop_steps} steps at {self.args.loop_frames} frames, our sampler, seed 0, CFG "
                         "unbatched, each method with its published warm-up share of the steps",
                 "base": self.base_name}
        name = "sparse_attention_tiny" if self.args.tiny else f"sparse_attention_{top}f"
        write_results(name, {"frames": top, "variants": variants, "attention": [a for a in self.attention
                                                                                 if a["frames"] == top],
                             "skipped": self.skipped, "notes": notes, "elapsed_s": self.elapsed()})
        write_results("sparse_attention_tiny_3sizes" if self.args.tiny else "sparse_attention_3sizes",
                      {"frames": self.frames, "rows": self.rows, "attention": self.attention,
                       "skipped": self.skipped, "notes": notes, "elapsed_s": self.elapsed()})

    # -- the plan ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        args = self.args
        check_speed_options(self.base, self.device)  # before the model loads
        setattr(torch._dynamo.config, "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit")
                else "cache_size_limit", 64)
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        self.say(f"building the DiT ({'tiny' if args.tiny else 'full size'}, random weights) on {self.device}")
        self.dit = full_size_dit(self.device, model_kwargs=TINY_DIT_KWARGS if args.tiny else None)
        self.say(f"{sum(p.numel() for p in self.dit.parameters()) / 1e9:.2f} B parameters")
        # 1. upstream's default (fp32 weights, SDPA): reference outputs, the q, k, v the attention timings use
        for frames in self.frames:
            self.measure_forward(UPSTREAM, frames)
            if self.within_budget(f"capture q, k, v at {frames}"):
                self.capture_qkv(frames)
        self.loop(UPSTREAM)
        # 2. the base preset as it is (bf16 weights, FP8 linears, FA3 FP8, compiled blocks)
        apply_speed_options(self.dit, self.base)
        for frames in self.frames:
            self.measure_forward(self.base_name, frames)
        self.loop(self.base_name)
        # 3. the sparse methods on the same weights: the router goes in, the blocks are compiled again around it
        for block in self.dit.blocks:
            block._compiled_call_impl = None
        torch._dynamo.reset()
        self.state = install_sparse_attention(self.dit, None, compile_dense=self.compiles,
                                              **({"tile": self.tile} if self.tile else {}))
        if self.compiles:
            for block in self.dit.blocks:
                block.compile(dynamic=False)
        self.kernel_check(min(self.frames))
        for i, frames in enumerate(self.frames):  # the first size, then the loops, then the other sizes
            self.measure_attention(frames)
            for config in self.methods:
                self.state.config = config
                self.measure_forward(f"{self.base_name}+{config.token}", frames)
            if i == 0:
                self.state.config = None
                self.measure_forward(f"{self.base_name}, dense through the sparse router", frames)
                for config in self.methods:
                    self.loop(f"{self.base_name}+{config.token}", config)
        remove_sparse_attention(self.dit)
        rows = [r for r in self.rows if "forward_s" in r]
        print("\n" + table(rows, ["name", "frames", "forward_s", "density", "mean_abs_diff", "max_abs_diff",
                                  "speedup_vs_upstream_default", "loop_latents_rel_diff"]))
        print("\n" + table([a for a in self.attention if "ms_per_call" in a],
                           ["kernel", "frames", "ms_per_call", "density", "mean_abs_diff_vs_sdpa"]))
        for s in self.skipped:
            print("skipped:", s)
        self.say("done")


if __name__ == "__main__":
    main()
