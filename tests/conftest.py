"""Shared fixtures: the tiny random model (real upstream classes) is written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the steering repo's shared/ folder beside the checkout


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from genmo_teacache.tiny import make_tiny_model

    cached = os.environ.get("GENMO_TEACACHE_TINY_MODEL")  # reuse one across runs while developing
    if cached and (Path(cached) / "dit.safetensors").exists():
        return Path(cached)
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} not found: tests need the shared/ folder beside the checkout")
    return SHARED
