"""What changes a video besides its prompt, seed, settings and cache config: the weights and how they run.

Every per-video report records this fingerprint; a resumed batch compares it with its own and refuses to mix
videos of other weights or options in one evaluation (``state.finished_entries``). It is computed before any
model loads, cheaply:

- weights files (DiT, decoder, LoRA, text encoder files): size and the SHA-256 of their first and last MiB
  (the safetensors header names every tensor and its offsets; the data around it differs between any two
  trainings), so moving or copying the weights keeps the identity and other weights change it;
- model config files: their content;
- the options that change the computation: the speed options (``speed``: their spec, and every field of
  :class:`~genmo_teacache.speed.SpeedOptions` by name, :meth:`~genmo_teacache.speed.SpeedOptions.record`; a mode's
  ``@SPEED`` suffix replaces the run's, :func:`job_fingerprint`), attention (``auto`` resolved as the pipeline
  resolves it), VAE decoding (``auto`` resolved for the device), observe-only generation.

Not in it, on purpose: where the weights are (recorded beside it in ``model_paths`` for information), the device
number, the number of GPUs of context parallelism, CPU offload.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from genmo_teacache.speed import SpeedOptions

SAMPLE_BYTES = 1 << 20
DEFAULT_TEXT_ENCODER = "google/t5-v1_1-xxl (upstream's default, from the Hugging Face hub)"


def weights_identity(path: str | Path) -> dict[str, Any]:
    """``{"bytes", "sha256_ends"}``: the size and the SHA-256 of the first and last MiB (the whole file if small)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            f.seek(size - SAMPLE_BYTES)
        h.update(f.read())  # the rest when small, else the last MiB
    return {"bytes": size, "sha256_ends": h.hexdigest()}


def _config(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return "unreadable"


def _folder_identity(folder: Path) -> dict[str, Any]:
    return {p.relative_to(folder).as_posix(): weights_identity(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def _attention(mode: str | None) -> str:
    # as pipelines.resolve_attention_mode (not imported: importing the pipelines takes seconds)
    if mode in (None, "auto"):
        return "flash" if importlib.util.find_spec("flash_attn") is not None else "sdpa"
    return str(mode)


def pipeline_fingerprint(model_dir: str | Path, kwargs: dict[str, Any], *, gpu: bool,
                         observe_only: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fingerprint, model_paths) of the pipeline ``generate.load_pipeline(model_dir, **kwargs)`` loads, on a GPU
    or not (``gpu``: what ``decode_type="auto"`` resolves to)."""
    model_dir = Path(model_dir)
    fp: dict[str, Any] = {}
    for name in ("dit", "decoder"):
        weights = model_dir / f"{name}.safetensors"
        fp[name] = weights_identity(weights) if weights.is_file() else None
        fp[f"{name}_config"] = _config(model_dir / f"{name}_config.json")
    text_encoder = kwargs.get("text_encoder_dir")
    if text_encoder is None and (model_dir / "text_encoder").is_dir():
        text_encoder = model_dir / "text_encoder"
    fp["text_encoder"] = _folder_identity(Path(text_encoder)) if text_encoder else DEFAULT_TEXT_ENCODER
    lora = kwargs.get("lora_path")
    fp["lora"] = weights_identity(lora) if lora else None
    decode = kwargs.get("decode_type") or "auto"
    fp.update(
        **speed_fingerprint(kwargs.get("speed") or SpeedOptions()),
        attention_mode=_attention(kwargs.get("attention_mode")),
        decode_type=("tiled_spatial" if gpu else "full") if decode == "auto" else decode,
        observe_only=observe_only,
    )
    paths = {"model_dir": str(model_dir.resolve()),
             "text_encoder": str(Path(text_encoder).resolve()) if text_encoder else None,
             "lora": str(Path(lora).resolve()) if lora else None}
    return fp, paths


def speed_fingerprint(options: SpeedOptions) -> dict[str, Any]:
    """``{"speed": spec, "dit_dtype": ..., "compile_dit": ..., ...}``: the spec and every field by name, the name of
    its ``generate`` option (reports of earlier versions have fewer: :func:`differences` compares what both have)."""
    return options.record()


def job_fingerprint(fingerprint: dict[str, Any] | None, options: SpeedOptions | None) -> dict[str, Any] | None:
    """The run's fingerprint with a job's own speed options (a mode's ``@SPEED``) in place of the run's; the
    run's as it is for ``options`` None."""
    if fingerprint is None or options is None:
        return fingerprint
    return {**fingerprint, **speed_fingerprint(options)}


def describe_difference(field: str, old: Any, new: Any) -> str:
    """``field: old != new`` for scalars, ``field differs`` for files and dicts."""
    if isinstance(old, dict | list) or isinstance(new, dict | list):
        return f"{field} (other files or content)"
    return f"{field} {old!r} != {new!r}"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields whose values differ; a field missing on one side (another version of this package) is not
    compared."""
    return [describe_difference(k, old[k], v) for k, v in new.items() if k in old and old[k] != v]
