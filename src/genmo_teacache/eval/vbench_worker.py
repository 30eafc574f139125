"""Runs one VBench dimension on one folder of videos; executed by path inside the VBench environment.

It must run with only the standard library and vbench (and what vbench needs): it never imports genmo_teacache,
whose environment VBench's pins clash with. :mod:`genmo_teacache.eval.vbench_runner` starts it, one mode and one
dimension at a time. On failure it writes ``{"type", "message", "traceback"}`` to ``--error-file`` and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import traceback

DETECTRON2_DIMENSIONS = ("object_class", "multiple_objects", "color", "spatial_relationship")


def _drop_own_folder_from_path() -> None:
    # Run by path, Python puts this file's folder first on sys.path, where our modules (e.g. vbench_runner.py,
    # plots.py) could shadow third-party ones that VBench imports.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != here]


def run(videos: str, dimension: str, output: str, full_info: str, device: str) -> None:
    if dimension in DETECTRON2_DIMENSIONS and importlib.util.find_spec("detectron2") is None:
        raise ModuleNotFoundError("No module named 'detectron2'", name="detectron2")
    import torch
    from vbench import VBench

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"[genmo-teacache vbench worker] dimension={dimension} device={device} videos={videos}", flush=True)
    VBench(torch.device(device), full_info, output).evaluate(
        videos_path=videos,
        name=dimension,
        dimension_list=[dimension],
        mode="vbench_standard",
        local=False,
        read_frame=False,
        imaging_quality_preprocessing_mode="longer",
    )


def main(argv: list[str] | None = None) -> int:
    _drop_own_folder_from_path()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", required=True, help="folder of {prompt}-{i}.mp4 videos")
    parser.add_argument("--dimension", required=True)
    parser.add_argument("--output", required=True, help="folder VBench writes {dimension}_eval_results.json into")
    parser.add_argument("--full-info", required=True, help="VBench_full_info.json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--error-file", required=True)
    args = parser.parse_args(argv)
    try:
        run(args.videos, args.dimension, args.output, args.full_info, args.device)
    except Exception as err:  # reported to the driver, which records it as the dimension's status
        traceback.print_exc()
        info = {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
        if isinstance(err, ModuleNotFoundError):
            info["module"] = err.name
        with open(args.error_file, "w") as f:
            json.dump(info, f, indent=2)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
