"""vlms: one adapter per VLM family (loading, prompts, token geometry and roles, hook sites, scoring) and extraction into the store.

Importing ``vlms`` imports every sibling module (each family file registers its adapter on its
last line), so adding a family is one new file; torch and transformers load only when a model is
built or loaded. Entry points: :func:`load_adapter`, :func:`build_tiny`, :class:`VLMAdapter`,
:func:`adapter_for` (a bare transformers model -> its adapter), and, loaded on first use,
:class:`ExtractConfig` / :func:`run_extract` (extraction into the store).
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings

from .base import Batch, VLMAdapter
from .errors import AdapterNotFoundError, ExtractError, InputError, SiteError, VLMError
from .registry import (ADAPTERS, ALIASES, adapter_class, adapter_for, known_models, load_adapter,
                       register)
from .tiny import build_tiny

#: infrastructure modules; every *other* sibling is a family file that registers an adapter.
#: CLI modules (``*commands``) and extraction load on demand; ``organisms/`` is checkpoint data
#: (organism training is the top-level ``organisms`` package).
_INFRA = {"base", "errors", "registry", "tiny", "roles", "scoring", "extract"}


def _is_family(name: str) -> bool:
    return not (name in _INFRA or name.startswith(("_", "organism"))
                or name.endswith("commands"))


def _import_siblings() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not _is_family(info.name):
            continue
        try:
            importlib.import_module(f"{__name__}.{info.name}")
        except ImportError as e:  # an optional family whose dependencies are missing
            warnings.warn(f"vlms.{info.name} unavailable: {e}", ImportWarning, stacklevel=2)


_import_siblings()

#: loaded on first use (extraction pulls in the store's dependencies)
_LAZY = {"ExtractConfig": "extract", "run_extract": "extract", "extract_batch": "extract"}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'vlms' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


__all__ = [
    "ADAPTERS", "ALIASES", "AdapterNotFoundError", "Batch", "ExtractConfig", "ExtractError",
    "InputError", "SiteError", "VLMAdapter", "VLMError", "adapter_class", "adapter_for",
    "build_tiny", "extract_batch", "known_models", "load_adapter", "register", "run_extract",
]
