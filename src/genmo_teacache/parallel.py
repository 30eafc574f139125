"""Checks for context-parallel runs that need no model, no Ray and no GPU (so the CLI refuses early)."""

from __future__ import annotations


def check_divisible(world_size: int, *, num_heads: int, width: int, height: int, num_frames: int,
                    patch_size: int = 2) -> None:
    """Context parallelism splits heads and visual tokens over ranks: refuse sizes that do not divide."""
    if num_heads % world_size:
        raise ValueError(f"{num_heads} attention heads do not divide over {world_size} ranks: use a --num_gpus "
                         f"that divides {num_heads}")
    latent_t = (num_frames - 1) // 6 + 1
    tokens = latent_t * (height // 8 // patch_size) * (width // 8 // patch_size)
    if tokens % world_size:
        raise ValueError(f"{tokens} visual tokens ({num_frames} frames, {width}x{height}) do not divide over "
                         f"{world_size} ranks: change --num_gpus or the video size")
