"""organisms: model organisms, small real-class VLMs trained from scratch with a *known* binding
mechanism (training, stimuli, build, and the "which mechanism emerged?" checks).

The shipped checkpoints are data and stay in ``vlms/organisms/<name>/`` (they load as
``--model organism-<name>`` through :mod:`vlms.registry`). Modules: :mod:`organisms.trainer`
(config, training loop, save/load), :mod:`organisms.model` (model construction, batching, the
image-token shuffle hook), :mod:`organisms.data` (on-the-fly Squares stimuli and splits),
:mod:`organisms.probe` (slot probe, shuffle, ablation and criss-cross tests),
:mod:`organisms.criteria` (the paper's effects as validation thresholds), :mod:`organisms.commands`
(``spatialbind organism``).

Public API (imported lazily, so ``import organisms`` does not load torch)::

    cfg = organisms.OrganismConfig(mechanism="vision", steps=200)
    res = organisms.train(cfg, out="out/organism")        # -> TrainResult
    model, processor, log = organisms.load(organisms.shipped("qwen2-vl-vision"))
    organisms.mechanism_report(model, processor, cfg=log["config"])
"""
from __future__ import annotations

from common import lazy_exports

_EXPORTS = {
    "OrganismConfig": "trainer", "OrganismError": "trainer", "TrainResult": "trainer",
    "train": "trainer", "load": "trainer", "save": "trainer", "shipped": "trainer",
    "SHIPPED": "trainer",
    "accuracy": "trainer", "evaluate": "trainer", "mechanism_defaults": "trainer",
    "ablation_tokens": "trainer", "THRESHOLDS": "criteria", "classify": "criteria",
    "ARCHS": "trainer", "MECHANISMS": "trainer", "TASKS": "trainer",
    "build": "model", "Batcher": "model", "ShuffleImageTokens": "model",
    "make_splits": "data", "eval_items": "data", "render": "data",
    "slot_probe": "probe", "shuffle_test": "probe", "mechanism_report": "probe",
    "ablation_test": "probe", "crisscross_test": "probe", "region_slots": "data",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
