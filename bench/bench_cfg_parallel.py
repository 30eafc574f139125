"""CFG-parallel against context parallelism on the same 2 GPUs, and against one GPU: the uncached denoising step
(two DiT forwards, cond and uncond) of each, through the real pipelines (Ray, NCCL), and whether CFG-parallel's
latents equal one GPU's bit for bit.

    genmo-teacache make-tiny-model /tmp/bm --full-size-random-dit      # full-size random DiT, tiny T5 and VAE
    python bench/bench_cfg_parallel.py --model_dir /tmp/bm --frames 163 --steps 4
    python bench/bench_cfg_parallel.py --model_dir /tmp/tiny --device cpu --frames 13 --width 96 --height 64   # smoke
"""

from __future__ import annotations

import argparse
import statistics

import torch

from genmo_teacache.caches import CacheConfig  # noqa: E402
from genmo_teacache.generate import GenerationSettings  # noqa: E402
from genmo_teacache.multigpu import TeaCacheMultiGPUPipeline  # noqa: E402
from genmo_teacache.pipelines import TeaCacheSingleGPUPipeline, factories_for  # noqa: E402

from common import table, write_results


def run(pipe, settings: GenerationSettings) -> tuple[float, torch.Tensor, list[float]]:
    """(mean seconds of a denoising step after the first, final latents, every step's seconds)."""
    with torch.inference_mode():
        out = pipe.generate(batch_cfg=False, prompt="a bench", negative_prompt="", cache=CacheConfig.baseline(),
                            progress=False, **settings.sampler_args(0))
    seconds = out.report.step_seconds
    return statistics.mean(seconds[1:]), out.latents.cpu(), seconds  # step 0 also memoises the conditioning


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: smoke test on CPU ranks")
    args = ap.parse_args()
    settings = GenerationSettings(width=args.width, height=args.height, num_frames=args.frames, num_steps=args.steps)
    factories = factories_for(args.model_dir)

    single = TeaCacheSingleGPUPipeline(**factories, device="cuda:0" if args.device == "cuda" else "cpu",
                                       decode_type="full")
    single_s, expected, single_steps = run(single, settings)
    del single
    if args.device == "cuda":
        torch.cuda.empty_cache()
    results = {}
    for name, cfg_parallel in (("cp", False), ("cfg_parallel", True)):
        pipe = TeaCacheMultiGPUPipeline(**factories_for(args.model_dir), world_size=2, device_type=args.device,
                                        cfg_parallel=cfg_parallel)
        try:
            results[name] = run(pipe, settings)
        finally:
            pipe.close()
        print(name, results[name][0], flush=True)
    rows = [{"layout": "1 GPU", "step_s": single_s, "speedup": 1.0},
            {"layout": "2 GPUs, context parallel", "step_s": results["cp"][0],
             "speedup": single_s / results["cp"][0]},
            {"layout": "2 GPUs, CFG-parallel", "step_s": results["cfg_parallel"][0],
             "speedup": single_s / results["cfg_parallel"][0]}]
    print("\n" + table(rows, ["layout", "step_s", "speedup"]))
    write_results("cfg_parallel_2gpu", {
        "frames": args.frames, "steps": args.steps, "width": args.width, "height": args.height,
        "single_step_s": single_s, "cp_step_s": results["cp"][0], "cfg_parallel_step_s": results["cfg_parallel"][0],
        "cp_speedup": single_s / results["cp"][0], "cfg_parallel_speedup": single_s / results["cfg_parallel"][0],
        "latents_identical": bool(torch.equal(results["cfg_parallel"][1], expected)),
        "cp_latents_identical": bool(torch.equal(results["cp"][1], expected)),
        "step_seconds": {"single": single_steps, "cp": results["cp"][2], "cfg_parallel": results["cfg_parallel"][2]},
        "note": "random weights, upstream's default options (fp32 weights, SDPA), unbatched CFG, no caching; step_s "
                "is the mean of steps 1.. (step 0 also memoises the conditioning)"})


if __name__ == "__main__":
    main()
