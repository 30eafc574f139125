"""Decoding latents a few latent frames at a time, with the result of decoding them all at once (``--low_memory``).

Upstream's VAE decoder is causal in time and local in time everywhere but two places: each 3x3x3 convolution
(``ContextParallelConv3d``) sees the two frames before the current one (the first frame repeated before the video's
start), and each temporal upsampling (``DepthToSpaceTime``) drops the frames its expansion makes before the video's
first frame. Group norms are per frame, the other convolutions 1x1x1. Upstream's context parallelism relies on this:
each rank decodes its own frames, given the previous rank's last two frames at every convolution.

:func:`decode_in_time_chunks` does the same one chunk after another on one device: every such convolution keeps the
last two frames of its input for the next chunk, and only the first chunk drops the upsampling's leading frames. The
arithmetic is that of one pass over the whole video, but a convolution kernel may pick another algorithm for a
shorter input, so values can differ in their last bits (up to 1e-6 on the tiny decoder on a CPU; upstream's own
``SafeConv3d`` already splits long inputs in time). The activations held at once are those of one chunk. At
163 frames, 480x848, upstream's ``tiled_spatial`` decoding peaks at 44 GiB and ``full`` at 90 GiB on an H200
(docs/BENCHMARKS.md, section 6); a chunk of 4 latent frames (24 video frames) holds about 24/163 of that.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange

from genmo_teacache.upstream import ContextParallelConv3d, DepthToSpaceTime, SafeConv3d, cp

CHUNK_LATENT_FRAMES = 4  # latent frames decoded at once: 24 video frames (19 for the first chunk)


class _Stream:
    """What carries over from one chunk to the next: whether this is the first chunk, each convolution's last
    input frames."""

    def __init__(self) -> None:
        self.first = True
        self.tails: dict[int, torch.Tensor] = {}


def _causal_conv(conv: ContextParallelConv3d, stream: _Stream, x: torch.Tensor) -> torch.Tensor:
    """``ContextParallelConv3d.forward`` (one device, causal, temporal stride 1) on one chunk of frames: before the
    first chunk the first frame is repeated as upstream pads it, before the others come the previous chunk's last
    frames."""
    context = conv.kernel_size[0] - 1
    if stream.first:
        x = F.pad(x, (0, 0, 0, 0, context, 0), mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
    else:
        x = torch.cat([stream.tails[id(conv)], x], dim=2)
    stream.tails[id(conv)] = x[:, :, x.size(2) - context:].clone()
    return SafeConv3d.forward(conv, x)


def _depth_to_space_time(d2st: DepthToSpaceTime, stream: _Stream, x: torch.Tensor) -> torch.Tensor:
    """``DepthToSpaceTime.forward`` on one chunk: only the first chunk drops the frames before the video's start."""
    x = rearrange(x, "B (C st sh sw) T H W -> B C (T st) (H sh) (W sw)", st=d2st.temporal_expansion,
                  sh=d2st.spatial_expansion, sw=d2st.spatial_expansion)
    return x[:, :, d2st.temporal_expansion - 1:] if stream.first else x


@contextmanager
def _streaming(decoder: torch.nn.Module) -> Iterator[_Stream]:
    """The decoder's temporal modules run chunk by chunk (instance attributes, removed on exit)."""
    if cp.get_cp_rank_size()[1] != 1:
        raise RuntimeError("decoding in time chunks runs on one device; context parallelism splits time already")
    stream = _Stream()
    patched = []
    for m in decoder.modules():
        if isinstance(m, ContextParallelConv3d) and m.kernel_size[0] > 1:
            if not m.causal or m.stride[0] != 1:
                raise NotImplementedError(f"{m}: only causal convolutions of temporal stride 1 are decoded in chunks")
            m.forward = partial(_causal_conv, m, stream)
        elif isinstance(m, DepthToSpaceTime) and m.temporal_expansion > 1:
            m.forward = partial(_depth_to_space_time, m, stream)
        else:
            continue
        patched.append(m)
    try:
        yield stream
    finally:
        for m in patched:
            del m.forward


def decode_in_time_chunks(decoder: torch.nn.Module, z: torch.Tensor,
                          chunk: int = CHUNK_LATENT_FRAMES) -> torch.Tensor:
    """``decoder(z)`` computed ``chunk`` latent frames at a time (z: (B, C, T, H, W)). Pass
    ``partial(decode_in_time_chunks, decoder)`` where upstream's decoding functions take the decoder (they only
    call it): within each spatial tile of ``tiled_spatial``, time is then decoded in chunks too."""
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: decode at least one latent frame at a time")
    with _streaming(decoder) as stream:
        pieces = []
        for start in range(0, z.size(2), chunk):
            pieces.append(decoder(z[:, :, start:start + chunk]))
            stream.first = False
    return torch.cat(pieces, dim=2)
