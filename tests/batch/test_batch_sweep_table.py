"""The sweep's candidates and table (no model needed)."""

from __future__ import annotations

import math

import pytest

from genmo_teacache.batch.sweep import (
    best_row,
    default_candidates,
    parse_candidates,
    sweep_rows,
    to_csv,
    to_markdown,
)


def test_default_candidates_are_the_reference_ones():
    # folders named like the reference experiment's (mochi_<mode>)
    assert default_candidates(64) == [("c1", "mochi_adaptive_0.08_0.04"), ("c2", "mochi_adaptive_0.2_0.1"),
                                      ("c3", "mochi_adaptive_0.12_0.04"), ("c4", "mochi_adaptive_0.16_0.1")]
    assert default_candidates(16)[0] == ("c1", "mochi_adaptive_0.08_0.04_h8")
    assert default_candidates(16, high_steps=5)[2] == ("c3", "mochi_adaptive_0.12_0.04_h5")


def test_parse_candidates():
    assert parse_candidates("c1=adaptive_0.08_0.04, fixed_0.06") == [("c1", "adaptive_0.08_0.04"),
                                                                     ("fixed_0.06", "fixed_0.06")]
    for bad, message in [("c1=fixd_0.1", "fixd_0.1"), ("baseline", "baseline"), ("b=mochi_baseline", "baseline"),
                         ("a=fixed_0.1,a=fixed_0.2", "twice"),
                         (",", "no candidates")]:
        with pytest.raises(ValueError, match=message):
            parse_candidates(bad)


def run(mode, prompt, t, computed):
    return {"mode": mode, "prompt": prompt, "sample": 0, "time_seconds": t,
            "cache": {"computed_steps": computed, "skipped_steps": 10 - computed}}


def test_rows_best_and_tables():
    candidates = [("c1", "fixed_0.1"), ("c2", "fixed_0.2")]
    runs = [run("baseline", p, 4.0, 10) for p in "ab"] + [run("fixed_0.1", p, 2.0, 5) for p in "ab"] + [
        run("fixed_0.2", p, 1.0, 2) for p in "ab"]
    fidelity = {"fixed_0.1": {"psnr": {"mean": 30.0}, "ssim": {"mean": 0.9}, "lpips": {"mean": 0.1}},
                "fixed_0.2": {"psnr": {"mean": 20.0}, "ssim": {"mean": 0.8}, "lpips": {"mean": 0.3}}}
    rows = sweep_rows(runs, candidates, fidelity, baseline="baseline")
    assert [r["label"] for r in rows] == ["baseline", "c1", "c2"]
    assert [r["speedup"] for r in rows] == [1.0, 2.0, 4.0]
    assert best_row(rows, "psnr")["label"] == "c1"
    assert best_row(rows, "lpips")["label"] == "c1"
    assert best_row(rows, "speedup")["label"] == "c2"
    md = to_markdown(rows, "psnr", best_row(rows, "psnr"), None)
    assert "Best by psnr: c1 (fixed_0.1)" in md and "| **c1** (best) | fixed_0.1 |" in md
    csv_text = to_csv(rows)
    assert csv_text.splitlines()[0] == ("label,mode,speedup,denoising_speedup,computed_fraction,latency_s,psnr,ssim,"
                                        "lpips,videos")
    assert len(csv_text.splitlines()) == 4

    no_fid = sweep_rows(runs, candidates, {}, baseline="baseline")
    assert math.isnan(no_fid[1]["psnr"])
    assert best_row(no_fid, "psnr") is None
    assert "No candidate has a value for psnr (fidelity missing)" in to_markdown(no_fid, "psnr", None,
                                                                                 "fidelity missing")
