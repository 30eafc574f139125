"""Shared helpers of the GPU benchmarks: full-size DiT with random weights, random conditioning, timing.

Random weights: timings only (outputs are noise); every number these scripts print is measured on the device
the JSON names, never extrapolated.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from genmo_teacache.pipelines import RANDOM_WEIGHTS_KEY, TeaCacheDitModelFactory  # noqa: E402
from genmo_teacache.speed import SpeedOptions  # noqa: E402

FRAMES_480P = {31: 6, 85: 15, 163: 28}  # frames -> latent frames (480x848: 60x106 latents)


def device_info() -> dict[str, Any]:
    info = {"torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count()}
    return info


def full_size_dit(device: torch.device, *, model_kwargs: dict | None = None, speed: SpeedOptions | None = None):
    """The full-size Mochi DiT (or ``model_kwargs`` overrides) with random weights, built on ``device``."""
    factory = TeaCacheDitModelFactory(model_path="<random>", attention_mode="sdpa", speed=speed,
                                      model_kwargs={RANDOM_WEIGHTS_KEY: True, **(model_kwargs or {})})
    return factory.get_model(local_rank=0, device_id=device.index if device.type == "cuda" else "cpu", world_size=1)


def conditioning(device: torch.device, *, text_tokens: int = 40, seed: int = 0, batched: bool = False):
    """Random T5 features shaped as Mochi's (B, 256, 4096) with ``text_tokens`` valid tokens; cond and null
    (the null prompt empty, as upstream's default negative prompt), as ``get_conditioning`` returns them."""
    g = torch.Generator().manual_seed(seed)

    def one(n_tokens: int) -> dict:
        mask = torch.zeros(1, 256, dtype=torch.bool)
        mask[:, :n_tokens] = True
        feat = torch.randn(1, 256, 4096, generator=g) * 0.1 * mask[..., None]
        return {"y_feat": [feat.to(device)], "y_mask": [mask.to(device)]}

    cond, null = one(text_tokens), one(0)
    if batched:
        return {"batched": {k: [torch.cat([cond[k][0], null[k][0]])] for k in ("y_feat", "y_mask")}}
    return {"cond": cond, "null": null}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 3) -> dict[str, float]:
    """Wall-clock seconds of ``fn`` after ``warmup`` calls, synchronising the GPU around each call."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"mean_s": statistics.mean(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _results_dir() -> Path:
    """``$OUT`` (default bench_results/), checked when a benchmark starts: a folder that cannot be written is found
    before the GPU run, not after it."""
    from genmo_teacache.files import OutputPathError, check_output_dir

    try:
        return check_output_dir(os.environ.get("OUT", "bench_results"), "$OUT")
    except OutputPathError as e:
        raise SystemExit(f"error: {e}") from None


RESULTS_DIR = _results_dir()


def write_results(name: str, results: dict[str, Any]) -> Path:
    from genmo_teacache.files import write_json

    out = RESULTS_DIR / f"{name}.json"
    write_json(out, {"device": device_info(), "command": " ".join(sys.argv), **results})
    print(f"wrote {out}", flush=True)
    return out


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)
