"""Errors raised by actstore. Every message is one line: what failed, where, and how to fix it."""
from __future__ import annotations

from common import suggest  # noqa: F401  (the one implementation; re-exported here)


class StoreError(ValueError):
    """Base class of actstore errors (also a ValueError, so ``except ValueError`` keeps working)."""


class SchemaError(StoreError):
    """A store does not follow the schema; the message lists every problem found."""



def unknown(what: str, name, choices, where: str = "") -> StoreError:
    """Uniform error for an unknown name (model, site, role, layer, label) with a close match."""
    loc = f" in {where}" if where else ""
    known = ", ".join(str(c) for c in choices) or "(none)"
    return StoreError(f"unknown {what} {name!r}{loc}.{suggest(name, choices)} Known: {known}.")
