"""Errors raised by vlms. Every message says what failed, where, and how to fix it.

All of them subclass :class:`VLMError`, itself a ``ValueError``, so ``spatialbind`` turns them into
one clean line with exit status 1.
"""
from __future__ import annotations

from common import suggest as _suggest


class VLMError(ValueError):
    """Base class of vlms errors."""


class AdapterNotFoundError(VLMError):
    """No adapter matches a model name, hub id, directory or architecture."""


class SiteError(VLMError):
    """A site name or layer index that the model does not have."""


class InputError(VLMError):
    """Bad model input: missing/corrupt image, prompt without image, spans outside the text ..."""


class ExtractError(VLMError):
    """Extraction cannot proceed (store made by another model, bad shard spec, disk full ...)."""


def suggest(name: str, choices, n: int = 3) -> str:
    """Return " Did you mean 'x' or 'y'?" for the closest ``choices`` (model names are long and
    alike, so up to three, looser cutoff): :func:`common.suggest` with those settings."""
    return _suggest(name, choices, n=n, cutoff=0.4)
