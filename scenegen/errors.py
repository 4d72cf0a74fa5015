"""Errors raised by scenegen. Every message says what failed, where, and how to fix it."""
from __future__ import annotations

import difflib


class SceneGenError(ValueError):
    """Base class of scenegen errors (also a ValueError, so old ``except ValueError`` keeps working)."""


class ConfigError(SceneGenError):
    """A generator config is invalid."""


class DatasetError(SceneGenError):
    """A dataset directory is missing, malformed or belongs to another config."""


class PlacementError(SceneGenError):
    """A layout could not be placed within the bounded number of retries."""


def suggest(name: str, choices) -> str:
    """Return ' Did you mean 'x'?' for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown(what: str, name: str, choices, where: str = "") -> SceneGenError:
    """Uniform error for an unknown name (preset, shape, colour, ...), with a close-match suggestion."""
    loc = f" in {where}" if where else ""
    return ConfigError(
        f"unknown {what} {name!r}{loc}.{suggest(name, choices)} "
        f"Known: {', '.join(sorted(map(str, choices)))}."
    )
