"""Both policies driven by a calibration file, on the tiny model with unbatched CFG (the native default)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from genmo_teacache.caches import CacheConfig, parse_mode
from genmo_teacache.caches.teacache import TeaCache
from genmo_teacache.coefficients import Rescale
from genmo_teacache.generate import GenerationSettings, generate
from genmo_teacache.generate_cli import generate_command
from genmo_teacache.options import cache_from_options


@pytest.fixture(scope="module")
def settings(calibration):
    return GenerationSettings(**calibration.size)  # batch_cfg=False, cfg 6.0


@pytest.fixture(scope="module")
def baseline(pipe, calibration, settings):
    return generate(pipe, prompt=calibration.prompts[0], cache=CacheConfig.baseline(), seed=0, settings=settings,
                    progress=False)


def assert_bounded_change(result, baseline):
    base = baseline.latents.float()
    diff = (result.latents.float() - base).abs()
    assert 0 < diff.mean() < base.abs().mean()
    assert np.isfinite(result.frames).all()


def test_rescale_from_the_file_is_its_polynomial(calibration):
    coeffs, hi = calibration.data["coefficients"], calibration.data["x_range"][1]
    rescale = Rescale.load(calibration.path)
    for x in np.linspace(0.0, hi, 7):
        assert rescale(x) == np.polyval(coeffs, x)
    assert rescale.x_max == hi and rescale.in_range(hi) and not rescale.in_range(hi * 1.01)
    assert rescale.info["r2"] == calibration.data["r2"]
    from_cli = cache_from_options(teacache_thresh=0.5, calibration=str(calibration.path))
    assert from_cli.method.rescale == rescale


def test_teacache_generation_follows_the_file(pipe, calibration, settings, baseline):
    coeffs, x_max = calibration.data["coefficients"], calibration.data["x_range"][1]
    threshold = 1.0
    cache = CacheConfig(TeaCache.fixed(threshold, rescale=Rescale.load(calibration.path)))
    result = generate(pipe, prompt=calibration.prompts[0], cache=cache, seed=0, settings=settings, progress=False)
    steps = result.report["steps"]
    for s in steps[1:]:
        assert s["rescaled"] == pytest.approx(np.polyval(coeffs, s["raw"]), rel=1e-12, abs=1e-15)
    # the decisions, replayed by hand from the recorded indicator and the file's polynomial
    expected, acc = [True], 0.0
    for s in steps[1:-1]:
        if s["raw"] > x_max:
            expected.append(True)  # range guard: outside the fitted range the polynomial is not trusted
            acc = 0.0
            continue
        acc += np.polyval(coeffs, s["raw"])
        expected.append(bool(acc >= threshold))
        acc = 0.0 if acc >= threshold else acc
    expected.append(True)
    assert [s["computed"] for s in steps] == expected
    assert result.report["skipped_steps"] > 0
    assert result.report["dit_calls"] == 2 * result.report["computed_steps"]  # unbatched CFG: 2 calls a step
    assert_bounded_change(result, baseline)


def mag_replay(ratios, threshold, k, retention):
    """MagCache's decisions from the ratios alone, written independently of the policy class."""
    n, out = len(ratios), []
    ratio, error, skips = 1.0, 0.0, 0
    for i, gamma in enumerate(ratios):
        if i == 0 or i == n - 1 or i < int(retention * n):
            out.append(True)
            continue
        ratio, error, skips = ratio * gamma, error + abs(1 - ratio * gamma), skips + 1
        if error <= threshold and skips <= k:
            out.append(False)
        else:
            out.append(True)
            ratio, error, skips = 1.0, 0.0, 0
    return out


def test_magcache_generation_follows_the_file(pipe, calibration, settings, baseline):
    ratios = calibration.data["mag_ratios"]
    cache = parse_mode("mag_0.3", calibration.path)
    result = generate(pipe, prompt=calibration.prompts[0], cache=cache, seed=0, settings=settings, progress=False)
    steps = result.report["steps"]
    assert [s["computed"] for s in steps] == mag_replay(ratios, 0.3, 2, 0.2)
    assert [s["mag_ratio"] for s in steps] == ratios and all(s["raw"] is None for s in steps)
    assert result.report["skipped_steps"] > 0
    assert result.report["dit_calls"] == 2 * result.report["computed_steps"]
    assert result.report["cache"]["mag_source"] == str(calibration.path)
    assert_bounded_change(result, baseline)


def test_generate_command_runs_a_mag_mode(tiny_model_dir, calibration, tmp_path):
    video = tmp_path / "mag.mp4"
    common = ["--model_dir", str(tiny_model_dir), "--prompt", calibration.prompts[1], "--device", "cpu",
              *calibration.size_args, "--save_file", str(video)]
    res = CliRunner().invoke(generate_command, [*common, "--teacache_mode", "mag_0.3_k3",
                                                "--mag_ratios", str(calibration.path)])
    assert res.exit_code == 0, res.output
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert sidecar["mode"] == "mag_0.3_k3" and sidecar["cache"]["method"] == "magcache"
    assert sidecar["cache"]["mag_ratios"] == calibration.data["mag_ratios"] and sidecar["skipped_steps"] > 0
    refused = CliRunner().invoke(generate_command, [*common, "--teacache_mode", "mag_0.3"])
    assert refused.exit_code != 0 and "genmo-teacache calibrate" in refused.output
