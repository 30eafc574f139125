"""The batch command's validation and dry run, in process (no generation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from genmo_teacache.batch.cli import batch_command, sweep_command

REPO = Path(__file__).parents[2]


def invoke(command, *args: str):
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def tree(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


@pytest.fixture
def prompts(tmp_path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("a cat\na dog\na/cow\n")
    return p


def test_dry_run_prints_every_job_once_and_writes_nothing(tiny_model_dir, prompts, tmp_path):
    out = tmp_path / "out"
    res = invoke(batch_command, "--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir",
                 str(out), "--modes", "baseline,fixed_0.1,fixed_0.3", "--num-samples", "2", "--total-gpus", "3",
                 "--dry-run")
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines() if line[:5].strip().isdigit()]
    assert sorted(int(r[0]) for r in rows) == list(range(3 * 3 * 2))
    assert {r[1] for r in rows} == {"0", "1", "2"}
    assert "share 2:" in res.output and "nothing was written" in res.output
    assert not out.exists()


def test_dry_run_on_existing_outputs_changes_nothing(tiny_model_dir, prompts, tmp_path):
    out = tmp_path / "out"
    (out / "videos" / "baseline").mkdir(parents=True)
    (out / "videos" / "baseline" / ".tmp-a cat-0-abcdefgh.mp4").write_bytes(b"x")
    before = tree(out)
    res = invoke(batch_command, "--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir",
                 str(out), "--modes", "baseline", "--ray", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "longest first" in res.output
    assert tree(out) == before


@pytest.mark.parametrize("content, suffix, message", [
    ('[\n  {"prompt_en": "a"},\n  {"text": "b"}\n]', ".json", ":3: entry 1 has no 'prompt_en'"),
    ("a cat\n\xff\n", ".txt", ":2: not valid UTF-8"),
])
def test_malformed_prompt_file_fails_naming_the_line(tiny_model_dir, tmp_path, content, suffix, message):
    p = tmp_path / f"bad{suffix}"
    p.write_bytes(content.encode("latin-1") if suffix == ".txt" else content.encode())
    res = CliRunner().invoke(batch_command, ["--model_dir", str(tiny_model_dir), "--prompts-file", str(p),
                                             "--output-dir", str(tmp_path / "out"), "--modes", "baseline"])
    assert res.exit_code != 0
    assert f"{p}{message}" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("modes, message", [
    ("baseline,fixd_0.04", "unknown mode 'fixd_0.04'"),
    ("baseline,schedule_4x0.1_4x0.2", "mode 'schedule_4x0.1_4x0.2'"),  # 8 steps, not the tiny model's 16
])
def test_unknown_or_unfit_mode_fails_naming_it(tiny_model_dir, prompts, tmp_path, modes, message):
    res = CliRunner().invoke(batch_command, ["--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts),
                                             "--output-dir", str(tmp_path / "out"), "--modes", modes])
    assert res.exit_code != 0
    assert message in res.output
    assert not (tmp_path / "out").exists()


def test_option_conflicts(tiny_model_dir, prompts, tmp_path):
    base = ["--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir", str(tmp_path)]
    assert "needs --total-gpus" in CliRunner().invoke(batch_command, base + ["--gpu-id", "2"]).output
    res = CliRunner().invoke(batch_command, base + ["--ray", "--gpu-id", "0", "--total-gpus", "2"])
    assert res.exit_code != 0 and "--ray" in res.output
    res = CliRunner().invoke(batch_command, base + ["--num-samples", "6"])
    assert res.exit_code != 0


def test_sweep_dry_run_uses_the_reference_candidates(tiny_model_dir, tmp_path):
    res = invoke(sweep_command, "--model_dir", str(tiny_model_dir), "--output-dir", str(tmp_path / "s"), "--dry-run")
    assert res.exit_code == 0, res.output
    for mode in ("baseline", "adaptive_0.08_0.04_h", "adaptive_0.2_0.1_h", "adaptive_0.12_0.04_h",
                 "adaptive_0.16_0.1_h"):
        assert mode in res.output
    subset = json.loads((REPO / "vbench_eval" / "prompts_subset.json").read_text())
    assert subset[0]["prompt_en"] in res.output and subset[2]["prompt_en"] not in res.output
    assert not (tmp_path / "s").exists()


def test_calibration_files_reach_the_jobs(tiny_model_dir, prompts, tmp_path):
    """--calibration (alias --teacache_coefficients, --mag_ratios) is resolved once into each job's config (names do
    not carry it)."""
    from genmo_teacache.batch.cli import make_plan
    from genmo_teacache.generate import GenerationSettings

    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"coefficients": [2.0, 0.0], "x_range": [0, 0.5],
                               "mag_ratios": [1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93]}))
    settings = GenerationSettings(width=64, height=64, num_frames=7, num_steps=8)
    plan, _ = make_plan(settings, str(prompts), str(tmp_path / "out"), "fixed_0.1,mag_0.1", num_samples=1,
                        generation_seed=0, start_idx=0, end_idx=None, calibration=str(cal))
    by_mode = {job.mode: job.cache for job in plan.jobs}
    assert by_mode["fixed_0.1"].method.rescale(0.1) == pytest.approx(0.2)  # the calibrated polynomial
    assert by_mode["mag_0.1"].method.mag_ratios[:3] == (1.0, 0.99, 0.98)
    res = CliRunner().invoke(batch_command, ["--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts),
                                             "--modes", "mag_0.1", "--output-dir", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code != 0 and "--calibration" in res.output


def test_without_model_dir_batch_and_sweep_run_the_demo_model(demo_cache, prompts, tmp_path, monkeypatch):
    """As the demo: no --model_dir is the tiny demo model (a dry run included, and the command the sweep prints)."""
    from genmo_teacache.batch.sweep import batch_command_line

    monkeypatch.setenv("GENMO_TEACACHE_CACHE", str(demo_cache))
    out = tmp_path / "out"
    res = invoke(batch_command, "--prompts-file", str(prompts), "--output-dir", str(out), "--modes",
                 "baseline,fixed_0.1", "--dry-run")
    assert res.exit_code == 0 and "nothing was written" in res.output
    res = invoke(sweep_command, "--prompts-file", str(prompts), "--output-dir", str(out), "--dry-run")
    assert res.exit_code == 0 and "mochi_adaptive_c4" in res.output
    printed = batch_command_line("mochi_baseline,mochi_adaptive_0.12_0.04_h8").split()
    assert printed[:2] == ["genmo-teacache", "batch"] and "--model_dir" not in printed
    res = invoke(batch_command, *printed[2:], "--prompts-file", str(prompts), "--output-dir", str(out), "--dry-run")
    assert res.exit_code == 0, res.output
    assert not out.exists()
    # a sweep given weights prints them in its command
    assert batch_command_line("a,b", "weights/").startswith("genmo-teacache batch --model_dir weights/ --modes a,b")


@pytest.mark.parametrize("command", [batch_command, sweep_command])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_missing_weights_folder_is_refused_before_anything_runs(command, dry_run, prompts, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    for model_dir, message in ((tmp_path / "weights", "does not exist"), (empty, "has no decoder.safetensors")):
        res = CliRunner().invoke(command, ["--model_dir", str(model_dir), "--prompts-file", str(prompts),
                                           "--output-dir", str(out), *dry_run])
        assert res.exit_code == 2, res.output
        assert f"--model_dir {model_dir}" in res.output or str(model_dir) in res.output
        assert message in res.output and "Traceback" not in res.output
        assert not out.exists()  # nothing left behind


def test_settings_that_never_act_at_this_step_count_are_said_on_screen(tiny_model_dir, prompts, tmp_path):
    """As the demo warns: an EasyCache warm-up covering the run, an adaptive schedule cut, a CFG cache starting
    after the last step (the tiny model runs 16 steps)."""
    res = invoke(batch_command, "--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir",
                 str(tmp_path / "out"), "--modes", "easycache_0.05_w20,adaptive_0.12_0.04,fixed_0.1+cfg,fixed_0.1",
                 "--dry-run")
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.output.splitlines() if line.startswith("warning: mode ")]
    assert len(warnings) == 3, warnings
    assert "easycache_0.05_w20 at --num_steps 16" in warnings[0] and "covers the whole 16-step run" in warnings[0]
    assert "adaptive_0.12_0.04" in warnings[1] and "cut there" in warnings[1]
    assert "fixed_0.1+cfg" in warnings[2] and "no step of this 16-step run is cond-only" in warnings[2]


def test_a_seed_outside_numpys_range_is_refused_before_anything_runs(tiny_model_dir, prompts, tmp_path):
    """Found after the model loaded, with 're-run to retry', before: now before anything runs (sweep alike)."""
    out = tmp_path / "out"
    common = ["--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir", str(out)]
    for command, args, message in (
        (batch_command, ["--generation-seed", "4294967296"], "--generation-seed"),
        (batch_command, ["--generation-seed", "4294967295", "--num-samples", "2"], "seeds must lie in 0 .."),
        (sweep_command, ["--generation-seed", "4294967296"], "--generation-seed"),
        (sweep_command, ["--seed", "4294967296"], "--seed"),
    ):
        res = CliRunner().invoke(command, [*common, *args])
        assert res.exit_code != 0 and message in res.output and "re-run" not in res.output, res.output
        assert not out.exists()
