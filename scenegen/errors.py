"""Errors raised by scenegen. Every message says what failed, where, and how to fix it."""
from __future__ import annotations

from common import suggest  # noqa: F401  (the one implementation; re-exported here)


class SceneGenError(ValueError):
    """Base class of scenegen errors (also a ValueError, so old ``except ValueError`` keeps working)."""


class ConfigError(SceneGenError):
    """A generator config is invalid."""


class DatasetError(SceneGenError):
    """A dataset directory is missing, malformed or belongs to another config."""


class PlacementError(SceneGenError):
    """A layout could not be placed within the bounded number of retries."""



def unknown(what: str, name: str, choices, where: str = "") -> SceneGenError:
    """Uniform error for an unknown name (preset, shape, colour, ...), with a close-match suggestion."""
    loc = f" in {where}" if where else ""
    return ConfigError(
        f"unknown {what} {name!r}{loc}.{suggest(name, choices)} "
        f"Known: {', '.join(sorted(map(str, choices)))}."
    )
