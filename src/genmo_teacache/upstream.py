"""Upstream Mochi (the ``genmo`` package) as this package uses it: the one module that imports it, right after the
runtime shims of :mod:`genmo_teacache.compat` are applied (CPU import of the attention module, CPU attention
backends, no moviepy). Every other module takes upstream's names from here, so whichever entry point runs first
(the CLI, a Ray rank, a test, a benchmark), upstream is never imported unshimmed.
"""

# ruff: noqa: E402
from genmo_teacache import compat

SHIMS = compat.apply()

import genmo.mochi_preview.dit.joint_model.asymm_models_joint as asymm_dit
import genmo.mochi_preview.dit.joint_model.context_parallel as cp
from genmo.lib.progress import get_new_progress_bar, progress_bar
from genmo.lib.utils import Timer
from genmo.mochi_preview import pipelines
from genmo.mochi_preview.dit.joint_model.layers import RMSNorm
from genmo.mochi_preview.dit.joint_model.mod_rmsnorm import modulated_rmsnorm
from genmo.mochi_preview.vae.models import (
    ContextParallelConv3d,
    Decoder,
    DepthToSpaceTime,
    SafeConv3d,
    decode_latents,
    decode_latents_tiled_full,
    decode_latents_tiled_spatial,
)
from genmo.mochi_preview.vae.vae_stats import dit_latents_to_vae_latents

__all__ = ["SHIMS", "ContextParallelConv3d", "Decoder", "DepthToSpaceTime", "RMSNorm", "SafeConv3d", "Timer",
           "asymm_dit", "cp", "decode_latents", "decode_latents_tiled_full", "decode_latents_tiled_spatial",
           "dit_latents_to_vae_latents", "get_new_progress_bar", "modulated_rmsnorm", "pipelines", "progress_bar"]
