"""Intervention sweeps on a dask.distributed cluster: a thin dispatch layer over the serial runners.

The grids are split into independent chunks, each chunk is the serial runner
(:func:`interventions.patching.run_patch`, :func:`interventions.amplification.run_e7`) with a narrowed
config, run as one cluster task, and the chunk tables are put back in the serial order:

- E4: one chunk per (layer, region) cell of the grid (each chunk computes every region's token
  pairs, so an item that cannot run in one region is skipped in every cell, as serially);
- E6: one chunk per layer (each chunk also computes the ablated-only row; the first chunk's is kept);
- E7: one chunk per alpha (every chunk also runs alpha = 0, the reference of fixed/broken; the
  first chunk's is kept).

Both recipes run. Under ``paper`` every chunk makes the same item choices as the serial run (the
authors' pairs are drawn with a fixed seed and kept by the clean / counterfactual runs, which no
layer or region changes), so the chunk's recipe fields (pairs, dropped and skipped items) are
taken from the first chunk, and so is ``regions.parquet`` (every chunk lists every region's
pairs).

The summary is recomputed from the merged table by the serial code's own summariser, so the
results equal a serial run; ``forwards`` / ``naive_forwards`` add up the chunks' counts (each chunk
runs its base and source inputs again). Workers load the model once and keep it between tasks;
failed chunks are retried; one progress bar on the client counts chunks. Nothing here knows how an
experiment works inside.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

_CACHE: dict[str, Any] = {}


def _adapter(model: str):
    from .stimuli import load_model

    if _CACHE.get("model_name") != model:
        _CACHE.clear()
        _CACHE["adapter"] = load_model(model)
        _CACHE["model_name"] = model
    return _CACHE["adapter"]


def _dataset(data: str):
    from scenegen import read_dataset

    key = ("data", str(data))
    if key not in _CACHE:
        _CACHE[key] = read_dataset(data)
    return _CACHE[key]


def _layers_task(model: str, spec) -> list[int]:
    from .hooks import n_resid_sites
    from .patching import parse_layers

    return parse_layers(spec, n_resid_sites(_adapter(model)))


def _patch_task(model: str, data: str, config, patch_regions=None):
    from .patching import run_patch
    from .regions import empty_frame

    regions: list | None = None if config.experiment == "e2" else []
    t, s = run_patch(_adapter(model), _dataset(data), config, progress=False, regions=regions,
                     patch_regions=patch_regions)
    if regions is None:
        return t, s, None
    return t, s, pd.concat(regions, ignore_index=True) if regions else empty_frame()


def _e7_task(model: str, data: str, config, directions: list[str]):
    from .amplification import load_directions, mean_diff_directions, run_e7, whatsup_items

    adapter = _adapter(model)
    if str(data).startswith("whatsup:"):
        ds = whatsup_items(str(data), config, model_name=model)
    else:
        ds = _dataset(data)
    w = mean_diff_directions(adapter, ds) if list(directions) == ["mean-diff"] \
        else load_directions(list(directions), adapter)
    return run_e7(adapter, ds, w, config, progress=False)


def map_tasks(fn, arg_list: list[tuple], scheduler: str, *, desc: str, progress: bool = True,
              retries: int = 2) -> list:
    """Run ``fn(*args)`` for every ``args`` on the cluster (``local:N`` or an address); results in
    the order of ``arg_list``; one progress bar over tasks."""
    import logging

    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    from vlms.launch import parse_scheduler

    addr, n = parse_scheduler(scheduler)
    cluster = None
    if addr == "local":
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        client = Client(addr, timeout="30s")
    try:
        futs = [client.submit(fn, *args, pure=False, retries=retries) for args in arg_list]
        index = {f.key: i for i, f in enumerate(futs)}
        out: list = [None] * len(futs)
        with tqdm(total=len(futs), desc=desc, unit="chunk", disable=not progress,
                  dynamic_ncols=True) as bar:
            for f in as_completed(futs):
                out[index[f.key]] = f.result()
                bar.update()
        return out
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _order(table: pd.DataFrame, keys: list[tuple[str, list]]) -> pd.DataFrame:
    """Sort rows by the rank of each key's value in its given order (the serial loop order)."""
    ranks = {f"_r{i}": table[k].map({v: j for j, v in enumerate(vals)})
             for i, (k, vals) in enumerate(keys)}
    t = table.assign(**ranks).sort_values(list(ranks), kind="stable")
    return t.drop(columns=list(ranks)).reset_index(drop=True)


def _counter(summaries):
    from .sweeps import ForwardCounter

    c = ForwardCounter()
    for s in summaries:
        c.forwards += int(s.get("forwards", 0))
        c.rows += int(s.get("rows", 0))
        c.naive_forwards += int(s.get("naive_forwards", 0))
    return c


def patch_cluster(config, *, model: str, data: str, scheduler: str, progress: bool = True):
    """:func:`interventions.experiments.patch` with the grid on a cluster; returns
    ``(table, summary, config dict, regions)`` for its ``ExperimentResult``."""
    from .patching import _cfg

    table, summary, regions = run_patch_cluster(str(model), str(data), config, scheduler,
                                                progress=progress, with_regions=True)
    return table, summary, summary.get("config", _cfg(config)), regions


def amplify_cluster(config, *, model: str, data: str, directions: list[str], scheduler: str,
                    progress: bool = True):
    """:func:`interventions.experiments.amplify` with the alphas on a cluster; returns
    ``(table, summary, config dict, extra tables)``."""
    from .amplification import apply_recipe
    from .recipes import resolve

    whatsup = str(data).startswith("whatsup:")
    recipe = resolve(config.recipe, None if whatsup else _dataset(str(data)))
    # the chunks run the resolved recipe (paper: the authors' amplification and random draws)
    table, summary = run_e7_cluster(str(model), str(data),
                                    dataclasses.replace(config, recipe=recipe),
                                    list(directions), scheduler, progress=progress)
    source = ("mean-diff (in-house: slot-mean differences on the train split)"
              if list(directions) == ["mean-diff"] else ", ".join(map(str, directions)))
    summary["direction"] = source
    apply_recipe(summary, recipe)
    cfg = {k: list(v) if isinstance(v, tuple) else v
           for k, v in dataclasses.asdict(config).items()}
    cfg["direction"] = source
    cfg["recipe"] = recipe
    return table, summary, cfg, {"e7_dose_response": pd.DataFrame(summary["dose_response"])}


def run_patch_cluster(model: str, data: str, config, scheduler: str, *,
                      progress: bool = True, with_regions: bool = False):
    """E2 / E4 / E6 (``config.experiment``) on a cluster; returns ``(table, summary)`` as
    :func:`~interventions.patching.run_patch` does (``with_regions``: also the
    ``regions.parquet`` table, None for E2). E2 runs as one task."""
    from .patching import _finish

    if config.experiment == "e2":
        t, s, _ = map_tasks(_patch_task, [(model, str(data), config)], scheduler, desc="E2",
                            progress=progress)[0]
        return (t, s, None) if with_regions else (t, s)
    layers = map_tasks(_layers_task, [(model, config.layers)], scheduler, desc="layers",
                       progress=False)[0]
    if config.experiment == "e4":
        cells = [(l, r) for r in config.regions for l in layers]
        args = [(model, str(data), dataclasses.replace(config, layers=str(l)), (r,))
                for l, r in cells]
    else:
        args = [(model, str(data), dataclasses.replace(config, layers=str(l))) for l in layers]
    res = map_tasks(_patch_task, args, scheduler,
                    desc=f"{config.experiment.upper()} chunks", progress=progress)
    tables = [t for t, _, _ in res]
    if config.experiment == "e6":  # the ablated-only row (layer -1) once per item
        tables = [tables[0]] + [t[t["layer"] >= 0] for t in tables[1:]]
    table = pd.concat(tables, ignore_index=True)
    items = list(dict.fromkeys(tables[0]["item"]))
    items += [i for i in dict.fromkeys(table["item"]) if i not in items]
    order = [("item", items)]
    if config.experiment == "e4":
        order += [("region", list(config.regions)), ("layer", layers)]
    else:
        order += [("layer", [*layers, -1])]
    table = _order(table, order)
    first = res[0][1]  # the recipe's item choices: the same in every chunk
    skipped = list({s["item"]: s for _, summ, _ in res for s in summ.get("skipped", [])}.values())
    dropped = first.get("dropped_wrong") or first.get("dropped_ablated_wrong") or ()
    _, summary = _finish(table.to_dict(orient="records"), _counter(s for _, s, _ in res), config,
                         config.experiment.upper(), skipped, first.get("recipe", "robust"),
                         dropped=dropped)
    for k, v in first.items():  # pairs, dropped / beyond-the-cap items, pool ...
        summary.setdefault(k, v)
    if not with_regions:
        return table, summary
    return table, summary, res[0][2]  # every chunk lists every region's pairs


def run_e7_cluster(model: str, data: str, config, direction: list[str], scheduler: str, *,
                   progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """E7's alpha sweep on a cluster, one chunk per alpha; returns ``(table, summary)`` as
    :func:`~interventions.amplification.run_e7` does."""
    from .amplification import CONTROLS, summarize_e7, summarize_e7_paper

    alphas = list(config.alphas)
    chunks = [dataclasses.replace(config, alphas=tuple(dict.fromkeys((0.0, float(a)))))
              for a in alphas]
    res = map_tasks(_e7_task, [(model, str(data), c, list(direction)) for c in chunks],
                    scheduler, desc="E7 chunks", progress=progress)
    tables = []
    for k, ((t, _), a) in enumerate(zip(res, alphas)):
        keep = t["alpha"] == float(a)
        if k == 0 and 0.0 in [float(x) for x in alphas]:
            keep |= t["alpha"] == 0.0
        tables.append(t[keep])
    table = pd.concat(tables, ignore_index=True).drop_duplicates(["item", "control", "alpha"])
    items = list(dict.fromkeys(res[0][0]["item"]))
    table = _order(table, [("item", items), ("control", list(CONTROLS)),
                           ("alpha", [float(a) for a in alphas])])
    summary = summarize_e7(table, config)
    summary["paper"] = summarize_e7_paper(table)
    c = _counter(s for _, s in res)
    summary.update(forwards=c.forwards, naive_forwards=c.naive_forwards)
    return table, summary
