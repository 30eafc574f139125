"""File names: prompts as VBench file stems, and mode names as folder names.

VBench's standard mode looks for ``{prompt}-{i}.mp4``, so a prompt is used verbatim as the file stem whenever
that is safe. A prompt that is not (a slash or backslash, a control character or NUL, a leading dot, which
would also hide it or make it look like a ``.tmp-`` file, or more than :data:`MAX_STEM_BYTES` bytes of UTF-8) is
mapped deterministically to ``<sanitized prefix>~<10 hex digits of its sha256>``; the mapping of every mapped
prompt is written to ``<output-dir>/prompt_names.json`` (``{file stem: prompt}``).
"""

from __future__ import annotations

import hashlib
import logging
import re

from genmo_teacache.caches import CacheConfig, parse_mode
from genmo_teacache.speed import split_mode

logger = logging.getLogger(__name__)

MAX_STEM_BYTES = 200
HASH_CHARS = 10
FOLDER_SEPARATOR = "="  # FOLDER=MODE: the mode's videos go to FOLDER (the reference's mochi_adaptive_c1, ...)
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


def stem_is_safe(text: str) -> bool:
    """Whether ``text`` can be used verbatim as a file stem (and as a mode folder name)."""
    return (
        bool(text.strip())
        and not text.startswith(".")
        and _UNSAFE_CHARS.search(text) is None
        and len(text.encode("utf-8")) <= MAX_STEM_BYTES
    )


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def prompt_stem(prompt: str) -> str:
    """The file stem of a prompt: the prompt itself when safe, else a sanitized prefix plus a short hash."""
    if stem_is_safe(prompt):
        return prompt
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:HASH_CHARS]
    clean = _UNSAFE_CHARS.sub("_", prompt).lstrip(". ").strip()
    clean = _truncate_utf8(clean, MAX_STEM_BYTES - HASH_CHARS - 1).rstrip()
    return f"{clean or 'prompt'}~{digest}"


def split_folder(mode: str) -> tuple[str, str]:
    """``"FOLDER=MODE"`` -> (FOLDER, MODE); a plain mode -> (mode, "") (its folder is its name)."""
    folder, sep, spec = mode.partition(FOLDER_SEPARATOR)
    return (folder.strip(), spec.strip()) if sep else (mode, "")


def mode_folder(mode: str) -> str:
    return split_folder(mode)[0]


def parse_modes(text: str | list[str] | tuple[str, ...],
                calibration: str | None = None) -> list[tuple[str, CacheConfig]]:
    """``"baseline,fixed_0.04"`` -> [(mode as written, its CacheConfig), ...] in the order given.

    A mode is any name :func:`genmo_teacache.caches.parse_mode` accepts (``mochi_`` prefixes included), optionally
    with speed options after ``@`` (``fixed_0.04@fast``, ``baseline@bf16+compile``: see
    :func:`genmo_teacache.speed.split_mode`), which replace the run's own for that mode; its folder keeps the name
    as written, or is FOLDER for ``FOLDER=MODE`` (:func:`split_folder`). Raises ValueError naming the bad mode; a
    mode given twice is kept once, a folder given to two modes is an error.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    modes: list[tuple[str, CacheConfig]] = []
    seen: set[str] = set()
    folders: dict[str, str] = {}
    for raw in items:
        mode = raw.strip()
        if not mode or mode in seen:
            continue
        folder, spec = split_folder(mode)
        if not stem_is_safe(folder):
            raise ValueError(f"mode {mode!r}: {folder!r} cannot be a folder name (no slashes, control characters, "
                             "leading dot)")
        if folders.setdefault(folder, mode) != mode:
            raise ValueError(f"modes {folders[folder]!r} and {mode!r} would share the folder {folder!r}")
        base, speed = split_mode(spec or mode)
        cache = parse_mode(base, calibration)
        same = [m for m, c in modes if c == cache and split_mode(split_folder(m)[1] or m)[1] == speed]
        if same:
            logger.warning("modes %r and %r are the same cache config (%s): both are generated, in their own folders",
                           same[0], mode, cache.name)
        modes.append((mode, cache))
        seen.add(mode)
    if not modes:
        raise ValueError(f"no modes given in {text!r}: use e.g. baseline,fixed_0.04,adaptive_0.12_0.04")
    return modes
