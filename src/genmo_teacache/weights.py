"""Checks of a weights directory before anything loads: each problem is reported naming the file at fault and
what to do, in well under a second, instead of a traceback after the models started loading (or, worse, a run
that succeeds with every prompt tokenized to ``<unk>``). No torch or genmo import here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# in dit_config.json, decoder_config.json or text_encoder/config.json: build that model with random weights, no
# weights file (benchmarks)
RANDOM_WEIGHTS_KEY = "random_weights"
CONFIG_FILES = ("dit_config.json", "decoder_config.json", "generation_defaults.json")
T5_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
T5_TOKENIZERS = ("spiece.model", "tokenizer.json")
HINT = ("--model_dir must be a Mochi 1 weights directory holding dit.safetensors and decoder.safetensors (upstream's "
        "scripts/download_weights.py makes one); leave it out to run the tiny random demo model")


class WeightsError(ValueError):
    """A weights directory or file that cannot be used; the message names it and says what to do."""


def read_json_object(path: Path, what: str = "") -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path} is not valid JSON ({e}): {what or 'restore or delete it'}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} must hold a JSON object, got {type(data).__name__}: {what or 'restore it'}")
    return data


def check_safetensors(path: Path, what: str = "re-download it") -> dict[str, Any]:
    """The file's header; raises if the file is missing, not safetensors, or shorter/longer than its header says
    (a truncated download or copy)."""
    if not path.is_file():
        raise WeightsError(f"{path} not found: {what}")
    size = path.stat().st_size
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n <= 0 or 8 + n > size:
            raise WeightsError(f"{path} is not a safetensors file or is truncated ({size} bytes): {what}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WeightsError(f"{path} has a corrupt safetensors header: {what}") from None
    tensors = [v for k, v in header.items() if k != "__metadata__"]
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise WeightsError(f"{path} has a corrupt safetensors header: {what}") from None
    if 8 + n + end != size:
        raise WeightsError(f"{path} is truncated or corrupt: its header describes {8 + n + end} bytes but the file "
                           f"has {size}: {what}")
    return header


def check_text_encoder(path: Path) -> None:
    """A local T5 directory: its config, its weights and a tokenizer (without ``spiece.model`` transformers turns
    every word into ``<unk>`` and every prompt gives the same video)."""
    if not path.is_dir():
        raise WeightsError(f"text encoder directory {path} not found: give --text_encoder_dir or remove it")
    config = path / "config.json"
    if not config.exists():
        _missing(config, "the T5 config")
    random = read_json_object(config, "the T5 config is needed to load the text encoder").get(RANDOM_WEIGHTS_KEY)
    weights = [path / n for n in T5_WEIGHTS if (path / n).exists()]
    if not weights and not random:
        _missing(path / T5_WEIGHTS[0], f"the T5 weights (one of {', '.join(T5_WEIGHTS)})")
    if weights and weights[0].name == "model.safetensors":
        check_safetensors(weights[0], "re-download the text encoder")
    if not any((path / n).exists() for n in T5_TOKENIZERS):
        raise WeightsError(f"{path} has no tokenizer ({' or '.join(T5_TOKENIZERS)}): without it every word becomes "
                           f"<unk> and every prompt gives the same video; copy spiece.model from google/t5-v1_1-xxl")
    if (path / "spiece.model").exists() and (path / "spiece.model").stat().st_size == 0:
        raise WeightsError(f"{path / 'spiece.model'} is empty: copy it again from google/t5-v1_1-xxl")


def check_lora(path: Path) -> None:
    if path.suffix == ".safetensors":
        header = check_safetensors(path, "give a LoRA written by upstream's LoRA training")
        try:
            json.loads(header.get("__metadata__", {})["kwargs"])
        except (KeyError, TypeError, json.JSONDecodeError):
            raise WeightsError(f"LoRA {path} has no valid 'kwargs' metadata (upstream's LoRA format): give a LoRA "
                               f"written by upstream's LoRA training") from None
        return
    import torch

    try:
        lora = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any unreadable file is the same user error
        raise WeightsError(f"LoRA {path} cannot be read ({type(e).__name__}: {e}): give a .safetensors or .pt "
                           f"LoRA written by upstream's LoRA training") from None
    if not isinstance(lora, dict) or not {"state_dict", "kwargs"} <= set(lora):
        raise WeightsError(f"LoRA {path} lacks 'state_dict' and 'kwargs' (upstream's .pt LoRA format)")


def _missing(path: Path, what: str) -> None:
    raise WeightsError(f"{path} not found: {what} is needed")


def check_model_dir(model_dir: str | os.PathLike, *, text_encoder_dir: str | os.PathLike | None = None,
                    lora_path: str | os.PathLike | None = None) -> None:
    """Everything about a weights directory that can be checked before loading. Raises :class:`WeightsError`."""
    d = Path(model_dir)
    if not d.exists():
        raise WeightsError(f"--model_dir {d} does not exist: {HINT}")
    if not d.is_dir():
        raise WeightsError(f"--model_dir {d} is a file: {HINT}")
    configs = {name: read_json_object(d / name) for name in CONFIG_FILES if (d / name).exists()}
    files = [f"{name}.safetensors" for name in ("decoder", "dit")
             if not configs.get(f"{name}_config.json", {}).get(RANDOM_WEIGHTS_KEY)]
    missing = [name for name in files if not (d / name).exists()]
    if missing:
        raise WeightsError(f"{d} has no {' and no '.join(missing)}: {HINT}")
    for name in files:
        check_safetensors(d / name)
    te = Path(text_encoder_dir) if text_encoder_dir else d / "text_encoder"
    if text_encoder_dir or te.is_dir():
        check_text_encoder(te)
    if lora_path:
        check_lora(Path(lora_path))
