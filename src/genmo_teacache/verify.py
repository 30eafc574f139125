"""``genmo-teacache verify``: check the equivalence claim on your own weights and GPUs.

Runs upstream's own, unmodified ``sample_model`` on upstream's own DiT (``DitModelFactory`` for a real weights
directory on a GPU; upstream's ``AsymmDiTJoint`` built from ``dit_config.json`` for other sizes, which upstream's
factory cannot build, or on a CPU, where it cannot place one), then ours with caching off (on one device, or on
``--num_gpus`` GPUs: context parallel or ``--cfg_parallel``), for a few steps at a size you pick, from the same
conditioning and seed, and reports whether the final latents are bit-identical (and the largest difference if
not). ``--cache_mode`` compares a cached mode instead, to see how far it moves from upstream's result.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from genmo_teacache.cliutils import setup_logging
from genmo_teacache.options import (
    apply_model_defaults,
    generation_options,
    pipeline_kwargs,
    resolve_model_dir,
    settings_from_options,
)

log = logging.getLogger(__name__)

VERIFY_STEPS = 3
IDENTICAL, DIFFERENT, COULD_NOT_RUN = 0, 1, 2  # verify's exit codes


class CouldNotRun(click.ClickException):
    """verify did not reach a verdict (bad input, unwritable --out, a failure while running): exit status 2, never
    1, which says that the latents differ."""

    exit_code = COULD_NOT_RUN


@dataclass
class Verdict:
    identical: bool
    max_abs_diff: float
    mean_abs_diff: float
    mean_abs_upstream: float
    shape: list[int]
    upstream_dit: str  # which upstream code built the DiT
    ours: str  # the pipeline and cache mode of our side

    def summary(self) -> str:
        if self.identical:
            return (f"bit-identical: our latents equal upstream's exactly (shape {self.shape}; upstream DiT from "
                    f"{self.upstream_dit}; ours: {self.ours})")
        return (f"NOT bit-identical: max |difference| {self.max_abs_diff:.3g}, mean {self.mean_abs_diff:.3g} "
                f"(mean |upstream| {self.mean_abs_upstream:.3g}); upstream DiT from {self.upstream_dit}; ours: "
                f"{self.ours}")


def upstream_latents(model_dir: Path, conditioning: dict[str, Any], device: Any, attention_mode: str,
                     sampler_args: dict[str, Any]) -> tuple[Any, str]:
    """Upstream's sample_model on upstream's DiT. Returns (latents on the CPU, what built the DiT)."""
    import torch

    from genmo_teacache.model import AsymmDiTJoint, random_dit
    from genmo_teacache.pipelines import dit_kwargs, random_weights_device, read_model_config
    from genmo_teacache.upstream import pipelines as up
    from genmo_teacache.weights import RANDOM_WEIGHTS_KEY

    config = read_model_config(model_dir, "dit_config.json")
    if config.get(RANDOM_WEIGHTS_KEY):
        random = {k: v for k, v in config.items() if k != RANDOM_WEIGHTS_KEY}
        # as our factory builds a random-weight DiT: the same weights
        dit = random_dit(AsymmDiTJoint, dit_kwargs(random, attention_mode), draw=random_weights_device(), place=device)
        built = "upstream AsymmDiTJoint with random weights (seed 0, as our factory)"
    elif not config and device.type == "cuda":
        factory = up.DitModelFactory(model_path=str(model_dir / "dit.safetensors"), model_dtype="bf16",
                                     attention_mode=attention_mode)
        dit = factory.get_model(local_rank=0, device_id=device.index or 0, world_size=1)
        built = "upstream DitModelFactory"
    else:
        dit = AsymmDiTJoint(**dit_kwargs(config, attention_mode))
        dit.load_state_dict(up.load_to_cpu(str(model_dir / "dit.safetensors")), strict=True)
        dit = dit.to(device).eval()
        built = "upstream AsymmDiTJoint + dit_config.json (upstream's factory builds only the full size on a GPU)"
    # upstream's sample_model autocasts on "cuda" only; elsewhere the caller supplies it, as our sampler does itself
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=device.type != "cuda")
    with torch.inference_mode(), autocast:
        latents = up.sample_model(device, dit, copy.deepcopy(conditioning), **sampler_args).cpu()
    del dit
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return latents, built


def verify(model_dir: str | Path, *, settings: Any, seed: int = 0, prompt: str = "a red car drives through a city",
           cache_mode: str = "baseline", calibration: str | None = None, **pipeline: Any) -> Verdict:
    """Upstream against ours (see the module docstring). ``pipeline``: :func:`generate.load_pipeline`'s options."""
    import torch

    from genmo_teacache.caches import parse_mode
    from genmo_teacache.generate import load_pipeline, resolve_device
    from genmo_teacache.pipelines import resolve_attention_mode
    from genmo_teacache.speed import SpeedOptions, join_mode

    speed = pipeline.get("speed") or SpeedOptions()

    model_dir = Path(model_dir)
    cache = parse_mode(cache_mode, calibration)
    device = torch.device(resolve_device(pipeline.get("device", "auto")))
    attention_mode = resolve_attention_mode(pipeline.get("attention_mode"))
    args = settings.sampler_args(seed)
    num_gpus = pipeline.get("num_gpus") or 1
    multi = num_gpus > 1 or pipeline.get("cfg_parallel")

    # ours first on one device: it loads the text encoder that both sides use (upstream's T5 factory)
    pipe = load_pipeline(model_dir, **{**pipeline, "num_gpus": 1, "cfg_parallel": False})
    with torch.inference_mode():
        conditioning = pipe.encode(batch_cfg=settings.batch_cfg, prompt=prompt,
                                   negative_prompt=settings.negative_prompt)
    if multi:
        del pipe
        pipe = load_pipeline(model_dir, **pipeline)
        ours = pipe.generate(batch_cfg=settings.batch_cfg, prompt=prompt, negative_prompt=settings.negative_prompt,
                             cache=cache, progress=True, **args).latents.cpu()
        pipe.close()
        where = f"{num_gpus} ranks{' CFG-parallel' if pipeline.get('cfg_parallel') else ' context-parallel'}"
    else:
        from genmo_teacache.sampler import sample_model

        with torch.inference_mode(), pipe.placed(pipe.dit):  # --low_memory: on the device only while it samples
            ours = sample_model(device, pipe.dit, copy.deepcopy(conditioning), cache=cache, **args).latents.cpu()
        where = f"one device ({device}{', low memory' if pipeline.get('low_memory') else ''})"
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    expected, built = upstream_latents(model_dir, conditioning, device, attention_mode, args)
    diff = (ours.float() - expected.float()).abs()
    return Verdict(torch.equal(ours, expected), diff.max().item(), diff.mean().item(),
                   expected.float().abs().mean().item(), list(expected.shape), built,
                   f"{where}, {join_mode(cache.name, None if speed.is_default else speed)}")


@click.command("verify")
@click.option("--prompt", default="a red car drives through a city at night", show_default=True,
              help="Prompt of the comparison.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1), help="Seed of both runs.")
@click.option("--cache_mode", default="baseline", show_default=True,
              help="Our side's cache mode (baseline: the claim; another mode shows how far it moves).")
@click.option("--calibration", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Calibration file for --cache_mode methods that take one.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the verdict as JSON here.")
@generation_options
@click.pass_context
def verify_command(ctx: click.Context, **options: Any) -> None:
    """Check that our sampler with caching off gives upstream's latents bit for bit, on your weights and GPUs.

    Runs 3 denoising steps unless --num_steps is given (any difference shows at the first step).
    Exit status 0 when they are identical, 1 when they are not, 2 when verify could not run (bad input, an --out
    that cannot be written, a failure on the way)."""
    from genmo_teacache.caches import parse_mode
    from genmo_teacache.files import OutputPathError, check_output_file, write_json
    from genmo_teacache.weights import WeightsError, check_model_dir

    setup_logging(plain=True)
    options = apply_model_defaults(ctx, resolve_model_dir(options))
    if ctx.get_parameter_source("num_steps") == click.core.ParameterSource.DEFAULT:
        options["num_steps"] = VERIFY_STEPS
    settings = settings_from_options(**options)
    try:  # everything that can be refused before a model loads
        if options["out"]:
            check_output_file(options["out"], "--out")
        check_model_dir(options["model_dir"], text_encoder_dir=options["text_encoder_dir"],
                        lora_path=options["lora_path"])
        parse_mode(options["cache_mode"], options["calibration"]).check(settings.num_steps,
                                                                         batch_cfg=settings.batch_cfg)
    except (OutputPathError, WeightsError, ValueError) as e:
        raise CouldNotRun(str(e)) from None
    try:
        verdict = verify(options["model_dir"], settings=settings, seed=options["seed"], prompt=options["prompt"],
                         cache_mode=options["cache_mode"], calibration=options["calibration"],
                         **pipeline_kwargs(options))
    except Exception as e:  # no verdict: never exit 1, which would read "the latents differ"
        log.debug("verify failed", exc_info=True)
        raise CouldNotRun(f"verify could not run: {type(e).__name__}: {e}") from None
    click.echo(verdict.summary())
    if options["out"]:
        try:
            write_json(options["out"], {**asdict(verdict), "settings": asdict(settings), "model_dir":
                                        str(options["model_dir"]), "prompt": options["prompt"],
                                        "seed": options["seed"]})
        except OSError as e:
            raise CouldNotRun(f"the verdict could not be written to --out {options['out']}: {e}") from None
    ctx.exit(IDENTICAL if verdict.identical else DIFFERENT)
