"""Errors raised by probes. Every message says what failed, where, and how to fix it.

All of them subclass :class:`ProbeError`, itself a ``ValueError`` (so ``except ValueError`` keeps
working); the ``spatialbind`` CLI turns them into one line and exit status 1.
"""
from __future__ import annotations

from common import suggest  # noqa: F401  (the one implementation; re-exported here)


class ProbeError(ValueError):
    """Base class of probes errors."""


class ConfigError(ProbeError):
    """A probe or sweep config is invalid."""


class DataError(ProbeError):
    """A store query gave no usable samples (empty role, one class only, missing label column)."""


class DirectionError(ProbeError):
    """A saved direction is missing, malformed, or belongs to another model, site or width."""


