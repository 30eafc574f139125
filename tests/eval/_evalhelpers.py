"""Helpers of the evaluation tests: where the reference fixtures are, mode names, small synthetic videos.
(A module of its own, not conftest, so that test files can import it by a name no other conftest shares.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

HUNYUAN_MODES = ["hunyuan_baseline", "hunyuan_fixed_0.1", "hunyuan_fixed_0.2", "hunyuan_adaptive"]
# The reference script's display labels (our tables use mode names unless given labels).
HUNYUAN_LABELS = {
    "hunyuan_baseline": "HunyuanVideo (no cache)",
    "hunyuan_fixed_0.1": "TeaCache 0.1",
    "hunyuan_fixed_0.2": "TeaCache 0.2",
    "hunyuan_adaptive": "TeaCache Adaptive",
}
# Two prompts of VBench_full_info.json whose only dimension is temporal_flickering.
FLICKER_PROMPTS = ["In a still frame, a stop sign", "a toilet, frozen in time"]


FIXTURES = REPO / "tests" / "fixtures"  # committed with the tests; provenance in its README.md


def smooth_video(frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A slowly moving colour gradient, values in [40, 215] (room for noise without clipping); uint8 (T, H, W, 3)."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        for c in range(3):
            wave = np.sin(2 * np.pi * (x / width + 0.5 * y / height) + phase[c] + 0.15 * t)
            out[t, :, :, c] = np.round(127.5 + 87.5 * wave).astype(np.uint8)
    return out
