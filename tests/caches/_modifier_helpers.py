"""What the modifier tests share: modes of every registered method for 8-step tiny runs, sampling, and hooks that
record what the real sampler computed.

Adding a method (easycache, fbcache, ...): one line in METHOD_MODES."""

from __future__ import annotations

import copy
import json

import torch

from genmo_teacache.caches import parse_mode
from genmo_teacache.caches.base import AFTER_FIRST_BLOCK, BLOCKS, MODEL
from genmo_teacache.coefficients import Rescale
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.sampler import sample_model

STEPS = 8
# method key -> modes on an 8-step tiny run (parsed with the calibration file below): one that computes some steps
# and skips others, with two computed steps before some skip (a forecast of order 1), and its "threshold 0" that
# computes every step
METHOD_MODES = {
    "teacache": ("fixed_0.05", "fixed_0.0"),  # fixed_0.05 computes steps 0, 2, 4, 5, 6, 7 on the tiny model
    "magcache": ("mag_0.1_r0.0", "mag_0.0"),  # K = 2 on ratios 1 +- 0.01: computes 0, 3, 6, 7
    "easycache": ("easycache_0.2_w2", "easycache_0.0"),
    "fbcache": ("fbcache_0.44", "fbcache_0.0"),  # computes 0, 1, skips 2, 3: forecasts have two values
}


def write_calibration(path):
    """A calibration file for the methods that take one: TeaCache's default polynomial (so its decisions are the
    default ones) and magnitude ratios a few percent from 1."""
    default = Rescale()
    path.write_text(json.dumps({"coefficients": list(default.coefficients), "x_max": default.x_max,
                                "mag_ratios": [1.0] + [1.0 + 0.01 * (-1) ** i for i in range(1, STEPS)]}))
    return path


def conditioning(pipe, batched, prompt="a red car drives through the snowy city"):
    from genmo.mochi_preview.pipelines import get_conditioning

    with torch.inference_mode():
        return get_conditioning(pipe.tokenizer, pipe.text_encoder, pipe.device, batched, prompt=prompt,
                                negative_prompt="")


def sample(pipe, cond, cache, seed=0, steps=STEPS, **kw):
    args = GenerationSettings(width=64, height=64, num_frames=7, num_steps=steps).sampler_args(seed)
    with torch.inference_mode():
        return sample_model(pipe.device, pipe.dit, copy.deepcopy(cond), cache=cache, progress=False, **args, **kw)


_PLAIN: dict = {}


def plain(pipe, mode, calibration):
    """The unbatched run of ``mode`` without modifiers (default prompt and seed), computed once per pipeline."""
    key = (pipe, mode)
    if key not in _PLAIN:
        _PLAIN[key] = sample(pipe, conditioning(pipe, False), parse_mode(mode, calibration))
    return _PLAIN[key]


class Recorder:
    """Forward hooks on the real DiT, recording per (step, branch) what each phase of the sampler's calls saw:
    ``z`` (the input latent), ``x`` (the embedded tokens), ``x1`` (block 0's output, when the first block runs
    alone), ``blocks`` (the last block's output), ``final_in`` (the final layer's input), ``out`` (the DiT's output).
    ``forwards`` counts the calls that ran the blocks. Use as a context manager."""

    def __init__(self, dit, sigmas: list[float]):
        self.dit, self.sigmas = dit, sigmas
        self.seen: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self.forwards = 0
        self.keys: dict[int, tuple[int, str]] = {}  # id of a step's StepInputs -> (step, branch)

    def _on_dit(self, module, args, kwargs, out) -> None:
        phase = kwargs.get("phase", "full")
        if phase == "prepare":
            z, sigma, y_mask = args[0], float(args[1][0]), args[3][0]
            branch = "batched" if y_mask.shape[0] == 2 else ("cond" if bool(y_mask.any()) else "uncond")
            step = min(range(len(self.sigmas)), key=lambda i: abs(self.sigmas[i] - sigma))  # sigma_t is fp32
            key = (step, branch)
            self.keys[id(out)] = key
            self.seen[key] = {"z": z.clone(), "x": out.x.clone()}
        elif phase == "first_block":
            self.seen[self.keys[id(args[0])]]["x1"] = out[0].clone()
        elif phase == "blocks":
            self.forwards += 1
            self.seen[self.keys[id(args[0])]]["blocks"] = out.clone()
        elif phase == "finish":
            rec = self.seen[self.keys[id(args[1])]]
            rec["final_in"], rec["out"] = args[0].clone(), out.clone()

    def __enter__(self) -> Recorder:
        self.hook = self.dit.register_forward_hook(self._on_dit, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.hook.remove()


def entry_and_quantity(reuse: str, rec: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """For a branch that ran on a computed step: (what a skip adds the cached quantity to, the quantity it caches),
    from the hooks, for each reuse point (``caches.base``)."""
    if reuse == BLOCKS:
        return rec["x"], rec["blocks"].float() - rec["x"].float()
    if reuse == AFTER_FIRST_BLOCK:
        return rec["x1"], rec["blocks"].float() - rec["x1"].float()
    if reuse == MODEL:
        return rec["z"], rec["out"].float() - rec["z"].float()
    raise ValueError(reuse)


def entry_of_skip(reuse: str, rec: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """What a skipped step added its quantity to (None for ``model``: a skip makes no DiT call to watch)."""
    return {BLOCKS: rec.get("x"), AFTER_FIRST_BLOCK: rec.get("x1")}.get(reuse)
