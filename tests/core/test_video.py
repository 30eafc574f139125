"""Video writing: a video is finished only if it decodes; exclusive names never overwrite. Real ffmpeg, real
write failures (a file size limit, a full tmpfs), nothing mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from genmo_teacache.files import TMP_PREFIX, OutputPathError, check_output_dir, check_output_file
from genmo_teacache.video import VideoWriteError, read_video, verify_video, write_video

REPO = Path(__file__).resolve().parents[2]
NOISE = np.random.default_rng(0).random((31, 128, 128, 3)).astype(np.float32)  # ~80 KB of H.264

# ffmpeg inherits the limit and the ignored SIGXFSZ: its writes past 16 KB fail with EFBIG, as on a full disk
WRITE_UNDER_LIMIT = """
import resource, signal, sys
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
from genmo_teacache.video import write_video
frames = np.random.default_rng(0).random((31, 128, 128, 3)).astype(np.float32)
write_video(sys.argv[1], frames)
"""


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_fails_when_ffmpeg_cannot_write_and_leaves_no_file(tmp_path):
    video = tmp_path / "v.mp4"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", WRITE_UNDER_LIMIT, str(video)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "VideoWriteError" in proc.stderr and str(video.name) in proc.stderr, proc.stderr[-2000:]
    assert leftovers(tmp_path) == []


@pytest.fixture
def full_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_write_to_a_full_disk_raises_and_leaves_no_file(full_tmpfs):
    with pytest.raises(VideoWriteError, match="does not decode"):
        write_video(full_tmpfs / "v.mp4", NOISE)
    assert leftovers(full_tmpfs) == []


def test_read_only_or_full_output_folder_is_refused(full_tmpfs):
    (full_tmpfs / "filler").write_bytes(b"\0" * 60 * 1024)
    with pytest.raises(OutputPathError, match=rf"--output-dir {full_tmpfs}: its file system is full"):
        check_output_dir(full_tmpfs, "--output-dir")
    subprocess.run(["mount", "-o", "remount,ro", str(full_tmpfs)], check=True)
    with pytest.raises(OutputPathError, match=rf"--out_dir {full_tmpfs / 'videos'} cannot be written"):
        check_output_dir(full_tmpfs / "videos", "--out_dir")


def test_written_video_decodes_to_every_frame(tmp_path):
    path = write_video(tmp_path / "v.mp4", NOISE[:7, :32, :48])
    assert verify_video(path, 7) == 7 and read_video(path).shape == (7, 32, 48, 3)
    data = path.read_bytes()
    for cut in (b"", data[: len(data) // 2], data[:-100]):  # empty, truncated
        path.write_bytes(cut)
        with pytest.raises(VideoWriteError):
            verify_video(path, 7)


def test_exclusive_write_never_overwrites(tmp_path):
    first = tmp_path / "out.mp4"
    first.write_bytes(b"someone else's video")
    paths: list[Path] = []

    def write(i: int) -> None:
        paths.append(write_video(tmp_path / "out.mp4", NOISE[i: i + 2, :16, :16], exclusive=True))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert first.read_bytes() == b"someone else's video"
    assert sorted(p.name for p in paths) == ["out-1.mp4", "out-2.mp4", "out-3.mp4"]
    assert leftovers(tmp_path) == ["out-1.mp4", "out-2.mp4", "out-3.mp4", "out.mp4"]


def test_output_checks_name_the_path(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputPathError, match=rf"--out_dir {a_file} is a file"):
        check_output_dir(a_file, "--out_dir")
    with pytest.raises(OutputPathError, match=rf"--save_file {tmp_path} is a folder"):
        check_output_file(tmp_path, "--save_file")
    with pytest.raises(OutputPathError, match=rf"the folder of --save_file {a_file} is a file"):
        check_output_file(a_file / "v.mp4", "--save_file")
    with pytest.raises(OutputPathError, match=rf"--out_dir {a_file / 'sub'} cannot be written"):
        check_output_dir(a_file / "sub", "--out_dir")
    assert check_output_dir(tmp_path / "new" / "dir", "--out_dir").is_dir()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TMP_PREFIX)]
