"""The mini-experiment with the reference workflow's options, folders the reference's fidelity and compare commands
accept, and the chosen configuration in a form the batch command takes (no generation here)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner

from genmo_teacache.batch.cli import batch_command, make_plan, sweep_command
from genmo_teacache.batch.sweep import run_sweep, sweep_rows, write_best
from genmo_teacache.generate import GenerationSettings

REPO = Path(__file__).parents[2]
SUBSET = json.loads((REPO / "vbench_eval" / "prompts_subset.json").read_text())


def invoke(command, *args: str):
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def test_reference_options_dry_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    # CUDA_VISIBLE_DEVICES=1 python3 vbench_eval/run_adaptive_threshold_experiment.py --seed 0 --gpu-id 1
    #     --total-gpus 4 (and --dry-run, a start index)
    out = tmp_path / "mini"
    res = invoke(sweep_command, "--model_dir", str(tiny_model_dir), "--output-dir", str(out), "--seed", "7",
                 "--gpu-id", "1", "--total-gpus", "4", "--start-idx", "2", "--dry-run")
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == 2 * 5 and {r[4] for r in rows} == {"7"}  # 2 prompts x (baseline + c1-c4), seed 7
    assert {r[1] for r in rows} == {"0", "1", "2", "3"} and "share 1:" in res.output
    assert SUBSET[2]["prompt_en"] in res.output and SUBSET[3]["prompt_en"] in res.output
    assert SUBSET[0]["prompt_en"] not in res.output
    # the reference's folder names: the fidelity command's --baseline mochi_baseline finds its folder, and its
    # --modes mochi_adaptive_c1,...,mochi_adaptive_c4 theirs (c3 is the adaptive 0.12 / 0.04 pair)
    assert "videos/mochi_baseline/" in res.output and "videos/mochi_adaptive_c3/" in res.output
    assert "mochi_adaptive_c3=mochi_adaptive_0.12_0.04_h" in res.output
    assert not out.exists()

    res = CliRunner().invoke(sweep_command, ["--model_dir", str(tiny_model_dir), "--seed", "1", "--generation-seed",
                                             "2", "--dry-run"])
    assert res.exit_code == 2 and "--seed" in res.output
    res = CliRunner().invoke(sweep_command, ["--model_dir", str(tiny_model_dir), "--gpu-id", "4", "--total-gpus", "4",
                                             "--dry-run"])
    assert res.exit_code == 2 and "--gpu-id" in res.output


def _plan(tmp_path: Path, gpu_id: int | None = None, total_gpus: int = 1):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    settings = GenerationSettings(width=64, height=64, num_frames=7, num_steps=8)
    return make_plan(settings, str(prompts), str(tmp_path / "out"), ["mochi_baseline", "fixed_0.1"], num_samples=1,
                     generation_seed=0, start_idx=0, end_idx=None, gpu_id=gpu_id, total_gpus=total_gpus)[0]


@click.command()
@click.pass_obj
def _run_sweep_command(plan) -> None:
    """run_sweep on a prepared plan, under click (it prints)."""
    run_sweep(plan, [("c1", "fixed_0.1")], "psnr", baseline="mochi_baseline")


def test_a_share_leaves_the_table_to_the_complete_set(tmp_path: Path) -> None:
    plan = _plan(tmp_path, gpu_id=0, total_gpus=2)
    res = CliRunner().invoke(_run_sweep_command, obj=plan)
    assert res.exit_code == 0, res.output
    assert "4 video(s) of the sweep are missing" in res.output and "--gpu-id" in res.output
    assert not (plan.root / "sweep_results.csv").exists()


def test_best_config_is_what_batch_takes(tiny_model_dir: Path, tmp_path: Path) -> None:
    candidates = [("c1", "fixed_0.1"), ("c2", "mochi_adaptive_0.12_0.04_h4")]
    runs = [{"mode": m, "prompt": "a cat", "sample": 0, "time_seconds": t}
            for m, t in (("mochi_baseline", 4.0), ("fixed_0.1", 2.0), ("mochi_adaptive_0.12_0.04_h4", 3.0))]
    fidelity = {"fixed_0.1": {"psnr": {"mean": 20.0}}, "mochi_adaptive_0.12_0.04_h4": {"psnr": {"mean": 25.0}}}
    rows = sweep_rows(runs, candidates, fidelity, baseline="mochi_baseline")
    path = write_best(tmp_path, rows, "psnr", GenerationSettings(num_steps=8))
    best = json.loads(path.read_text())
    assert best["label"] == "c2" and best["mode"] == "mochi_adaptive_0.12_0.04_h4" and best["psnr"] == 25.0
    assert best["modes"] == "mochi_baseline,mochi_adaptive_0.12_0.04_h4" and best["num_steps"] == 8
    modes_line = (tmp_path / "best_modes.txt").read_text().strip()
    assert modes_line == best["modes"]
    # genmo-teacache batch --modes "$(cat best_modes.txt)" takes it as it is
    res = invoke(batch_command, "--model_dir", str(tiny_model_dir), "--output-dir", str(tmp_path / "full"),
                 "--modes", modes_line, "--num_steps", "8", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "videos/mochi_adaptive_0.12_0.04_h4/" in res.output


@click.command()
@click.pass_obj
def _run_sweep_psnr(plan) -> None:
    run_sweep(plan, [("c1", "fixed_0.1")], "psnr", device="cpu", baseline="mochi_baseline")


def test_a_sweep_that_can_choose_nothing_fails_with_its_reason(tmp_path: Path) -> None:
    """Every candidate's fidelity failed (here: videos that do not decode): the table says why, and the command
    ends with exit 1, never a silent success."""
    plan = _plan(tmp_path)
    for job in plan.all_jobs:
        job.video_path(plan.root).parent.mkdir(parents=True, exist_ok=True)
        job.video_path(plan.root).write_bytes(b"not a video")
    res = CliRunner().invoke(_run_sweep_psnr, obj=plan)
    assert res.exit_code == 1, res.output
    assert "No candidate has a value for psnr" in res.output and "no candidate has a value for psnr" in res.output
    assert not (plan.root / "best_config.json").exists()
    summary = json.loads((plan.root / "fidelity" / "fixed_0.1_vs_mochi_baseline.json").read_text())
    assert summary["num_videos"] == 0 and len(summary["problems"]) == 2
