"""What the modifier tests share: the test modes of every registered method that caches (``Method.test_modes``, for
8-step tiny runs), sampling, and hooks that record what the real sampler computed. A new method is tested here as soon
as it is registered."""

from __future__ import annotations

import copy

import pytest
import torch

from genmo_teacache.caches import METHODS, observed_method
from genmo_teacache.caches.reuse import AfterFirstBlock, Blocks, Model
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.sampler import sample_model

STEPS = 8
# method key -> its test modes (parsed with the method_calibration fixture): one that computes some steps and skips
# others, with two computed steps before some skip (a forecast of order 1), and its "threshold 0" that computes every
# step; every registered method that caches (a modifier needs one)
METHOD_MODES = {m.key: m.test_modes for m in METHODS if m.enabled}
# the method a modifier is tried with in the default (fast) stage: the one the registry observes (TeaCache); every
# other method with it runs in the slow stage (``-m slow``), the contract suite covers every method in both
FAST_METHOD = observed_method().key


def method_params() -> list:
    """METHOD_MODES' keys as parameters, each but FAST_METHOD marked slow (their test ids stay the keys)."""
    return [pytest.param(key, marks=() if key == FAST_METHOD else pytest.mark.slow) for key in METHOD_MODES]


def conditioning(pipe, batched, prompt="a red car drives through the snowy city"):
    from genmo.mochi_preview.pipelines import get_conditioning

    with torch.inference_mode():
        return get_conditioning(pipe.tokenizer, pipe.text_encoder, pipe.device, batched, prompt=prompt,
                                negative_prompt="")


def sample(pipe, cond, cache, seed=0, steps=STEPS, **kw):
    """A fresh run (to watch with hooks); ``tiny_runs.sample`` serves a plain one that other tests share."""
    args = GenerationSettings(width=64, height=64, num_frames=7, num_steps=steps).sampler_args(seed)
    with torch.inference_mode():
        return sample_model(pipe.device, pipe.dit, copy.deepcopy(cond), cache=cache, progress=False, **args, **kw)


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
    if reuse == Blocks.name:
        return rec["x"], rec["blocks"].float() - rec["x"].float()
    if reuse == AfterFirstBlock.name:
        return rec["x1"], rec["blocks"].float() - rec["x1"].float()
    if reuse == Model.name:
        return rec["z"], rec["out"].float() - rec["z"].float()
    raise ValueError(reuse)


def entry_of_skip(reuse: str, rec: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """What a skipped step added its quantity to (None for ``model``: a skip makes no DiT call to watch)."""
    return {Blocks.name: rec.get("x"), AfterFirstBlock.name: rec.get("x1")}.get(reuse)
