"""Speed options for the DiT, off by default (upstream's behaviour): each keeps outputs within bf16 tolerance
of the plain forward; docs/BENCHMARKS.md reports what each buys and how far outputs move.

- ``dit_dtype="bf16"``: store the DiT's linear and conv weights in bf16 (upstream keeps fp32 weights and casts
  them under autocast on every call): 17 GiB less memory at full size. Norm weights and RoPE frequencies stay
  fp32. Single-GPU only (FSDP keeps fp32 parameters).
- ``sdpa_backend``: the SDPA kernel for the visual/text attention in ``attention_mode="sdpa"``. Upstream lets
  PyTorch choose among flash, memory-efficient and (on Hopper) cuDNN; ``"cudnn"``, ``"flash"``,
  ``"efficient"`` or ``"math"`` force one.
- ``compile``: ``torch.compile`` each transformer block (upstream's COMPILE_DIT switch, per instance).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

SDPA_BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


@dataclass(frozen=True)
class SpeedOptions:
    dit_dtype: str = "fp32"
    sdpa_backend: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.dit_dtype not in ("fp32", "bf16"):
            raise ValueError(f"dit_dtype {self.dit_dtype!r}: use fp32 (upstream) or bf16")
        if self.sdpa_backend not in ("auto", *SDPA_BACKENDS):
            raise ValueError(f"sdpa_backend {self.sdpa_backend!r}: use auto, {', '.join(SDPA_BACKENDS)}")

    @property
    def is_default(self) -> bool:
        return self == SpeedOptions()


def _sdpa_with(backend: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)


def apply_speed_options(dit: torch.nn.Module, options: SpeedOptions) -> torch.nn.Module:
    """Apply ``options`` to an (unwrapped) DiT, in place. Call after its weights are loaded."""
    if options.dit_dtype == "bf16":
        from genmo.mochi_preview.pipelines import cast_dit

        cast_dit(dit, torch.bfloat16)
    if options.sdpa_backend != "auto":
        backend = SDPA_BACKENDS[options.sdpa_backend]
        for block in dit.blocks:  # per instance: other models in the process keep upstream's choice
            block.attn.sdpa_attention = partial(_sdpa_with, backend)
    if options.compile:
        for block in dit.blocks:
            block.compile(dynamic=False)
    if not options.is_default:
        log.info("DiT speed options: %s", options)
    return dit
