"""Side-by-side comparison videos ("grids"): the baseline and every compared mode of one video, in one mp4.

For every finished video of the baseline folder (``{videos}/{baseline}/{prompt}-{i}.mp4``) one grid is made from
the namesakes in the mode folders:

- time-aligned: frame t of the grid shows frame t of every video; a video that ends early holds its last frame,
  and the grid has the frame count of the longest video (the frame rate is the baseline's);
- tiles in reading order, baseline first, at most :data:`MAX_COLUMNS` per row (``columns`` to choose), every tile
  scaled to the same size so that the grid stays within ``max_width`` pixels (tiles of small videos are enlarged
  to ``min_tile_width`` so that their labels can be read); sizes are even, as H.264 needs;
- a label bar above each tile: the mode, its end-to-end speedup against the baseline (from the generation logs,
  the mode's average, as in the summary table), and this video's PSNR / LPIPS against the baseline from the
  fidelity results (``fidelity_metrics/per_video/{mode}_vs_{baseline}.json``); where there is no fidelity result
  the PSNR is computed while the grid is made (with :func:`genmo_teacache.eval.fidelity.psnr_frames`, the same
  protocol: frames of the shorter video only, native resolution) and LPIPS is left out;
- optionally (``diff``) under each tile the per-pixel difference to the baseline, ``max over RGB of |mode -
  baseline| * diff_gain`` in the magma colour map, computed on the displayed (scaled) tiles.

Files, in the grids folder: ``{stem}.mp4`` (the grid), ``{stem}.jpg`` (poster: a middle frame, at most
``poster_width`` wide) and ``{stem}.json`` (sidecar: the inputs with their sizes and modification times, the
numbers on the labels, the options and the layout). Everything is written atomically and the sidecar last: a grid
whose sidecar matches the current inputs and numbers is kept, anything else (a killed run, a re-generated video,
new fidelity results or logs, other options) is made again.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from genmo_teacache.eval.layout import list_videos, load_prompt_names
from genmo_teacache.files import atomic_path, write_json
from genmo_teacache.video import iter_video, probe_video, video_writer

logger = logging.getLogger(__name__)

SIDECAR_VERSION = 1
MAX_COLUMNS = 3
GAP = 4  # pixels between tiles and around the grid (even: keeps every size even)
BACKGROUND = (24, 24, 24)
LABEL_BACKGROUND = (40, 40, 40)
TITLE_COLOUR = (255, 255, 255)
TEXT_COLOUR = (200, 200, 200)
MISSING_COLOUR = (70, 20, 20)
POSTER_SUFFIX = ".jpg"
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class GridOptions:
    """How grids look. ``columns``: tiles per row (default: up to :data:`MAX_COLUMNS`, rows as even as possible)."""

    max_width: int = 1920
    min_tile_width: int = 256
    columns: int | None = None
    diff: bool = False
    diff_gain: float = 4.0
    poster_width: int = 960
    quality: float = 6.5  # imageio's scale: x264 CRF 17, near lossless, so that codec artifacts do not mask a mode's
    preset: str = "veryfast"  # x264 preset: ~3x faster than the default at the same CRF, files ~7% larger

    def __post_init__(self) -> None:
        if self.max_width < 64:
            raise ValueError(f"max_width {self.max_width} is too small: pass at least 64 pixels")
        if self.min_tile_width < 16:
            raise ValueError(f"min_tile_width {self.min_tile_width} is too small: pass at least 16 pixels")
        if self.columns is not None and self.columns < 1:
            raise ValueError(f"columns {self.columns} must be at least 1 (or None for automatic)")
        if not (self.diff_gain > 0 and math.isfinite(self.diff_gain)):
            raise ValueError(f"diff_gain {self.diff_gain} must be a positive number")
        if not 1 <= self.quality <= 10:
            raise ValueError(f"quality {self.quality} must be between 1 and 10 (imageio's scale)")
        if self.poster_width < 16:
            raise ValueError(f"poster_width {self.poster_width} is too small: pass at least 16 pixels")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Tile:
    """One video of a grid and the numbers on its label (None: not known)."""

    mode: str
    path: Path | None  # None: the mode has no such video
    baseline: bool = False
    speedup: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None

    def signature(self) -> dict[str, Any]:
        """What the grid depends on: the file (size and modification time) and the numbers read from files."""
        sig: dict[str, Any] = {"mode": self.mode, "baseline": self.baseline, "speedup": self.speedup,
                               "psnr": self.psnr, "ssim": self.ssim, "lpips": self.lpips}
        if self.path is None:
            sig["file"] = None
        else:
            st = self.path.stat()
            sig.update(file=f"{self.path.parent.name}/{self.path.name}", size=st.st_size, mtime_ns=st.st_mtime_ns)
        return sig


@dataclass(frozen=True)
class GridJob:
    """The grid of one baseline video: ``name`` is the video's file name, ``stem`` the grid's file stem."""

    name: str
    prompt: str
    sample: int | None
    tiles: tuple[Tile, ...]

    @property
    def stem(self) -> str:
        return Path(self.name).stem


@dataclass
class GridResult:
    job: GridJob
    status: str  # "made", "exists", "failed", "skipped" (not asked for)
    mp4: Path | None = None
    poster: Path | None = None
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # the sidecar

    def tile_numbers(self) -> list[dict[str, Any]]:
        """Per tile: mode, speedup, psnr, ssim, lpips, as on the labels (the sidecar's, else the job's)."""
        if self.info.get("tiles"):
            return list(self.info["tiles"])
        return [{"mode": t.mode, "baseline": t.baseline, "missing": t.path is None, "speedup": t.speedup,
                 "psnr": t.psnr, "ssim": t.ssim, "lpips": t.lpips} for t in self.job.tiles]


@dataclass(frozen=True)
class GridLayout:
    """Geometry of a grid: ``cols`` x ``rows`` cells, each a label bar over a tile (and a difference tile)."""

    cols: int
    rows: int
    tile_w: int
    tile_h: int
    label_h: int
    diff: bool

    @property
    def cell_h(self) -> int:
        return self.label_h + self.tile_h * (2 if self.diff else 1)

    @property
    def width(self) -> int:
        return self.cols * self.tile_w + (self.cols + 1) * GAP

    @property
    def height(self) -> int:
        return self.rows * self.cell_h + (self.rows + 1) * GAP

    def cell_origin(self, index: int) -> tuple[int, int]:
        row, col = divmod(index, self.cols)
        return GAP + col * (self.tile_w + GAP), GAP + row * (self.cell_h + GAP)

    def tile_box(self, index: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of tile ``index``'s video."""
        x, y = self.cell_origin(index)
        return x, y + self.label_h, self.tile_w, self.tile_h

    def diff_box(self, index: int) -> tuple[int, int, int, int]:
        x, y = self.cell_origin(index)
        return x, y + self.label_h + self.tile_h, self.tile_w, self.tile_h

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "width": self.width, "height": self.height}


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def grid_layout(n_tiles: int, src_w: int, src_h: int, options: GridOptions) -> GridLayout:
    """Cells in rows of at most ``options.columns`` (default :data:`MAX_COLUMNS`, rows as even as possible); tiles
    of the source's aspect ratio, as large as the source but within ``max_width`` (at least ``min_tile_width``
    wide when ``max_width`` allows)."""
    if n_tiles < 1:
        raise ValueError("a grid needs at least one tile")
    if options.columns:
        cols = min(options.columns, n_tiles)
    else:
        rows = math.ceil(n_tiles / MAX_COLUMNS)
        cols = math.ceil(n_tiles / rows)
    rows = math.ceil(n_tiles / cols)
    cap = (options.max_width - (cols + 1) * GAP) // cols
    tile_w = _even(min(cap, max(src_w, options.min_tile_width)))
    tile_h = _even(round(src_h * tile_w / src_w))
    font = label_font_size(tile_w)
    label_h = _even(2 * round(font * 1.3) + 8)
    return GridLayout(cols=cols, rows=rows, tile_w=tile_w, tile_h=tile_h, label_h=label_h, diff=options.diff)


# ---------------------------------------------------------------- labels


def label_font_size(tile_w: int) -> int:
    return int(min(26, max(11, tile_w // 24)))


@functools.lru_cache(maxsize=32)
def _font(size: int, bold: bool = False) -> Any:
    """DejaVu Sans as shipped with matplotlib (no network font); Pillow's own default font if that is missing."""
    import matplotlib
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        logger.warning("font %s not found: labels use Pillow's default font", path)
        return ImageFont.load_default()


def _fit(text: str, width: int, size: int, bold: bool) -> tuple[Any, str]:
    """A font size at most ``size`` (down to 9) at which ``text`` fits ``width``, else the text cut with '...'."""
    for s in range(size, 8, -1):
        font = _font(s, bold)
        if font.getlength(text) <= width:
            return font, text
    font = _font(9, bold)
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return font, text + "..."


def label_lines(tile: Tile) -> tuple[str, str]:
    """The two lines of a tile's label: the mode, then speedup and fidelity."""
    if tile.baseline:
        return tile.mode, "baseline 1.00x"
    if tile.path is None:
        return tile.mode, "no video"
    parts = []
    if tile.speedup is not None:
        parts.append(f"{tile.speedup:.2f}x")
    if tile.psnr is not None:
        parts.append(f"PSNR {tile.psnr:.2f} dB")
    if tile.lpips is not None:
        parts.append(f"LPIPS {tile.lpips:.4f}")
    return tile.mode, " | ".join(parts) or "no numbers"


def render_label(lines: tuple[str, str], width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 label bar: the first line bold and white, the second grey."""
    from PIL import Image, ImageDraw

    size = label_font_size(width)
    img = Image.new("RGB", (width, height), LABEL_BACKGROUND)
    draw = ImageDraw.Draw(img)
    pad = 4
    line_h = (height - 2 * pad) // 2
    for i, (text, bold, colour) in enumerate(((lines[0], True, TITLE_COLOUR), (lines[1], False, TEXT_COLOUR))):
        font, shown = _fit(text, width - 2 * pad, size, bold)
        draw.text((pad, pad + i * line_h + line_h // 2), shown, font=font, fill=colour, anchor="lm")
    return np.asarray(img)


def _text_tile(text: str, width: int, height: int, colour: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(img)
    font, shown = _fit(text, width - 8, label_font_size(width), False)
    draw.text((width // 2, height // 2), shown, font=font, fill=TEXT_COLOUR, anchor="mm")
    return np.asarray(img)


@functools.lru_cache(maxsize=1)
def _magma() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["magma"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def diff_image(tile: np.ndarray, reference: np.ndarray, gain: float) -> np.ndarray:
    """``max over RGB of |tile - reference| * gain``, clipped to 255, in the magma colour map; (H, W, 3) uint8."""
    delta = np.abs(tile.astype(np.int16) - reference.astype(np.int16)).max(axis=-1)
    return _magma()[np.clip(np.round(delta * gain), 0, 255).astype(np.uint8)]


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    from PIL import Image

    img = Image.fromarray(frame)
    upscale = width >= frame.shape[1] and height >= frame.shape[0]
    return np.asarray(img.resize((width, height), Image.NEAREST if upscale else Image.BILINEAR))


# ---------------------------------------------------------------- planning


def load_per_video_scores(fidelity_dir: str | os.PathLike | None, baseline: str,
                          modes: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{mode: {video file name: {psnr, ssim, lpips, ...}}}`` from ``per_video/{mode}_vs_{baseline}.json``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if fidelity_dir is None:
        return out
    for mode in modes:
        path = Path(fidelity_dir) / "per_video" / f"{mode}_vs_{baseline}.json"
        if not path.is_file():
            continue
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            logger.warning("skipping unreadable per-video fidelity file %s: %s", path, err)
            continue
        if isinstance(rows, list):
            out[mode] = {str(r["video"]): r for r in rows if isinstance(r, dict) and "video" in r}
    return out


def split_name(name: str) -> tuple[str, int | None]:
    """``"{stem}-{i}.mp4"`` -> (stem, i); a name without a sample index -> (its stem, None)."""
    stem = Path(name).stem
    head, sep, tail = stem.rpartition("-")
    if sep and tail.isdigit():
        return head, int(tail)
    return stem, None


def _number(row: dict[str, Any] | None, key: str) -> float | None:
    value = (row or {}).get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def measured_on(row: dict[str, Any] | None, baseline_video: Path, mode_video: Path | None) -> bool:
    """Whether a per-video fidelity entry was computed from these two files (size and modification time, as
    fidelity.py records them): a video generated again since keeps none of the numbers of the one it replaced."""
    from genmo_teacache.eval.fidelity import file_stamp

    if row is None or mode_video is None:
        return False
    try:
        return (row.get("baseline_file") == file_stamp(baseline_video)
                and row.get("mode_file") == file_stamp(mode_video))
    except OSError:
        return False


def plan_grids(
    videos_dir: str | os.PathLike,
    baseline: str,
    modes: Sequence[str],
    fidelity_dir: str | os.PathLike | None = None,
    log_dir: str | os.PathLike | None = None,
    only: Sequence[str] = (),
) -> list[GridJob]:
    """One job per finished baseline video (sorted by file name), with the labels' numbers read from the fidelity
    results and the generation logs. ``only``: shell-style patterns; a video is kept when one matches its file
    stem (``alley-0``) or its prompt. Videos of a mode that the baseline lacks cannot be compared and are logged."""
    from genmo_teacache.eval.timing import load_timings, speedups

    videos_dir = Path(videos_dir)
    modes = [m for m in modes if m != baseline]
    names = load_prompt_names(videos_dir)
    scores = load_per_video_scores(fidelity_dir, baseline, modes)
    ups = speedups(load_timings(log_dir), baseline) if log_dir is not None else {}
    mode_videos = {m: {p.name: p for p in list_videos(videos_dir / m)} for m in modes}
    jobs = []
    base_videos = list_videos(videos_dir / baseline)
    for path in base_videos:
        stem, sample = split_name(path.name)
        prompt = names.get(stem, stem)
        if only and not any(fnmatch.fnmatchcase(path.stem, pat) or fnmatch.fnmatchcase(prompt, pat) for pat in only):
            continue
        base_up = ups.get(baseline, {}).get("end_to_end")
        tiles = [Tile(mode=baseline, path=path, baseline=True, speedup=base_up)]
        for mode in modes:
            row = scores.get(mode, {}).get(path.name)
            if row is not None and not measured_on(row, path, mode_videos[mode].get(path.name)):
                logger.info("grid %s: the fidelity result of %s was measured on other files (a video generated "
                            "again since): not shown", path.stem, mode)
                row = None
            tiles.append(Tile(mode=mode, path=mode_videos[mode].get(path.name),
                              speedup=ups.get(mode, {}).get("end_to_end"),
                              psnr=_number(row, "psnr"), ssim=_number(row, "ssim"), lpips=_number(row, "lpips")))
        jobs.append(GridJob(name=path.name, prompt=prompt, sample=sample, tiles=tuple(tiles)))
    base_names = {p.name for p in base_videos}
    for mode, videos in mode_videos.items():
        extra = sorted(set(videos) - base_names)
        if extra:
            logger.info("grids: %d video(s) of %s have no baseline video to compare with: %s", len(extra), mode,
                        ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else ""))
    if only and not jobs:
        logger.warning("grids: no baseline video matches %s", ", ".join(only))
    return jobs


# ---------------------------------------------------------------- making


def grid_paths(out_dir: str | os.PathLike, job: GridJob) -> tuple[Path, Path, Path]:
    """(grid mp4, poster, sidecar) of a job."""
    base = Path(out_dir) / job.stem
    return base.with_name(job.stem + ".mp4"), base.with_name(job.stem + POSTER_SUFFIX), \
        base.with_name(job.stem + SIDECAR_SUFFIX)


def _key(job: GridJob, options: GridOptions | None) -> dict[str, Any]:
    key: dict[str, Any] = {"version": SIDECAR_VERSION, "inputs": [t.signature() for t in job.tiles]}
    if options is not None:
        key["options"] = options.to_dict()
    return key


def existing_grid(out_dir: str | os.PathLike, job: GridJob, options: GridOptions | None) -> dict[str, Any] | None:
    """The sidecar of a finished grid that is up to date for ``job`` (and ``options``, unless None: any look), or
    None. Up to date: same inputs (files, sizes, modification times) and label numbers, and the grid and poster
    are the files the sidecar describes."""
    mp4, poster, sidecar = grid_paths(out_dir, job)
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    want = _key(job, options)
    if any(info.get(k) != v for k, v in want.items()):
        return None
    try:
        st = mp4.stat()
    except OSError:
        return None
    if info.get("grid") != {"size": st.st_size, "mtime_ns": st.st_mtime_ns} or not poster.is_file():
        return None
    return info


def computed_psnr(tiles: Sequence[Tile]) -> dict[int, float]:
    """PSNR against the baseline (tile 0) of the tiles that have a video but no fidelity result: the mean over the
    frames both videos have of :func:`genmo_teacache.eval.fidelity.psnr_frames`, as fidelity.py computes it.
    Tiles of another frame size are left out."""
    from genmo_teacache.eval.fidelity import psnr_frames

    todo = [i for i, t in enumerate(tiles) if not t.baseline and t.path is not None and t.psnr is None]
    if not todo:
        return {}
    base = iter_video(tiles[0].path)
    others = {i: iter_video(tiles[i].path) for i in todo}
    values: dict[int, list[float]] = {i: [] for i in todo}
    try:
        for frame in base:
            for i, stream in list(others.items()):
                other = next(stream, None)
                if other is None or other.shape != frame.shape:
                    if other is not None:
                        logger.info("%s: frames of %s, the baseline's %s: no PSNR", tiles[i].path, other.shape[:2],
                                    frame.shape[:2])
                        values[i] = []
                    others.pop(i).close()
                    continue
                values[i].append(float(psnr_frames(frame[None], other[None])[0]))
            if not others:
                break
    finally:
        base.close()
        for stream in others.values():
            stream.close()
    return {i: float(np.mean(v)) for i, v in values.items() if v}


def _static_canvas(layout: GridLayout, tiles: Sequence[Tile], options: GridOptions) -> np.ndarray:
    """The parts of a grid frame that do not move: background, label bars, placeholders of missing videos and the
    legend of the difference row."""
    tw, th = layout.tile_w, layout.tile_h
    canvas = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for i, t in enumerate(tiles):
        x, y = layout.cell_origin(i)
        canvas[y:y + layout.label_h, x:x + tw] = render_label(label_lines(t), tw, layout.label_h)
        if t.path is None:
            bx, by, _, _ = layout.tile_box(i)
            canvas[by:by + th, bx:bx + tw] = _text_tile("no video", tw, th, MISSING_COLOUR)
    if options.diff:
        bx, by, _, _ = layout.diff_box(0)
        legend = f"difference: |mode - baseline| x {options.diff_gain:g}"
        canvas[by:by + th, bx:bx + tw] = _text_tile(legend, tw, th, BACKGROUND)
    return canvas


def _write_poster(frame: np.ndarray, path: Path, max_width: int) -> None:
    from PIL import Image

    height = _even(frame.shape[0] * min(1.0, max_width / frame.shape[1]))
    width = _even(frame.shape[1] * height / frame.shape[0])
    with atomic_path(path) as tmp:
        Image.fromarray(frame).resize((width, height), Image.BILINEAR).save(tmp, format="JPEG", quality=85)


def make_grid(job: GridJob, out_dir: str | os.PathLike, options: GridOptions | None = None) -> dict[str, Any]:
    """Make one grid (mp4, poster, sidecar) and return its sidecar. Raises on unreadable inputs."""
    options = options if options is not None else GridOptions()
    mp4, poster, sidecar = grid_paths(out_dir, job)
    assert job.tiles[0].baseline and job.tiles[0].path is not None
    computed = computed_psnr(job.tiles)
    if computed:
        logger.info("grid %s: PSNR computed for %s (no fidelity result)", job.stem,
                    ", ".join(job.tiles[i].mode for i in computed))
    tiles = [replace(t, psnr=computed[i]) if i in computed else t for i, t in enumerate(job.tiles)]
    fps, approx_frames = probe_video(tiles[0].path)

    streams = [iter_video(t.path) if t.path is not None else None for t in tiles]
    try:
        current = [next(s, None) if s is not None else None for s in streams]
        for t, frame in zip(tiles, current):
            if t.path is not None and frame is None:
                raise ValueError(f"{t.path}: no frames could be decoded")
        layout = grid_layout(len(tiles), current[0].shape[1], current[0].shape[0], options)
        tw, th = layout.tile_w, layout.tile_h
        canvas = _static_canvas(layout, tiles, options)
        ended = [s is None for s in streams]
        frames = [0] * len(tiles)  # frames decoded per video
        poster_at = (approx_frames or 1) // 2
        poster_frame = None
        n = 0
        with video_writer(mp4, fps, options.quality, options.preset) as append:
            while not all(ended):
                shown = [_resize(f, tw, th) if f is not None else None for f in current]
                for i, img in enumerate(shown):
                    if img is not None:
                        x, y, _, _ = layout.tile_box(i)
                        canvas[y:y + th, x:x + tw] = img
                        if options.diff and i > 0:
                            x, y, _, _ = layout.diff_box(i)
                            canvas[y:y + th, x:x + tw] = diff_image(img, shown[0], options.diff_gain)
                append(canvas)
                if n == poster_at or poster_frame is None:
                    poster_frame = canvas.copy()
                n += 1
                for i, stream in enumerate(streams):
                    if not ended[i]:
                        frames[i] += 1
                        nxt = next(stream, None)
                        ended[i] = nxt is None
                        current[i] = current[i] if nxt is None else nxt  # an ended video holds its last frame
    finally:
        for stream in streams:
            if stream is not None:
                stream.close()
    short = [f"{t.mode} {frames[i]}" for i, t in enumerate(tiles) if t.path is not None and frames[i] < n]
    if short:
        logger.warning("grid %s: %d frames; shorter videos hold their last frame: %s", job.stem, n, ", ".join(short))
    _write_poster(poster_frame, poster, options.poster_width)

    numbers = [{"mode": t.mode, "baseline": t.baseline, "missing": t.path is None, "frames": frames[i],
                "speedup": t.speedup, "psnr": t.psnr, "ssim": t.ssim, "lpips": t.lpips,
                "psnr_source": "grid" if i in computed else ("fidelity" if t.psnr is not None else None),
                "label": list(label_lines(t))} for i, t in enumerate(tiles)]
    st = mp4.stat()
    info = {**_key(job, options), "name": job.name, "prompt": job.prompt, "sample": job.sample,
            "frames": n, "fps": fps, "layout": layout.to_dict(), "tiles": numbers,
            "poster": poster.name, "grid": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    write_json(sidecar, info)  # last: a grid without its sidecar is never taken as finished
    return info


def make_grids(
    jobs: Sequence[GridJob],
    out_dir: str | os.PathLike,
    options: GridOptions | None = None,
    overwrite: bool = False,
    keep_any_look: bool = False,
) -> list[GridResult]:
    """Make the grids of ``jobs`` that are not up to date (see :func:`existing_grid`); ``keep_any_look``: a grid
    made with other options counts as up to date (``evaluate`` keeps the grids ``compare-videos`` made). A grid that
    cannot be made is logged and reported, not fatal."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    options = options if options is not None else GridOptions()
    results = []
    for job in tqdm(jobs, desc="grids", unit="grid", disable=not jobs):
        mp4, poster, _ = grid_paths(out_dir, job)
        info = None if overwrite else existing_grid(out_dir, job, None if keep_any_look else options)
        if info is not None:
            results.append(GridResult(job, "exists", mp4, poster, info=info))
            continue
        try:
            info = make_grid(job, out_dir, options)
        except Exception as err:  # an unreadable video costs its grid, not the others
            logger.warning("grid %s could not be made: %s: %s", job.stem, type(err).__name__, err)
            results.append(GridResult(job, "failed", reason=f"{type(err).__name__}: {err}"))
            continue
        results.append(GridResult(job, "made", mp4, poster, info=info))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    if results:
        logger.info("grids in %s: %s", out_dir, ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return results


def grid_results(jobs: Sequence[GridJob], out_dir: str | os.PathLike) -> list[GridResult]:
    """The grids of ``jobs`` that exist and are up to date (whatever their look); the others as ``skipped``."""
    out = []
    for job in jobs:
        mp4, poster, _ = grid_paths(out_dir, job)
        info = existing_grid(out_dir, job, None)
        out.append(GridResult(job, "exists", mp4, poster, info=info) if info is not None
                   else GridResult(job, "skipped", reason="no grid"))
    return out
