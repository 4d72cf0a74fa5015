"""The experiments' one calling convention: a frozen config in, an :class:`ExperimentResult` out,
``result.save(dir)`` separate.

    res = interventions.patch(PatchConfig(experiment="e4", layers="0-2"), model=adapter, data=ds)
    res.table, res.summary            # in memory: a DataFrame and a JSON-able dict
    res.save("out/e4")                # <exp>.parquet/.csv, summary.json/.csv, config.json, PNG

``model`` is a loaded ``vlms`` adapter or a name (``tiny-qwen2-vl``, a hub id, a directory);
``data`` a ``scenegen`` :class:`~scenegen.dataset.Dataset` or its directory (amplification also
takes ``whatsup:ROOT:COCO_QA_two_obj``). The ``*_to_dir`` functions behind the CLI are thin
wrappers over these.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import InterventionError


@dataclass
class ExperimentResult:
    """What an experiment returns: its table and summary, and what it ran on."""

    experiment: str
    """``e2``, ``e4``, ``e5``, ``e6`` or ``e7``."""
    table: pd.DataFrame
    """One row per item x layer x region (E2/E4/E6), item (E5) or item x control x alpha (E7)."""
    summary: dict[str, Any]
    """Aggregates (JSON-able), as ``summary.json``."""
    config: dict[str, Any]
    """The resolved config (JSON-able), as ``config.json``."""
    model: str
    data: str
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    """More tables written next to the main one (E7: ``e7_dose_response``)."""
    regions: pd.DataFrame | None = None
    """The image-token pairs an E4/E5/E6 run patched (``regions.parquet``: ``id``, ``region``,
    ``clean_token``, ``source_token``, ``source``); None for E2 and E7."""

    def save(self, out: str | os.PathLike) -> Path:
        """Write ``<exp>.parquet``/``.csv``, ``summary.json``/``.csv``, ``config.json`` and the
        experiment's plot into ``out`` (created; a path that is a file is refused)."""
        from . import plots
        from .results import prepare_out, write_results

        out = prepare_out(out)
        name = self.experiment
        flat = pd.DataFrame(self.summary["selections"]) if name == "e7" else None
        write_results(out, name, self.table, self.summary, config=self.config, model=self.model,
                      data=self.data, flat=flat, regions=self.regions)
        for key, df in self.extra.items():
            df.to_csv(out / f"{key}.csv", index=False)
        if name == "e2":
            plots.last_token_plot(self.table, out / "e2_layers.png")
        elif name in ("e4", "e6"):
            plots.crisscross_heatmaps(self.table, out / f"{name}_heatmap.png",
                                      title=f"{name.upper()} criss-cross, {self.model}")
        elif name == "e5":
            plots.ablation_plot(self.summary, out / "e5_accuracy.png")
        else:
            plots.dose_response(self.summary, out / "e7_dose_response.png")
        return out


def _model(model) -> tuple[Any, str]:
    if isinstance(model, (str, os.PathLike)):
        from .stimuli import load_model

        return load_model(str(model)), str(model)
    if not hasattr(model, "site_module"):
        raise InterventionError(f"model must be a vlms adapter or a model name; got "
                                f"{type(model).__name__} (wrap a bare model with "
                                "vlms.adapter_for or load it with vlms.load_adapter)")
    return model, str(getattr(model, "name", type(model).__name__))


def _dataset(data) -> tuple[Any, str]:
    if isinstance(data, (str, os.PathLike)):
        from scenegen import read_dataset

        return read_dataset(data), str(data)
    return data, str(getattr(data, "root", getattr(data, "path", "<in memory>")))


def patch(config, *, model, data, progress: bool = True) -> ExperimentResult:
    """E2 / E4 / E6 (``config.experiment``) with :class:`~interventions.patching.PatchConfig`."""
    from .patching import _cfg, run_patch

    ds, where = _dataset(data)  # a bad dataset fails before the model loads
    adapter, name = _model(model)
    regions: list | None = None if config.experiment == "e2" else []
    table, summary = run_patch(adapter, ds, config, progress=progress, regions=regions)
    return ExperimentResult(config.experiment, table, summary,
                            summary.get("config", _cfg(config)), name, where,
                            regions=_regions(regions))


def ablate(config, *, model, data, progress: bool = True) -> ExperimentResult:
    """E5 with :class:`~interventions.ablation.AblateConfig`."""
    from .ablation import run_e5

    ds, where = _dataset(data)
    adapter, name = _model(model)
    regions: list = []
    table, summary = run_e5(adapter, ds, config, progress=progress, regions=regions)
    return ExperimentResult("e5", table, summary,
                            summary.get("config", dataclasses.asdict(config)), name, where,
                            regions=_regions(regions))


def _regions(parts: list | None) -> pd.DataFrame | None:
    if parts is None:
        return None
    from .regions import empty_frame

    return pd.concat(parts, ignore_index=True) if parts else empty_frame()


def amplify(config, *, model, data, directions, progress: bool = True) -> ExperimentResult:
    """E7 with :class:`~interventions.amplification.AmplifyConfig`.

    ``directions``: probe direction directories (``probes`` export; one per axis), the string
    ``"mean-diff"`` (in-house slot-mean differences on the dataset's train split), or arrays:
    ``(k, hidden)`` or ``axis -> (k, hidden)`` (e.g. from :func:`probes.axis_directions`).
    """
    from .amplification import load_directions, mean_diff_directions, run_e7, whatsup_items

    adapter, name = _model(model)
    whatsup = isinstance(data, str) and data.startswith("whatsup:")
    if whatsup:
        ds, where = whatsup_items(data, config, model_name=name), data
    else:
        ds, where = _dataset(data)
    if isinstance(directions, (str, os.PathLike)) or (
            isinstance(directions, (list, tuple))
            and all(isinstance(d, (str, os.PathLike)) for d in directions)):
        dirs = [directions] if isinstance(directions, (str, os.PathLike)) else list(directions)
        if not dirs:
            raise InterventionError("directions= is empty: give probe direction directories, "
                                    "'mean-diff' or arrays")
        if dirs == ["mean-diff"]:
            if whatsup:
                raise InterventionError("directions='mean-diff' needs a generated dataset "
                                        "(masks); for What'sUp pass a probe direction directory")
            w = mean_diff_directions(adapter, ds)
            source = "mean-diff (in-house: slot-mean differences on the train split)"
        else:
            w = load_directions(dirs, adapter)
            source = ", ".join(map(str, dirs))
    else:
        w, source = directions, "arrays given in Python"
    from .amplification import apply_recipe
    from .recipes import resolve

    recipe = resolve(config.recipe, None if whatsup else ds)
    table, summary = run_e7(adapter, ds, w, dataclasses.replace(config, recipe=recipe),
                            progress=progress)
    summary["direction"] = source
    apply_recipe(summary, recipe)  # paper: the headline selections are the authors'
    cfg = {k: list(v) if isinstance(v, tuple) else v
           for k, v in dataclasses.asdict(config).items()}
    cfg["direction"] = source
    cfg["recipe"] = recipe
    return ExperimentResult("e7", table, summary, cfg, name, where,
                            extra={"e7_dose_response": pd.DataFrame(summary["dose_response"])})


# --------------------------------------------------------------------------- CLI wrappers
def patch_to_dir(model: str, data: str, out: str, config, *,
                 progress: bool = True, scheduler: str | None = None) -> dict:
    """``spatialbind patch``: :func:`patch` then ``.save(out)``
    (table, summary, config and plots). Returns the summary. ``scheduler`` (``local:N`` or an
    address) runs the grid's chunks on a dask cluster (:mod:`interventions.cluster`)."""
    from .results import check_out

    check_out(out)  # a bad --out fails before the model loads, and no empty folder is left
    if scheduler is not None:
        from .cluster import patch_cluster

        t, s, c, regions = patch_cluster(config, model=model, data=data, scheduler=scheduler,
                                         progress=progress)
        res = ExperimentResult(config.experiment, t, s, c, str(model), str(data),
                               regions=regions)
    else:
        res = patch(config, model=model, data=data, progress=progress)
    res.save(out)
    return res.summary


def ablate_to_dir(model: str, data: str, out: str, config, *,
                  progress: bool = True) -> dict:
    """``spatialbind ablate``: :func:`ablate` then ``.save(out)``
    (table, summary, config and plot). Returns the summary."""
    from .results import check_out

    check_out(out)  # a bad --out fails before the model loads, and no empty folder is left
    res = ablate(config, model=model, data=data, progress=progress)
    res.save(out)
    return res.summary


def amplify_to_dir(model: str, data: str, out: str, config, *,
                   direction=None, progress: bool = True, scheduler: str | None = None,
                   controls=None) -> dict:
    """``spatialbind amplify``: :func:`amplify` then ``.save(out)``
    (table, summary, config, dose-response table and plot). Returns the summary.

    ``direction`` is one or more direction directories (``probes`` export), or ``"mean-diff"``
    for the in-house mean-difference directions from the dataset's train split.
    """
    from .results import check_out

    if not direction:
        raise InterventionError("--direction is required: a probe direction directory "
                                "(spatialbind probe --export-directions) or 'mean-diff'")
    dirs = list(direction) if not isinstance(direction, str) else [direction]
    if str(data).startswith("whatsup:") and dirs == ["mean-diff"]:
        raise InterventionError("--direction mean-diff needs a generated dataset (masks); for "
                                "What'sUp pass a probe direction directory")
    check_out(out)  # a bad --out fails before the model loads, and no empty folder is left
    adapter = None
    if scheduler is not None:  # chunks of the alpha sweep on a dask cluster
        from .cluster import amplify_cluster

        t, s, c, extra = amplify_cluster(config, model=model, data=str(data), directions=dirs,
                                         scheduler=scheduler, progress=progress)
        res = ExperimentResult("e7", t, s, c, str(model), str(data), extra=extra)
    else:
        adapter, name = _model(model)
        res = amplify(config, model=adapter, data=str(data), directions=dirs, progress=progress)
        res.model = name
    if controls is not None:  # the authors' COCO sanity controls (interventions/controls.py)
        from .controls import controls_to_dir

        if adapter is None:
            adapter, _ = _model(model)
        res.summary["sanity_controls"] = controls_to_dir(adapter, str(data), out, controls,
                                                         progress=progress)
    res.save(out)
    return res.summary
