"""Conformance: scoring and tables reproduce the reference comparison outputs from the reference inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _evalhelpers import HUNYUAN_LABELS, HUNYUAN_MODES

from genmo_teacache.eval import scoring, tables
from genmo_teacache.eval.timing import load_timings, speedups
from genmo_teacache.eval.vbench_runner import STATUS_FILE

BASELINE = HUNYUAN_MODES[0]
CSV_TABLES = ["vbench_scores_table.csv", "fidelity_table.csv", "summary_table.csv"]


def _reference(hunyuan: Path) -> dict:
    return json.loads((hunyuan / "all_comparison_results.json").read_text())


def _log_with_reference_latency(hunyuan: Path, log_dir: Path) -> Path:
    """One logged run per mode whose time is the reference's average: reproduces its latency and speedup columns
    (the reference's own generation logs are not part of the fixtures)."""
    runs = [{"mode": mode, "prompt": "p", "sample": 0, "time_seconds": entry["timing"]["avg_time"]}
            for mode, entry in _reference(hunyuan).items()]
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "generation_log_0-1.json").write_text(json.dumps({"runs": runs}))
    return log_dir


def test_raw_scores_and_aggregates_match_reference_json_exactly(hunyuan: Path) -> None:
    ref = _reference(hunyuan)
    for mode in HUNYUAN_MODES:
        raw = scoring.load_raw_scores(hunyuan / "vbench_scores" / mode)
        assert raw == ref[mode]["vbench_raw"]
        agg = scoring.aggregate(raw)
        # bit-for-bit: same constants, same summation order
        assert agg.quality == ref[mode]["vbench_quality_score"]
        assert agg.semantic == ref[mode]["vbench_semantic_score"]
        assert agg.total == ref[mode]["vbench_total_score"]
        assert agg.missing == ()


def test_comparison_json_matches_reference(hunyuan: Path) -> None:
    comp = tables.collect(HUNYUAN_MODES[1:], BASELINE, hunyuan / "vbench_scores", hunyuan / "fidelity_metrics", None)
    ours = tables.comparison_json(comp)
    ref = _reference(hunyuan)
    assert list(ours) == HUNYUAN_MODES
    for mode in HUNYUAN_MODES:
        expected = {k: v for k, v in ref[mode].items() if k != "timing"}  # timing came from logs not in fixtures
        assert ours[mode] == expected, mode


def test_csv_tables_reproduce_reference_files_byte_for_byte(hunyuan: Path, tmp_path: Path) -> None:
    logs = _log_with_reference_latency(hunyuan, tmp_path / "logs")
    comp = tables.collect(HUNYUAN_MODES[1:], BASELINE, hunyuan / "vbench_scores", hunyuan / "fidelity_metrics", logs)
    written = tables.write_tables(comp, tmp_path / "out", labels=HUNYUAN_LABELS)
    for name in CSV_TABLES:
        assert written[name].read_bytes() == (hunyuan / name).read_bytes(), name
    # the metric-per-row layout, with the reference's short column names
    short = {m: m.removeprefix("hunyuan_") for m in HUNYUAN_MODES}
    written = tables.write_tables(comp, tmp_path / "short", labels=short)
    assert written["results_table.csv"].read_bytes() == (hunyuan / "results_table.csv").read_bytes()

    ours = json.loads(written["all_comparison_results.json"].read_text())
    ref = _reference(hunyuan)
    for mode in HUNYUAN_MODES:
        assert ours[mode]["timing"]["avg_time"] == ref[mode]["timing"]["avg_time"]
    assert ours["hunyuan_fixed_0.2"]["speedup"]["end_to_end"] == pytest.approx(
        ref[BASELINE]["timing"]["avg_time"] / ref["hunyuan_fixed_0.2"]["timing"]["avg_time"])


def test_tables_without_logs_leave_latency_out(hunyuan: Path, tmp_path: Path) -> None:
    comp = tables.collect(HUNYUAN_MODES[1:], BASELINE, hunyuan / "vbench_scores", hunyuan / "fidelity_metrics",
                          tmp_path / "no-logs")
    written = tables.write_tables(comp, tmp_path)
    summary = written["summary_table.csv"].read_text(encoding="utf-8").splitlines()
    assert summary[0] == "Mode,Speedup,Latency (s),VBench Total,PSNR,SSIM,LPIPS"
    assert summary[1] == "hunyuan_baseline,\u2014,\u2014,82.35%,\u2014,\u2014,\u2014"
    assert summary[2] == "hunyuan_fixed_0.1,\u2014,\u2014,83.90%,24.6876,0.8185,0.1874"
    md = written["summary_table.md"].read_text(encoding="utf-8")
    assert "| hunyuan_fixed_0.1 | \u2014 | \u2014 | 83.90% | 24.6876 | 0.8185 | 0.1874 |" in md


def test_failed_dimension_reads_na_and_scores_average_present_ones(hunyuan: Path, tmp_path: Path) -> None:
    scores = tmp_path / "scores"
    shutil.copytree(hunyuan / "vbench_scores" / BASELINE, scores / BASELINE)
    for dim in ("color", "dynamic_degree"):
        (scores / BASELINE / f"{dim}{scoring.RESULT_SUFFIX}").unlink()
    status = {BASELINE: {"color": {"status": "failed", "reason": "color needs detectron2"},
                         "dynamic_degree": {"status": "failed", "reason": "no network"}}}
    (scores / STATUS_FILE).write_text(json.dumps(status))
    comp = tables.collect([], BASELINE, scores, None, None)
    written = tables.write_tables(comp, tmp_path / "out")

    row = written["vbench_scores_table.csv"].read_text().splitlines()[1].split(",")
    header = written["vbench_scores_table.csv"].read_text().splitlines()[0].split(",")
    cells = dict(zip(header, row, strict=True))
    assert cells["color"] == "n/a" and cells["dynamic_degree"] == "n/a"
    assert cells["subject_consistency"] == "0.9486"

    # quality over the six present quality dimensions (weights 1), by hand from the constants
    raw = _reference(hunyuan)[BASELINE]["vbench_raw"]
    ranges = {"subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
              "temporal_flickering": (0.6293, 1.0), "motion_smoothness": (0.706, 0.9975),
              "aesthetic_quality": (0.0, 1.0), "imaging_quality": (0.0, 1.0)}
    quality = sum((raw[d] - lo) / (hi - lo) for d, (lo, hi) in ranges.items()) / 6
    assert comp.results[BASELINE].aggregate.quality == pytest.approx(quality, rel=1e-12)
    assert cells["Quality Score"] == f"{quality * 100:.2f}%"

    data = json.loads(written["all_comparison_results.json"].read_text())
    assert data[BASELINE]["vbench_unavailable"] == {"color": "color needs detectron2", "dynamic_degree": "no network"}
    assert "color" not in data[BASELINE]["vbench_raw"]
    assert "color needs detectron2" in written["vbench_scores_table.md"].read_text()


def test_normalization_constants() -> None:
    assert scoring.normalize("dynamic_degree", 1.0) == 0.5  # weight 0.5
    assert scoring.normalize("scene", 0.8222) == pytest.approx(1.0)
    assert scoring.normalize("appearance_style", 0.0009) == 0.0
    assert scoring.normalize("temporal_flickering", 0.6293) == 0.0
    assert scoring.aggregate({}).total is None
    only_quality = scoring.aggregate({"temporal_flickering": 1.0})
    assert only_quality.quality == 1.0 and only_quality.semantic is None and only_quality.total is None
    with pytest.raises(KeyError, match="unknown VBench dimension"):
        scoring.normalize("sharpness", 1.0)


def test_timings_merge_logs_dedupe_and_speedups(tmp_path: Path) -> None:
    def run(mode: str, prompt: str, total: float, denoise: float | None, skipped: int | None = None) -> dict:
        r = {"mode": mode, "prompt": prompt, "sample": 0, "time_seconds": total}
        if denoise is not None:
            r["timings"] = {"text_encoding_s": 1.0, "denoising_s": denoise, "decoding_s": 2.0}
        if skipped is not None:
            r["cache"] = {"computed_steps": 64 - skipped, "skipped_steps": skipped}
        return r

    (tmp_path / "generation_log_0-1.json").write_text(json.dumps({"runs": [
        run("base", "a", 100.0, 90.0), run("base", "b", 999.0, 999.0),  # "b" is redone in the later log
        run("fast", "a", 50.0, 40.0, skipped=30)]}))
    (tmp_path / "generation_log_2-3.json").write_text(json.dumps({"runs": [
        run("base", "b", 110.0, 100.0), run("fast", "b", 60.0, 50.0, skipped=34),
        {"mode": "fast", "prompt": "c", "sample": 0, "time_seconds": None}]}))  # a run without a total time
    os.utime(tmp_path / "generation_log_0-1.json", (1_000_000, 1_000_000))  # the older log: its "b" run loses
    (tmp_path / "notes.json").write_text("{}")
    t = load_timings(tmp_path)
    assert t["base"].num_videos == 2 and t["base"].avg_time == 105.0 and t["base"].avg_denoising_time == 95.0
    assert t["fast"].avg_time == 55.0 and t["fast"].avg_skipped_steps == 32.0 and t["fast"].avg_computed_steps == 32.0
    ups = speedups(t, "base")
    assert ups["fast"] == {"end_to_end": pytest.approx(105 / 55), "denoising": pytest.approx(95 / 45)}
    assert ups["base"] == {"end_to_end": 1.0, "denoising": 1.0}
    assert speedups(t, "not-there") == {}  # never against a guessed baseline
    assert load_timings(tmp_path / "missing") == {}


def test_summary_table_has_denoising_columns_when_logged(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "generation_log_0-1.json").write_text(json.dumps({"runs": [
        {"mode": "base", "prompt": "a", "sample": 0, "time_seconds": 100.0, "timings": {"denoising_s": 80.0}},
        {"mode": "fast", "prompt": "a", "sample": 0, "time_seconds": 50.0, "timings": {"denoising_s": 32.0}}]}))
    comp = tables.collect(["fast"], "base", None, None, tmp_path / "logs")
    rows = tables.summary_rows(comp, {})
    assert rows[0][-2:] == ["Denoising (s)", "Denoising Speedup"]
    assert rows[2] == ["fast", "2.00x", "50s", "\u2014", "\u2014", "\u2014", "\u2014", "32s", "2.50x"]
