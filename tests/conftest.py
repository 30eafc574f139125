"""Shared fixtures: the tiny random model (real upstream classes) is written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from genmo_teacache.tiny import make_tiny_model

    cached = os.environ.get("GENMO_TEACACHE_TINY_MODEL")  # reuse one across runs while developing
    if cached and (Path(cached) / "dit.safetensors").exists():
        return Path(cached)
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))
