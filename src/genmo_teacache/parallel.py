"""Checks for multi-GPU runs that need no model, no Ray and no GPU (so the CLI refuses early)."""

from __future__ import annotations

DECODER_CONTEXT_FRAMES = 2  # the decoder's causal temporal convolutions (kernel 3) look 2 latent frames back


def check_layout(num_gpus: int, cfg_parallel: bool) -> int:
    """The context-parallel size of ``num_gpus`` ranks (half of them with ``cfg_parallel``); raises ValueError
    naming the fix for a count that does not fit."""
    if num_gpus < 1:
        raise ValueError(f"--num_gpus {num_gpus}: use a positive number of GPUs")
    if cfg_parallel and (num_gpus < 2 or num_gpus % 2):
        raise ValueError(f"--cfg_parallel runs the two CFG branches on two halves of the GPUs: --num_gpus {num_gpus} "
                         f"must be even (2, 4, ...)")
    if not cfg_parallel and num_gpus < 2:
        raise ValueError(f"--num_gpus {num_gpus}: the multi-GPU pipeline needs at least 2 ranks")
    return num_gpus // 2 if cfg_parallel else num_gpus


def check_divisible(world_size: int, *, num_heads: int, width: int, height: int, num_frames: int,
                    patch_size: int = 2) -> None:
    """Context parallelism splits heads and visual tokens over ranks: refuse sizes that do not divide (a size of 1
    always fits)."""
    if world_size == 1:
        return
    if num_heads % world_size:
        raise ValueError(f"{num_heads} attention heads do not divide over {world_size} ranks: use a --num_gpus "
                         f"that divides {num_heads}")
    latent_t = (num_frames - 1) // 6 + 1
    tokens = latent_t * (height // 8 // patch_size) * (width // 8 // patch_size)
    if tokens % world_size:
        raise ValueError(f"{tokens} visual tokens ({num_frames} frames, {width}x{height}) do not divide over "
                         f"{world_size} ranks: change --num_gpus or the video size")
    # the VAE decoder splits the latent frames over the ranks (torch.tensor_split) and every rank but the last
    # passes its last DECODER_CONTEXT_FRAMES frames on to the next one (upstream vae/cp_conv.py)
    chunks = [latent_t // world_size + (1 if r < latent_t % world_size else 0) for r in range(world_size)]
    if min(chunks[:-1], default=DECODER_CONTEXT_FRAMES) < DECODER_CONTEXT_FRAMES or chunks[-1] < 1:
        need = 6 * DECODER_CONTEXT_FRAMES * (world_size - 1) + 1  # latent frames 2, 2, ..., 2, 1
        raise ValueError(f"{num_frames} frames are {latent_t} latent frames, which the VAE decoder cannot split over "
                         f"{world_size} ranks ({chunks}: each rank but the last needs {DECODER_CONTEXT_FRAMES}): "
                         f"use at least {need} frames or fewer --num_gpus")
