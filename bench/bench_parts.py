"""What caps the end-to-end speedup: T5-XXL text encoding (cond + null prompt, as upstream) and VAE decoding
(full and tiled), full-size architectures with random weights.

    python bench/bench_parts.py --frames 163
"""

from __future__ import annotations

import argparse
import time

import torch

from genmo_teacache.pipelines import decoder_kwargs
from genmo_teacache.tiny import T5_XXL_CONFIG as T5_XXL  # google/t5-v1_1-xxl's encoder
from genmo_teacache.upstream import Decoder, decode_latents, decode_latents_tiled_full, decode_latents_tiled_spatial

from common import FRAMES_480P, peak_gib, reset_peak, sync, table, time_fn, write_results


def time_text_encoder(device: torch.device) -> dict:
    from transformers import T5Config, T5EncoderModel

    t0 = time.perf_counter()
    with device:
        t5 = T5EncoderModel(T5Config(**T5_XXL)).eval()  # fp32, as upstream loads it
    print(f"T5-XXL ({sum(p.numel() for p in t5.parameters()) / 1e9:.2f} B) built in {time.perf_counter() - t0:.0f} s")
    ids = torch.randint(0, 32000, (1, 256), device=device)
    mask = torch.zeros(1, 256, dtype=torch.bool, device=device)
    mask[:, :40] = True

    def encode():  # upstream get_conditioning, unbatched: the prompt, then the (empty) negative prompt
        with torch.inference_mode():
            return t5(ids, mask).last_hidden_state, t5(torch.zeros_like(ids), torch.zeros_like(mask)).last_hidden_state

    reset_peak()
    return {"part": "text encoding (T5-XXL fp32, 2 prompts)", **time_fn(encode), "peak_gib": peak_gib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--decode", default="tiled_spatial,tiled_full,full")
    args = ap.parse_args()
    device = torch.device("cuda:0")
    rows = []

    rows.append(time_text_encoder(device))
    print(table(rows[-1:], ["part", "mean_s", "peak_gib"]), flush=True)
    torch.cuda.empty_cache()

    torch.manual_seed(0)
    with device:
        decoder = Decoder(**decoder_kwargs()).eval()
    z = torch.randn(1, 12, FRAMES_480P[args.frames], 60, 106, device=device)
    fns = {"tiled_spatial": lambda: decode_latents_tiled_spatial(decoder, z, num_tiles_w=4, num_tiles_h=2, overlap=8),
           "tiled_full": lambda: decode_latents_tiled_full(decoder, z),
           "full": lambda: decode_latents(decoder, z)}
    for name in args.decode.split(","):
        reset_peak()
        try:
            with torch.inference_mode():
                t = time_fn(fns[name], warmup=1, repeats=2)
            rows.append({"part": f"VAE decode {name} ({args.frames} frames)", **t, "peak_gib": peak_gib()})
        except torch.OutOfMemoryError as e:
            rows.append({"part": f"VAE decode {name} ({args.frames} frames)", "error": f"out of memory: {e}"[:200]})
            torch.cuda.empty_cache()
        sync()
        print(table(rows[-1:], ["part", "mean_s", "peak_gib"]), flush=True)
    print("\n" + table(rows, ["part", "mean_s", "min_s", "peak_gib"]))
    write_results("bench_parts", {"frames": args.frames, "rows": rows})


if __name__ == "__main__":
    main()
