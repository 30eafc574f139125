"""Shared fixtures: one calibration run of the tiny model through the real command, and one loaded pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

PROMPTS = ["a red car drives through the snowy city", "an astronaut rides a horse on the moon"]
SIZE = {"width": 64, "height": 64, "num_frames": 7, "num_steps": 8}
SIZE_ARGS = [a for k, v in SIZE.items() for a in (f"--{k}", str(v))]


@dataclass
class CalibrationRun:
    path: Path
    data: dict[str, Any]
    output: str
    prompts: list[str]
    size: dict[str, int]
    size_args: list[str]


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return path


@pytest.fixture(scope="session")
def calibration(tiny_model_dir, prompts_file, tmp_path_factory) -> CalibrationRun:
    """`genmo-teacache calibrate` on 2 prompts, 8 steps, 64x64x7, unbatched CFG (the native default)."""
    from genmo_teacache.calibrate import calibrate_command

    out = tmp_path_factory.mktemp("calibration") / "cal.json"
    res = CliRunner().invoke(calibrate_command, ["--model_dir", str(tiny_model_dir), "--prompts", str(prompts_file),
                                                 "--out", str(out), "--device", "cpu", *SIZE_ARGS])
    assert res.exit_code == 0, res.output
    return CalibrationRun(out, json.loads(out.read_text()), res.output, PROMPTS, SIZE, SIZE_ARGS)


@pytest.fixture(scope="session")
def pipe(tiny_model_dir):
    from genmo_teacache.generate import load_pipeline

    return load_pipeline(tiny_model_dir, device="cpu")
