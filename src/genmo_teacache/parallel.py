"""Checks for multi-GPU and Ray runs that need no model and no GPU (so the CLI refuses early)."""

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


RAY_PROBE_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001  # ray://HOST without a port


def _ray_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) that a Ray address connects to first; None where Ray looks it up itself or starts a cluster."""
    if address in ("auto", "local", ""):
        if address != "auto":
            return None
        try:  # the cluster Ray would join: RAY_ADDRESS or the last one started on this machine
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # no cluster found: ray.init says so itself, at once
            return None
        if not address:
            return None
    default = None
    if address.startswith("ray://"):
        address, default = address[len("ray://"):], RAY_CLIENT_PORT
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        if default is None:
            raise ValueError(f"Ray address {address!r}: use HOST:PORT (the cluster's GCS address), ray://HOST:PORT or "
                             "auto")
        host, port = address, str(default)
    return host.strip("[]"), int(port)


def check_ray_address(address: str | None, timeout_s: float = RAY_PROBE_TIMEOUT_S) -> None:
    """Refuse a Ray address where nothing answers: ``ray.init(address=...)`` would retry forever. Raises
    ConnectionError naming the address and what to do; a quick TCP connection, nothing sent."""
    import socket

    if not address:
        return
    try:
        target = _ray_host_port(address)
    except ValueError as e:
        raise ConnectionError(str(e)) from None
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConnectionError(
            f"nothing answers at the Ray address {address} ({host}:{port}: {e.strerror or e}) within "
            f"{timeout_s:.0f} s: start the cluster (`ray start --head` on that machine), pass the address that "
            f"`ray status` shows there, or leave out --ray_address to start a local cluster"
        ) from None
