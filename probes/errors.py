"""Errors raised by probes. Every message says what failed, where, and how to fix it.

All of them subclass :class:`ProbeError`, itself a ``ValueError`` (so ``except ValueError`` keeps
working); the ``spatialbind`` CLI turns them into one line and exit status 1.
"""
from __future__ import annotations

import difflib


class ProbeError(ValueError):
    """Base class of probes errors."""


class ConfigError(ProbeError):
    """A probe or sweep config is invalid."""


class DataError(ProbeError):
    """A store query gave no usable samples (empty role, one class only, missing label column)."""


class DirectionError(ProbeError):
    """A saved direction is missing, malformed, or belongs to another model, site or width."""


def suggest(name: str, choices) -> str:
    """Return ' Did you mean 'x'?' for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""
