"""PSNR, SSIM and LPIPS of every mode against the baseline, following the TeaCache / PAB ``common_metrics`` protocol.

- Both videos are decoded with imageio's ffmpeg reader to uint8 RGB, scaled to [0, 1], at native resolution, and
  truncated to the shorter frame count. Videos are paired by identical file name in the baseline and mode folders.
- PSNR per frame: ``20 * log10(1 / sqrt(MSE))``, 100 when ``MSE < 1e-10``.
- SSIM per frame and channel, averaged over the 3 channels: 11x11 Gaussian window with sigma 1.5 (built like
  ``cv2.getGaussianKernel``), C1 = 0.01^2, C2 = 0.03^2, the filtered maps cropped by 5 pixels on each side (so only
  windows that lie fully inside the image count), float64.
- LPIPS: ``lpips.LPIPS(net="alex", spatial=True)`` v0.1, inputs in [-1, 1], ``.mean()`` of the spatial map per frame.
- Per video: mean over frames; per mode: mean and (population) std over videos.

Outputs (in ``save_dir``): ``{mode}_vs_{baseline}.json`` = ``{mode, baseline, num_videos, psnr: {mean, std}, ssim,
lpips}`` (plus ``problems``: videos without a readable partner, only when there are any), per-video values in
``per_video/{mode}_vs_{baseline}.json``, and ``all_fidelity_results.json`` keyed by mode.

Resuming: each per-video entry records the two files it was computed from (size, mtime) and the metric settings
(:data:`SETTINGS_ID`). A pair is reused only when all three still match; pairs added since, regenerated or measured
under other settings are computed, pairs whose videos are gone are dropped, and the mode's files are rewritten only
when that changes them (``overwrite`` recomputes everything).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genmo_teacache.eval.layout import describe_error, list_videos
from genmo_teacache.files import write_json
from genmo_teacache.video import read_video

logger = logging.getLogger(__name__)

PSNR_IDENTICAL = 100.0
PSNR_MSE_FLOOR = 1e-10
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
SSIM_CROP = SSIM_WINDOW // 2  # 5: the filtered maps keep only windows fully inside the image
ALL_RESULTS = "all_fidelity_results.json"
# Everything that decides the numbers (not the device: CPU and GPU agree to 1e-7). Results computed under other
# settings are not reused.
SETTINGS: dict[str, Any] = {
    "decode": "imageio ffmpeg, uint8 RGB / 255, native resolution, truncated to the shorter video",
    "psnr": {"identical": PSNR_IDENTICAL, "mse_floor": PSNR_MSE_FLOOR},
    "ssim": {"window": SSIM_WINDOW, "sigma": SSIM_SIGMA, "c1": SSIM_C1, "c2": SSIM_C2, "crop": SSIM_CROP,
             "dtype": "float64", "channels": "mean of 3"},
    "lpips": {"net": "alex", "version": "0.1", "spatial": True, "inputs": "[-1, 1]", "reduce": "mean"},
}
SETTINGS_ID = hashlib.sha256(json.dumps(SETTINGS, sort_keys=True).encode()).hexdigest()[:16]


def gaussian_kernel(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D Gaussian kernel as ``cv2.getGaussianKernel(size, sigma)`` computes it for sigma > 0 (float64, sums to 1)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _to_unit(frames: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(T, H, W, 3) uint8 (or float in [0, 1]) -> (T, 3, H, W) in [0, 1] on ``device``."""
    t = torch.as_tensor(frames).to(device)
    t = t.to(dtype) / 255.0 if t.dtype == torch.uint8 else t.to(dtype)
    return t.permute(0, 3, 1, 2)


def psnr_frames(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, device: str | torch.device = "cpu"
                ) -> np.ndarray:
    """Per-frame PSNR of two (T, H, W, 3) videos (uint8, or float in [0, 1])."""
    dev = resolve_device(device)
    x, y = _to_unit(a, dev, torch.float64), _to_unit(b, dev, torch.float64)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3)).cpu().numpy()
    return np.array([PSNR_IDENTICAL if m < PSNR_MSE_FLOOR else 20 * math.log10(1 / math.sqrt(m)) for m in mse])


def _filter_valid(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Separable Gaussian filter of (N, H, W) float64, 'valid' part only: (N, H - 10, W - 10), i.e. the filtered map
    cropped by 5 pixels on each side. scipy.ndimage on CPU (10x faster there than torch's float64 conv), conv2d
    otherwise; the cropped result depends on neither's border handling."""
    c = SSIM_CROP
    if x.device.type == "cpu":
        try:
            import scipy.ndimage as ndi
        except ImportError:  # pragma: no cover - scipy is a dependency; torch gives the same numbers, slower
            ndi = None
        if ndi is not None:
            arr = x.numpy()
            out = ndi.correlate1d(ndi.correlate1d(arr, kernel, axis=2), kernel, axis=1)[:, c:-c, c:-c]
            return torch.from_numpy(np.ascontiguousarray(out))
    return _filter_valid_conv(x, kernel)


def _filter_valid_conv(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """:func:`_filter_valid` with two 1-D convolutions (no padding), on any device."""
    k = torch.from_numpy(kernel).to(x.device)
    y = torch.nn.functional.conv2d(x.unsqueeze(1), k.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1)).squeeze(1)


def ssim_frames(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, device: str | torch.device = "cpu"
                ) -> np.ndarray:
    """Per-frame SSIM (mean over the 3 channels) of two (T, H, W, 3) videos (uint8, or float in [0, 1])."""
    dev = resolve_device(device)
    x, y = _to_unit(a, dev, torch.float64), _to_unit(b, dev, torch.float64)
    frames, channels, height, width = x.shape
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {height}x{width}")
    x = x.reshape(frames * channels, height, width).contiguous()
    y = y.reshape(frames * channels, height, width).contiguous()
    kernel = gaussian_kernel()
    mu1, mu2 = _filter_valid(x, kernel), _filter_valid(y, kernel)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _filter_valid(x * x, kernel) - mu1_sq
    sigma2_sq = _filter_valid(y * y, kernel) - mu2_sq
    sigma12 = _filter_valid(x * y, kernel) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + SSIM_C1) * (2 * sigma12 + SSIM_C2)) / (
        (mu1_sq + mu2_sq + SSIM_C1) * (sigma1_sq + sigma2_sq + SSIM_C2))
    per_channel = ssim_map.mean(dim=(1, 2)).reshape(frames, channels)
    return per_channel.mean(dim=1).cpu().numpy()


def lpips_frames(model: torch.nn.Module, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-frame LPIPS (mean of the spatial map) of two (T, H, W, 3) videos, inputs scaled to [-1, 1]."""
    dev = next(model.parameters()).device
    x = _to_unit(a, dev, torch.float32) * 2 - 1
    y = _to_unit(b, dev, torch.float32) * 2 - 1
    # full float32 convolutions on GPUs too (cuDNN would use TF32 by default): same numbers as on CPU to ~1e-6
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        return model(x, y).mean(dim=(1, 2, 3)).cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class VideoScores:
    video: str
    frames: int
    psnr: float
    ssim: float
    lpips: float
    frames_baseline: int
    frames_mode: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class FidelityScorer:
    """Holds the LPIPS model and the device; scores pairs of decoded videos in chunks of frames."""

    def __init__(self, device: str | torch.device = "auto", frame_batch: int = 8, lpips_model: Any = None):
        self.device = resolve_device(device)
        self.frame_batch = frame_batch
        if lpips_model is None:
            from genmo_teacache.eval.lpips_weights import build_lpips

            lpips_model = build_lpips(self.device)
        self.lpips = lpips_model

    def score_frames(self, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        """Per-frame metrics of two decoded videos (T, H, W, 3) uint8, truncated to the shorter one."""
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"frame sizes differ: {a.shape[1:3]} vs {b.shape[1:3]} (fidelity needs equal resolution)")
        n = min(len(a), len(b))
        out: dict[str, list[np.ndarray]] = {"psnr": [], "ssim": [], "lpips": []}
        for start in range(0, n, self.frame_batch):
            ca, cb = a[start:min(n, start + self.frame_batch)], b[start:min(n, start + self.frame_batch)]
            out["psnr"].append(psnr_frames(ca, cb, self.device))
            out["ssim"].append(ssim_frames(ca, cb, self.device))
            out["lpips"].append(lpips_frames(self.lpips, ca, cb))
        return {k: np.concatenate(v) for k, v in out.items()}

    def score_files(self, baseline_video: str | os.PathLike, mode_video: str | os.PathLike) -> VideoScores:
        a, b = read_video(baseline_video), read_video(mode_video)
        per_frame = self.score_frames(a, b)
        if len(a) != len(b):
            logger.warning("%s: %d frames in the baseline, %d in the mode: compared the first %d",
                           Path(mode_video).name, len(a), len(b), min(len(a), len(b)))
        return VideoScores(video=Path(mode_video).name, frames=min(len(a), len(b)),
                           psnr=float(per_frame["psnr"].mean()), ssim=float(per_frame["ssim"].mean()),
                           lpips=float(per_frame["lpips"].mean()), frames_baseline=len(a), frames_mode=len(b))


def file_stamp(path: str | os.PathLike) -> dict[str, int]:
    """What identifies a video file's content for resuming: its size and modification time (ns)."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


@dataclass
class ModePlan:
    """The pairs of one mode: what can be reused from an earlier run and what must be computed."""

    mode: str
    pairs: dict[str, tuple[Path, Path]]  # video name -> (baseline video, mode video)
    problems: list[dict[str, str]]  # videos without a partner
    reused: dict[str, dict[str, Any]]  # video name -> per-video entry of an earlier run, still valid
    todo: list[str]  # video names to compute


def plan_mode(videos_dir: str | os.PathLike, baseline: str, mode: str,
              previous: Sequence[dict[str, Any]] = ()) -> ModePlan:
    """Pair the videos of ``mode`` with the baseline's by file name; an entry of ``previous`` (an earlier per-video
    list) is reused when both files and the metric settings are those it was computed from."""
    videos_dir = Path(videos_dir)
    base_videos = {p.name: p for p in list_videos(videos_dir / baseline)}
    mode_videos = {p.name: p for p in list_videos(videos_dir / mode)}
    problems: list[dict[str, str]] = []
    for name in sorted(set(base_videos) - set(mode_videos)):
        problems.append({"video": name, "reason": f"missing in {mode}"})
    for name in sorted(set(mode_videos) - set(base_videos)):
        problems.append({"video": name, "reason": f"missing in the baseline {baseline}"})
    pairs = {name: (base_videos[name], mode_videos[name]) for name in sorted(set(base_videos) & set(mode_videos))}
    earlier = {e.get("video"): e for e in previous if isinstance(e, dict)}
    reused, todo = {}, []
    for name, (base_video, mode_video) in pairs.items():
        entry = earlier.get(name)
        if (entry is not None and entry.get("settings") == SETTINGS_ID
                and entry.get("baseline_file") == file_stamp(base_video)
                and entry.get("mode_file") == file_stamp(mode_video)):
            reused[name] = entry
        else:
            todo.append(name)
    return ModePlan(mode, pairs, problems, reused, todo)


def evaluate_mode(scorer: FidelityScorer | None, videos_dir: str | os.PathLike, baseline: str, mode: str,
                  previous: Sequence[dict[str, Any]] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Compare every video of ``mode`` with its namesake in ``baseline``. Returns (summary, per-video list).
    Videos without a partner, or that cannot be decoded or compared, are logged and listed in ``problems``.
    Entries of ``previous`` still valid for the same files are reused (see :func:`plan_mode`); ``scorer`` may be
    None when nothing needs computing."""
    plan = plan_mode(videos_dir, baseline, mode, previous)
    return _evaluate(plan, scorer, baseline)


def _evaluate(plan: ModePlan, scorer: FidelityScorer | None, baseline: str
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from tqdm.auto import tqdm

    mode = plan.mode
    logger.info("fidelity %s vs %s: reused %d of %d video pairs, computing %d", mode, baseline, len(plan.reused),
                len(plan.pairs), len(plan.todo))
    entries = dict(plan.reused)
    problems = list(plan.problems)
    if plan.todo:
        assert scorer is not None, "a scorer is needed to compute new pairs"
        for name in tqdm(plan.todo, desc=f"fidelity {mode}", unit="video"):
            base_video, mode_video = plan.pairs[name]
            try:
                stamps = {"baseline_file": file_stamp(base_video), "mode_file": file_stamp(mode_video)}
                scores = scorer.score_files(base_video, mode_video)
            except Exception as err:  # an unreadable or mismatched pair is reported, not fatal for the mode
                problems.append({"video": name, "reason": describe_error(err)})
                continue
            entries[name] = {**scores.to_dict(), **stamps, "settings": SETTINGS_ID}
    problems.sort(key=lambda p: p["video"])
    for p in problems:
        logger.warning("fidelity %s vs %s: %s left out: %s", mode, baseline, p["video"], p["reason"])
    per_video = [entries[name] for name in sorted(entries)]
    summary: dict[str, Any] = {
        "mode": mode,
        "baseline": baseline,
        "num_videos": len(per_video),
        "psnr": _stats([v["psnr"] for v in per_video]),
        "ssim": _stats([v["ssim"] for v in per_video]),
        "lpips": _stats([v["lpips"] for v in per_video]),
    }
    if problems:
        summary["problems"] = problems
    return summary, per_video


def _read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def result_path(save_dir: str | os.PathLike, mode: str, baseline: str) -> Path:
    return Path(save_dir) / f"{mode}_vs_{baseline}.json"


def per_video_path(save_dir: str | os.PathLike, mode: str, baseline: str) -> Path:
    return Path(save_dir) / "per_video" / f"{mode}_vs_{baseline}.json"


def run_fidelity(
    videos_dir: str | os.PathLike,
    baseline: str,
    modes: Sequence[str],
    save_dir: str | os.PathLike,
    device: str | torch.device = "auto",
    overwrite: bool = False,
    frame_batch: int = 8,
    lpips_model: Any = None,
) -> dict[str, dict[str, Any]]:
    """Fidelity of every mode against ``baseline``, resuming per video pair (see the module docstring; ``overwrite``
    recomputes every pair). Writes the per-mode files and ``all_fidelity_results.json``; returns the latter's
    content. ``lpips_model``: an LPIPS model to reuse (default: built with the offline weights when needed)."""
    save_dir = Path(save_dir)
    results: dict[str, dict[str, Any]] = {}
    plans = []
    for mode in modes:
        if mode == baseline:
            continue
        previous = [] if overwrite else _read_json(per_video_path(save_dir, mode, baseline)) or []
        plans.append(plan_mode(videos_dir, baseline, mode, previous if isinstance(previous, list) else []))
    scorer = None
    if any(plan.todo for plan in plans):
        scorer = FidelityScorer(device, frame_batch=frame_batch, lpips_model=lpips_model)
        logger.info("fidelity on %s for %s", scorer.device, ", ".join(plan.mode for plan in plans if plan.todo))
    for plan in plans:
        mode = plan.mode
        summary, per_video = _evaluate(plan, scorer, baseline)
        path, pv_path = result_path(save_dir, mode, baseline), per_video_path(save_dir, mode, baseline)
        if overwrite or _read_json(path) != summary or _read_json(pv_path) != per_video:
            write_json(pv_path, per_video)
            write_json(path, summary)  # with no pair compared: no numbers, and why (its problems); retried next run
        results[mode] = summary
        if summary["num_videos"] == 0:
            logger.error("fidelity %s vs %s: no video pair could be compared (%s)", mode, baseline,
                         "; ".join(f"{p['video']}: {p['reason']}" for p in summary.get("problems", [])[:3]))
            continue
        logger.info("fidelity %s vs %s over %d videos: PSNR %.4f, SSIM %.4f, LPIPS %.4f", mode, baseline,
                    summary["num_videos"], summary["psnr"]["mean"], summary["ssim"]["mean"], summary["lpips"]["mean"])
    # all_fidelity_results.json: every result against this baseline in save_dir (earlier runs' modes included)
    for path in sorted(save_dir.glob(f"*_vs_{baseline}.json")):
        data = _read_json(path)
        if isinstance(data, dict) and data.get("baseline") == baseline and "mode" in data:
            results.setdefault(data["mode"], data)
    ordered = {m: results[m] for m in modes if m in results}
    ordered.update({m: results[m] for m in sorted(results) if m not in ordered})
    write_json(save_dir / ALL_RESULTS, ordered)
    return ordered
