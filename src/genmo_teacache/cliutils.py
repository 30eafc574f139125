"""What every command of the package shares: composing click options, the logging set-up, and list-valued options.
Nothing here imports torch or the video model, so that ``evaluate`` stays light."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

PACKAGE_LOGGER = "genmo_teacache"
PLAIN_FORMAT = "%(message)s"
DETAILED_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def compose(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """Several click options as one decorator (applied in the order given, as if stacked)."""

    def apply(fn: F) -> F:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


def setup_logging(verbose: bool = False, *, plain: bool = False) -> None:
    """The package's log lines on the console: messages only (``plain``: what the demo and one-shot commands
    print) or with time, level and module (the long-running batch and evaluation commands); ``verbose``: debug
    lines too. A handler set up before (by the caller, or by the test runner) is kept."""
    level = logging.DEBUG if verbose else logging.INFO
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=PLAIN_FORMAT if plain else DETAILED_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger(PACKAGE_LOGGER).setLevel(level)


def split_values(values: Sequence[str] | str | None) -> list[str]:
    """Comma-separated and/or repeated option values -> list (order kept, duplicates dropped)."""
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    return out
