"""The demo CLI end to end on the tiny model, and its refusals."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from genmo_teacache.generate_cli import generate_command
from genmo_teacache.video import read_video

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--width", "64", "--height", "64", "--num_frames", "13", "--num_steps", "8", "--prompt", "a cat"]


@pytest.mark.slow
def test_demo_cli_end_to_end(tiny_model_dir, tmp_path):
    video = tmp_path / "out" / "cat.mp4"
    cmd = [sys.executable, str(REPO / "demos" / "cli_teacache.py"), "--model_dir", str(tiny_model_dir), *SMALL,
           "--teacache_thresh_low", "0.04", "--teacache_thresh_high", "0.12", "--teacache_high_steps", "4",
           "--save_file", str(video), "--save_latents", str(tmp_path / "z.pt"), "--delta_temni_plot"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "computed" in out.stdout and "denoising" in out.stdout

    frames = read_video(video)
    latent_t = (13 - 1) // 6 + 1
    assert frames.shape == (6 * (latent_t - 1) + 1, 64, 64, 3)

    import torch

    assert torch.load(tmp_path / "z.pt").shape == (1, 12, latent_t, 8, 8)
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert sidecar["mode"] == "adaptive_0.12_0.04_h4"
    assert sidecar["cache"]["thresholds"] == [0.12] * 4 + [0.04] * 4
    assert sidecar["arguments"]["prompt"] == "a cat" and sidecar["frames"][0] == frames.shape[0]
    timings = sidecar["timings"]
    assert set(timings) >= {"text_encoding_s", "denoising_s", "decoding_s", "total_s", "warmup_s"}
    # a fresh pipeline's first run: the warm-up pass is timed apart, out of the step times and the totals
    assert timings["warmup_s"] > 0
    steps = sum(s["seconds"] for s in sidecar["steps"])
    assert steps <= timings["denoising_s"] < steps + 0.5 * timings["warmup_s"] + 0.5
    assert timings["total_s"] == pytest.approx(timings["text_encoding_s"] + timings["denoising_s"]
                                               + timings["decoding_s"], abs=0.05)
    assert f"Warm-up {timings['warmup_s']:.1f} s apart" in out.stdout
    # delta-TEMNI: no skipping, one rescaled value per step, equal to the sidecar's per-step report
    assert sidecar["computed_steps"] == 8 and sidecar["cache"]["observe_only"]
    txt = tmp_path / "out" / "cat_delta_TEMNI.txt"
    values = [float(v) for v in txt.read_text().split()]
    assert len(values) == 8 and math.isnan(values[0])
    assert values[1:] == pytest.approx([s["rescaled"] for s in sidecar["steps"][1:]], rel=1e-6)
    assert (tmp_path / "out" / "cat_delta_TEMNI_plot.png").stat().st_size > 1000
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]


def test_tiny_model_defaults_apply_and_caching_skips(tiny_model_dir, tmp_path):
    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--out_dir", str(tmp_path),
                                                "--num_steps", "10", "--teacache_thresh", "0.3", "--prompt", "a dog"])
    assert res.exit_code == 0, res.output
    sidecar = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert sidecar["arguments"]["width"] == 128 and sidecar["arguments"]["num_frames"] == 19  # model defaults
    assert sidecar["arguments"]["num_steps"] == 10  # an explicit option wins over the model's defaults
    assert sidecar["skipped_steps"] > 0 and sidecar["mode"] == "fixed_0.3"


@pytest.mark.parametrize("extra, message", [
    (["--teacache_thresh", "-0.1"], "threshold -0.1"),
    (["--teacache_thresh", "nan"], "threshold nan"),
    (["--teacache_mode", "turbo"], "unknown mode 'turbo'"),
    (["--teacache_schedule", "4:0.1,2:0.2"], "covers 6 steps but num_steps=8"),
    (["--teacache_schedule", "4-0.1"], "STEPS:THRESHOLD"),
    (["--teacache_thresh_high", "0.1"], "add --teacache_thresh_low"),
    (["--teacache_thresh", "0.1", "--teacache_mode", "fixed_0.2"], "give one way"),
    (["--no_teacache", "--teacache_thresh", "0.1"], "--no_teacache conflicts"),
    (["--num_frames", "12"], "num_frames=12"),
    (["--width", "100"], "width=100"),
    (["--teacache_coefficients", "MISSING.json"], "does not exist"),
])
def test_bad_input_fails_before_loading_with_the_value_named(tiny_model_dir, extra, message):
    args = ["--model_dir", str(tiny_model_dir), "--num_steps", "8", *extra]
    res = CliRunner().invoke(generate_command, args)
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Timing load_dit" not in res.output  # refused before any model loads


def test_atomic_writes_leave_usual_permissions(tmp_path):
    import os

    from genmo_teacache.files import write_json

    write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.slow
def test_default_mode_runs_at_the_tiny_models_16_steps(tiny_model_dir, tmp_path):
    """No cache option: the default adaptive_0.12_0.04 (high phase 34 steps) runs at 16 steps, cut there as the
    reference does, and says so in the output and the sidecar."""
    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--out_dir", str(tmp_path),
                                                "--width", "64", "--height", "64", "--num_frames", "7"])
    assert res.exit_code == 0, res.output
    sidecar = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert sidecar["mode"] == "adaptive_0.12_0.04" and sidecar["cache"]["thresholds"] == [0.12] * 16
    assert sidecar["cache"]["effective_schedule"] == [{"steps": 16, "threshold": 0.12}]
    (warning,) = sidecar["warnings"]
    assert "never start" in warning and "never start" in res.output


@pytest.mark.slow
def test_delta_temni_with_the_baseline(tiny_model_dir, tmp_path):
    """--no_teacache --delta_temni_plot records the indicator of an uncached run (it crashed after loading)."""
    video = tmp_path / "base.mp4"
    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), *SMALL, "--no_teacache",
                                                "--delta_temni_plot", "--save_file", str(video)])
    assert res.exit_code == 0, res.output
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert sidecar["mode"] == "baseline" and sidecar["computed_steps"] == 8 and sidecar["cache"]["observe_only"]
    values = (tmp_path / "base_delta_TEMNI.txt").read_text().split()
    assert len(values) == 8 and all(math.isfinite(float(v)) for v in values[1:])
    assert (tmp_path / "base_delta_TEMNI_plot.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--num_gpus", "0"], "0: use a positive number of GPUs"),
    (["--num_gpus", "-2"], "-2: use a positive number of GPUs"),
    (["--device", "cpu", "--num_gpus", "2", "--num_frames", "1"], "cannot split over 2 ranks"),
    (["--device", "cpu", "--num_gpus", "4", "--num_frames", "13"], "use at least 37 frames"),
    (["--teacache_mode", "fixed_0.1-max2-max3"], "twice"),
    (["--cache_mode", "fixed_0.1", "--teacache_thresh", "0.2"], "give one way"),
    (["--device", "cpu", "--cfg_parallel", "--num_gpus", "3"], "--num_gpus 3 must be even"),
    (["--device", "cpu", "--cfg_parallel", "--num_gpus", "2", "--batch_cfg"], "drop --batch_cfg"),
])
def test_bad_parallel_and_mode_options_are_refused_before_loading(tiny_model_dir, extra, message):
    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), *extra])
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Timing load" not in res.output


@pytest.mark.parametrize("line, message", [
    ('{"width": 64.0}', "width=64.0 (float): width must be of type int"),
    ('{"prompt": 5}', "prompt=5: a prompt is a non-empty string"),
    ('{"seed": 4294967296}', "seed 4294967296: use a whole number from 0 to 4294967295"),
    ('{"seed": -1}', "seed -1"),
    ('{"seed": 1.5}', "seed 1.5"),
    ('{"num_steps": "8"}', "num_steps='8' (str)"),
    ('{"cfg_scale": true}', "cfg_scale=True (bool)"),
    ('{"threshold_noise": 1.5}', "threshold_noise=1.5"),
    ('{"linear_steps": 16}', "linear_steps=16: use 1 to num_steps - 1"),
    ('{"cache_mode": 3}', "cache_mode=3"),
])
def test_sweep_file_values_of_the_wrong_type_are_refused_before_loading(tiny_model_dir, tmp_path, line, message):
    """Every line of a --sweep-file is checked before any model loads (a wrong type crashed the sweep midway)."""
    sweep = tmp_path / "sweep.jsonl"
    sweep.write_text('{"prompt": "a cat"}\n' + line + "\n")
    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--sweep-file", str(sweep),
                                                "--out_dir", str(tmp_path / "out")])
    assert res.exit_code == 2 and f"{sweep} line 2: " in res.output and message in res.output, res.output
    assert "Timing load" not in res.output and not (tmp_path / "out").exists()


def test_a_seed_outside_numpys_range_is_refused_before_loading(tiny_model_dir, tmp_path):
    for seed in ("4294967296", "-1"):
        res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--seed", seed])
        assert res.exit_code == 2 and "--seed" in res.output and "Timing load" not in res.output


def test_help_says_where_defaults_come_from():
    res = CliRunner().invoke(generate_command, ["--help"], terminal_width=200)
    assert res.exit_code == 0
    assert "64, or the model's generation_defaults.json" in res.output  # not a bare full-size 64
    assert "output_<unix time>_<job index>_<mode>.mp4" in res.output


def test_no_model_dir_runs_the_tiny_demo_model(tmp_path, monkeypatch):
    """Issue 16: without --model_dir the demo makes the tiny random model in the cache folder on first use (here a
    temporary one, through GENMO_TEACACHE_CACHE), says it is random, and reuses it."""
    monkeypatch.setenv("GENMO_TEACACHE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "demos" / "cli_teacache.py"), "--out_dir", str(out),
           "--width", "64", "--height", "64", "--num_frames", "7", "--num_steps", "6"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "tiny RANDOM demo model" in first.stderr and "--model_dir" in first.stderr
    from genmo_teacache.tiny import DEMO_MODEL

    model = tmp_path / "cache" / DEMO_MODEL  # named after what it is made from: another recipe, another folder
    assert DEMO_MODEL.startswith("tiny_model-") and (model / "dit.safetensors").exists()
    assert (model / "text_encoder" / "spiece.model").exists()
    (video,) = out.glob("*.mp4")
    assert read_video(video).shape == (7, 64, 64, 3)
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert sidecar["arguments"]["model_dir"] == str(model) and sidecar["mode"] == "adaptive_0.12_0.04"
    stamp = (model / "dit.safetensors").stat().st_mtime_ns
    second = subprocess.run([*cmd, "--no_teacache"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "making the tiny demo model" in first.stderr and "making the tiny demo model" not in second.stderr
    assert (model / "dit.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt


@pytest.mark.slow
def test_zero_threshold_modes_of_new_methods_match_no_teacache_bit_for_bit(tiny_model_dir, tmp_path):
    """Through the demo CLI, the same seed: easycache_0 and fbcache_0 run their cached phases (EasyCache's input
    change and rate, block 0 on its own then blocks 1..N) yet compute every step, so their latents are upstream's."""
    import torch

    latents = {}
    for name, extra in (("baseline", ["--no_teacache"]), ("easycache", ["--cache_mode", "easycache_0"]),
                        ("fbcache", ["--cache_mode", "fbcache_0"])):
        cmd = [sys.executable, str(REPO / "demos" / "cli_teacache.py"), "--model_dir", str(tiny_model_dir),
               "--width", "64", "--height", "64", "--num_frames", "7", "--num_steps", "6", "--prompt", "a cat",
               "--seed", "3", "--save_file", str(tmp_path / f"{name}.mp4"), "--save_latents",
               str(tmp_path / f"{name}.pt"), *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        latents[name] = torch.load(tmp_path / f"{name}.pt")
        sidecar = json.loads((tmp_path / f"{name}.json").read_text())
        assert sidecar["computed_steps"] == 6 and sidecar["cache"]["method"] == name
    assert torch.equal(latents["easycache"], latents["baseline"])
    assert torch.equal(latents["fbcache"], latents["baseline"])


def test_the_summary_says_what_was_measured_and_what_is_estimated():
    """A run whose skips saved less than the step times vary used to read "0.98x faster": it now says that no gain
    was measurable, and a clear gain is given as an estimate from the measured step times."""
    from genmo_teacache.generate import summary_text

    def report(seconds, computed):
        steps = [{"seconds": s, "computed": c} for s, c in zip(seconds, computed)]
        n_c = sum(computed)
        return {"mode": "fixed_0.04", "steps": steps, "num_steps": len(steps), "computed_steps": n_c,
                "skipped_steps": len(steps) - n_c, "dit_calls": 2 * n_c, "ideal_speedup": len(steps) / n_c}

    timings = {"text_encoding_s": 0.1, "denoising_s": 3.0, "decoding_s": 0.5, "total_s": 3.6}
    noisy = summary_text(report([1.0, 1.0, 1.0, 0.9, 1.0, 1.0], [True, True, True, False, True, True]), timings, None)
    assert "no gain measurable" in noisy and "x faster" not in noisy and "Measured:" in noisy
    clear = summary_text(report([1.0, 1.0, 0.01, 0.01, 1.0, 1.0], [True, True, False, False, True, True]), timings,
                         2.0)
    assert "Estimated from those step times" in clear and "1.49x faster" in clear and "Peak GPU memory" in clear
    # 10 of 12 forwards: at most 1.2x; step times that varied make it look like 1.21x: that is noise, said so
    noise = summary_text(report([1.0, 2.0, 2.0, 0.01, 0.5, 0.5], [True, True, True, False, True, True]), timings,
                         None)
    assert "1.21x, above the 1.20x that the forwards it skipped allow at most: noise" in noise
    assert "faster" not in noise
    warm = summary_text(report([1.0] * 3, [True] * 3), {**timings, "warmup_s": 12.34}, None)
    assert "Warm-up 12.3 s apart" in warm
