"""Timings a user can trust, on the real batch path (tiny CPU model, real pipeline, nothing mocked). With
``--compile_dit`` the first job of a loaded pipeline used to carry the compile in its first step: the baseline
(which runs first) looked many times slower than ``fixed_0.0``, which does exactly its work. The warm-up is now an
untimed pass reported apart (``timings.warmup_s``), out of the step times, the job's latency and every speedup."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from genmo_teacache.batch.cli import batch_command
from genmo_teacache.batch.state import read_logs, summarize

pytestmark = pytest.mark.slow

SMALL = ["--num_steps", "6", "--num_frames", "7", "--width", "64", "--height", "64"]
NOISE = 2.5  # identical work on a shared 2-core machine: times within this factor of each other


def test_identical_work_in_two_modes_takes_the_same_time_warm_up_apart(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat playing the piano\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(batch_command, [
        "--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir", str(out),
        "--modes", "baseline,fixed_0.0", "--device", "cpu", "--compile_dit", *SMALL], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    runs = {r["mode"]: r for r in read_logs(out)}
    base, zero = runs["baseline"], runs["fixed_0.0"]
    assert base["cache"]["dit_calls"] == zero["cache"]["dit_calls"] == 12  # the same work
    # the pipeline's first job paid the warm-up (compile), reported apart; the second found every shape warm
    assert base["timings"]["warmup_s"] > 0 and zero["timings"]["warmup_s"] == 0
    assert base["timings"]["warmup_s"] > NOISE * base["timings"]["denoising_s"], "compile should dominate"
    for key in ("denoising_s", "total_s"):
        ratio = base["timings"][key] / zero["timings"][key]
        assert 1 / NOISE < ratio < NOISE, (key, base["timings"], zero["timings"])
    assert base["time_seconds"] == base["timings"]["total_s"]  # the job's latency leaves the warm-up out
    steps = {m: json.loads((out / "reports" / m / "a cat playing the piano-0.json").read_text())["generation"]["steps"]
             for m in runs}
    first = [steps[m][0]["seconds"] for m in ("baseline", "fixed_0.0")]
    assert max(first) / min(first) < NOISE, first  # step 0 carries no compile
    (row,) = [r for r in summarize(read_logs(out)) if r["mode"] == "fixed_0.0"]
    assert row["ideal_speedup"] == 1.0 and row["skipped_nothing"]
    assert 1 / NOISE < row["speedup"] < NOISE
    assert ("speedup" in row["noise"]) == (row["speedup"] > 1.0)  # above 1.0 is noise: it skipped nothing
