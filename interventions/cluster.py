"""Intervention sweeps on a dask.distributed cluster: a thin dispatch layer over the serial runners.

The grids are split into independent chunks, each chunk is the serial runner
(:func:`interventions.patching.run_patch`, :func:`interventions.amplification.run_e7`) with a narrowed
config, run as one cluster task, and the chunk tables are put back in the serial order:

- E4: one chunk per (layer, region) cell of the grid;
- E6: one chunk per layer (each chunk also computes the ablated-only row; the first chunk's is kept);
- E7: one chunk per alpha (every chunk also runs alpha = 0, the reference of fixed/broken; the
  first chunk's is kept).

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


def _patch_task(model: str, data: str, config):
    from .patching import run_patch

    return run_patch(_adapter(model), _dataset(data), config, progress=False)


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


def _robust_only(config) -> None:
    from .errors import InterventionError

    recipe = getattr(config, "recipe", "robust")
    if recipe != "robust":
        raise InterventionError(f"scheduler= runs recipe='robust' sweeps only (got recipe="
                                f"{recipe!r}: the paper protocols' summaries are not split into "
                                "chunks yet); add --recipe robust or drop --scheduler")


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
    ``(table, summary, config dict)`` for its ``ExperimentResult``."""
    from .patching import _cfg

    _robust_only(config)
    table, summary = run_patch_cluster(str(model), str(data), config, scheduler,
                                       progress=progress)
    return table, summary, _cfg(config)


def amplify_cluster(config, *, model: str, data: str, directions: list[str], scheduler: str,
                    progress: bool = True):
    """:func:`interventions.experiments.amplify` with the alphas on a cluster; returns
    ``(table, summary, config dict, extra tables)``."""
    _robust_only(config)
    table, summary = run_e7_cluster(str(model), str(data), config, list(directions), scheduler,
                                    progress=progress)
    source = ("mean-diff (in-house: slot-mean differences on the train split)"
              if list(directions) == ["mean-diff"] else ", ".join(map(str, directions)))
    summary["direction"] = source
    cfg = {k: list(v) if isinstance(v, tuple) else v
           for k, v in dataclasses.asdict(config).items()}
    cfg["direction"] = source
    return table, summary, cfg, {"e7_dose_response": pd.DataFrame(summary["dose_response"])}


def run_patch_cluster(model: str, data: str, config, scheduler: str, *,
                      progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """E4 / E6 (``config.experiment``) on a cluster; returns ``(table, summary)`` as
    :func:`~interventions.patching.run_patch` does. E2 runs as one task."""
    from .patching import _finish

    if config.experiment == "e2":
        return map_tasks(_patch_task, [(model, str(data), config)], scheduler, desc="E2",
                         progress=progress)[0]
    layers = map_tasks(_layers_task, [(model, config.layers)], scheduler, desc="layers",
                       progress=False)[0]
    if config.experiment == "e4":
        cells = [(l, r) for r in config.regions for l in layers]
        chunks = [dataclasses.replace(config, layers=str(l), regions=(r,)) for l, r in cells]
    else:
        chunks = [dataclasses.replace(config, layers=str(l)) for l in layers]
    res = map_tasks(_patch_task, [(model, str(data), c) for c in chunks], scheduler,
                    desc=f"{config.experiment.upper()} chunks", progress=progress)
    tables = [t for t, _ in res]
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
    skipped = list({s["item"]: s for _, summ in res for s in summ.get("skipped", [])}.values())
    _, summary = _finish(table.to_dict(orient="records"), _counter(s for _, s in res), config,
                         config.experiment.upper(), skipped)
    return table, summary


def run_e7_cluster(model: str, data: str, config, direction: list[str], scheduler: str, *,
                   progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """E7's alpha sweep on a cluster, one chunk per alpha; returns ``(table, summary)`` as
    :func:`~interventions.amplification.run_e7` does."""
    from .amplification import CONTROLS, summarize_e7

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
    c = _counter(s for _, s in res)
    summary.update(forwards=c.forwards, naive_forwards=c.naive_forwards)
    return table, summary
