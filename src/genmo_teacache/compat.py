"""Runtime shims for what upstream Mochi (github genmoai/mochi, ``src/genmo``) gets wrong off a GPU, each found on a
CPU-only machine with the unmodified upstream (torch 2.13/2.14) and named in its shim's docstring:
``lib/attn_imports.py`` line 20 calls ``torch.cuda.get_device_properties(0)`` at import (reached from
``mochi_preview/dit/joint_model/asymm_models_joint.py``); ``AsymmDiTJoint.forward`` pools the T5 features under
``sdpa_kernel(EFFICIENT_ATTENTION)``, which has no CPU kernel ("No viable backend"); ``rope_mixed.py``'s
``compute_mixed_rotation`` guards itself with ``autocast("cuda", enabled=False)``, which does not switch off a CPU
autocast; ``lib/utils.py`` imports moviepy at module level; batched CFG needs flash-attn's varlen kernel.

Each shim is small, named, idempotent, applied explicitly by :func:`apply` before upstream is imported (once,
by :mod:`genmo_teacache.upstream`, the one module that imports upstream), and tested. On a machine with CUDA,
:func:`apply` changes nothing in upstream. Upstream files are never edited.

Quirks fixed elsewhere, by our subclasses rather than by patching:
- hard-coded ``cuda:0`` in ``MochiSingleGPUPipeline`` and ``.to(cuda:N)`` in the factories -> ``pipelines.py``
  takes a device;
- ``DitModelFactory`` cannot build other sizes (``depth`` passed twice) -> ``TeaCacheDitModelFactory``;
- upstream's ``autocast("cuda")`` is inert on CPU -> our sampler autocasts on the device's own type;
- random-init models leave ``RMSNorm.weight`` and ``pos_frequencies`` empty -> ``model.init_random_dit``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import types
from collections.abc import Iterator
from functools import wraps

import torch
from torch.nn.attention import SDPBackend

log = logging.getLogger(__name__)

_applied: set[str] = set()


def import_attn_imports_without_cuda() -> None:
    """``genmo.lib.attn_imports`` calls ``torch.cuda.get_device_properties(0)`` at import time; without CUDA
    that raises. Import it once with the query answering "compute capability 0" (no cuDNN attention)."""
    if "genmo.lib.attn_imports" in sys.modules:
        return
    real = torch.cuda.get_device_properties
    torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(major=0, minor=0)  # type: ignore
    try:
        importlib.import_module("genmo.lib.attn_imports")
    finally:
        torch.cuda.get_device_properties = real


def stub_moviepy_if_missing() -> bool:
    """``genmo.lib.utils`` imports moviepy at module level only for ``save_video``, which we do not use (we
    write videos with imageio-ffmpeg). Where moviepy is not installed (the GPU image), register a stand-in
    whose only class raises a clear error if anything does call it. Returns whether it did."""
    try:
        importlib.import_module("moviepy.editor")
        return False
    except ImportError:
        pass

    class ImageSequenceClip:  # noqa: D401 - stand-in
        def __init__(self, *args, **kwargs):
            raise ImportError("moviepy is not installed; genmo_teacache writes videos with imageio-ffmpeg instead")

    editor = types.ModuleType("moviepy.editor")
    editor.ImageSequenceClip = ImageSequenceClip  # type: ignore[attr-defined]
    package = types.ModuleType("moviepy")
    package.editor = editor  # type: ignore[attr-defined]
    sys.modules.update({"moviepy": package, "moviepy.editor": editor})
    return True


@contextlib.contextmanager
def _sdpa_kernel_with_math_fallback(backends, *args, **kwargs) -> Iterator[None]:
    from torch.nn.attention import sdpa_kernel

    backends = list(backends) if isinstance(backends, (list, tuple)) else [backends]
    if SDPBackend.MATH not in backends:
        backends.append(SDPBackend.MATH)
    with sdpa_kernel(backends, *args, **kwargs):
        yield


def allow_math_attention_for_pooling() -> None:
    """``AsymmDiTJoint.forward`` runs the masked T5 attention pooling under
    ``sdpa_kernel(EFFICIENT_ATTENTION)``, which has no CPU kernel ("No viable backend"). Let it fall back to
    the math kernel by replacing the name ``sdpa_kernel`` inside that module only."""
    mod = importlib.import_module("genmo.mochi_preview.dit.joint_model.asymm_models_joint")
    mod.sdpa_kernel = _sdpa_kernel_with_math_fallback


def rope_in_fp32_under_cpu_autocast() -> None:
    """``compute_mixed_rotation`` guards its einsum with ``autocast("cuda", enabled=False)``, which does not
    switch off CPU autocast, so on CPU the RoPE angles would be computed in bf16 (fp32 on GPU). Wrap it so it
    runs in fp32 on CPU too."""
    mod = importlib.import_module("genmo.mochi_preview.dit.joint_model.asymm_models_joint")
    fn = mod.compute_mixed_rotation
    if getattr(fn, "_genmo_teacache_fp32", False):
        return

    @wraps(fn)
    def compute_mixed_rotation(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    compute_mixed_rotation._genmo_teacache_fp32 = True  # type: ignore[attr-defined]
    mod.compute_mixed_rotation = compute_mixed_rotation


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """What ``flash_attn_varlen_func`` computes (packed sequences, no mask inside a sequence), one sequence at
    a time through SDPA. q, k, v: (total, heads, head_dim) -> (total, heads, head_dim)."""
    assert dropout_p == 0.0 and torch.equal(cu_seqlens_q, cu_seqlens_k)
    bounds = cu_seqlens_q.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, h, s, d)
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, scale=softmax_scale)
        outs.append(o.squeeze(0).transpose(0, 1))
    return torch.cat(outs, dim=0)


def varlen_attention_without_flash_attn() -> None:
    """Upstream batches CFG only with flash-attn's varlen kernel (SDPA mode asserts batch size 1). Where
    flash-attn is not installed, give ``attention_mode="flash"`` a reference varlen attention instead, so
    batched CFG can run (and be tested) on CPU. Nothing changes unless "flash" is chosen explicitly: upstream
    still infers "sdpa" when flash-attn is missing."""
    mod = importlib.import_module("genmo.mochi_preview.dit.joint_model.asymm_models_joint")
    if mod.flash_varlen_attn is None:
        mod.flash_varlen_attn = varlen_attention_reference


def flash_attn2_available() -> bool:
    """Whether flash-attn 2 (``flash_attn.flash_attn_varlen_func``, what upstream's flash mode calls) is
    installed. flash-attn-4 installs ``flash_attn.cute`` under a namespace package ``flash_attn`` without that
    function: a bare ``find_spec("flash_attn")`` would take it for flash-attn 2."""
    try:
        spec = importlib.util.find_spec("flash_attn")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin not in (None, "namespace")


def apply() -> list[str]:
    """Apply every shim this machine needs (none of the CPU ones where CUDA is available). Idempotent.
    Returns the names of the shims in force."""
    if "moviepy_stub" not in _applied and stub_moviepy_if_missing():
        _applied.add("moviepy_stub")
    if "varlen_reference" not in _applied and not flash_attn2_available():
        if not torch.cuda.is_available():
            import_attn_imports_without_cuda()
        varlen_attention_without_flash_attn()
        _applied.add("varlen_reference")
    if not torch.cuda.is_available():
        for name, shim in (
            ("attn_imports", import_attn_imports_without_cuda),
            ("pooling_math", allow_math_attention_for_pooling),
            ("rope_fp32", rope_in_fp32_under_cpu_autocast),
        ):
            if name not in _applied:
                shim()
                _applied.add(name)
                log.debug("applied upstream shim %s", name)
    return sorted(_applied)
