"""Prompt files, and the 33-prompt VBench subset of the reference experiment.

Two prompt file formats are read:

* VBench full-info JSON (``*.json``): a list of ``{"prompt_en": ..., "dimension": [...], ...}`` entries, as
  ``VBench_full_info.json`` and ``vbench_eval/prompts_subset.json``. Plain strings are accepted as entries too.
* plain text (any other suffix): one prompt a line; blank lines are skipped, everything else is taken verbatim
  (surrounding whitespace stripped).

Errors name the file and the line (and, for JSON, the entry) so that a bad prompt file fails before any model
is loaded.

The subset (:func:`build_vbench_subset`) is rebuilt from the ``VBench_full_info.json`` shipped inside the
``vbench`` 0.1.5 wheel: entries grouped by their exact ``dimension`` list, groups A-K in the order of
:data:`VBENCH_SUBSET_GROUPS`, the first 3 entries of each group in file order, copied verbatim.
``python -m genmo_teacache.batch.prompts vbench_eval/prompts_subset.json`` rewrites the committed copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genmo_teacache.cachedir import cache_dir
from genmo_teacache.cliutils import setup_logging

logger = logging.getLogger(__name__)

VBENCH_VERSION = "0.1.5"
VBENCH_WHEEL = f"vbench-{VBENCH_VERSION}-py3-none-any.whl"
# sha256 of the wheel on PyPI (checked after every download, so that the subset always comes from the same bytes)
VBENCH_WHEEL_SHA256 = "13266ed4715d91a7669ab58484b9e010bc91bb96e129d414fb512d4937890023"
VBENCH_FULL_INFO_MEMBER = "vbench/VBench_full_info.json"

# Groups A-K of the reference subset, each an exact ``dimension`` list of VBench_full_info.json.
VBENCH_SUBSET_GROUPS: tuple[tuple[str, ...], ...] = (
    ("subject_consistency", "dynamic_degree", "motion_smoothness"),  # A
    ("overall_consistency", "aesthetic_quality", "imaging_quality"),  # B
    ("scene", "background_consistency"),  # C
    ("temporal_flickering",),  # D
    ("human_action",),  # E
    ("temporal_style",),  # F
    ("appearance_style",),  # G
    ("color",),  # H
    ("spatial_relationship",),  # I
    ("multiple_objects",),  # J
    ("object_class",),  # K
)
VBENCH_SUBSET_PER_GROUP = 3

# The committed subset, relative to the repository root (and to the working directory, which is tried first).
DEFAULT_PROMPTS_FILE = "vbench_eval/prompts_subset.json"


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class PromptEntry:
    """One prompt with where it came from (``line`` is 1-based) and, for VBench files, its full entry."""

    text: str
    line: int
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def repo_root() -> Path:
    """The checkout this module lives in (src/genmo_teacache/batch/prompts.py -> repository root)."""
    return Path(__file__).resolve().parents[3]


def resolve_prompts_file(path: str | os.PathLike | None) -> Path:
    """``path`` as given if it exists; the default subset is also looked up in the repository checkout."""
    if path is None:
        path = DEFAULT_PROMPTS_FILE
    p = Path(path)
    if not p.exists() and not p.is_absolute() and str(path) == DEFAULT_PROMPTS_FILE:
        candidate = repo_root() / DEFAULT_PROMPTS_FILE
        if candidate.exists():
            return candidate
    return p


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _json_entries(path: Path, text: str) -> list[PromptEntry]:
    """Parse a JSON list element by element so that every error can name the line of its entry."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if text.startswith("\ufeff", pos):
        pos = _skip_ws(text, pos + 1)
    if pos >= len(text) or text[pos] != "[":
        raise PromptFileError(
            f"{path}:{_line_of(text, pos)}: a JSON prompt file must be a list of VBench entries "
            '({"prompt_en": ..., "dimension": [...]}) or of strings'
        )
    pos = _skip_ws(text, pos + 1)
    entries: list[PromptEntry] = []
    if pos < len(text) and text[pos] == "]":
        return entries
    while True:
        line = _line_of(text, pos)
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        n = len(entries)
        if isinstance(value, str):
            prompt, info = value, {"prompt_en": value}
        elif isinstance(value, dict):
            if "prompt_en" not in value:
                raise PromptFileError(f"{path}:{line}: entry {n} has no 'prompt_en' (keys: {sorted(value)})")
            prompt, info = value["prompt_en"], value
        else:
            raise PromptFileError(
                f"{path}:{line}: entry {n} is a JSON {type(value).__name__}, expected an object with 'prompt_en'"
            )
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{path}:{line}: entry {n} has an empty or non-string prompt: {prompt!r}")
        if "\x00" in prompt:
            raise PromptFileError(f"{path}:{line}: entry {n} contains a NUL character")
        entries.append(PromptEntry(prompt, line, info))
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            break
        what = "end of file" if pos >= len(text) else repr(text[pos])
        raise PromptFileError(f"{path}:{_line_of(text, pos)}: expected ',' or ']' after entry {n}, found {what}")
    rest = _skip_ws(text, pos + 1)
    if rest < len(text):
        raise PromptFileError(f"{path}:{_line_of(text, rest)}: unexpected content after the JSON list")
    return entries


def _text_entries(path: Path, data: bytes) -> list[PromptEntry]:
    entries: list[PromptEntry] = []
    for i, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise PromptFileError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if "\x00" in line:
            raise PromptFileError(f"{path}:{i}: contains a NUL character")
        prompt = line.strip()
        if prompt:
            entries.append(PromptEntry(prompt, i))
    return entries


def read_prompt_entries(path: str | os.PathLike) -> list[PromptEntry]:
    """All prompts of a prompt file in file order (duplicates kept); raises PromptFileError naming the line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PromptFileError(f"cannot read prompt file {path}: {e.strerror or e}") from None
    if path.suffix.lower() == ".json":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise PromptFileError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
        entries = _json_entries(path, text)
    else:
        entries = _text_entries(path, data)
    if not entries:
        raise PromptFileError(f"{path}: no prompts found (expected a VBench JSON list or one prompt a line)")
    return entries


def load_prompts(path: str | os.PathLike) -> list[PromptEntry]:
    """The distinct prompts of a prompt file in file order; a repeated prompt is dropped (with a warning) since
    it would name the same videos."""
    seen: dict[str, PromptEntry] = {}
    for entry in read_prompt_entries(path):
        if entry.text in seen:
            logger.warning("%s:%d: duplicate prompt %r (first on line %d) is generated once",
                           path, entry.line, entry.text, seen[entry.text].line)
            continue
        seen[entry.text] = entry
    return list(seen.values())


# -- the VBench subset -----------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vbench_wheel(cache: str | os.PathLike | None = None) -> Path:
    """The vbench 0.1.5 wheel, downloaded once with ``pip download --no-deps`` into the cache and checked."""
    folder = (Path(cache) if cache is not None else cache_dir()) / "wheels"
    wheel = folder / VBENCH_WHEEL
    if not wheel.exists():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               f"vbench=={VBENCH_VERSION}", "-d", str(folder)]
        logger.info("downloading %s: %s", VBENCH_WHEEL, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"could not download {VBENCH_WHEEL} (exit {proc.returncode}):\n{proc.stderr.strip()}")
    digest = _sha256(wheel)
    if digest != VBENCH_WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {digest} is not the published {VBENCH_WHEEL_SHA256}; delete it and retry")
    return wheel


def read_vbench_full_info(wheel: str | os.PathLike) -> list[dict[str, Any]]:
    """``VBench_full_info.json`` read out of the wheel (a zip), entries in file order."""
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read(VBENCH_FULL_INFO_MEMBER))


def select_vbench_subset(full_info: list[dict[str, Any]],
                         groups: tuple[tuple[str, ...], ...] = VBENCH_SUBSET_GROUPS,
                         per_group: int = VBENCH_SUBSET_PER_GROUP) -> list[dict[str, Any]]:
    """The first ``per_group`` entries (file order) of each group of identical ``dimension`` lists, groups in
    the given order; entries verbatim."""
    subset: list[dict[str, Any]] = []
    for group in groups:
        members = [e for e in full_info if tuple(e.get("dimension", ())) == tuple(group)]
        if len(members) < per_group:
            raise ValueError(f"VBench full info has {len(members)} entries with dimension {list(group)}, "
                             f"need {per_group}")
        subset += members[:per_group]
    return subset


def dump_prompt_subset(subset: list[dict[str, Any]]) -> str:
    """The subset as the reference file has it: ``json.dump(indent=4)``, no trailing newline."""
    return json.dumps(subset, indent=4)


def build_vbench_subset(cache: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Rebuild the reference 33-prompt subset from the vbench 0.1.5 wheel."""
    return select_vbench_subset(read_vbench_full_info(vbench_wheel(cache)))


def write_vbench_subset(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    from genmo_teacache.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(dump_prompt_subset(build_vbench_subset(cache)))
    return path


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    setup_logging(plain=True)
    out = write_vbench_subset(args[0] if args else repo_root() / DEFAULT_PROMPTS_FILE)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
