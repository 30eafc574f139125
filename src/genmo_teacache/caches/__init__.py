"""Cache methods as plug-ins: one module per method, a registry by mode-name prefix, and :class:`CacheConfig`, the
method plus its modifiers, which is what the sampler, generate, batch, sweep and evaluation pass around.

A mode name is ``[mochi_]<method mode>[+<modifier>...]``, e.g. ``fixed_0.04``, ``mochi_adaptive_0.12_0.04``,
``easycache_0.05``, ``fbcache_0.1+taylor1``. It round-trips: ``parse_mode(config.name) == config``.

Adding a method: write ``caches/<method>.py`` with a frozen dataclass subclassing :class:`~.base.Method` (its
indicator and reuse point by name, its ``test_modes``) and its policy (:class:`~.base.Policy`), and add the class to
:data:`METHODS`: every test suite runs what the registry holds (docs/METHODS.md). A new indicator or reuse point is a
small class registered in :mod:`.indicators` or :mod:`.reuse`. Modifiers (:class:`~.base.Modifier`: ``+cfg``, the CFG
cache; ``+taylor1``, forecasting) are registered in :data:`MODIFIERS` and compose with every method (docs/METHODS.md,
Modifiers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from genmo_teacache.caches.base import Method, Modifier, ModifierState, StepRecord
from genmo_teacache.caches.baseline import Baseline
from genmo_teacache.caches.cfgcache import CfgCache
from genmo_teacache.caches.easycache import EasyCache
from genmo_teacache.caches.fbcache import FirstBlockCache
from genmo_teacache.caches.magcache import MagCache
from genmo_teacache.caches.taylor import Taylor
from genmo_teacache.caches.teacache import TeaCache

METHODS: tuple[type[Method], ...] = (Baseline, TeaCache, MagCache, EasyCache, FirstBlockCache)
MODIFIERS: tuple[type[Modifier], ...] = (CfgCache, Taylor)
MOCHI_PREFIX = "mochi_"  # the reference experiment's folder names: mochi_fixed_0.04, mochi_baseline, ...

__all__ = ["METHODS", "MODIFIERS", "CacheConfig", "Method", "Modifier", "ModifierState", "StepRecord",
           "is_baseline", "method_class", "method_for", "method_key", "observed_method", "parse_mode"]


def _find(kinds: tuple[type, ...], text: str) -> type | None:
    return next((k for k in kinds if any(text.startswith(p) for p in (*k.prefixes, *k.aliases))), None)


def method_class(mode: str) -> type[Method] | None:
    """The method a mode name belongs to, from its prefix alone (nothing parsed or loaded), or None."""
    text = mode.strip()
    return _find(METHODS, text[len(MOCHI_PREFIX):] if text.startswith(MOCHI_PREFIX) else text)


def method_key(mode: str) -> str | None:
    """What a mode name runs, from its prefixes alone (nothing parsed or loaded), for tables and plots: the method's
    key and its modifiers' (``"fixed_0.06"`` -> ``"teacache"``, ``"mochi_fbcache_0.1+cfg"`` -> ``"fbcache+cfgcache"``);
    None for a name no registered method takes."""
    text = mode.strip()
    head, *tails = (text[len(MOCHI_PREFIX):] if text.startswith(MOCHI_PREFIX) else text).split("+")
    cls = _find(METHODS, head)
    if cls is None:
        return None
    return "+".join([cls.key] + [getattr(_find(MODIFIERS, t), "key", t) for t in tails])


def is_baseline(mode: str) -> bool:
    """Whether a mode name is the uncached baseline (``baseline``, ``mochi_baseline``)."""
    cls = method_class(mode)
    return cls is not None and not cls.enabled and "+" not in mode


def method_for(key: str) -> type[Method]:
    """The method class registered under ``key`` ("teacache", "magcache", ...)."""
    for m in METHODS:
        if m.key == key:
            return m
    raise ValueError(f"unknown cache method {key!r}: use one of {', '.join(m.key for m in METHODS)}")


def observed_method() -> type[Method]:
    """The method whose indicator observe-only runs record (delta-TEMNI plots, calibration): the registered method
    with ``observed = True``."""
    (observed,) = [m for m in METHODS if m.observed]
    return observed


def syntax() -> str:
    lines = [f"  {m.key}: {m.syntax}" for m in METHODS]
    lines += [f"  +{m.key} modifier: {m.syntax}" for m in MODIFIERS]
    return "\n".join(lines)


@dataclass(frozen=True)
class CacheConfig:
    """A method's config and the modifiers applied to it, in order."""

    method: Method
    modifiers: tuple[Modifier, ...] = ()

    def __post_init__(self) -> None:
        keys = [m.key for m in self.modifiers]
        if len(set(keys)) != len(keys):
            raise ValueError(f"mode {self.name}: a modifier is given twice")
        if self.modifiers and not self.method.enabled:
            raise ValueError(f"mode {self.name}: modifiers need a cache method (e.g. fixed_0.06+...), not baseline")

    @classmethod
    def baseline(cls) -> CacheConfig:
        return cls(Baseline())

    @classmethod
    def of(cls, method: Method, *modifiers: Modifier) -> CacheConfig:
        return cls(method, tuple(modifiers))

    @property
    def name(self) -> str:
        return self.method.name + "".join(f"+{m.name}" for m in self.modifiers)

    def __str__(self) -> str:
        return self.name

    @property
    def enabled(self) -> bool:
        return self.method.enabled

    def with_method_options(self, **options: Any) -> CacheConfig:
        return replace(self, method=self.method.with_options(**options))

    def check(self, num_steps: int, *, batch_cfg: bool = False) -> list[str]:
        """Raise ValueError if the config cannot run ``num_steps`` steps (or a modifier cannot run with batched CFG);
        return warnings (the schedule is cut...)."""
        warnings = list(self.method.check(num_steps))
        for m in self.modifiers:
            warnings += m.check(num_steps, batch_cfg=batch_cfg)
        return warnings

    def computed_fraction(self, num_steps: int) -> float:
        """Expected share of the baseline's DiT forwards that run: batch's cost model."""
        fraction = self.method.computed_fraction(num_steps)
        for m in self.modifiers:
            fraction *= 1.0 - m.extra_forward_fraction(num_steps)
        return fraction

    def to_dict(self, num_steps: int | None = None) -> dict[str, Any]:
        d = self.method.to_dict(num_steps)
        d["mode"] = self.name
        if self.modifiers:
            d["modifiers"] = [m.to_dict() for m in self.modifiers]
        return d

    @classmethod
    def from_mode(cls, mode: str, calibration: str | os.PathLike | None = None) -> CacheConfig:
        return parse_mode(mode, calibration)


def parse_mode(mode: str, calibration: str | os.PathLike | None = None) -> CacheConfig:
    """The config a mode name describes. ``calibration``: a file from ``genmo-teacache calibrate`` for the methods
    that take one (ignored by the others). Raises ValueError naming the mode and the grammar if it is unknown."""
    text = mode.strip()
    text = text[len(MOCHI_PREFIX):] if text.startswith(MOCHI_PREFIX) else text
    head, *tails = text.split("+")
    method_cls = _find(METHODS, head)
    if method_cls is None:
        raise ValueError(f"unknown mode {mode!r}: a mode is METHOD[+MODIFIER...] with\n{syntax()}")
    method = method_cls.parse(head, calibration if method_cls.uses_calibration else None)
    modifiers = []
    for tail in tails:
        modifier_cls = _find(MODIFIERS, tail)
        if modifier_cls is None:
            raise ValueError(f"mode {mode!r}: unknown modifier +{tail}; modifiers are "
                             f"{', '.join('+' + m.syntax for m in MODIFIERS) or 'not available yet'}")
        modifiers.append(modifier_cls.parse(tail))
    return CacheConfig(method, tuple(modifiers))
