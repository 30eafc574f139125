"""Step hooks (model.StepHooks): what a per-step plug-in inside the DiT (e.g. sparse attention) sees from the real
sampler on the tiny model: every step begun before its DiT calls and ended after them with its record, the step's
sigma and the token grid; a hook that records only leaves the latents bit-identical."""

import copy

import pytest
import torch

from genmo_teacache.caches import parse_mode
from genmo_teacache.generate import GenerationSettings
from genmo_teacache.pipelines import TeaCacheSingleGPUPipeline, factories_for
from genmo_teacache.sampler import sample_model

SETTINGS = GenerationSettings(width=96, height=64, num_frames=7, num_steps=8)  # latent 2 x 8 x 12: tokens 2 x 4 x 6


class Recording:
    def __init__(self, dit):
        self.events: list[tuple] = []
        self.handle = dit.register_forward_hook(
            lambda module, args, kwargs, out: self.events.append(("dit", kwargs.get("phase", "full"))),
            with_kwargs=True)

    def begin_step(self, info):
        self.events.append(("begin", info))

    def end_step(self, info, record):
        self.events.append(("end", info, record.step, record.computed))
        record.reason += "+seen"


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return TeaCacheSingleGPUPipeline(**factories_for(tiny_model_dir), device="cpu")


def run(pipe, cache):
    from genmo.mochi_preview.pipelines import get_conditioning

    with torch.inference_mode():
        cond = get_conditioning(pipe.tokenizer, pipe.text_encoder, pipe.device, False, prompt="a cat",
                                negative_prompt="")
        return sample_model(pipe.device, pipe.dit, copy.deepcopy(cond), cache=cache, progress=False,
                            **SETTINGS.sampler_args(0))


def test_every_step_is_begun_before_its_dit_calls_and_ended_after(pipe, method_calibration):
    cache = parse_mode("fixed_0.05", method_calibration)
    plain = run(pipe, cache)
    hook = Recording(pipe.dit)
    pipe.dit.add_step_hook(hook)
    try:
        hooked = run(pipe, cache)
    finally:
        del pipe.dit.step_hooks
        hook.handle.remove()
    assert torch.equal(hooked.latents, plain.latents)
    assert not pipe.dit.step_hooks  # the class default: no hooks
    sigmas = SETTINGS.sampler_args(0)["sigma_schedule"]
    steps, current = [], None
    for event in hook.events:
        if event[0] == "begin":
            assert current is None
            current = event[1]
            assert (current.step, current.num_steps, current.sigma, current.grid) == (len(steps), 8,
                                                                                     sigmas[len(steps)], (2, 4, 6))
        elif event[0] == "end":
            assert event[1] is current and event[2] == current.step
            steps.append(event[3])
            current = None
        else:
            assert current is not None, "a DiT call outside a step"
    assert steps == [r.computed for r in plain.report.steps] and not all(steps)
    assert all(r.reason.endswith("+seen") for r in hooked.report.steps)  # the hook may fill the step's record
