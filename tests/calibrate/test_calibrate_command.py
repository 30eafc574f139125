"""`genmo-teacache calibrate` on the tiny model: the file it writes, what it prints, and what it refuses."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from genmo_teacache.calibrate import (
    CalibrationError,
    PromptTrace,
    calibrate_command,
    collect_points,
    fit_polynomial,
    mag_ratio_curve,
    read_calibration_prompts,
)
from genmo_teacache.coefficients import TEACACHE_MOCHI_COEFFICIENTS, Rescale

SIZE = {"width": 64, "height": 64, "num_frames": 7, "num_steps": 8}
SIZE_ARGS = [a for k, v in SIZE.items() for a in (f"--{k}", str(v))]


def test_calibration_file_is_valid_and_reported(calibration, tiny_model_dir, prompts_file):
    assert calibration.size == SIZE
    data = calibration.data
    assert len(data["coefficients"]) == 5 and all(math.isfinite(c) for c in data["coefficients"])
    lo, hi = data["x_range"]
    assert 0 < lo < hi
    assert data["num_points"] == len(calibration.prompts) * (SIZE["num_steps"] - 1)  # all steps but the first
    assert data["r2"] is not None and data["r2"] <= 1.0
    s = data["settings"]
    assert {k: s[k] for k in SIZE} == SIZE
    assert s["cfg_scale"] == 6.0 and s["batch_cfg"] is False  # the native pipeline's defaults
    assert s["model_dir"] == str(tiny_model_dir) and s["prompts_file"] == str(prompts_file)
    assert s["num_prompts"] == 2 and s["seed"] == 0
    ratios = data["mag_ratios"]
    assert len(ratios) == SIZE["num_steps"] and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    # what the command prints: x range, R^2 and the comparison with TeaCache's default
    out = calibration.output
    assert f"x range [{lo:.4g}, {hi:.4g}]" in out and f"R^2 = {data['r2']:.4f}" in out
    assert "calibrated vs TeaCache's Mochi default" in out
    row = data["comparison_with_teacache_default"][-1]
    assert row["x"] == pytest.approx(hi) and row["teacache_default"] == pytest.approx(Rescale()(hi))
    assert row["calibrated"] == pytest.approx(np.polyval(data["coefficients"], hi))


def test_points_file_refits_to_the_same_polynomial_and_plot_is_written(calibration):
    points = json.loads(calibration.path.with_name("cal_points.json").read_text())
    x, y = np.array(points["x"]), np.array(points["y"])
    assert len(x) == calibration.data["num_points"] and [p["prompt"] for p in points["prompts"]] == calibration.prompts
    assert np.polyfit(x, y, 4) == pytest.approx(calibration.data["coefficients"], rel=1e-9)
    assert [x.min(), x.max()] == calibration.data["x_range"]
    residual = y - np.polyval(calibration.data["coefficients"], x)
    assert 1 - (residual**2).sum() / ((y - y.mean()) ** 2).sum() == pytest.approx(calibration.data["r2"])
    # the per-step ratio curve is the mean over prompts of what the sampler recorded
    traces = [PromptTrace(**p) for p in points["prompts"]]
    assert mag_ratio_curve(traces, SIZE["num_steps"])[0] == pytest.approx(calibration.data["mag_ratios"])
    png = calibration.path.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_prompt_files_text_and_vbench_json(tmp_path):
    vbench = tmp_path / "full_info.json"
    vbench.write_text(json.dumps([{"prompt_en": "alley", "dimension": ["scene"]},
                                  {"prompt_en": "a dog", "dimension": ["color"]},
                                  {"prompt_en": "alley", "dimension": ["scene"]},
                                  {"prompt_en": "a cat", "dimension": ["color"]}]))
    assert read_calibration_prompts(vbench) == ["alley", "a dog", "a cat"]  # a repeated prompt is used once
    assert read_calibration_prompts(vbench, num_prompts=2) == ["alley", "a dog"]
    text = tmp_path / "p.txt"
    text.write_text("one\n\n  two  \n")
    assert read_calibration_prompts(text) == ["one", "two"]


@pytest.mark.parametrize("content, extra, message", [
    ("\n  \n", [], "no prompts found"),
    ("a cat\n", ["--num_steps", "4"], "3 points: a degree-4 fit needs at least 5"),
    ("a cat\na dog\n", ["--num-prompts", "0"], "use at least 1 prompt"),
])
def test_calibrate_refuses_before_loading_the_model(tmp_path, content, extra, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(content)
    args = ["--model_dir", str(tmp_path / "no_model_here"), "--prompts", str(prompts), "--out",
            str(tmp_path / "c.json"), *SIZE_ARGS, *extra]
    res = CliRunner().invoke(calibrate_command, args)
    assert res.exit_code != 0
    assert message in res.output
    assert not (tmp_path / "c.json").exists()


def test_fit_refuses_nan_too_few_points_and_degenerate_x():
    nan_trace = PromptTrace("a cat", [None, 0.1, math.nan], [None, 0.2, 0.3], [None, 1.0, 1.0])
    with pytest.raises(CalibrationError, match=r"nan at step 2 of prompt 'a cat'"):
        collect_points([nan_trace])
    with pytest.raises(CalibrationError, match="only 4 calibration points"):
        fit_polynomial(np.arange(4.0), np.arange(4.0))
    with pytest.raises(CalibrationError, match="NaN"):
        fit_polynomial(np.array([0.1, 0.2, 0.3, 0.4, math.nan]), np.ones(5))
    with pytest.raises(CalibrationError, match="2 distinct indicator values"):
        fit_polynomial(np.array([0.1, 0.1, 0.1, 0.2, 0.2, 0.2]), np.arange(6.0))
    # points whose fit is nowhere positive on its range (as one prompt can give): the cache would never add its
    # values up to a compute and would skip every step; refused, never written
    x = np.linspace(0.02, 0.2, 15)
    with pytest.raises(CalibrationError, match="zero or negative all over its range"):
        fit_polynomial(x, -0.01 - 0.5 * x)
    inf_ratio = PromptTrace("a dog", [None, 0.1], [None, 0.2], [None, math.inf])
    with pytest.raises(CalibrationError, match="magnitude ratio is inf at step 1"):
        mag_ratio_curve([inf_ratio], 2)


def test_fit_recovers_a_known_polynomial():
    x = np.linspace(0.01, 0.2, 40)
    fit = fit_polynomial(x, np.polyval(TEACACHE_MOCHI_COEFFICIENTS, x))
    assert fit.coefficients == pytest.approx(TEACACHE_MOCHI_COEFFICIENTS, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0) and fit.x_range == (0.01, 0.2) and fit.num_points == 40
