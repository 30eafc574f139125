"""torch.compile settings shared by what compiles: the DiT's blocks (``speed``) and FlexAttention (``sparse``)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# Compiled blocks (``dynamic=False``) compile again for each input shape: the latent's, and each CFG branch's text
# length (every prompt length of a batch). Past dynamo's recompile limit (8 by default) they would silently run eager.
RECOMPILE_LIMIT = 64


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    """Let compiled code keep ``limit`` shapes before dynamo falls back to eager (never lowers the limit)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < limit:
        log.info("dynamo %s %d -> %d (one compile per input shape)", name, getattr(config, name), limit)
        setattr(config, name, limit)
