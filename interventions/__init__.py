"""interventions: interchange / criss-cross patching, ablation, last-token patching and direction
amplification (the paper's E2, E4, E5, E6, E7), on one hook mechanism.

Public API (imported lazily, so ``import interventions`` does not load torch)::

    # experiments: a frozen config in, an ExperimentResult out, .save(dir) separate
    res = interventions.patch(interventions.PatchConfig(experiment="e4"), model=ad, data=ds)
    res = interventions.ablate(interventions.AblateConfig(), model=ad, data=ds)
    res = interventions.amplify(interventions.AmplifyConfig(), model=ad, data=ds,
                                directions=w)        # paths, "mean-diff" or (k, hidden) arrays
    res.table, res.summary; res.save("out/e4")

    # the mechanism: patches at any site of the store's vocabulary
    r = interventions.run(ad, inputs, capture=["vision.blocks.0", "projector", "lm.resid.2"])
    interventions.run(ad, inputs, patches=[interventions.Patch(
        site="lm.resid.2", intervention=interventions.Interchange(), index=..., source=...)])
    interventions.sweep(ad, base, rows=[[interventions.Edit(...)]], sources={...})

See ``interventions/README.md``.
"""
from __future__ import annotations

from common import lazy_exports

_EXPORTS = {
    # experiments
    "ExperimentResult": "experiments", "patch": "experiments", "ablate": "experiments",
    "amplify": "experiments",
    "PatchConfig": "patching", "AblateConfig": "ablation", "AmplifyConfig": "amplification",
    "run_e2": "patching", "run_e4": "patching", "run_e6": "patching", "run_patch": "patching",
    "run_e5": "ablation", "run_e7": "amplification",
    "patch_to_dir": "experiments", "ablate_to_dir": "experiments",
    "amplify_to_dir": "experiments",
    # the mechanism
    "Intervention": "hooks", "Interchange": "hooks", "Ablate": "hooks", "Scale": "hooks",
    "AddDirection": "hooks", "Amplify": "hooks", "INTERVENTIONS": "hooks", "Patch": "hooks",
    "RunResult": "hooks", "run": "hooks", "hooked": "hooks", "pairs": "hooks",
    "parse_site": "hooks", "tile_inputs": "hooks",
    "Edit": "sweeps", "SourceRun": "sweeps", "SweepResult": "sweeps", "sweep": "sweeps",
    "run_edits": "sweeps", "option_probs": "sweeps", "option_scores": "sweeps",
    "TokenLayout": "layout", "crisscross_map": "layout", "map_region": "layout",
    # stimuli and questions
    "load_model": "stimuli", "prepare": "stimuli", "load_items": "questions",
    "two_option_queries": "questions",
    # errors
    "InterventionError": "errors", "EvaluationError": "errors",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
