"""Fidelity metrics: exact arithmetic on arrays, and the file pipeline (decode, pair, truncate, report) on videos."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch
from _evalhelpers import smooth_video

from genmo_teacache.eval import fidelity
from genmo_teacache.video import read_video, write_video

# ---------------------------------------------------------------- metric functions on arrays


def test_gaussian_kernel_is_cv2_formula() -> None:
    k = fidelity.gaussian_kernel(11, 1.5)
    assert k.shape == (11,) and k.dtype == np.float64
    assert k.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_array_equal(k, k[::-1])
    # G(i) proportional to exp(-(i - 5)^2 / (2 * 1.5^2))
    for i in range(10):
        assert k[i + 1] / k[i] == pytest.approx(math.exp(-((i - 4) ** 2 - (i - 5) ** 2) / 4.5), rel=1e-13)


def test_psnr_exact_for_a_known_error() -> None:
    a = np.random.default_rng(0).integers(20, 230, (3, 32, 40, 3), dtype=np.uint8)
    b = a + 10  # |error| = 10/255 everywhere
    expected = 20 * math.log10(1 / math.sqrt((10 / 255) ** 2))  # = 20 log10(25.5)
    np.testing.assert_allclose(fidelity.psnr_frames(a, b), expected, rtol=1e-12)
    np.testing.assert_array_equal(fidelity.psnr_frames(a, a), 100.0)
    # one differing pixel value in one frame: MSE by hand
    c = a.copy()
    c[1, 0, 0, 0] += 25
    mse = (25 / 255) ** 2 / (32 * 40 * 3)
    np.testing.assert_allclose(fidelity.psnr_frames(a, c), [100.0, 20 * math.log10(1 / math.sqrt(mse)), 100.0])


def _ssim_reference(img1: np.ndarray, img2: np.ndarray) -> float:
    """Direct transcription of the protocol for one channel: 2-D 11x11 window, 'valid' region, float64."""
    k = fidelity.gaussian_kernel()
    window = np.outer(k, k)
    c1, c2 = 0.01**2, 0.03**2

    def filt(x: np.ndarray) -> np.ndarray:
        return scipy.signal.correlate2d(x, window, mode="valid")

    mu1, mu2 = filt(img1), filt(img2)
    s1, s2, s12 = filt(img1 * img1) - mu1**2, filt(img2 * img2) - mu2**2, filt(img1 * img2) - mu1 * mu2
    return float((((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))).mean())


def test_ssim_matches_direct_2d_implementation() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 30, 37, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    ours = fidelity.ssim_frames(a, b)
    expected = [np.mean([_ssim_reference(a[t, :, :, c] / 255.0, b[t, :, :, c] / 255.0) for c in range(3)])
                for t in range(3)]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(fidelity.ssim_frames(a, a), 1.0, rtol=0, atol=1e-14)


def test_accelerator_filter_path_equals_cpu_path() -> None:
    """GPUs filter with two 1-D torch convolutions, CPUs with scipy.ndimage: both are the 'valid' 2-D filter."""
    x = torch.from_numpy(np.random.default_rng(2).random((4, 25, 33)))
    k = fidelity.gaussian_kernel()
    direct = np.stack([scipy.signal.correlate2d(img, np.outer(k, k), mode="valid") for img in x.numpy()])
    np.testing.assert_allclose(fidelity._filter_valid_conv(x, k).numpy(), direct, rtol=0, atol=1e-14)
    np.testing.assert_allclose(fidelity._filter_valid(x, k).numpy(), direct, rtol=0, atol=1e-14)


def test_ssim_of_flat_images_by_hand() -> None:
    a = np.full((1, 20, 20, 3), 51, dtype=np.uint8)
    b = np.full((1, 20, 20, 3), 153, dtype=np.uint8)
    m1, m2, c1 = 0.2, 0.6, 0.01**2
    expected = (2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1)  # no variance: only the luminance term is left
    np.testing.assert_allclose(fidelity.ssim_frames(a, b), expected, rtol=1e-12)


def test_ssim_refuses_frames_smaller_than_the_window() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        fidelity.ssim_frames(np.zeros((1, 10, 30, 3), np.uint8), np.zeros((1, 10, 30, 3), np.uint8))


def test_lpips_identical_is_zero_and_grows_with_noise(lpips_model) -> None:
    a = smooth_video(2, 64, 64)
    rng = np.random.default_rng(0)
    small = np.clip(a.astype(int) + rng.integers(-5, 6, a.shape), 0, 255).astype(np.uint8)
    large = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(fidelity.lpips_frames(lpips_model, a, a), 0.0)
    d_small, d_large = fidelity.lpips_frames(lpips_model, a, small), fidelity.lpips_frames(lpips_model, a, large)
    assert (d_small > 0).all() and (d_large > d_small).all()
    # [-1, 1] scaling and the per-frame mean of the spatial map, as the protocol computes them
    x = torch.from_numpy(a[:1]).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    y = torch.from_numpy(large[:1]).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    with torch.no_grad():
        expected = lpips_model(x, y).mean().item()
    assert d_large[0] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- the pipeline on files


BLOCK = 8


def _block_noise(shape: tuple[int, ...], amplitude: int, seed: int) -> np.ndarray:
    """Integer noise, uniform in [-amplitude, amplitude], constant over 8x8 blocks. Per-pixel noise would be mostly
    removed by the H.264 encoder (the measured PSNR rises by ~3 dB); noise at the encoder's block scale survives it,
    so the PSNR it implies can be checked on the decoded files."""
    t, h, w, c = shape
    noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, (t, h // BLOCK, w // BLOCK, c))
    return noise.repeat(BLOCK, axis=1).repeat(BLOCK, axis=2)


def _noisy(frames: np.ndarray, amplitude: int, seed: int) -> np.ndarray:
    noise = _block_noise(frames.shape, amplitude, seed)
    out = frames.astype(int) + noise
    assert out.min() >= 0 and out.max() <= 255  # smooth_video leaves room: no clipping, the noise is exact
    return out.astype(np.uint8)


@pytest.fixture()
def videos(tmp_path: Path) -> Path:
    """baseline + 'copy' (identical files) + 'noisy' (uniform noise; one shorter video, one missing partner,
    one unreadable file) + an unfinished '.tmp-' write that must be ignored."""
    root = tmp_path / "videos"
    for i, name in enumerate(["p0-0.mp4", "p1-0.mp4", "p2-0.mp4"]):
        frames = smooth_video(10, seed=i)
        write_video(root / "base" / name, frames)
        write_video(root / "copy" / name, frames)
        if name != "p2-0.mp4":
            write_video(root / "noisy" / name, _noisy(frames if name == "p0-0.mp4" else frames[:7], 12, i))
    (root / "noisy" / "p2-0.mp4").write_bytes(b"not a video")
    write_video(root / "noisy" / "extra-0.mp4", smooth_video(4))
    (root / "noisy" / ".tmp-p3-0-abc.mp4").write_bytes(b"half written")
    return root


def test_pipeline_identical_videos(videos: Path, tmp_path: Path, lpips_model) -> None:
    scorer = fidelity.FidelityScorer("cpu", frame_batch=4, lpips_model=lpips_model)
    summary, per_video = fidelity.evaluate_mode(scorer, videos, "base", "copy")
    assert summary["num_videos"] == 3 and "problems" not in summary
    assert summary["psnr"] == {"mean": 100.0, "std": 0.0}
    assert summary["ssim"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert summary["lpips"] == {"mean": 0.0, "std": 0.0}
    assert [v["frames"] for v in per_video] == [10, 10, 10]


def test_pipeline_noise_pairs_truncates_and_reports(videos: Path, lpips_model) -> None:
    scorer = fidelity.FidelityScorer("cpu", frame_batch=4, lpips_model=lpips_model)
    summary, per_video = fidelity.evaluate_mode(scorer, videos, "base", "noisy")
    assert summary["num_videos"] == 2
    reasons = {p["video"]: p["reason"] for p in summary["problems"]}
    assert set(reasons) == {"p2-0.mp4", "extra-0.mp4"}  # unreadable, and no partner in the baseline
    assert "missing in the baseline" in reasons["extra-0.mp4"]
    assert ".tmp-p3-0-abc.mp4" not in reasons

    by_name = {v["video"]: v for v in per_video}
    assert by_name["p1-0.mp4"]["frames"] == 7
    assert (by_name["p1-0.mp4"]["frames_baseline"], by_name["p1-0.mp4"]["frames_mode"]) == (10, 7)
    # the pipeline's numbers are the metric functions applied to the decoded, truncated frames
    for name, v in by_name.items():
        a, b = read_video(videos / "base" / name), read_video(videos / "noisy" / name)
        n = min(len(a), len(b))
        assert v["psnr"] == pytest.approx(fidelity.psnr_frames(a[:n], b[:n]).mean(), rel=1e-12)
        assert v["ssim"] == pytest.approx(fidelity.ssim_frames(a[:n], b[:n]).mean(), rel=1e-12)
        assert v["lpips"] == pytest.approx(fidelity.lpips_frames(lpips_model, a[:n], b[:n]).mean(), rel=1e-4)
        # the PSNR the added noise implies (from the exact noise, before encoding), within codec tolerance
        seed = int(name[1])
        noise = _block_noise(smooth_video(10, seed=seed).shape, 12, seed)[:n] / 255.0
        implied = np.mean([20 * math.log10(1 / math.sqrt((f**2).mean())) for f in noise])
        assert abs(v["psnr"] - implied) < 0.5, (v["psnr"], implied)
    psnrs = [by_name[n]["psnr"] for n in sorted(by_name)]
    assert summary["psnr"]["mean"] == pytest.approx(np.mean(psnrs), rel=1e-12)
    assert summary["psnr"]["std"] == pytest.approx(np.std(psnrs), rel=1e-9)


def test_run_fidelity_writes_reference_shape_and_resumes(videos: Path, tmp_path: Path, lpips_model) -> None:
    out = tmp_path / "fidelity"
    results = fidelity.run_fidelity(videos, "base", ["copy", "noisy"], out, device="cpu", lpips_model=lpips_model)
    assert list(results) == ["copy", "noisy"]
    copy = json.loads((out / "copy_vs_base.json").read_text())
    assert list(copy) == ["mode", "baseline", "num_videos", "psnr", "ssim", "lpips"]  # the fixtures' shape
    assert copy["mode"] == "copy" and copy["baseline"] == "base" and copy["num_videos"] == 3
    noisy = json.loads((out / "noisy_vs_base.json").read_text())
    assert [p["video"] for p in noisy["problems"]] == ["extra-0.mp4", "p2-0.mp4"]
    assert json.loads((out / "all_fidelity_results.json").read_text()) == {"copy": copy, "noisy": noisy}
    assert len(json.loads((out / "per_video" / "noisy_vs_base.json").read_text())) == 2

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_vs_base.json")}
    fidelity.run_fidelity(videos, "base", ["copy", "noisy"], out, device="cpu", lpips_model=lpips_model)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_vs_base.json")} == stamps  # resumed: nothing redone
    fidelity.run_fidelity(videos, "base", ["copy"], out, device="cpu", overwrite=True, lpips_model=lpips_model)
    assert (out / "copy_vs_base.json").stat().st_mtime_ns != stamps["copy_vs_base.json"]
    assert (out / "noisy_vs_base.json").stat().st_mtime_ns == stamps["noisy_vs_base.json"]
    # a run over one mode keeps the other in the combined file
    assert set(json.loads((out / "all_fidelity_results.json").read_text())) == {"copy", "noisy"}

    # the tables read these files; the left-out videos are named under the Markdown table
    from genmo_teacache.eval import tables

    written = tables.write_tables(tables.collect(["copy", "noisy"], "base", None, out, None), tmp_path / "tables")
    rows = written["fidelity_table.csv"].read_text().splitlines()
    assert rows[2] == f"copy,100.0000,{copy['ssim']['mean']:.4f},0.0000,\u2014"
    assert "- noisy: 2 videos compared, 2 left out: extra-0.mp4 (missing in the baseline base); p2-0.mp4" in (
        written["fidelity_table.md"].read_text())


def test_mode_without_any_pair_records_why_and_is_retried(videos: Path, tmp_path: Path, lpips_model) -> None:
    (videos / "empty").mkdir()
    out = tmp_path / "fidelity"
    result = fidelity.run_fidelity(videos, "base", ["empty"], out, device="cpu", lpips_model=lpips_model)["empty"]
    assert result["num_videos"] == 0 and result["psnr"]["mean"] is None  # no numbers, and why:
    assert [p["reason"] for p in result["problems"]] == ["missing in empty"] * 3
    assert json.loads((out / "empty_vs_base.json").read_text()) == result
    shutil.copytree(videos / "base", videos / "empty", dirs_exist_ok=True)  # retried next time, not kept as done
    again = fidelity.run_fidelity(videos, "base", ["empty"], out, device="cpu", lpips_model=lpips_model)["empty"]
    assert again["num_videos"] == 3 and again["psnr"]["mean"] == 100.0


def test_results_follow_the_videos_not_the_mode_name(tmp_path: Path, lpips_model, caplog) -> None:
    """A result is reused only for the exact videos (name, size, mtime) and metric settings it was computed from:
    a video generated later is added, a regenerated one recomputed, an unchanged set rewrites nothing."""
    root, out = tmp_path / "videos", tmp_path / "fidelity"
    frames = [smooth_video(6, seed=i) for i in range(2)]
    write_video(root / "base" / "p0-0.mp4", frames[0])
    write_video(root / "m" / "p0-0.mp4", _noisy(frames[0], 12, 0))

    def run() -> dict:
        caplog.clear()
        with caplog.at_level("INFO", logger="genmo_teacache.eval.fidelity"):
            return fidelity.run_fidelity(root, "base", ["m"], out, device="cpu", lpips_model=lpips_model)["m"]

    def per_video() -> dict:
        return {v["video"]: v for v in json.loads((out / "per_video" / "m_vs_base.json").read_text())}

    assert run()["num_videos"] == 1
    first = per_video()["p0-0.mp4"]
    # the batch generates the second prompt afterwards: the result covers both, the first pair is not redone
    write_video(root / "base" / "p1-0.mp4", frames[1])
    write_video(root / "m" / "p1-0.mp4", _noisy(frames[1], 12, 1))
    summary = run()
    assert summary["num_videos"] == 2
    assert per_video()["p0-0.mp4"] == first and "reused 1 of 2" in caplog.text
    assert summary["psnr"]["mean"] == pytest.approx(np.mean([v["psnr"] for v in per_video().values()]), rel=1e-12)
    # a regenerated video (same name, other content): its pair is computed again
    write_video(root / "m" / "p0-0.mp4", frames[0])
    run()
    assert per_video()["p0-0.mp4"]["psnr"] > first["psnr"] + 5
    # nothing changed: nothing computed, nothing rewritten
    stamp = (out / "m_vs_base.json").stat().st_mtime_ns
    run()
    assert (out / "m_vs_base.json").stat().st_mtime_ns == stamp and "reused 2 of 2" in caplog.text
    # other metric settings (recorded per video) do not count as the same result
    entries = json.loads((out / "per_video" / "m_vs_base.json").read_text())
    (out / "per_video" / "m_vs_base.json").write_text(json.dumps([{**e, "settings": "older"} for e in entries]))
    run()
    assert "reused 0 of 2" in caplog.text
