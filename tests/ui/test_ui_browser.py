"""The web UI in a real browser: ``python demos/gradio_teacache.py --port N`` started as a user starts it (no
--model_dir: the tiny demo model), driven by Playwright in Debian's headless Chromium. A page load, a generation,
a comparison with the baseline, bad input, and two sessions at once. Every request that leaves the server is
blocked and recorded: the page must work offline and make none."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from genmo_teacache import ui
from genmo_teacache.caches import parse_mode
from genmo_teacache.caches.teacache import TeaCache
from genmo_teacache.video import read_video

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SMALL = {"width": "64", "height": "64", "num-frames": "7", "num-steps": "4"}
TIMEOUT_MS = 180_000  # one job on 2 busy CPU cores takes seconds; a loaded CI machine gets slack
SCREENSHOT_ENV = "GENMO_TEACACHE_UI_SCREENSHOT"  # a path: test_comparison saves the page there (the README's)
PROGRESS_OBSERVER = """() => {
  window.__progress = [];
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('.progress-level-inner')) {
      const text = el.textContent.trim();
      if (text && !window.__progress.includes(text)) window.__progress.push(text);
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def unavailable(reason: str) -> None:
    """Skip, saying why; under CI (CI=true) the browser test must run, so it fails instead."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: the UI's browser test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        unavailable("chromium not found: the UI's browser test needs Debian's chromium (`apt-get install -y "
                    "chromium`, as .ci/run does)")
    for module, install in (("playwright", "pip install playwright"), ("gradio", 'pip install -e ".[ui]"')):
        try:
            __import__(module)
        except ImportError:
            unavailable(f"{module} is not installed ({install}, as .ci/run does)")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    out_dir: Path
    log: Path

    def jobs(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_dir()) if self.out_dir.exists() else []


@pytest.fixture(scope="module")
def lpips_model():
    """The evaluation's LPIPS model (its backbone downloaded once into the usual cache, as the evaluation tests do)."""
    from genmo_teacache.eval.lpips_weights import build_lpips

    return build_lpips("cpu")


@pytest.fixture(scope="module")
def server(chromium: str, tiny_model_dir: Path, lpips_model, tmp_path_factory) -> Iterator[Server]:
    """The demo as a user starts it, without --model_dir: the tiny demo model of the cache folder (a cache folder
    of its own, holding the session's tiny model and the LPIPS weights the other tests use)."""
    from genmo_teacache.cachedir import cache_dir
    from genmo_teacache.eval.lpips_weights import CONVERTED_NAME
    from genmo_teacache.tiny import DEMO_MODEL

    root = tmp_path_factory.mktemp("ui_server")
    cache = root / "cache"
    cache.mkdir()
    (cache / DEMO_MODEL).symlink_to(tiny_model_dir)
    (cache / CONVERTED_NAME).symlink_to(cache_dir() / CONVERTED_NAME)
    port = free_port()
    env = {**os.environ, "GENMO_TEACACHE_CACHE": str(cache), "GRADIO_TEMP_DIR": str(root / "gradio"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    log = root / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "demos" / "gradio_teacache.py"), "--port", str(port),
                                 "--out_dir", str(root / "out")], env=env, cwd=root, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"the UI server exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the UI server did not answer:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        yield Server(url, root / "out", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(chromium: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield b
        b.close()


class Session:
    """One user: a browser context of its own (its own cookies and Gradio session) on the page. Requests to any
    other host are blocked and recorded."""

    def __init__(self, browser, server: Server):
        self.server = server
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.outside: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.goto(server.url)
        self.page.get_by_role("button", name="Generate Video").wait_for(timeout=TIMEOUT_MS)

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.server.url) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def fill(self, *, prompt: str, seed: int, method: str | None = "teacache: fixed", parameters: str = "0.1",
             compare: bool = False, small: bool = True, **fields: str) -> None:
        """The form; ``method``: a label of the method dropdown to choose (None: keep the default, adaptive);
        ``small``: 64x64, 7 frames, 4 steps instead of the page's defaults (the tiny model's)."""
        page = self.page
        if method is not None:
            self.choose("method", method)
        page.locator("#prompt textarea").fill(prompt)
        page.locator("#seed input").fill(str(seed))
        for elem_id, value in {**(SMALL if small else {}), **fields}.items():
            page.locator(f"#{elem_id} input").fill(value)
        self.parameters().fill(parameters)
        if compare:
            page.locator("#compare input").check()

    def parameters(self):
        return self.page.locator("#parameters textarea, #parameters input").first

    def choose(self, elem_id: str, label: str) -> None:
        """Pick ``label`` in a dropdown; for the method, wait until the page has filled in the method's example
        parameters (the server's answer to the change would otherwise overwrite what is typed next)."""
        from playwright.sync_api import expect

        self.page.locator(f"#{elem_id} input").click()
        self.page.get_by_role("option", name=label, exact=True).click()
        if elem_id == "method":
            prefix = dict(ui.method_choices())[label]
            example = ui.example_parameters(ui.method_of(prefix), prefix)
            if example is not None:
                expect(self.parameters()).to_have_value(example, timeout=TIMEOUT_MS)

    def generate(self, wait_for: str | None = None) -> None:
        from playwright.sync_api import expect

        self.page.evaluate(PROGRESS_OBSERVER)
        self.page.get_by_role("button", name="Generate Video").click()
        if wait_for is not None:
            expect(self.page.locator("#summary")).to_contain_text(wait_for, timeout=TIMEOUT_MS)

    def files(self) -> dict[str, str]:
        """File name -> URL of the Files component's download links."""
        links = self.page.locator("#files a[data-testid=download-link]")
        names = self.page.locator("#files td.filename")
        return {names.nth(i).get_attribute("aria-label"): links.nth(i).get_attribute("href")
                for i in range(links.count())}

    def fetch(self, url: str, path: Path) -> Path:
        response = self.context.request.get(url)
        assert response.ok, (url, response.status)
        path.write_bytes(response.body())
        return path

    def table(self, elem_id: str) -> list[list[str]]:
        """The rows of a Dataframe (Gradio's grid of role=row / role=gridcell) or of a Markdown table."""
        rows = self.page.locator(f"#{elem_id} [role=row].virtual-row")
        cells = "[role=gridcell]"
        if rows.count() == 0:
            rows, cells = self.page.locator(f"#{elem_id} tbody tr"), "td"
        return [[c.strip() for c in rows.nth(i).locator(cells).all_inner_texts()] for i in range(rows.count())]

    def close(self) -> None:
        self.context.close()
        assert self.outside == [], f"the page tried to reach other hosts: {self.outside}"


@pytest.fixture
def session(browser, server: Server) -> Iterator[Session]:
    s = Session(browser, server)
    yield s
    s.close()


def test_page_load(session: Session) -> None:
    from playwright.sync_api import expect

    page = session.page
    assert page.title() == "Mochi 1 with TeaCache"
    expect(page.locator("#random-model")).to_contain_text("Tiny RANDOM demo model")
    for label in ("Prompt", "Negative Prompt", "Seed", "Width", "Height", "Number of Frames", "CFG Scale",
                  "Number of Inference Steps"):  # upstream's fields
        expect(page.get_by_label(label, exact=True)).to_be_visible()
    assert page.locator("#width input").input_value() == "128"  # the tiny model's generation_defaults.json
    expect(page.locator("#method input")).to_have_value("teacache: adaptive")
    page.locator("#method input").click()
    options = page.get_by_role("option").all_inner_texts()
    labels = [label for label, _ in ui.method_choices()]  # every prefix of every registered method
    assert [o.split("\n")[-1].strip() for o in options] == labels  # the chosen one has a check mark first
    assert labels[:4] == ["baseline", "teacache: fixed", "teacache: adaptive", "teacache: schedule"]
    page.get_by_role("option", name="easycache", exact=True).click()
    expect(session.parameters()).to_have_value("0.05")  # EasyCache()'s name is easycache_0.05


def test_generation(session: Session, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    session.fill(prompt="a red ball", seed=5, parameters="0.1")
    session.generate(wait_for="Prompt: a red ball")
    page = session.page
    summary = page.locator("#summary").inner_text()
    files = session.files()
    assert set(files) == {"fixed_0.1.mp4", "fixed_0.1.json"}
    sidecar = json.loads(session.fetch(files["fixed_0.1.json"], tmp_path / "s.json").read_text())
    assert sidecar["arguments"]["prompt"] == "a red ball" and sidecar["arguments"]["seed"] == 5
    assert sidecar["mode"] == "fixed_0.1" and sidecar["frames"] == [7, 64, 64, 3]
    assert f"computed {sidecar['computed_steps']} of 4 steps, skipped {sidecar['skipped_steps']}" in summary
    assert "seed 5 · 64x64, 7 frames, 4 steps" in summary

    video = page.locator("#video video")
    expect(video).to_have_attribute("src", files["fixed_0.1.mp4"])
    assert read_video(session.fetch(files["fixed_0.1.mp4"], tmp_path / "v.mp4")).shape == (7, 64, 64, 3)

    steps = session.table("steps")  # what was skipped, step by step, as the sidecar's report says
    assert [r[0] for r in steps] == ["0", "1", "2", "3"]
    assert [r[2] for r in steps] == ["computed" if s["computed"] else "skipped" for s in sidecar["steps"]]
    assert [r[3] for r in steps] == [s["reason"] for s in sidecar["steps"]]
    timings = dict(session.table("timings"))
    assert timings["total"] == f"{sidecar['timings']['total_s']:.2f} s"
    assert timings["peak GPU memory"] == "n/a (CPU)"
    expect(page.locator("#steps-plot img")).to_be_visible()
    progress = page.evaluate("window.__progress")
    assert "Generating: fixed_0.1 - 0.0%" in progress, progress
    assert any(p.startswith("Sampling (fixed_0.1) - ") and not p.endswith(" 0.0%") for p in progress), progress
    expect(page.locator("#grid")).to_be_hidden()


def test_comparison(session: Session, lpips_model, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from genmo_teacache.eval.fidelity import FidelityScorer

    # at the page's defaults, the tiny model's (128x128, 19 frames, 16 steps): what a user first sees
    session.fill(prompt="a blue cube", seed=6, parameters="0.1", compare=True, small=False)
    session.generate(wait_for="Prompt: a blue cube")
    page = session.page
    expect(page.locator("#comparison")).to_contain_text("fixed_0.1 against the baseline", timeout=TIMEOUT_MS)
    files = session.files()
    assert set(files) == {"fixed_0.1.mp4", "fixed_0.1.json", "baseline.mp4", "baseline.json", "comparison.mp4"}
    expect(page.locator("#grid video")).to_have_attribute("src", files["comparison.mp4"])
    grid = read_video(session.fetch(files["comparison.mp4"], tmp_path / "grid.mp4"))
    assert grid.shape[0] == 19 and grid.shape[2] > 2 * 256  # two tiles side by side, enlarged to 256 px

    # the numbers on the page are the evaluation's on the two videos served
    base = session.fetch(files["baseline.mp4"], tmp_path / "baseline.mp4")
    mode = session.fetch(files["fixed_0.1.mp4"], tmp_path / "mode.mp4")
    scores = FidelityScorer(device="cpu", lpips_model=lpips_model).score_files(base, mode)
    rows = {r[0]: r[1:] for r in session.table("comparison")}
    assert rows["PSNR"][1] == f"{scores.psnr:.2f} dB" and rows["LPIPS"][1] == f"{scores.lpips:.4f}"
    assert rows["SSIM"][1] == f"{scores.ssim:.4f}"
    logs = {name: json.loads(session.fetch(files[f"{name}.json"], tmp_path / f"{name}.json").read_text())
            for name in ("baseline", "fixed_0.1")}
    speedup = logs["baseline"]["timings"]["total_s"] / logs["fixed_0.1"]["timings"]["total_s"]
    assert rows["speedup"][1].startswith(f"{speedup:.2f}x")
    assert logs["baseline"]["skipped_steps"] == 0 and logs["baseline"]["arguments"]["seed"] == 6
    assert logs["baseline"]["arguments"]["cache_mode"] == "baseline" and logs["baseline"]["arguments"]["compare"]
    if os.environ.get(SCREENSHOT_ENV):  # the README's picture
        save_screenshot(page, Path(os.environ[SCREENSHOT_ENV]))


def save_screenshot(page, path: Path) -> None:
    """The page down to the comparison, videos at their first frame, in 64 colours (the noise of the random
    model does not compress: a full PNG would be several times larger)."""
    from PIL import Image

    page.evaluate("for (const v of document.querySelectorAll('video')) { v.pause(); v.currentTime = 0; }")
    page.wait_for_timeout(500)
    bottom = page.evaluate("document.querySelector('#comparison').getBoundingClientRect().bottom + window.scrollY")
    full = path.with_suffix(".full.png")
    page.screenshot(path=str(full), full_page=True)
    with Image.open(full) as im:
        im.convert("RGB").crop((0, 0, im.width, int(bottom) + 16)).quantize(
            colors=64, dither=Image.Dither.NONE).save(path, optimize=True)
    full.unlink()


@pytest.mark.parametrize("fields, message", [
    (dict(width="100"), "width=100: use a positive multiple of 16"),
    (dict(parameters="0.12_x"), None),  # the registry's own message
])
def test_bad_input(session: Session, server: Server, fields: dict, message: str | None) -> None:
    from playwright.sync_api import expect

    if message is None:
        with pytest.raises(ValueError) as err:
            parse_mode("adaptive_" + fields["parameters"])
        message = str(err.value).splitlines()[0]
        assert TeaCache.syntax.split(",")[0] in str(err.value)
    jobs = server.jobs()
    session.fill(prompt="bad", seed=1, method=None, **fields)
    session.generate()
    toast = session.page.locator(".toast-body.error")
    expect(toast).to_contain_text(message, timeout=TIMEOUT_MS)
    assert server.jobs() == jobs  # refused before any work


def test_two_sessions_at_once(browser, server: Server, tmp_path: Path) -> None:
    """Two users submit together: each sees only its own prompt, seed and files; the jobs ran one after the other."""
    users = [Session(browser, server) for _ in range(2)]
    try:
        for i, user in enumerate(users):
            user.fill(prompt=f"user {i} prompt", seed=100 + i)
        for user in users:
            user.generate()
        sidecars = []
        for i, user in enumerate(users):
            from playwright.sync_api import expect

            summary = user.page.locator("#summary")
            expect(summary).to_contain_text(f"Prompt: user {i} prompt", timeout=TIMEOUT_MS)
            expect(summary).to_contain_text(f"seed {100 + i} ")
            assert f"user {1 - i} prompt" not in summary.inner_text()
            files = user.files()
            assert set(files) == {"fixed_0.1.mp4", "fixed_0.1.json"}
            sidecar = json.loads(user.fetch(files["fixed_0.1.json"], tmp_path / f"{i}.json").read_text())
            assert sidecar["arguments"]["prompt"] == f"user {i} prompt" and sidecar["arguments"]["seed"] == 100 + i
            assert user.page.locator("#video video").get_attribute("src") == files["fixed_0.1.mp4"]
            sidecars.append(sidecar)
        folders = {Path(s["video"]).parent for s in sidecars}
        assert len(folders) == 2 and all(f.parent == server.out_dir for f in folders)
        first, second = sorted(sidecars, key=lambda s: s["arguments"]["started_at"])
        assert second["arguments"]["started_at"] >= first["arguments"]["started_at"] + first["timings"]["total_s"]
    finally:
        for user in users:
            user.close()
