"""The separate Python environment VBench runs in.

VBench 0.1.5 pins ``numpy<2``, ``transformers==4.33.2`` and ``timm<=1.0.12``, which clash with this package's own
environment (numpy 2, transformers>=4.45.2 for Mochi). So VBench gets a virtual environment of its own, created on
first use under the cache folder and reused afterwards. It is made with ``--system-site-packages`` so that torch and
torchvision (several GB) are shared with the main environment; what VBench pins is installed into it and shadows the
main environment's versions there only.

It is installed in two tiers, each only when a dimension needs it:

- ``core``: enough for ``from vbench import VBench`` and ``temporal_flickering`` (the one dimension that needs no
  downloaded model): vbench itself without its dependencies, numpy<2, OpenCV (headless) and decord. ~30 s, ~0.3 GB.
- ``full``: vbench with all its declared dependencies (transformers 4.33.2, timm, CLIP, pyiqa, ...), for the other 15
  dimensions. ~1-2 min, ~1 GB. These dimensions also download model weights at run time, and four of them need
  detectron2, which is not on PyPI: the environment cannot provide either.

Set ``GENMO_TEACACHE_VBENCH_PYTHON`` to an interpreter that already has vbench (e.g. a VBench container's) to use it
instead of the managed environment.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from genmo_teacache.cachedir import cache_dir, file_lock

logger = logging.getLogger(__name__)

VBENCH_VERSION = "0.1.5"
PYTHON_ENV = "GENMO_TEACACHE_VBENCH_PYTHON"
MARKER = "genmo_teacache_env.json"

# Installed with --no-deps: what importing vbench and running temporal_flickering needs beyond torch, torchvision,
# Pillow and tqdm (taken from the main environment).
CORE_REQUIREMENTS: tuple[str, ...] = (
    f"vbench=={VBENCH_VERSION}",
    "numpy==1.26.4",
    "opencv-python-headless==4.11.0.86",
    "decord==0.6.0",
)
# Installed with dependencies (vbench's own pins come along). setuptools<81 keeps pkg_resources, which openai-clip
# imports; both OpenCV wheels pinned alike so that the one cv2 folder they share stays consistent.
FULL_REQUIREMENTS: tuple[str, ...] = (
    f"vbench=={VBENCH_VERSION}",
    "setuptools<81",
    "opencv-python==4.11.0.86",
)
FULL_CONSTRAINTS: tuple[str, ...] = (
    "numpy==1.26.4",
    "opencv-python==4.11.0.86",
    "opencv-python-headless==4.11.0.86",
    "transformers==4.33.2",
)
TIERS = ("core", "full")
IMPORT_CHECK = {
    "core": "import cv2, decord, numpy; from vbench import VBench; import vbench.temporal_flickering",
    "full": "import transformers, timm, clip, pyiqa; from vbench import VBench",
}


class VBenchEnvError(RuntimeError):
    """The VBench environment could not be created or lacks what a dimension needs."""


def tier_for(dimension: str) -> str:
    return "core" if dimension == "temporal_flickering" else "full"


def env_dir() -> Path:
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_dir() / f"vbench-{VBENCH_VERSION}-{tag}"


def _env_python(path: Path) -> Path:
    return path / "bin" / "python"


def _tier_spec(tier: str) -> dict[str, list[str]]:
    if tier == "core":
        return {"requirements": list(CORE_REQUIREMENTS)}
    return {"requirements": list(FULL_REQUIREMENTS), "constraints": list(FULL_CONSTRAINTS)}


def _read_marker(path: Path) -> dict:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _run(cmd: list[str], log_path: Path, what: str) -> None:
    logger.info("%s (output in %s)", what, log_path)
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise VBenchEnvError(
            f"{what} failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}\n"
            f"The VBench environment is installed from PyPI once: check the connection to PyPI, or set "
            f"{PYTHON_ENV} to a Python that already has vbench=={VBENCH_VERSION}."
        )


def _link_main_site_packages(python: Path) -> None:
    """Make the main environment's packages (torch, torchvision, ...) visible in the new environment, after its own.

    ``--system-site-packages`` exposes the *base* interpreter's packages only; when this package itself runs in a
    virtual environment, torch lives in that one, so its site-packages folders are added through a ``.pth`` file.
    """
    main_paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "genmo_teacache_main_env.pth").write_text("\n".join(main_paths) + "\n")


def ensure_env(tier: str = "core") -> Path:
    """Return the Python interpreter of a VBench environment that has ``tier`` (and the tiers before it) installed,
    creating or completing the environment first if needed."""
    if tier not in TIERS:
        raise ValueError(f"unknown VBench environment tier {tier!r}; choose one of {TIERS}")
    override = os.environ.get(PYTHON_ENV)
    if override:
        python = Path(override)
        if not python.exists():
            raise VBenchEnvError(f"{PYTHON_ENV}={override} does not exist: point it to a Python with vbench installed")
        return python

    path = env_dir()
    with file_lock(path.with_name(path.name + ".lock")):
        marker = _read_marker(path)
        base_python = os.path.realpath(sys.executable)
        if path.exists() and (marker.get("base_python") != base_python or not _env_python(path).exists()):
            logger.info("recreating VBench environment %s (made by another interpreter or incomplete)", path)
            shutil.rmtree(path)
            marker = {}
        if not path.exists():
            logger.info("creating the VBench environment in %s (first use only)", path)
            _run([sys.executable, "-m", "venv", "--system-site-packages", str(path)],
                 path.with_name(path.name + "-create.log"),
                 "creating a virtual environment (python -m venv; on Debian/Ubuntu it needs python3-venv)")
            _link_main_site_packages(_env_python(path))
            marker = {"base_python": base_python, "tiers": {}}
            (path / MARKER).write_text(json.dumps(marker, indent=2))
        python = _env_python(path)
        for needed in TIERS[: TIERS.index(tier) + 1]:
            spec = _tier_spec(needed)
            if marker.get("tiers", {}).get(needed) == spec:
                continue
            log_path = path / f"install-{needed}.log"
            cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
            if needed == "core":
                cmd.append("--no-deps")
            if spec.get("constraints"):
                constraints = path / f"constraints-{needed}.txt"
                constraints.write_text("\n".join(spec["constraints"]) + "\n")
                cmd += ["-c", str(constraints)]
            _run(cmd + spec["requirements"], log_path,
                 f"installing the VBench environment's {needed!r} tier ({', '.join(spec['requirements'])})")
            _run([str(python), "-c", IMPORT_CHECK[needed]], log_path, f"checking the {needed!r} tier imports")
            marker.setdefault("tiers", {})[needed] = spec
            (path / MARKER).write_text(json.dumps(marker, indent=2))
        return python


def vbench_package_dir(python: str | os.PathLike) -> Path:
    """The installed vbench package folder of ``python`` (found without importing vbench)."""
    code = "import importlib.util as u; s = u.find_spec('vbench'); print(s.submodule_search_locations[0] if s else '')"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if not out:
        raise VBenchEnvError(f"{python} has no vbench package: install vbench=={VBENCH_VERSION} into it")
    return Path(out)
