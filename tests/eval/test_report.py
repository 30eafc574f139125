"""The report end to end: a small batch on the tiny model, `evaluate`, and report.html opened in a real headless
Chromium (a screenshot, the DOM after load, and every grid video played)."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from genmo_teacache.batch.cli import batch_command
from genmo_teacache.batch.naming import prompt_stem
from genmo_teacache.eval.cli import evaluate_command
from genmo_teacache.eval.grid import _resize
from genmo_teacache.video import read_video

# the first is a temporal_flickering prompt of VBench (so the VBench bars have a score); the second needs escaping
# in HTML and in URLs, and a mapped file name
PROMPTS = ["In a still frame, a stop sign", 'a <b>cat</b> & "dog" #1? 100%']
MODES = ["baseline", "fixed_0.1", "fixed_0.3"]
FRAMES, SIZE = 7, 64
# 3 tiles of 64x64 in one row, enlarged to 256 px; label bars of 36 px; 4 px gaps
GRID_W, GRID_H, TILE, LABEL, GAP = 3 * 256 + 4 * 4, 36 + 256 + 2 * 4, 256, 36, 4
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not found: the report's browser test needs Debian's chromium "
                    "(`apt-get install -y chromium`, as .ci/run does)")
    return exe


def browse(exe: str, profile: Path, url: str, *args: str) -> str:
    proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


class Refs(HTMLParser):
    """Every src / href / poster, the tags seen, and the attributes of each <video> and <img>."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []
        self.videos: list[dict[str, str | None]] = []
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href", "poster") and v]
        if tag == "video":
            self.videos.append(a)
        if tag == "img":
            self.images.append(a)


def parse(text: str) -> Refs:
    p = Refs()
    p.feed(text)
    return p


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    res = CliRunner().invoke(batch_command, ["--model_dir", str(tiny_model_dir), "--prompts-file", str(prompts),
                                             "--output-dir", str(root / "vb"), "--modes", ",".join(MODES),
                                             "--device", "cpu", "--num_steps", "6", "--num_frames", str(FRAMES),
                                             "--width", str(SIZE), "--height", str(SIZE)])
    assert res.exit_code == 0, res.output
    args = ["--videos", str(root / "vb" / "videos"), "--baseline", "baseline", "--dimensions",
            "temporal_flickering", "--device", "cpu"]
    res = CliRunner().invoke(evaluate_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return {"root": root, "out": root / "vb" / "results", "videos": root / "vb" / "videos", "args": args,
            "output": res.output}


def test_grids_decode_with_the_tile_layout(evaluated: dict) -> None:
    out, videos = evaluated["out"], evaluated["videos"]
    for prompt in PROMPTS:
        stem = f"{prompt_stem(prompt)}-0"
        frames = read_video(out / "grids" / f"{stem}.mp4")
        assert frames.shape == (FRAMES, GRID_H, GRID_W, 3)
        info = json.loads((out / "grids" / f"{stem}.json").read_text())
        assert [t["mode"] for t in info["tiles"]] == MODES and info["prompt"] == prompt
        for i, mode in enumerate(MODES):  # tile i, frame t: video i's frame t, scaled
            src = read_video(videos / mode / f"{stem}.mp4")
            x = GAP + i * (TILE + GAP)
            for t in (0, FRAMES - 1):
                tile = frames[t, GAP + LABEL:GAP + LABEL + TILE, x:x + TILE].astype(float)
                err = np.abs(tile - _resize(src[t], TILE, TILE)).mean()
                assert err < 4.0, (mode, t, err)
        # the labels' numbers are the fidelity results of this video
        per_video = json.loads((out / "fidelity_metrics" / "per_video" / "fixed_0.3_vs_baseline.json").read_text())
        row = [r for r in per_video if r["video"] == f"{stem}.mp4"][0]
        assert info["tiles"][2]["psnr"] == row["psnr"] and info["tiles"][2]["lpips"] == row["lpips"]
        assert f"PSNR {row['psnr']:.2f} dB" in info["tiles"][2]["label"][1]


def test_report_is_self_contained_sorted_and_escaped(evaluated: dict) -> None:
    out = evaluated["out"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert str(out / "report.html") in evaluated["output"]
    refs = parse(page)
    assert "script" not in refs.tags and "link" not in refs.tags  # no script, no style sheet or font fetched
    local = [r for r in refs.refs if not r.startswith("#")]
    assert local and all(not urlsplit(r).scheme and not r.startswith("/") for r in local), local
    for r in local:
        assert (out / unquote(r)).is_file(), r
    for name in ("summary_table.csv", "plots/speedup_vs_psnr.png", "plots/speedup_vs_lpips.png",
                 "plots/vbench_dimensions.png"):
        assert name in local, name
    assert len(refs.videos) == len(PROMPTS)
    assert all(v.get("preload") == "none" and v.get("poster") and "controls" in v for v in refs.videos)
    assert all(i.get("loading") == "lazy" for i in refs.images)
    # the prompt is text, not markup; its file name is percent-encoded in the links
    assert html.escape(PROMPTS[1]) in page and "<b>cat" not in page
    assert any("%23" in r and "%3F" in r for r in local)
    # the video with the largest quality loss (highest LPIPS of any mode) comes first
    worst: dict[str, float] = {}
    for mode in MODES[1:]:
        for row in json.loads((out / "fidelity_metrics" / "per_video" / f"{mode}_vs_baseline.json").read_text()):
            worst[row["video"]] = max(worst.get(row["video"], 0.0), row["lpips"])
    expected = sorted(worst, key=lambda v: -worst[v])
    positions = [page.index(f"<code>{html.escape(v)}</code>") for v in expected]
    assert positions == sorted(positions)


def test_report_in_a_browser(evaluated: dict, chromium: str, tmp_path: Path) -> None:
    out = evaluated["out"]
    url = (out / "report.html").as_uri()
    shot = tmp_path / "report.png"
    browse(chromium, tmp_path / "profile1", url, f"--screenshot={shot}", "--window-size=1400,2000")
    with Image.open(shot) as im:
        assert im.size == (1400, 2000)
        assert np.asarray(im.convert("L")).std() > 10  # something was drawn

    dom = parse(browse(chromium, tmp_path / "profile2", url, "--dump-dom"))
    assert "table" in dom.tags and "h1" in dom.tags
    assert len(dom.videos) == len(PROMPTS)
    for v in dom.videos:  # lazy: nothing is fetched before the user plays a video
        assert v.get("preload") == "none" and (out / unquote(v["src"])).is_file()
        assert (out / unquote(v["poster"])).is_file()

    # play every video: the same page plus a script that loads them and writes down what the browser decoded (run
    # while the page is parsed: loads started after the load event do not finish within headless virtual time)
    probe = out / "report-playcheck.html"
    script = """<script>
document.querySelectorAll('video').forEach(function (v) {
  v.setAttribute('data-state', 'loading');
  v.addEventListener('loadeddata', function () {
    v.setAttribute('data-state', 'ready ' + v.readyState + ' ' + v.videoWidth + 'x' + v.videoHeight); });
  v.addEventListener('error', function () { v.setAttribute('data-state', 'error ' + (v.error && v.error.code)); });
  v.preload = 'auto'; v.load();
});
</script>"""
    probe.write_text((out / "report.html").read_text(encoding="utf-8").replace("</body>", script + "</body>"))
    try:
        dom = parse(browse(chromium, tmp_path / "profile3", probe.as_uri(), "--virtual-time-budget=20000",
                           "--dump-dom"))
    finally:
        probe.unlink()
    states = [v.get("data-state") for v in dom.videos]
    assert len(states) == len(PROMPTS)
    for state in states:
        assert state is not None and state.startswith("ready "), states
        ready, size = state.split()[1:]
        assert int(ready) >= 2 and size == f"{GRID_W}x{GRID_H}", states


def test_resume_and_switching_grids_and_report_off(evaluated: dict) -> None:
    out, args = evaluated["out"], evaluated["args"]
    grids = sorted((out / "grids").glob("*.mp4"))
    stamps = {p: p.stat().st_mtime_ns for p in grids}
    res = CliRunner().invoke(evaluate_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in grids} == stamps  # up to date: not made again

    shutil.rmtree(out / "grids")
    res = CliRunner().invoke(evaluate_command, [*args, "--no-grids"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert not (out / "grids").exists()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<video" not in page and page.count('class="video"') == len(PROMPTS)  # numbers, no grid

    before = (out / "report.html").stat().st_mtime_ns
    res = CliRunner().invoke(evaluate_command, [*args, "--no-grids", "--no-report"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (out / "report.html").stat().st_mtime_ns == before and not (out / "grids").exists()
