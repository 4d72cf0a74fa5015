"""Turn a resolved :class:`~scenegen.config.GenerateConfig` into a dataset directory.

This is the library behind ``spatialbind generate``: :func:`build_generator` dispatches on
``config.generator`` (the 3D generator is imported lazily, so flat generation never imports
pyrender) and wraps it with degradations; :func:`generate` writes the dataset with
:func:`scenegen.dataset.write_dataset` (parallel, resumable, byte-deterministic).
"""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any

from .config import GenerateConfig
from .dataset import write_dataset
from .errors import ConfigError


def build_generator(config: GenerateConfig | dict[str, Any]):
    """The generator (``len``, ``unit(i)``, ``extras()``) described by ``config``.

    Parameters
    ----------
    config
        A :class:`GenerateConfig` or its dict form (what ``config.json`` stores).
    """
    if isinstance(config, dict):
        config = GenerateConfig.from_dict(config)
    if config.generator == "flat":
        from .flat import FlatGenerator

        gen = FlatGenerator(config.flat, seed=config.seed, n=config.n, twins=config.twins,
                            splits=config.splits)
    else:
        gen = _scene3d(config)
    if config.degradations:
        from .degrade import DegradedGenerator

        gen = DegradedGenerator(gen, config.degradations, fraction=config.degrade_fraction,
                                seed=config.seed)
    return gen


def _scene3d(config: GenerateConfig):
    try:
        from . import scene3d
    except ImportError as e:
        raise ConfigError(
            f"generator 'scene3d' is unavailable ({e}); install the render extra "
            "(pip install 'spatialbind[render]') or use generator: flat") from None
    cfg = scene3d.Scene3DConfig.from_dict(dict(config.scene3d or {}))
    # pass the shared options the 3D generator accepts (it may take n / twins / splits)
    params = inspect.signature(scene3d.Scene3DGenerator).parameters
    shared = {"n": config.n, "twins": config.twins, "splits": config.splits}
    kwargs = {k: v for k, v in shared.items() if k in params}
    return scene3d.Scene3DGenerator(cfg, seed=config.seed, **kwargs)


def resolve(config: GenerateConfig) -> dict[str, Any]:
    """The dict saved as the dataset's config (and hashed to guard the directory)."""
    d = config.to_dict()
    if config.generator == "scene3d":
        try:
            from . import scene3d

            d["scene3d"] = scene3d.Scene3DConfig.from_dict(dict(config.scene3d or {})).to_dict()
        except (ImportError, AttributeError):
            pass
    return d


def generate(config: GenerateConfig, out: str | os.PathLike, *, workers: int = 1,
             progress: bool = True, limit: int | None = None) -> Path:
    """Generate the dataset of ``config`` into ``out`` (resuming a partial run there).

    Parameters
    ----------
    config
        Resolved config.
    out
        Dataset directory; created, or checked to hold the same config.
    workers
        Processes; the bytes written do not depend on it.
    progress
        Show a tqdm bar.
    limit
        Stop after this many units (tests of resumption).

    Returns
    -------
    Path
        ``out``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an int >= 1; got {workers!r}")
    resolved = resolve(config)
    gen = build_generator(config)
    factory = functools.partial(build_generator, resolved)
    return write_dataset(gen, out, config=resolved, factory=factory, workers=workers,
                         progress=progress, limit=limit)
