"""Errors raised by actstore. Every message is one line: what failed, where, and how to fix it."""
from __future__ import annotations

import difflib


class StoreError(ValueError):
    """Base class of actstore errors (also a ValueError, so ``except ValueError`` keeps working)."""


class SchemaError(StoreError):
    """A store does not follow the schema; the message lists every problem found."""


def suggest(name: str, choices) -> str:
    """Return `` Did you mean 'x'?`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown(what: str, name, choices, where: str = "") -> StoreError:
    """Uniform error for an unknown name (model, site, role, layer, label) with a close match."""
    loc = f" in {where}" if where else ""
    known = ", ".join(str(c) for c in choices) or "(none)"
    return StoreError(f"unknown {what} {name!r}{loc}.{suggest(name, choices)} Known: {known}.")
