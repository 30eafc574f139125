"""The sweep's candidates and table (no model needed)."""

from __future__ import annotations

import json
import math

import pytest

from genmo_teacache.batch.sweep import (
    best_row,
    default_candidates,
    parse_candidates,
    sweep_rows,
    to_csv,
    to_markdown,
    write_best,
)
from genmo_teacache.generate import GenerationSettings


def test_default_candidates_are_the_reference_ones():
    # folders named as the reference experiment's (mochi_adaptive_c1 .. c4), their modes FOLDER=MODE
    assert default_candidates(64) == [("c1", "mochi_adaptive_c1=mochi_adaptive_0.08_0.04"),
                                      ("c2", "mochi_adaptive_c2=mochi_adaptive_0.2_0.1"),
                                      ("c3", "mochi_adaptive_c3=mochi_adaptive_0.12_0.04"),
                                      ("c4", "mochi_adaptive_c4=mochi_adaptive_0.16_0.1")]
    assert default_candidates(16)[0] == ("c1", "mochi_adaptive_c1=mochi_adaptive_0.08_0.04_h8")
    assert default_candidates(16, high_steps=5)[2] == ("c3", "mochi_adaptive_c3=mochi_adaptive_0.12_0.04_h5")


def test_rows_of_default_candidates_are_found_by_their_folder_and_name_their_mode(tmp_path):
    """Logs and fidelity results are by folder; the best's --modes value is the mode that runs."""

    candidates = default_candidates(16)[:2]
    runs = [run("mochi_baseline", "p", 10.0, 10), run("mochi_adaptive_c1", "p", 5.0, 5),
            run("mochi_adaptive_c2", "p", 4.0, 4)]
    fidelity = {"mochi_adaptive_c1": {"psnr": {"mean": 30.0}}, "mochi_adaptive_c2": {"psnr": {"mean": 20.0}}}
    rows = sweep_rows(runs, candidates, fidelity, baseline="mochi_baseline")
    assert [(r["label"], r["method"], r["speedup"], r["psnr"]) for r in rows[1:]] == [
        ("c1", "teacache", 2.0, 30.0), ("c2", "teacache", 2.5, 20.0)]
    best = json.loads(write_best(tmp_path, rows, "psnr", GenerationSettings(num_steps=16)).read_text())
    assert best["modes"] == "mochi_baseline,mochi_adaptive_0.08_0.04_h8"


def test_parse_candidates():
    assert parse_candidates("c1=adaptive_0.08_0.04, fixed_0.06") == [("c1", "adaptive_0.08_0.04"),
                                                                     ("fixed_0.06", "fixed_0.06")]
    for bad, message in [("c1=fixd_0.1", "fixd_0.1"), ("baseline", "baseline"), ("b=mochi_baseline", "baseline"),
                         ("a=fixed_0.1,a=fixed_0.2", "twice"),
                         (",", "no candidates")]:
        with pytest.raises(ValueError, match=message):
            parse_candidates(bad)


def run(mode, prompt, t, computed, forwards=None):
    cache = {"computed_steps": computed, "skipped_steps": 10 - computed}
    if forwards is not None:
        cache["dit_calls"] = forwards
    return {"mode": mode, "prompt": prompt, "sample": 0, "time_seconds": t, "cache": cache}


def test_a_speedup_above_its_ideal_is_noise_and_never_best(tmp_path, monkeypatch):
    """On a loaded machine a candidate computing half the forwards measured 4x: above its ideal 2x, it is flagged
    in the CSV, the Markdown table and the plot, and never chosen as the fastest."""
    from genmo_teacache.batch.sweep import plot_rows
    from genmo_teacache.eval import plots

    candidates = [("c1", "fixed_0.1"), ("c2", "fixed_0.2")]
    runs = [run("baseline", p, 4.0, 10, 20) for p in "ab"] + [run("fixed_0.1", p, 1.0, 5, 10) for p in "ab"] + [
        run("fixed_0.2", p, 2.5, 4, 8) for p in "ab"]
    fidelity = {m: {"psnr": {"mean": 30.0}, "lpips": {"mean": 0.1}} for m in ("fixed_0.1", "fixed_0.2")}
    rows = sweep_rows(runs, candidates, fidelity, baseline="baseline")
    c1, c2 = rows[1], rows[2]
    assert (c1["speedup"], c1["ideal_speedup"], c1["noise"]) == (4.0, 2.0, ["speedup"])
    assert (c2["speedup"], c2["ideal_speedup"], c2["noise"]) == (1.6, 2.5, [])
    assert best_row(rows, "speedup") is c2  # c1's 4x is not a result
    csv_lines = to_csv(rows).splitlines()
    assert csv_lines[2].startswith("c1,fixed_0.1,teacache,4.000000,,2.000000,speedup,")
    assert csv_lines[3].startswith("c2,fixed_0.2,teacache,1.600000,,2.500000,,")
    md = to_markdown(rows, "speedup", best_row(rows, "speedup"), None)
    assert "| c1 | fixed_0.1 | teacache | noise (4.00x > ideal 2.00x) |" in md and "Noise: a speedup above" in md
    assert "| **c2** (best) |" in md
    figures, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figures.append(fig), save(fig, out))[1])  # a spy
    assert plot_rows(rows, tmp_path / "sweep_pareto.png").is_file()
    (fig,) = figures
    assert all([float(x) for c in ax.collections for x, _ in c.get_offsets()] == [1.6] for ax in fig.axes)
    assert "c1 (end-to-end speedup 4.00x > ideal 2.00x)" in fig.texts[-1].get_text()


def test_the_best_never_skipped_nothing_and_ties_go_to_the_faster():
    """fixed_0.0 computes every forward: its videos are the baseline's (PSNR 100 dB), which must not make it the
    best; two candidates tied at 100 dB are told apart by speedup."""
    candidates = [("zero", "fixed_0.0"), ("slow", "fixed_0.1"), ("fast", "fixed_0.2")]
    runs = [run("baseline", p, 4.0, 10, 20) for p in "ab"] + [run("fixed_0.0", p, 3.9, 10, 20) for p in "ab"] + [
        run("fixed_0.1", p, 3.0, 8, 16) for p in "ab"] + [run("fixed_0.2", p, 2.5, 6, 12) for p in "ab"]
    same = {"psnr": {"mean": 100.0}, "ssim": {"mean": 1.0}, "lpips": {"mean": 0.0}}
    rows = sweep_rows(runs, candidates, dict.fromkeys(("fixed_0.0", "fixed_0.1", "fixed_0.2"), same),
                      baseline="baseline")
    assert [r["skipped_nothing"] for r in rows] == [True, True, False, False]
    for metric in ("psnr", "ssim", "lpips", "speedup"):
        assert best_row(rows, metric)["label"] == "fast", metric
    md = to_markdown(rows, "psnr", best_row(rows, "psnr"), None)
    assert "Best by psnr: fast (fixed_0.2), psnr = 100.0000 (tied with slow; the larger speedup wins)." in md
    assert "Not candidates for best (they skipped nothing): zero." in md
    # without forward counts in the logs, a candidate that computed every step skipped nothing
    old_logs = sweep_rows([run("baseline", "a", 4.0, 10), run("fixed_0.0", "a", 3.0, 10)], candidates[:1],
                          {"fixed_0.0": same}, baseline="baseline")
    assert old_logs[1]["skipped_nothing"] and best_row(old_logs, "psnr") is None


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
    assert csv_text.splitlines()[0] == ("label,mode,method,speedup,denoising_speedup,ideal_speedup,noise,"
                                        "computed_fraction,latency_s,psnr,ssim,lpips,videos")
    assert len(csv_text.splitlines()) == 4

    no_fid = sweep_rows(runs, candidates, {}, baseline="baseline")
    assert math.isnan(no_fid[1]["psnr"])
    assert best_row(no_fid, "psnr") is None
    assert "No candidate has a value for psnr (fidelity missing)" in to_markdown(no_fid, "psnr", None,
                                                                                 "fidelity missing")


def test_candidates_of_every_method_and_the_calibration_they_need(tmp_path):
    cal = tmp_path / "cal.json"
    cal.write_text('{"coefficients": [1.0, 0.0], "x_range": [0, 1], "mag_ratios": [1.0, 1.01, 0.99, 1.0]}')
    text = "fixed_0.04,e=easycache_0.05,fbcache_0.1,mochi_mag_0.06_k3"
    assert parse_candidates(text, cal) == [("fixed_0.04", "fixed_0.04"), ("e", "easycache_0.05"),
                                           ("fbcache_0.1", "fbcache_0.1"), ("mochi_mag_0.06_k3", "mochi_mag_0.06_k3")]
    with pytest.raises(ValueError, match="mode mag_0.06_k3 needs .*--calibration"):  # refused before any model loads
        parse_candidates(text)
    with pytest.raises(ValueError, match="easycache_0.05_wx"):
        parse_candidates("easycache_0.05_wx", cal)


def test_one_table_and_one_plot_across_methods(tmp_path):
    """Each row names its method (from the registry); the Pareto plot draws every method in its own colour and
    marker, the front over all of them."""
    from genmo_teacache.batch.sweep import plot_rows
    from genmo_teacache.eval.plots import method_styles

    candidates = [("t", "fixed_0.1"), ("e1", "easycache_0.05"), ("e2", "easycache_0.1"), ("f", "mochi_fbcache_0.1")]
    times = {"baseline": 4.0, "fixed_0.1": 2.0, "easycache_0.05": 2.5, "easycache_0.1": 1.6, "mochi_fbcache_0.1": 3.0}
    runs = [run(m, p, t, 10) for m, t in times.items() for p in "ab"]
    fidelity = {m: {"psnr": {"mean": psnr}, "ssim": {"mean": 0.9}, "lpips": {"mean": lp}}
                for m, psnr, lp in (("fixed_0.1", 25.0, 0.2), ("easycache_0.05", 30.0, 0.1),
                                    ("easycache_0.1", 24.0, 0.25), ("mochi_fbcache_0.1", 26.0, 0.3))}
    rows = sweep_rows(runs, candidates, fidelity, baseline="baseline")
    assert [(r["label"], r["method"]) for r in rows] == [("baseline", "baseline"), ("t", "teacache"),
                                                         ("e1", "easycache"), ("e2", "easycache"), ("f", "fbcache")]
    assert to_csv(rows).splitlines()[2].startswith("t,fixed_0.1,teacache,2.000000,")
    assert "| e1 | easycache_0.05 | easycache | 1.6000 |" in to_markdown(rows, "psnr", None, None)

    styles = method_styles([m for _, m in candidates])
    assert styles["easycache_0.05"] == styles["easycache_0.1"] and styles["easycache_0.05"][0] == "easycache"
    assert len({styles[m][1:] for m in ("fixed_0.1", "easycache_0.05", "mochi_fbcache_0.1")}) == 3
    path = plot_rows(rows, tmp_path / "sweep_pareto.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 2 * height  # two panels side by side: PSNR and LPIPS
    assert plot_rows(sweep_rows(runs, candidates, {}, baseline="baseline"), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
