"""Side-by-side grids on small synthetic videos: tile layout, time alignment, labels' numbers, difference row,
resuming, and the compare-videos command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from genmo_teacache.eval import grid
from genmo_teacache.eval.compare_videos import compare_videos_command
from genmo_teacache.eval.fidelity import file_stamp, psnr_frames
from genmo_teacache.eval.grid import GridOptions, make_grids, plan_grids
from genmo_teacache.files import write_json
from genmo_teacache.video import read_video, write_video

H, W = 48, 64
MODES = ["fast", "faster", "gone"]  # "gone" lacks the second video


def colour(tile: int, t: int) -> tuple[int, int, int]:
    """A solid colour per video and frame, far apart between tiles and frames (survives H.264 unchanged)."""
    return (40 + 70 * tile) % 256, 30 + 20 * t, 200 - 20 * t


def solid(tile: int, frames: int) -> np.ndarray:
    out = np.empty((frames, H, W, 3), dtype=np.uint8)
    for t in range(frames):
        out[t] = colour(tile, t)
    return out


@pytest.fixture()
def videos(tmp_path: Path) -> Path:
    """baseline (9 frames), fast (9), faster (6: ends early), gone (only the first video)."""
    root = tmp_path / "vb" / "videos"
    for name in ("a prompt-0.mp4", "other prompt-0.mp4"):
        write_video(root / "baseline" / name, solid(0, 9))
        write_video(root / "fast" / name, solid(1, 9))
        write_video(root / "faster" / name, solid(2, 6))
    write_video(root / "gone" / "a prompt-0.mp4", solid(3, 9))
    (root / "baseline" / ".tmp-a prompt-1-xyz.mp4").write_bytes(b"half written")  # never a grid
    return root


def measured(videos: Path, mode: str, name: str = "a prompt-0.mp4") -> dict:
    """The files a per-video fidelity entry was measured on, as fidelity.py records them."""
    return {"baseline_file": file_stamp(videos / "baseline" / name), "mode_file": file_stamp(videos / mode / name)}


def centre(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return frame[y + h // 2 - 4:y + h // 2 + 4, x + w // 2 - 4:x + w // 2 + 4].reshape(-1, 3).mean(axis=0)


def corner(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, _, _ = box
    return frame[y + 6:y + 14, x + 6:x + 14].reshape(-1, 3).mean(axis=0)


def test_layout_sizes() -> None:
    # 4 tiles of 64x48: 2 x 2, enlarged to 256 px so that the labels can be read
    lay = grid.grid_layout(4, 64, 48, GridOptions())
    assert (lay.cols, lay.rows, lay.tile_w, lay.tile_h) == (2, 2, 256, 192)
    assert (lay.width, lay.height) == (2 * 256 + 3 * grid.GAP, 2 * (lay.label_h + 192) + 3 * grid.GAP)
    # baseline + 5 modes at full size: 3 x 2 and scaled down to stay within 1920 px; every size even
    lay = grid.grid_layout(6, 848, 480, GridOptions())
    assert (lay.cols, lay.rows, lay.tile_w, lay.tile_h) == (3, 2, 634, 358)
    assert lay.width <= 1920 and lay.width % 2 == 0 and lay.height % 2 == 0 and lay.label_h % 2 == 0
    assert grid.grid_layout(6, 848, 480, GridOptions(diff=True)).height == 2 * (lay.label_h + 2 * 358) + 3 * grid.GAP
    assert grid.grid_layout(5, 848, 480, GridOptions(columns=5)).cols == 5
    assert grid.grid_layout(2, 848, 480, GridOptions()).rows == 1
    with pytest.raises(ValueError, match="columns 0"):
        GridOptions(columns=0)


def test_grid_tiles_are_time_aligned_and_labelled(videos: Path, tmp_path: Path) -> None:
    fid = tmp_path / "vb" / "results" / "fidelity_metrics"
    write_json(fid / "per_video" / "fast_vs_baseline.json",
               [{"video": "a prompt-0.mp4", "psnr": 21.5, "ssim": 0.8, "lpips": 0.25, **measured(videos, "fast")}])
    logs = tmp_path / "vb" / "logs"
    runs = [{"mode": m, "prompt": "a prompt", "sample": 0, "time_seconds": t}
            for m, t in (("baseline", 100.0), ("fast", 50.0), ("faster", 25.0))]
    write_json(logs / "generation_log_0-2.json", {"runs": runs})
    jobs = plan_grids(videos, "baseline", MODES, fid, logs)
    assert [(j.name, j.prompt, j.sample) for j in jobs] == [("a prompt-0.mp4", "a prompt", 0),
                                                            ("other prompt-0.mp4", "other prompt", 0)]
    (res_a, res_b) = make_grids(jobs, tmp_path / "grids", GridOptions())
    assert res_a.status == res_b.status == "made"

    frames = read_video(res_a.mp4)
    info = res_a.info
    lay = grid.GridLayout(**{k: info["layout"][k] for k in ("cols", "rows", "tile_w", "tile_h", "label_h", "diff")})
    assert (lay.cols, lay.rows, lay.tile_w, lay.tile_h) == (2, 2, 256, 192)  # 4 tiles of 64x48, enlarged
    assert frames.shape == (9, lay.height, lay.width, 3) and info["frames"] == 9
    for t in range(9):
        for tile in range(4):
            held = min(t, 5) if tile == 2 else t  # "faster" has 6 frames and holds its last one
            assert np.abs(centre(frames[t], lay.tile_box(tile)) - colour(tile, held)).max() < 6, (t, tile)
    # labels: text on the bar; the numbers from the fidelity file and the logs
    x, y = lay.cell_origin(1)
    bar = frames[0, y:y + lay.label_h, x:x + lay.tile_w]
    assert bar.std() > 10
    tiles = {n["mode"]: n for n in info["tiles"]}
    assert tiles["fast"]["label"] == ["fast", "2.00x | PSNR 21.50 dB | LPIPS 0.2500"]
    assert tiles["fast"]["psnr_source"] == "fidelity" and tiles["baseline"]["label"] == ["baseline", "baseline 1.00x"]
    # no fidelity result for "faster": its PSNR is computed as fidelity.py does (the 6 frames both videos have)
    base, faster = read_video(videos / "baseline" / "a prompt-0.mp4"), read_video(videos / "faster" / "a prompt-0.mp4")
    assert tiles["faster"]["psnr"] == pytest.approx(float(psnr_frames(base[:6], faster).mean()))
    assert tiles["faster"]["psnr_source"] == "grid" and tiles["faster"]["lpips"] is None
    assert tiles["faster"]["frames"] == 6
    # the second video: "gone" has none, its tile says so (and nothing breaks)
    gone = [n for n in res_b.info["tiles"] if n["mode"] == "gone"][0]
    assert gone["missing"] and gone["label"] == ["gone", "no video"]
    assert np.abs(corner(read_video(res_b.mp4)[0], lay.tile_box(3)) - grid.MISSING_COLOUR).max() < 12
    # the poster is a small JPEG of a grid frame
    from PIL import Image

    with Image.open(res_a.poster) as im:
        assert im.format == "JPEG" and im.size == (lay.width, lay.height)  # smaller than poster_width: as is


def test_difference_row(videos: Path, tmp_path: Path) -> None:
    write_video(videos / "fast" / "a prompt-0.mp4", solid(0, 9))  # identical to the baseline
    (job,) = plan_grids(videos, "baseline", ["fast", "faster"], None, None, only=["a prompt-0"])
    (res,) = make_grids([job], tmp_path / "grids", GridOptions(diff=True, diff_gain=2.0))
    lay = grid.grid_layout(3, W, H, GridOptions(diff=True))
    frame = read_video(res.mp4)[3]
    assert frame.shape == (lay.height, lay.width, 3)
    assert centre(frame, lay.diff_box(1)).max() < 12  # no difference: magma's black
    # "faster" differs by |colour 2 - colour 0| = 140 in red: x2 gain clips to the top of the colour map
    assert np.abs(centre(frame, lay.diff_box(2)) - grid._magma()[255]).max() < 12
    assert res.info["tiles"][1]["psnr"] == 100.0  # identical videos: fidelity.py's PSNR of identical frames


def test_resume_redoes_only_what_changed(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "grids"
    jobs = plan_grids(videos, "baseline", MODES, None, None)
    make_grids(jobs, out)
    mp4s = {j.name: out / f"{Path(j.name).stem}.mp4" for j in jobs}
    stamps = {n: p.stat().st_mtime_ns for n, p in mp4s.items()}
    assert [r.status for r in make_grids(jobs, out)] == ["exists", "exists"]
    assert {n: p.stat().st_mtime_ns for n, p in mp4s.items()} == stamps

    # a re-generated input video: only its grid is made again
    write_video(videos / "fast" / "other prompt-0.mp4", solid(1, 8))
    jobs = plan_grids(videos, "baseline", MODES, None, None)
    assert [r.status for r in make_grids(jobs, out)] == ["exists", "made"]
    # killed between the grid and its sidecar: the grid does not count
    (out / "a prompt-0.json").unlink()
    # a grid that is not the file its sidecar describes (e.g. cut short): made again
    data = (out / "other prompt-0.mp4").read_bytes()
    (out / "other prompt-0.mp4").write_bytes(data[: len(data) // 2])
    assert [r.status for r in make_grids(jobs, out)] == ["made", "made"]
    # other options: made again, unless any look is fine (evaluate keeps what compare-videos made)
    assert [r.status for r in make_grids(jobs, out, GridOptions(diff=True), keep_any_look=True)] == ["exists"] * 2
    assert [r.status for r in make_grids(jobs, out, GridOptions(diff=True))] == ["made"] * 2
    assert [r.status for r in grid.grid_results(jobs, out)] == ["exists"] * 2
    # new fidelity numbers change a label: made again
    fid = tmp_path / "fid"
    write_json(fid / "per_video" / "fast_vs_baseline.json",
               [{"video": "a prompt-0.mp4", "psnr": 30.0, "lpips": 0.1, **measured(videos, "fast")}])
    jobs = plan_grids(videos, "baseline", MODES, fid, None)
    assert [r.status for r in make_grids(jobs, out, GridOptions(diff=True))] == ["made", "exists"]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_unreadable_video_costs_only_its_grid(videos: Path, tmp_path: Path) -> None:
    (videos / "fast" / "a prompt-0.mp4").write_bytes(b"not a video")
    jobs = plan_grids(videos, "baseline", MODES, None, None)
    results = make_grids(jobs, tmp_path / "grids")
    assert [r.status for r in results] == ["failed", "made"]
    assert "a prompt-0.mp4" not in {p.name for p in (tmp_path / "grids").iterdir()}
    assert results[0].reason


def test_compare_videos_command(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "vb" / "results" / "grids"  # the default: <results>/grids, results beside the videos
    args = ["--videos", str(videos), "--baseline", "baseline", "--modes", "fast,faster", "--only", "other*"]
    result = CliRunner().invoke(compare_videos_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["other prompt-0.jpg", "other prompt-0.json",
                                                     "other prompt-0.mp4"]
    info = json.loads((out / "other prompt-0.json").read_text())
    assert [t["mode"] for t in info["tiles"]] == ["baseline", "fast", "faster"]
    assert "made" in result.output
    result = CliRunner().invoke(compare_videos_command, args, catch_exceptions=False)
    assert result.exit_code == 0 and "exists" in result.output

    result = CliRunner().invoke(compare_videos_command, [*args[:4], "--only", "nothing*"])
    assert result.exit_code == 1 and "nothing*" in result.output
    result = CliRunner().invoke(compare_videos_command, ["--videos", str(videos), "--baseline", "base"])
    assert result.exit_code == 2 and "baseline, fast, faster, gone" in result.output
    assert os.path.isfile(out / "other prompt-0.mp4")


def test_compare_videos_defaults_as_evaluate(videos: Path, tmp_path: Path) -> None:
    """Without --baseline the one folder named *baseline*; the batch's output folder (either layout) is found; the
    grids go where evaluate --out puts them (results/ beside the videos folder)."""
    batch_root = videos.parent  # <output-dir> of genmo-teacache batch: videos/<mode>/
    (batch_root / "prompt_names.json").write_text("{}")
    result = CliRunner().invoke(compare_videos_command, ["--videos", str(batch_root), "--modes", "fast",
                                                         "--only", "a prompt-0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "baseline: baseline (the only mode whose name contains 'baseline'" in result.output
    assert (batch_root / "results" / "grids" / "a prompt-0.mp4").is_file()

    reference = tmp_path / "ref" / "videos"  # the reference layout: <output-dir>/<mode>/, logs beside them
    reference.parent.mkdir()
    videos.rename(reference)
    result = CliRunner().invoke(compare_videos_command, ["--videos", str(reference), "--modes", "faster",
                                                         "--only", "other*"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ref" / "results" / "grids" / "other prompt-0.mp4").is_file()


@pytest.mark.parametrize("gain", ["nan", "inf", "0", "-1"])
def test_a_diff_gain_that_is_no_positive_number_is_refused(videos: Path, gain: str) -> None:
    result = CliRunner().invoke(compare_videos_command, ["--videos", str(videos), "--diff", "--diff-gain", gain])
    assert result.exit_code == 2 and f"{gain}: use a positive finite number" in result.output.replace("-1.0", "-1")
