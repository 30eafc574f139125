"""VBench scoring: normalisation constants, dimension groups and the quality / semantic / total scores.

The constants are VBench's own (``scripts/constant.py`` of the VBench repository, the same numbers TeaCache's
``cal_vbench.py`` uses). A raw dimension score is normalised as ``(raw - Min) / (Max - Min) * weight``; the quality
score is the weighted mean over the quality dimensions, the semantic score likewise, and
``total = (4 * quality + 1 * semantic) / 5``.

Like the reference comparison script (and unlike VBench's ``cal_final_score.py``, which counts a missing dimension as
a raw 0), only the dimensions that were evaluated enter the averages; :func:`aggregate` reports which were missing so
that a table can say so.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

RESULT_SUFFIX = "_eval_results.json"

# The groups in VBench's own order (scripts/constant.py); the scores are summed in this order, which the reference
# results reproduce to the last bit.
QUALITY_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
SEMANTIC_DIMENSIONS: tuple[str, ...] = (
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)
# Column order of the reference tables: quality dimensions (dynamic degree fifth), then semantic dimensions.
ALL_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
    *SEMANTIC_DIMENSIONS,
)
assert set(ALL_DIMENSIONS) == set(QUALITY_DIMENSIONS) | set(SEMANTIC_DIMENSIONS)

# (Min, Max) per dimension; every dimension not listed is (0, 1).
NORMALIZE_RANGE: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
DIMENSION_WEIGHT: dict[str, float] = {dim: 1.0 for dim in ALL_DIMENSIONS} | {"dynamic_degree": 0.5}
QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0


@dataclass(frozen=True)
class VBenchAggregate:
    """Normalised scores of one mode. ``None`` where no dimension of the group was evaluated."""

    normalized: dict[str, float]
    quality: float | None
    semantic: float | None
    total: float | None
    missing: tuple[str, ...]  # dimensions of ALL_DIMENSIONS without a raw score


def normalize(dimension: str, raw: float) -> float:
    """VBench's normalised, weighted score of one dimension."""
    if dimension not in NORMALIZE_RANGE:
        raise KeyError(f"unknown VBench dimension {dimension!r}; known: {', '.join(ALL_DIMENSIONS)}")
    lo, hi = NORMALIZE_RANGE[dimension]
    return (float(raw) - lo) / (hi - lo) * DIMENSION_WEIGHT[dimension]


def _group_score(normalized: dict[str, float], group: tuple[str, ...]) -> float | None:
    present = [dim for dim in group if dim in normalized]
    if not present:
        return None
    return sum(normalized[dim] for dim in present) / sum(DIMENSION_WEIGHT[dim] for dim in present)


def aggregate(raw_scores: dict[str, float]) -> VBenchAggregate:
    """Quality, semantic and total score from raw per-dimension means (unknown keys are ignored)."""
    normalized = {dim: normalize(dim, val) for dim, val in raw_scores.items() if dim in NORMALIZE_RANGE}
    quality = _group_score(normalized, QUALITY_DIMENSIONS)
    semantic = _group_score(normalized, SEMANTIC_DIMENSIONS)
    total = None
    if quality is not None and semantic is not None:
        total = (quality * QUALITY_WEIGHT + semantic * SEMANTIC_WEIGHT) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    missing = tuple(dim for dim in ALL_DIMENSIONS if dim not in normalized)
    return VBenchAggregate(normalized=normalized, quality=quality, semantic=semantic, total=total, missing=missing)


def load_raw_scores(score_dir: str | os.PathLike) -> dict[str, float]:
    """Read every ``*_eval_results.json`` of one mode's score folder -> ``{dimension: mean score}``.

    VBench writes ``{dim: [mean, [per-video results...]]}``; files of several dimensions may share one file.
    Returns dimensions in the reference column order (unknown dimensions after them, sorted).
    """
    return {dim: result.mean for dim, result in load_dimension_results(score_dir).items()}


@dataclass(frozen=True)
class DimensionResult:
    """One dimension's VBench result: its mean and, when the file lists them, the per-video scores by file name."""

    mean: float
    per_video: dict[str, float] | None


def load_dimension_results(score_dir: str | os.PathLike) -> dict[str, DimensionResult]:
    """Like :func:`load_raw_scores`, with the per-video scores (``None`` where a file has no usable list)."""
    score_dir = Path(score_dir)
    found: dict[str, DimensionResult] = {}
    if not score_dir.is_dir():
        return found
    for path in sorted(score_dir.iterdir()):
        if not path.name.endswith(RESULT_SUFFIX) or path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"expected {{dimension: [mean, [per video]]}}, got {type(data).__name__}")
        except (OSError, UnicodeDecodeError, ValueError) as err:
            logger.warning("skipping unreadable VBench result %s (%s): evaluate computes it again", path, err)
            continue
        for dim, value in data.items():
            mean = float(value[0] if isinstance(value, list) else value)
            per_video: dict[str, float] | None = None
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], list):
                per_video = {}
                for item in value[1]:
                    score = item.get("video_results") if isinstance(item, dict) else None
                    video = item.get("video_path") if isinstance(item, dict) else None
                    if not isinstance(video, str) or not isinstance(score, int | float):
                        per_video = None
                        break
                    per_video[os.path.basename(video)] = float(score)
            found[dim] = DimensionResult(mean, per_video)
    order = {dim: i for i, dim in enumerate(ALL_DIMENSIONS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def mean_over(result: DimensionResult, videos: set[str]) -> float | None:
    """The dimension's mean over a subset of its videos, on VBench's scale. VBench's mean is the mean of its
    per-video scores (``imaging_quality``: of the per-video percentages / 100); which holds is checked on the full
    set, and None is returned when neither does (the subset's mean cannot be told from the file)."""
    if not result.per_video or not videos:
        return None
    values = result.per_video
    full = sum(values.values()) / len(values)
    for scale in (1.0, 0.01):
        if math.isclose(full * scale, result.mean, rel_tol=1e-9, abs_tol=1e-12):
            return sum(values[v] for v in sorted(videos)) / len(videos) * scale
    return None
