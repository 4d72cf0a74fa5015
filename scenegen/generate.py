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
    elif config.generator == "whatsup_stitched":
        from .importers.whatsup_stitched import StitchedConfig, StitchedGenerator

        gen = StitchedGenerator(StitchedConfig.from_dict(config.whatsup_stitched),
                                seed=config.seed, n=config.n, splits=config.splits,
                                twins=config.twins)
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
    if config.generator == "flat" and config.flat.task == "objects":
        # pin the sprites: an absolute folder (workers, resumes) and the digest of its files
        from .objects import load_objects

        objs = load_objects(config.flat.objects_dir, config.flat.objects,
                            config.flat.objects_sha256)
        if config.flat.objects_dir is not None:
            d["flat"]["objects_dir"] = str(Path(config.flat.objects_dir).expanduser().resolve())
        d["flat"]["objects_sha256"] = objs.sha256
    if config.generator == "whatsup_stitched":
        from .importers.whatsup_stitched import StitchedConfig, load_regions

        sc = StitchedConfig.from_dict(config.whatsup_stitched)
        w = sc.to_dict()
        w["root"] = str(Path(sc.root).expanduser().resolve()) if sc.root else sc.root
        if sc.regions:
            w["regions"] = str(Path(sc.regions).expanduser().resolve())
            w["regions_sha256"] = load_regions(sc.regions)[2]
        d["whatsup_stitched"] = w
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
    gen = build_generator(resolved)
    factory = functools.partial(build_generator, resolved)
    return write_dataset(gen, out, config=resolved, factory=factory, workers=workers,
                         progress=progress, limit=limit)


def apply_task_options(d: dict[str, Any], *, objects: str | None = None,
                       whatsup: str | None = None, regions: str | None = None,
                       tokenizer: Any = None, tokenizer_name: str | None = None,
                       load_tokenizer=None) -> dict[str, Any]:
    """Fold ``--objects`` / ``--whatsup`` / ``--regions`` / ``--tokenizer`` into a config dict.

    For the stitched What'sUp task this resolves the kept side objects (the token filter needs the
    model's tokenizer, loaded with ``load_tokenizer(name)`` unless ``tokenizer`` is given), so the
    saved config lists exactly the names generated and those dropped, with reasons.
    """
    d = dict(d)
    gen = d.get("generator", "flat")
    if objects is not None:
        flat = dict(d.get("flat") or {})
        if gen != "flat" or flat.get("task") != "objects":
            raise ConfigError(f"--objects {objects} needs an Objects config (e.g. --preset "
                              "objects-qwen2-vl or flat.task: objects)")
        flat["objects_dir"] = str(objects)
        d["flat"] = flat
    if gen == "whatsup_stitched":
        w = dict(d.get("whatsup_stitched") or {})
        if whatsup is not None:
            w["root"] = str(whatsup)
        if not w.get("root"):
            raise ConfigError("the stitched What'sUp task needs the What'sUp download: pass "
                              "--whatsup ROOT (the folder holding controlled_images/)")
        if regions is not None:
            w["regions"] = str(regions)
        if w.get("sides") is None:
            from .importers.whatsup_stitched import MIDDLES, filter_sides

            name = tokenizer_name or w.get("tokenizer")
            tok = tokenizer
            if tok is None and name is not None and load_tokenizer is not None:
                tok = load_tokenizer(name)
            kept, dropped = filter_sides(tok, w["root"], tuple(w.get("middles") or MIDDLES))
            w["sides"], w["dropped"] = kept, dropped
            w["tokenizer"] = name if tok is not None else None
        d["whatsup_stitched"] = w
    else:
        if whatsup is not None or regions is not None:
            raise ConfigError("--whatsup / --regions belong to the stitched What'sUp task; use "
                              "--preset whatsup-stitched-<model>")
    return d


def names_report(config: GenerateConfig, tokenizer: Any = None,
                 tokenizer_name: str | None = None) -> dict[str, Any] | None:
    """What ``names.json`` records: the Objects task's single-token check, or the stitched What'sUp
    task's kept and dropped side objects with the item-count rule. None for other tasks."""
    if config.generator == "flat" and config.flat.task == "objects":
        from .objects import load_objects, token_report

        objs = load_objects(config.flat.objects_dir, config.flat.objects)
        out: dict[str, Any] = {"task": "objects", "objects": list(objs.names),
                               "directory": str(objs.directory), "tokenizer": tokenizer_name}
        if tokenizer is not None:
            rep = token_report(tokenizer, objs.names)
            out["single_token"], out["not_single_token"] = rep["single"], rep["split"]
        return out
    if config.generator == "whatsup_stitched":
        from .importers.whatsup_stitched import StitchedConfig, expected_items

        sc = StitchedConfig.from_dict(config.whatsup_stitched)
        return {"task": "whatsup-stitched", "tokenizer": sc.tokenizer, "size": sc.size,
                "kept": sc.sides, "dropped": sc.dropped,
                "items_rule": expected_items(sc.sides or {}, len(sc.directions)),
                "rule": "sum over middles of k(k-1) ordered (target, distractor) pairs x "
                        f"{len(sc.directions)} directions"}
    return None
