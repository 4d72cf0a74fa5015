"""probes: linear probes trained offline from the activation store; probe maps; direction export.

Public API (imported lazily, so ``import probes`` stays light)::

    probes.dataset(store, model=, site=, layer=, role=, label=, pool=, where=, items=) -> ProbeData
    probes.fit_probe(data, ProbeConfig(...)) -> ProbeResult          # grouped CV, control, CI
    probes.sweep(store, SweepConfig(...), ProbeConfig(...)) -> DataFrame   # layers x roles on dask
    probes.probe_map / heldout_probe_map / map_summary                # E3 strip heatmaps
    probes.direction_from_result / save_direction / load_direction / axis_directions  # E7

See ``probes/README.md``.
"""
from __future__ import annotations

from common import lazy_exports

# ``probes.dataset`` is the function (the module of the same name is imported here first, so the
# package attribute stays bound to the function; use ``from probes.dataset import ...`` for the rest).
from .dataset import ProbeData, dataset

_EXPORTS = {
    "ProbeConfig": "config", "SweepConfig": "config",
    "from_arrays": "dataset", "flatten": "dataset",
    "ProbeResult": "fit", "fit_probe": "fit", "make_probe": "fit", "split_groups": "fit",
    "make_splits": "fit", "wilson_interval": "fit", "bootstrap_interval": "fit",
    "control_labels": "fit", "position_features": "fit",
    "ProbeMap": "maps", "probe_map": "maps", "heldout_probe_map": "maps", "map_summary": "maps",
    "Direction": "directions", "direction_from_pipeline": "directions",
    "direction_from_result": "directions", "save_direction": "directions",
    "load_direction": "directions", "axis_directions": "directions",
    "sweep": "sweep", "run_cell": "sweep", "write_outputs": "outputs",
    "plot_accuracy_heatmap": "plots", "plot_accuracy_lines": "plots", "plot_probe_maps": "plots",
    "ProbeError": "errors", "ConfigError": "errors", "DataError": "errors",
    "DirectionError": "errors",
}

__getattr__, __dir__, __all__ = lazy_exports(
    __name__, _EXPORTS, eager=("ProbeData", "dataset"))
