"""The evaluation's second fault campaign (issue 20, section 5), through the commands: results keyed by what they
were computed from, outputs and inputs checked before anything is computed, no silent empty result, links that
stay inside the results folder, a corrupt prompt_names.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _evalhelpers import smooth_video
from click.testing import CliRunner

from genmo_teacache.eval.cli import compare_command, evaluate_command, fidelity_command
from genmo_teacache.eval.compare_videos import compare_videos_command
from genmo_teacache.eval.fidelity import psnr_frames
from genmo_teacache.video import read_video, write_video

PROMPTS = ("a cat", "a dog")
QUICK = ["--skip-vbench", "--no-grids", "--no-report", "--device", "cpu"]


def noisy(base: np.ndarray, amp: int, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-amp, amp + 1, base.shape)
    return np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    """vb/videos/{baseline, baseline@bf16, fixed}/<prompt>-0.mp4: small synthetic videos."""
    root = tmp_path / "vb" / "videos"
    for i, prompt in enumerate(PROMPTS):
        base = smooth_video(5, seed=i)
        write_video(root / "baseline" / f"{prompt}-0.mp4", base)
        write_video(root / "baseline@bf16" / f"{prompt}-0.mp4", noisy(base, 2, i))
        write_video(root / "fixed" / f"{prompt}-0.mp4", noisy(base, 12, 10 + i))
    return root


def evaluate(*args: str):
    return CliRunner().invoke(evaluate_command, list(args), catch_exceptions=False)


def test_results_against_two_baselines_in_one_folder_are_each_found(videos: Path, tmp_path: Path) -> None:
    """After an evaluation against baseline@bf16, one against baseline in the same results folder shows its own
    fidelity (results are keyed by mode and baseline, never by mode alone)."""
    out = tmp_path / "results"
    for baseline in ("baseline@bf16", "baseline"):
        res = evaluate("--videos", str(videos), "--baseline", baseline, "--modes", "fixed", "--out", str(out), *QUICK)
        assert res.exit_code == 0, res.output
        table = json.loads((out / "all_comparison_results.json").read_text())
        assert table["fixed"]["fidelity"]["baseline"] == baseline and table["fixed"]["fidelity"]["num_videos"] == 2
    res = CliRunner().invoke(compare_command, ["--fidelity-dir", str(out / "fidelity_metrics"), "--output-json",
                                               str(tmp_path / "cmp" / "all.json"), "--baseline", "baseline@bf16",
                                               "--modes", "fixed"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cmp" / "all.json").read_text())["fixed"]["fidelity"]["baseline"] == "baseline@bf16"


def test_a_regenerated_video_keeps_none_of_the_numbers_of_the_one_it_replaced(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "vb" / "results"
    assert evaluate("--videos", str(videos), "--baseline", "baseline", "--modes", "fixed", *QUICK).exit_code == 0
    old = json.loads((out / "fidelity_metrics" / "per_video" / "fixed_vs_baseline.json").read_text())[0]
    regenerated = videos / "fixed" / f"{PROMPTS[0]}-0.mp4"
    write_video(regenerated, noisy(smooth_video(5, seed=0), 40, 99))  # same name, other content
    res = CliRunner().invoke(compare_videos_command, ["--videos", str(videos), "--modes", "fixed", "--only",
                                                      f"{PROMPTS[0]}-0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    tile = json.loads((out / "grids" / f"{PROMPTS[0]}-0.json").read_text())["tiles"][1]
    expected = float(psnr_frames(read_video(videos / "baseline" / f"{PROMPTS[0]}-0.mp4"),
                                 read_video(regenerated)).mean())
    assert tile["psnr_source"] == "grid" and tile["psnr"] == pytest.approx(expected, abs=1e-6)
    assert tile["psnr"] != pytest.approx(old["psnr"], abs=0.5) and tile["lpips"] is None


def test_a_linked_grids_folder_keeps_the_report_links_inside_the_results_folder(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "vb" / "results"
    elsewhere = tmp_path / "disk" / "grids"
    elsewhere.mkdir(parents=True)
    out.mkdir()
    (out / "grids").symlink_to(elsewhere, target_is_directory=True)
    res = evaluate("--videos", str(videos), "--baseline", "baseline", "--modes", "fixed", "--skip-fidelity",
                   "--skip-vbench")
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    links = [part.split('"')[0] for part in page.split('src="')[1:] + page.split('href="')[1:]]
    grid_links = [link for link in links if ".mp4" in link or ".jpg" in link]
    assert grid_links and all(link.startswith("grids/") for link in grid_links), grid_links
    assert not any(link.startswith("..") or link.startswith("/") for link in links)


def test_an_output_folder_that_cannot_be_written_is_found_before_anything_is_computed(videos: Path,
                                                                                     tmp_path: Path) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    res = CliRunner().invoke(evaluate_command, ["--videos", str(videos), "--baseline", "baseline", "--modes", "fixed",
                                                "--out", str(blocker / "results"), *QUICK])
    assert res.exit_code == 2 and "--out" in res.output and "cannot be written" in res.output
    assert "fidelity" not in res.output.replace("--skip-fidelity", "")
    res = CliRunner().invoke(fidelity_command, ["--video-dir", str(videos), "--baseline", "baseline", "--save-dir",
                                                str(blocker / "fid"), "--device", "cpu"])
    assert res.exit_code == 2 and "--save-dir" in res.output
    res = CliRunner().invoke(compare_command, ["--fidelity-dir", str(tmp_path), "--baseline", "baseline",
                                               "--output-json", str(blocker / "all.json")])
    assert res.exit_code == 2 and "--output-json" in res.output


def test_a_mode_whose_every_pair_fails_is_an_error_with_its_reason(videos: Path, tmp_path: Path) -> None:
    for prompt in PROMPTS:
        (videos / "fixed" / f"{prompt}-0.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "vb" / "results"
    res = CliRunner().invoke(evaluate_command, ["--videos", str(videos), "--baseline", "baseline", "--modes",
                                                "fixed,baseline@bf16", *QUICK])
    assert res.exit_code == 1, res.output
    assert "fidelity of fixed against baseline: no video pair could be compared" in res.output
    summary = json.loads((out / "fidelity_metrics" / "fixed_vs_baseline.json").read_text())
    assert summary["num_videos"] == 0 and len(summary["problems"]) == 2  # the reason, under the fidelity table
    table = json.loads((out / "all_comparison_results.json").read_text())
    assert table["baseline@bf16"]["fidelity"]["num_videos"] == 2
    res = CliRunner().invoke(fidelity_command, ["--video-dir", str(videos), "--baseline", "baseline", "--modes",
                                                "fixed", "--save-dir", str(tmp_path / "fid"), "--device", "cpu"])
    assert res.exit_code == 1 and "no video pair could be compared" in res.output
    assert "left out" in res.output  # the table says which videos and why


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe", b'{"a cat": 5}'])
def test_a_corrupt_prompt_names_file_is_named_before_anything_runs(videos: Path, tmp_path: Path,
                                                                   content: bytes) -> None:
    names = videos.parent / "prompt_names.json"
    names.write_bytes(content)
    for command, args in ((evaluate_command, ["--videos", str(videos.parent), *QUICK]),
                          (compare_videos_command, ["--videos", str(videos.parent)]),
                          (fidelity_command, ["--video-dir", str(videos.parent), "--device", "cpu"])):
        res = CliRunner().invoke(command, args)
        assert res.exit_code == 1, res.output
        assert f"{names}" in res.output and "re-run the batch command" in res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (videos.parent / "results").exists()


def test_compare_results_refuses_a_results_folder_that_does_not_exist(tmp_path: Path, monkeypatch) -> None:
    res = CliRunner().invoke(compare_command, ["--scores-dir", str(tmp_path / "nope"), "--baseline", "b",
                                               "--output-json", str(tmp_path / "out" / "all.json")])
    assert res.exit_code == 2 and f"{tmp_path / 'nope'}" in res.output and "does not exist" in res.output
    res = CliRunner().invoke(compare_command, ["--fidelity-dir", str(tmp_path / "nofid"), "--baseline", "b",
                                               "--output-json", str(tmp_path / "out" / "all.json")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "out").exists()
    monkeypatch.chdir(tmp_path)  # neither default folder exists: nothing to compare is an error, not a table of dashes
    res = CliRunner().invoke(compare_command, ["--baseline", "b", "--output-json", str(tmp_path / "out" / "a.json")])
    assert res.exit_code == 2 and "no results" in res.output


def test_corrupt_result_files_cost_their_own_numbers_not_the_table(hunyuan: Path, tmp_path: Path, caplog) -> None:
    import shutil

    scores = tmp_path / "scores"
    shutil.copytree(hunyuan / "vbench_scores", scores)
    broken = scores / "hunyuan_fixed_0.1" / "temporal_flickering_eval_results.json"
    broken.write_text('{"temporal_flickering": [0.9')
    (scores / "vbench_status.json").write_text("[not, a, status")
    res = CliRunner().invoke(compare_command, ["--scores-dir", str(scores), "--fidelity-dir",
                                               str(hunyuan / "fidelity_metrics"), "--output-json",
                                               str(tmp_path / "out" / "all.json"),
                                               "--baseline", "hunyuan_baseline"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"skipping unreadable VBench result {broken}" in caplog.text and "vbench_status.json cannot be read" in \
        caplog.text
    table = json.loads((tmp_path / "out" / "all.json").read_text())
    assert "temporal_flickering" not in table["hunyuan_fixed_0.1"]["vbench_raw"]
    assert "temporal_flickering" in table["hunyuan_baseline"]["vbench_raw"]
