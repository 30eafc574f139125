"""The web UI's logic without a browser (genmo_teacache.ui): the choices come from the registries, a request is
checked with the registry's own errors before any model work, and a job on the tiny model writes its own folder
with the evaluation's comparison numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genmo_teacache import ui
from genmo_teacache.caches import METHODS, MODIFIERS, method_class, parse_mode
from genmo_teacache.speed import PRESETS, SpeedOptions, parse_speed

SMALL = dict(width=64, height=64, num_frames=7, num_steps=4, cfg_scale=6.0)


def request(**over):
    fields = dict(prompt="a red ball", seed=3, method="fixed_", parameters="0.1", device="cpu", **SMALL)
    fields.update(over)
    return ui.parse_request(**fields)


def test_method_choices_are_every_registered_prefix() -> None:
    choices = ui.method_choices()
    assert [p for _, p in choices] == [p for m in METHODS for p in m.prefixes]
    labels = dict((p, label) for label, p in choices)
    assert labels["fixed_"] == "teacache: fixed" and labels["easycache_"] == "easycache"
    assert labels["baseline"] == "baseline"
    # other tools' names (the reference's mochi_diff_baseline) are read, never offered
    aliases = {a for m in METHODS for a in m.aliases}
    assert "diff_baseline" in aliases and not aliases & set(labels)
    assert method_class("mochi_diff_baseline").key == "baseline"
    for _, prefix in choices:
        assert prefix in ui.method_of(prefix).prefixes
    with pytest.raises(ValueError, match="unknown cache method 'nope_'"):
        ui.method_of("nope_")


def test_examples_and_built_modes_round_trip_through_the_registry() -> None:
    for kind in (*METHODS, *MODIFIERS):
        for prefix in kind.prefixes:
            example = ui.example_parameters(kind, prefix)
            if example is None:
                continue
            assert (prefix + example) == kind().name
    assert ui.example_parameters(METHODS[2], "mag_") is None  # MagCache needs its calibration file
    mode = ui.build_mode("fixed_", " 0.06 ", [("cfg", "_s22"), ("taylor", "1")])
    assert mode == "fixed_0.06+cfg_s22+taylor1"
    assert parse_mode(mode).name == "fixed_0.06+cfg+taylor1"  # s22 is the default start: the canonical name drops it
    assert ui.build_mode("baseline", "") == "baseline"
    assert ui.split_method("adaptive_0.12_0.04") == ("adaptive_", "0.12_0.04")


def registry_error(mode: str) -> str:
    try:
        parse_mode(mode).check(SMALL["num_steps"])
    except ValueError as e:
        return str(e)
    raise AssertionError(f"the registry takes {mode}")


@pytest.mark.parametrize("over, message", [
    (dict(width=100), "width=100: use a positive multiple of 16"),
    (dict(num_frames=20), "num_frames=20: Mochi needs num_frames - 1 divisible by 6"),
    (dict(num_steps=1), "num_steps=1: use at least 2 denoising steps"),
    (dict(seed=-1), "seed=-1: use a whole number from 0 to 4294967295"),
    (dict(seed=1.5), "seed=1.5: enter a whole number"),
    (dict(seed=None), "seed is empty: enter a whole number"),
    (dict(width="abc"), "width='abc' is not a number"),
    (dict(cfg_scale=None), "CFG scale is empty"),
    (dict(calibration="/nonexistent/cal.json"), "calibration file /nonexistent/cal.json does not exist"),
    (dict(method="baseline", parameters="", compare=True), "the cache method is the baseline itself"),
])
def test_bad_fields_are_named_with_the_fix(over: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        request(**over)
    assert message in str(err.value)


@pytest.mark.parametrize("method, parameters, modifiers, mode", [
    ("adaptive_", "0.12_x", [], "adaptive_0.12_x"),
    ("mag_", "0.06", [], "mag_0.06"),  # needs a calibration file
    ("easycache_", "-1", [], "easycache_-1"),
    ("fixed_", "0.1", [("cfg", "_zz")], "fixed_0.1+cfg_zz"),
    ("fixed_", "0.1", [("taylor", "7")], "fixed_0.1+taylor7"),
    ("baseline", "", [("taylor", "1")], "baseline+taylor1"),
    ("schedule_", "2x0.1", [], "schedule_2x0.1"),  # a fixed length shorter than the run
])
def test_cache_errors_are_the_registrys_own(method: str, parameters: str, modifiers: list, mode: str) -> None:
    expected = registry_error(mode)
    with pytest.raises(ValueError) as err:
        request(method=method, parameters=parameters, modifiers=modifiers)
    assert str(err.value) == expected


def test_speed_presets_are_checked_against_the_device() -> None:
    assert request(speed_preset="default").speed == SpeedOptions() == parse_speed("default")
    for name, options in PRESETS.items():
        if options.is_default:
            continue
        with pytest.raises(ValueError) as err:  # FA3 / compile options need a GPU and their packages
            request(speed_preset=name)
        assert str(err.value)
    with pytest.raises(ValueError, match="unknown token 'warp'"):
        request(speed_preset="warp")


def test_a_good_request_keeps_the_registrys_warnings() -> None:
    r = request(method="adaptive_", parameters="0.12_0.04", modifiers=[("taylor", "1")], negative_prompt="blur")
    assert r.cache == parse_mode("adaptive_0.12_0.04+taylor1")
    assert r.settings.negative_prompt == "blur" and r.settings.num_steps == 4 and r.seed == 3
    assert r.warnings == tuple(r.cache.check(4)) and "cut" in r.warnings[0]
    assert r.arguments()["cache_mode"] == "adaptive_0.12_0.04+taylor1"


def test_page_defaults_follow_the_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    tiny = json.loads((tiny_model_dir / "generation_defaults.json").read_text())
    defaults = ui.page_defaults(tiny_model_dir)
    assert {k: defaults[k] for k in tiny} == tiny
    assert ui.page_defaults(tmp_path) == dict(width=848, height=480, num_frames=163, num_steps=64, cfg_scale=6.0)


@pytest.mark.slow
def test_a_job_and_a_comparison_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from genmo_teacache.eval.fidelity import FidelityScorer
    from genmo_teacache.video import read_video

    runner = ui.Runner(tiny_model_dir, tmp_path / "out", device="cpu")
    speed = parse_speed("default")
    assert runner.pipeline(speed) is runner.pipeline(speed)  # loaded once
    phases: list[str] = []
    job = runner.run(request(parameters="0.05", modifiers=[("cfg", "_s1_i3")], compare=True), phases.append)
    assert phases == ["Generating: fixed_0.05+cfg_s1_i3", "Generating: baseline",
                      "Comparing with the baseline (PSNR, SSIM, LPIPS; grid)"]
    assert job.folder.parent == tmp_path / "out"
    assert all(f.parent == job.folder and f.is_file() for f in job.files)
    assert read_video(job.video).shape == (7, 64, 64, 3)

    report = job.result.report
    rows = ui.steps_table(report)
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert {r[2] for r in rows} == {"computed", "skipped", "cond only"}  # this seed and mode show all three
    assert [r[2] != "skipped" for r in rows] == [s["computed"] for s in report["steps"]]
    assert sum(r[2] == "cond only" for r in rows) == report["cond_only_steps"]
    assert sum(r[2] == "skipped" for r in rows) == report["skipped_steps"]
    assert job.steps_plot.stat().st_size > 1000
    timings = dict(ui.timings_table(job.result))
    assert timings["peak GPU memory"] == "n/a (CPU)" and timings["total"] == f"{job.result.timings['total_s']:.2f} s"
    sidecar = json.loads(job.sidecar.read_text())
    assert sidecar["arguments"]["prompt"] == "a red ball" and sidecar["arguments"]["seed"] == 3
    assert sidecar["mode"] == "fixed_0.05+cfg_s1_i3"
    summary = ui.summary_markdown(job)
    assert f"computed {report['computed_steps']} of 4 steps" in summary and "Prompt: a red ball" in summary

    c = job.comparison
    assert c is not None and c.baseline.report["mode"] == "baseline" and c.baseline.report["skipped_steps"] == 0
    scores = FidelityScorer(device="cpu").score_files(c.video, job.video)  # the evaluation's own numbers
    assert (c.psnr, c.ssim, c.lpips) == (scores.psnr, scores.ssim, scores.lpips)
    assert c.speedup == c.baseline.timings["total_s"] / job.result.timings["total_s"]
    grid = json.loads(c.grid.with_suffix(".json").read_text())
    assert [t["mode"] for t in grid["tiles"]] == ["baseline", "fixed_0.05+cfg_s1_i3"]
    assert grid["tiles"][1]["psnr"] == c.psnr and grid["tiles"][1]["lpips"] == c.lpips
    text = ui.comparison_markdown(job)
    assert f"{c.psnr:.2f} dB" in text and f"{c.lpips:.4f}" in text and f"{c.speedup:.2f}x" in text
    above = max(c.speedup, c.denoising_speedup) > report["ideal_speedup"]
    assert ("above the ideal" in text) == above  # a speedup beyond what the skipped work allows is called noise

    assert job.cold and ui.COLD_NOTE in text and ui.COLD_NOTE in summary  # the first job pays the warm-up

    again = runner.run(request(seed=4), phases.append)
    assert again.folder != job.folder and again.comparison is None and ui.comparison_markdown(again) == ""
    assert not again.cold and ui.COLD_NOTE not in ui.summary_markdown(again)
