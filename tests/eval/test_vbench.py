"""The VBench driver: the real vbench 0.1.5 in its own environment on generated videos, and the bookkeeping."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _evalhelpers import FLICKER_PROMPTS

from genmo_teacache.eval import vbench_env, vbench_runner
from genmo_teacache.eval.scoring import RESULT_SUFFIX
from genmo_teacache.video import write_video

MAPPED_STEM = "In a still frame~0123456789"  # as the batch generator names a prompt it cannot use verbatim


def _flicker_videos(root: Path) -> Path:
    """'static': the same random frame 8 times; 'flicker': that frame alternating with its negative. The first
    static video is stored under a mapped stem, listed in prompt_names.json beside the videos folder."""
    rng = np.random.default_rng(0)
    (root.parent / "prompt_names.json").parent.mkdir(parents=True, exist_ok=True)
    (root.parent / "prompt_names.json").write_text(json.dumps({MAPPED_STEM: FLICKER_PROMPTS[0]}))
    for k, prompt in enumerate(FLICKER_PROMPTS):
        frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        write_video(root / "static" / f"{MAPPED_STEM if k == 0 else prompt}-0.mp4", np.stack([frame] * 8))
        flicker = np.stack([frame if i % 2 else 255 - frame for i in range(8)])
        write_video(root / "flicker" / f"{prompt}-0.mp4", flicker)
    # an unfinished write: VBench must never see it (it would take its suffix from the first listed file)
    (root / "static" / ".tmp-In a still frame, a stop sign-1-x1y2.mp4").write_bytes(b"half written")
    return root


@pytest.mark.slow
def test_temporal_flickering_for_real(tmp_path: Path) -> None:
    videos = _flicker_videos(tmp_path / "videos")
    scores = tmp_path / "scores"
    outcomes = vbench_runner.run_vbench(videos, ["static", "flicker"], scores, dimensions=["temporal_flickering"],
                                        device="cpu")
    assert [(o.mode, o.status) for o in outcomes] == [("static", "done"), ("flicker", "done")], outcomes

    results = {}
    for mode in ("static", "flicker"):
        data = json.loads((scores / mode / f"temporal_flickering{RESULT_SUFFIX}").read_text())
        mean, per_video = data["temporal_flickering"]
        assert 0 < mean <= 1
        # every video was scored, under its real path (not the temporary view VBench was given)
        stems = [MAPPED_STEM if mode == "static" else FLICKER_PROMPTS[0], FLICKER_PROMPTS[1]]
        assert sorted(Path(v["video_path"]) for v in per_video) == sorted(videos / mode / f"{s}-0.mp4" for s in stems)
        assert mean == pytest.approx(np.mean([v["video_results"] for v in per_video]))
        results[mode] = mean
    assert results["static"] > results["flicker"]
    assert results["static"] == pytest.approx(1.0, abs=1e-3)  # identical frames: no flicker at all

    status = vbench_runner.load_status(scores)
    assert status["static"]["temporal_flickering"]["status"] == "done"
    assert Path(status["flicker"]["temporal_flickering"]["log"]).is_file()
    assert not [p for p in (scores / "static").iterdir() if p.name.startswith(".tmp-")]

    # resume: nothing is run again
    again = vbench_runner.run_vbench(videos, ["static", "flicker"], scores, dimensions=["temporal_flickering"])
    assert [o.status for o in again] == ["exists", "exists"]

    # a second sample generated since, and an undecodable file: those modes run again, over their current videos,
    # and what VBench could not score is named with the reason
    frame = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_video(videos / "flicker" / f"{FLICKER_PROMPTS[1]}-1.mp4", np.stack([frame, 255 - frame] * 4))
    (videos / "static" / f"{FLICKER_PROMPTS[1]}-1.mp4").write_bytes(b"not a video")
    again = vbench_runner.run_vbench(videos, ["static", "flicker"], scores, dimensions=["temporal_flickering"])
    assert [(o.mode, o.status, o.videos) for o in again] == [("static", "done", 3), ("flicker", "done", 3)], again
    data = json.loads((scores / "flicker" / f"temporal_flickering{RESULT_SUFFIX}").read_text())
    assert len(data["temporal_flickering"][1]) == 3
    entry = vbench_runner.load_status(scores)["static"]["temporal_flickering"]
    assert list(entry["left_out"]) == [f"{FLICKER_PROMPTS[1]}-1.mp4"]
    assert entry["left_out"][f"{FLICKER_PROMPTS[1]}-1.mp4"].startswith("undecodable")


@pytest.mark.slow
def test_dimension_without_matching_videos_is_reported_not_zero(tmp_path: Path) -> None:
    videos = _flicker_videos(tmp_path / "videos")
    scores = tmp_path / "scores"
    # the flicker prompts belong to no other dimension: nothing to score for 'human_action'
    (outcome,) = vbench_runner.run_vbench(videos, ["static"], scores, dimensions=["human_action"])
    assert outcome.status == "no_videos" and "none of the videos is of a prompt in this dimension's list" in \
        outcome.reason
    assert not (scores / "static" / f"human_action{RESULT_SUFFIX}").exists()
    assert vbench_runner.load_status(scores)["static"]["human_action"]["status"] == "no_videos"


@pytest.mark.slow
def test_dimension_needing_detectron2_fails_with_reason_and_reads_na(tmp_path: Path) -> None:
    """A real worker run (the core environment never has detectron2): the failure is recorded with its reason and
    the tables show n/a, not a score."""
    from genmo_teacache.eval import tables

    videos = {"a green bicycle-0.mp4": tmp_path / "videos" / "m" / "a green bicycle-0.mp4"}
    write_video(videos["a green bicycle-0.mp4"], np.zeros((4, 32, 32, 3), np.uint8))
    python = vbench_env.ensure_env("core")
    full_info = vbench_env.vbench_package_dir(python) / "VBench_full_info.json"
    scores = tmp_path / "scores"
    outcome = vbench_runner.run_dimension(python, videos, "m", "color", scores, full_info, "cpu")
    assert outcome.status == "failed" and "needs detectron2" in outcome.reason, outcome
    assert "ModuleNotFoundError" in Path(outcome.log).read_text()
    assert not (scores / "m" / f"color{RESULT_SUFFIX}").exists()
    vbench_runner.record_outcome(scores, outcome)
    comp = tables.collect([], "m", scores, None, None)
    row = dict(zip(tables.vbench_rows(comp, {})[0], tables.vbench_rows(comp, {})[1], strict=True))
    assert row["color"] == "n/a" and row["Semantic Score"] == ""


def _full_info(path: Path) -> Path:
    """A VBench full-info file whose only dimension is temporal_flickering, with the flicker prompts."""
    path.write_text(json.dumps([{"prompt_en": p, "dimension": ["temporal_flickering"]} for p in FLICKER_PROMPTS]))
    return path


def test_a_dimension_none_of_whose_prompts_the_videos_have_says_so(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from genmo_teacache.eval.cli import vbench_command

    videos = _flicker_videos(tmp_path / "videos")
    info = _full_info(tmp_path / "i.json")
    res = CliRunner().invoke(vbench_command, ["--video-dir", str(videos), "--modes", "static", "--save-dir",
                                              str(tmp_path / "scores"), "--full-info", str(info),
                                              "--dimensions", "human_action"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "static / human_action: none of the videos is of a prompt in this dimension's list (i.json)" in res.output


def test_a_failed_dimension_is_not_retried_unless_asked(tmp_path: Path, monkeypatch) -> None:
    """A dimension that failed (here: no VBench environment; likewise a model VBench could not download) is not
    run again on the next evaluation of the same videos, unless --retry-failed."""
    from click.testing import CliRunner

    from genmo_teacache.eval.cli import vbench_command

    monkeypatch.setenv(vbench_env.PYTHON_ENV, str(tmp_path / "no-python"))
    videos = _flicker_videos(tmp_path / "videos")
    args = ["--video-dir", str(videos), "--modes", "static,flicker", "--save-dir", str(tmp_path / "scores"),
            "--full-info", str(_full_info(tmp_path / "info.json")), "--dimensions", "temporal_flickering"]
    runs = [CliRunner().invoke(vbench_command, args + extra, catch_exceptions=False)
            for extra in ([], [], ["--retry-failed"])]
    assert [r.exit_code for r in runs] == [0, 0, 0]
    assert "VBench: 2 failed" in runs[0].output and "no-python does not exist" in runs[0].output
    assert "VBench: 2 not_retried" in runs[1].output and "--retry-failed" in runs[1].output
    assert "no-python does not exist" in runs[1].output  # the recorded reason, still said
    assert "VBench: 2 failed" in runs[2].output
    (videos / "static" / f"{FLICKER_PROMPTS[1]}-0.mp4").touch()  # other videos: tried again without asking
    os.utime(videos / "static" / f"{FLICKER_PROMPTS[1]}-0.mp4", ns=(1, 1))
    res = CliRunner().invoke(vbench_command, args, catch_exceptions=False)
    assert "1 failed, 1 not_retried" in res.output


def test_a_result_is_reused_only_for_the_videos_it_was_computed_from(tmp_path: Path) -> None:
    dim = "temporal_flickering"
    for name in ("a-0.mp4", "b-0.mp4"):
        (tmp_path / "m" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "m" / name).write_bytes(name.encode())
    a, b = tmp_path / "m" / "a-0.mp4", tmp_path / "m" / "b-0.mp4"
    result = tmp_path / f"{dim}{RESULT_SUFFIX}"
    result.write_text(json.dumps({dim: [0.9, [{"video_path": str(a), "video_results": 0.9}]]}))
    one = {"a-0.mp4": a}
    key = vbench_runner.inputs_key(dim, one, "prompts")
    assert vbench_runner.stale_reason(result, {"inputs": key}, one, key) is None
    # generated since: a second video, a regenerated one, another prompt list: other keys, computed again
    both = {"a-0.mp4": a, "b-0.mp4": b}
    assert "changed" in vbench_runner.stale_reason(result, {"inputs": key}, both,
                                                   vbench_runner.inputs_key(dim, both, "prompts"))
    assert vbench_runner.inputs_key(dim, one, "other prompts") != key
    assert vbench_runner.inputs_key("scene", one, "prompts") != key
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))
    assert vbench_runner.inputs_key(dim, one, "prompts") != key
    # an older run's result (no key recorded): reused while its videos are all there and none is newer than it
    later = a.stat().st_mtime_ns + 10**9
    os.utime(result, ns=(later, later))
    assert vbench_runner.stale_reason(result, {}, one, key) is None
    os.utime(b, ns=(later + 10**9, later + 10**9))
    assert "newer than it" in vbench_runner.stale_reason(result, {}, both, key)
    assert "gone" in vbench_runner.stale_reason(result, {}, {"b-0.mp4": b}, key)


def test_environment_tiers_and_requirements() -> None:
    assert vbench_env.tier_for("temporal_flickering") == "core"
    assert {vbench_env.tier_for(d) for d in ("color", "scene", "subject_consistency")} == {"full"}
    assert "vbench==0.1.5" in vbench_env.CORE_REQUIREMENTS
    assert any(r.startswith("numpy==1.") for r in vbench_env.CORE_REQUIREMENTS)  # vbench pins numpy<2


def test_worker_never_imports_our_package() -> None:
    source = vbench_runner.WORKER.read_text()
    assert "genmo_teacache" not in source.replace("genmo-teacache", "").split('"""', 2)[2]


def test_matching_videos_follow_vbench_standard_naming(tmp_path: Path) -> None:
    names = ["a cat-0.mp4", "a cat-4.mp4", "a cat-5.mp4", "a cat.mp4", "a dog-1.mp4", "xa cat-0.mp4"]
    videos = [tmp_path / n for n in names]
    assert vbench_runner.matching_videos(videos, ["a cat"]) == ["a cat-0.mp4", "a cat-4.mp4"]


def test_mapped_prompt_stems_are_shown_to_vbench_under_the_prompt(tmp_path: Path) -> None:
    long_prompt = "a very long prompt " * 11  # > 200 bytes: the batch generator maps it to a short stem
    videos = [tmp_path / "a very long~0a1b2c3d4e-2.mp4", tmp_path / "a cat-0.mp4"]
    names = vbench_runner.vbench_names(videos, {"a very long~0a1b2c3d4e": long_prompt})
    assert names == {f"{long_prompt}-2.mp4": videos[0], "a cat-0.mp4": videos[1]}
    assert vbench_runner.matching_videos(names, [long_prompt]) == [f"{long_prompt}-2.mp4"]


def test_prompts_by_dimension(tmp_path: Path) -> None:
    info = [{"prompt_en": "a", "dimension": ["color", "scene"]}, {"prompt_en": "b", "dimension": ["scene"]}]
    (tmp_path / "info.json").write_text(json.dumps(info))
    assert vbench_runner.prompts_by_dimension(tmp_path / "info.json") == {"color": ["a"], "scene": ["a", "b"]}


def test_failure_reasons_name_the_missing_piece() -> None:
    explain = vbench_runner.explain_failure
    detectron = explain("color", {"type": "ModuleNotFoundError", "message": "No module named 'detectron2'",
                                  "module": "detectron2"}, 1, "")
    assert "detectron2" in detectron and "not on PyPI" in detectron
    wget = explain("motion_smoothness", {"type": "CalledProcessError",
                                         "message": "Command '['wget', '-P', '/c/amt_model', 'https://x/amt-s.pth']' "
                                                    "returned non-zero exit status 4."}, 1, "")
    assert "could not download the model weights" in wget and "VBENCH_CACHE_DIR" in wget
    url = explain("subject_consistency", {"type": "URLError", "message": "<urlopen error [Errno -2] Name or "
                                                                         "service not known>"}, 1, "")
    assert "could not download" in url
    missing = explain("dynamic_degree", {"type": "FileNotFoundError", "message": "[Errno 2] No such file or "
                                         "directory: '/root/.cache/vbench/raft_model/models/raft-things.pth'"}, 1, "")
    assert "weights" in missing and "raft-things.pth" in missing
    assert "exited with code -9" in explain("scene", None, -9, "Killed")
    deep = explain("scene", {"type": "RuntimeError", "message": "bad shape in '/root/.cache/genmo_teacache/vbench-"
                             "0.1.5-py311/lib/python3.11/site-packages/vbench/scene.py'"}, 1, "")
    assert deep == "RuntimeError: bad shape in 'vbench/scene.py'"
    env = vbench_runner.environment_reason(vbench_env.VBenchEnvError(
        "installing vbench (full) failed (exit 1); last lines of /c/install-full.log:\nERROR: no matching dist\n"
        "The VBench environment is installed from PyPI once: ..."))
    assert env.startswith("VBench environment unavailable: installing vbench (full) failed (exit 1); see "
                          "/c/install-full.log (") and "\n" not in env


def test_unavailable_dimensions_ignore_ones_with_results() -> None:
    status = {"color": {"status": "failed", "reason": "no detectron2"}, "scene": {"status": "done"},
              "human_action": {"status": "no_videos", "reason": "none named"},
              "temporal_flickering": {"status": "failed", "reason": "old failure"}}
    got = vbench_runner.unavailable_dimensions(status, {"temporal_flickering": 0.99})
    assert got == {"color": "no detectron2", "human_action": "none named"}


def test_unknown_dimension_and_missing_mode_are_refused(tmp_path: Path) -> None:
    (tmp_path / "videos" / "m").mkdir(parents=True)
    with pytest.raises(ValueError, match="unknown VBench dimension"):
        vbench_runner.run_vbench(tmp_path / "videos", ["m"], tmp_path / "s", dimensions=["sharpness"])
    with pytest.raises(FileNotFoundError, match="no video folder"):
        vbench_runner.run_vbench(tmp_path / "videos", ["n"], tmp_path / "s", dimensions=["color"])


def test_without_a_vbench_environment_results_are_kept_and_the_rest_fails_in_one_line(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    monkeypatch.setenv(vbench_env.PYTHON_ENV, str(tmp_path / "no-python"))
    (tmp_path / "videos" / "m").mkdir(parents=True)
    (tmp_path / "scores" / "m").mkdir(parents=True)
    (tmp_path / "scores" / "m" / f"color{RESULT_SUFFIX}").write_text(json.dumps({"color": [0.5, []]}))
    outcomes = vbench_runner.run_vbench(tmp_path / "videos", ["m"], tmp_path / "scores", dimensions=["color", "scene"])
    assert [(o.dimension, o.status) for o in outcomes] == [("color", "exists"), ("scene", "failed")]
    assert outcomes[1].reason.startswith("VBench environment unavailable:") and "\n" not in outcomes[1].reason
