"""Speedups from generation logs, held to what the skipped work allows.

A cache makes denoising faster only by the DiT forwards it drops: with the same speed options, the most it can gain
is the baseline's forwards over its own (its *ideal* speedup, ``CacheReport.ideal_speedup`` for one video). The
end-to-end time adds the same text encoding and decoding to both, so its gain is lower still. A measured speedup
above the ideal is noise (step times that varied more than what was skipped saved, e.g. on a loaded machine): the
tables, the JSON and the plots flag it as such and never show it as a result.

The inputs are log entries (``batch.execute.log_entry``): ``time_seconds``, ``timings.denoising_s``,
``cache.dit_calls`` and ``speed`` (the speed options' spec; a faster kernel is not bounded by forwards, so no ideal
is known between entries of different speed options).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Pair = tuple[dict[str, Any], dict[str, Any]]  # (baseline's log entry, the mode's) of one video


def time_seconds(run: dict[str, Any]) -> float | None:
    return _number(run.get("time_seconds"))


def denoising_seconds(run: dict[str, Any]) -> float | None:
    timings = run.get("timings")
    return _number(timings.get("denoising_s")) if isinstance(timings, dict) else None


def dit_calls(run: dict[str, Any]) -> float | None:
    cache = run.get("cache")
    return _number(cache.get("dit_calls")) if isinstance(cache, dict) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def ratio(pairs: Sequence[Pair], get: Callable[[dict[str, Any]], float | None]) -> float | None:
    """The baseline's summed ``get`` over the mode's, on the pairs where both have a number; None if none has."""
    values = [(get(b), get(m)) for b, m in pairs]
    values = [(b, m) for b, m in values if b is not None and m is not None]
    total = sum(m for _, m in values)
    return sum(b for b, _ in values) / total if values and total > 0 else None


def forward_ratio(pairs: Sequence[Pair]) -> float | None:
    """The baseline's DiT forwards over the mode's (1.0: the mode skipped nothing); None without forward counts."""
    return ratio(pairs, dit_calls)


def ideal_speedup(pairs: Sequence[Pair]) -> float | None:
    """The most a speedup over these videos can be: the forward ratio, when every pair ran with the same speed
    options (else None: nothing bounds a faster kernel's gain)."""
    if not pairs or any(b.get("speed") != m.get("speed") for b, m in pairs):
        return None
    return forward_ratio(pairs)


def is_noise(measured: float | None, ideal: float | None) -> bool:
    """Whether a measured speedup is above its ideal (False when either is unknown)."""
    if measured is None or ideal is None or not (math.isfinite(measured) and math.isfinite(ideal)):
        return False
    return measured > ideal * (1 + 1e-9)


def noise_text(measured: float, ideal: float) -> str:
    """How a table shows a speedup that is noise."""
    return f"noise ({measured:.2f}x > ideal {ideal:.2f}x)"
