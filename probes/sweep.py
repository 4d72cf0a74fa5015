"""Probe sweeps over layers × roles, run in parallel through dask.

Each (layer, role) cell is one independent task (:func:`run_cell`): query the store, fit and score a
probe (:func:`probes.fit.fit_probe`), optionally extract its direction. :func:`sweep` runs the cells
serially, on a ``distributed.LocalCluster`` (default, 2 workers) or on a running scheduler given by
address, and returns one results row per cell, sorted by (layer, role) so the table does not depend
on where or in which order cells ran. With ``SweepConfig(engine="torch")`` the unit of work is a
block of ``layers_per_block`` layers of one role (:func:`run_block`): every fold, the control task
and the refit of those layers are one batched torch fit (:mod:`probes.batched`), the store is read
one block at a time, and BLAS/torch threads are set once for the sweep (or per dask worker).
A store given by path is opened inside each worker; an
in-memory store object is shipped to the workers once. Cells that have no usable data (e.g. the
``background`` role with an ``ordinal`` label) get a row with an ``error`` message instead of
stopping the sweep.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .config import ProbeConfig, SweepConfig
from .dataset import dataset, open_store
from .directions import direction_from_result, save_direction
from .errors import DataError
from .fit import fit_probe


def run_cell(store, *, model: str, site: str, layer: int, role: str, label: str, pool: str,
             probe_config: ProbeConfig, baselines: tuple[str, ...] = ("position",),
             where: dict | None = None, items=None, export: bool = False,
             blas_threads: int | None = None, data=None, region: str = "role"
             ) -> dict[str, Any]:
    """Fit and score the probe of one (layer, role) cell.

    ``data`` is the dataset directory whose scene factors and entity colours are joined on (see
    :func:`probes.dataset`). ``blas_threads`` caps BLAS threads while fitting (cells running side by side on dask workers
    would otherwise oversubscribe the cores); None leaves them alone.

    Returns
    -------
    dict
        ``row``: the results-table row (with ``error`` set and scores NaN when the cell has no
        usable data); ``direction``: a :class:`~probes.directions.Direction` when ``export``.
    """
    import dask

    t0 = time.perf_counter()
    base = {"model": model, "site": site, "layer": int(layer), "role": role, "label": label,
            "pool": pool}
    # Inside a distributed worker, a nested dask compute would go back to the cluster; read the
    # store synchronously in this task instead.
    with dask.config.set(scheduler="synchronous"), _blas_threads(blas_threads):
        try:
            data = dataset(open_store(store), model=model, site=site, layer=layer, role=role,
                           label=label, pool=pool, where=where, items=items, data=data,
                           region=region)
            res = fit_probe(data, probe_config, baselines=baselines if pool == "token" else ())
        except DataError as e:
            return {"row": {**base, "error": str(e), "seconds": time.perf_counter() - t0},
                    "direction": None}
    row = {**base, **res.to_row(), **_layout_counts(data), "error": None,
           "seconds": time.perf_counter() - t0}
    return {"row": row, "direction": direction_from_result(res) if export else None}


def _layout_counts(data) -> dict[str, Any]:
    """Result-table columns of a ``region='layout'`` cell: samples that had no layout cells (the
    store's object tokens were used) and entities whose box fits no block (left out)."""
    lay = data.meta.get("layout")
    if not lay:
        return {}
    return {"region": "layout", "n_role_fallback": lay["n_role_fallback"],
            "n_skipped_entities": lay["n_skipped_entities"]}


def run_block(store, *, model: str, site: str, layers, role: str, label: str, pool: str,
              probe_config: ProbeConfig, baselines: tuple[str, ...] = ("position",),
              where: dict | None = None, items=None, export: bool = False,
              threads: int | None = None, device: str | None = None, max_iter: int = 100,
              layers_per_block: int = 1, data=None, on_layer=None, region: str = "role",
              warm_start: bool = False) -> list[dict[str, Any]]:
    """Fit and score the probes of the ``layers`` of one role with the batched torch engine.

    The layers are taken ``layers_per_block`` at a time (memory: that many layers' rows, read
    from the store when their turn comes); each group is one
    :func:`probes.batched.fit_probes_batched` call, started from zero (as scikit-learn) or, with
    ``warm_start``, from the previous group's weights.
    ``threads`` caps BLAS and torch threads (None leaves them as set); ``on_layer(n)`` is called
    after each group (progress). Returns one ``{"row", "direction"}`` per layer, as
    :func:`run_cell`; a layer without usable data gets an ``error`` row.
    """
    import dask

    from .batched import fit_probes_batched

    out: list[dict[str, Any]] = []
    state: dict = {}
    bl = baselines if pool == "token" else ()
    layers = list(layers)
    with dask.config.set(scheduler="synchronous"), _threads(threads):
        for i in range(0, len(layers), layers_per_block):
            t0, c0 = time.perf_counter(), time.process_time()
            datas, ok = [], []
            for layer in layers[i:i + layers_per_block]:
                base = {"model": model, "site": site, "layer": int(layer), "role": role,
                        "label": label, "pool": pool}
                try:
                    datas.append(dataset(open_store(store), model=model, site=site, layer=layer,
                                         role=role, label=label, pool=pool, where=where,
                                         items=items, data=data, region=region))
                    ok.append(base)
                except DataError as e:
                    out.append({"row": {**base, "error": str(e), "seconds": 0.0},
                                "direction": None})
            if datas:
                first = datas[0]
                same = all(len(d) == len(first) and np.array_equal(d.y, first.y) for d in datas)
                results = []
                for grp in ([datas] if same else [[d] for d in datas]):
                    if not warm_start or len(grp[0]) != len(state.get("rows", grp[0].y)):
                        state = {}  # cold start, or other rows than the previous group
                    state["rows"] = grp[0].y
                    results += fit_probes_batched(grp, probe_config, baselines=bl, refit=export,
                                                  max_iter=max_iter, device=device, state=state)
                dt = (time.perf_counter() - t0) / len(datas)
                dc = (time.process_time() - c0) / len(datas)
                for base, res, d in zip(ok, results, datas):
                    row = {**base, **res.to_row(), **_layout_counts(d), "error": None,
                           "seconds": dt, "cpu_seconds": dc, "n_iter": res.meta.get("n_iter"),
                           "n_eval": res.meta.get("n_eval"),
                           "converged": res.meta.get("converged")}
                    out.append({"row": row,
                                "direction": direction_from_result(res) if export else None})
            del datas
            if on_layer is not None:
                on_layer(len(layers[i:i + layers_per_block]))
    return out


def sweep(store, config: SweepConfig, probe_config: ProbeConfig | None = None, *,
          where: dict | None = None, items=None, export_dir=None, data=None,
          progress: bool = True) -> pd.DataFrame:
    """Run every (layer, role) cell of ``config`` and collect the results table.

    Parameters
    ----------
    store : store object or path/URL
        Activation store (paths are opened in each worker).
    config : SweepConfig
        Model, site, layers, roles, label, pool, baselines, scheduler.
    probe_config : ProbeConfig, optional
        Probe, split, control and CI settings (shared by all cells).
    where, items : optional
        Sample filters passed to :func:`probes.dataset`.
    data : path, optional
        Dataset directory for scene factors / entity colours (:func:`probes.dataset`).
    export_dir : path, optional
        Write each cell's direction to ``export_dir/<site>__<role>__layer<NNN>/`` and an
        ``index.json`` listing them.
    progress : bool
        Show a progress bar over cells.

    Returns
    -------
    DataFrame
        One row per cell, sorted by (layer, role): scores, CI, control, selectivity, baselines,
        ``n``, ``data_hash``, ``error``, ``seconds``.
    """
    probe_config = probe_config or ProbeConfig()
    if not (isinstance(store, (str, bytes)) or hasattr(store, "__fspath__")):
        store = open_store(store)
    cells = [(layer, role) for layer in config.layers for role in config.roles]
    kw = dict(model=config.model, site=config.site, label=config.label, pool=config.pool,
              probe_config=probe_config, baselines=config.baselines, where=where, items=items,
              export=export_dir is not None, data=None if data is None else str(data),
              region=config.region)
    bar = tqdm(total=len(cells), desc=f"probe sweep {config.site}", unit="cell",
               disable=not progress)
    if config.engine == "torch":
        kw = {k: v for k, v in kw.items()}
        kw.update(device=config.device, max_iter=config.max_iter,
                  layers_per_block=config.layers_per_block, warm_start=config.warm_start)
        lpb = config.layers_per_block
        if config.scheduler == "serial":
            outs = []
            with _threads(config.threads or os.cpu_count() or 1):  # set once for the sweep
                for role in config.roles:  # layers in order: each fit starts from the last one
                    outs.extend(run_block(store, layers=config.layers, role=role,
                                          on_layer=bar.update, **kw))
        else:
            blocks = [(tuple(config.layers[i:i + lpb]), role) for role in config.roles
                      for i in range(0, len(config.layers), lpb)]
            outs = _run_dask(store, blocks, kw, config, bar, fn=run_block)
    elif config.scheduler == "serial":
        outs = []
        with _threads(config.threads):
            for layer, role in cells:
                outs.append(run_cell(store, layer=layer, role=role, **kw))
                bar.update()
    else:
        outs = _run_dask(store, cells, kw, config, bar)
    bar.close()
    rows = sorted((o["row"] for o in outs), key=lambda r: (r["layer"], config.roles.index(r["role"])))
    table = pd.DataFrame(rows)
    if export_dir is not None:
        _export(outs, Path(export_dir))
    return table


def add_baseline(table: pd.DataFrame, baseline: pd.DataFrame, *, name: str = "init") -> pd.DataFrame:
    """Join a baseline sweep (e.g. the same model with random init weights, extracted into another
    store) onto ``table`` by (layer, role): adds ``<name>_accuracy``, ``<name>_ci_low``,
    ``<name>_ci_high`` and ``<name>_data_hash``."""
    cols = {"accuracy": f"{name}_accuracy", "ci_low": f"{name}_ci_low",
            "ci_high": f"{name}_ci_high", "data_hash": f"{name}_data_hash"}
    b = baseline[["layer", "role", *[c for c in cols if c in baseline]]].rename(columns=cols)
    return table.merge(b, on=["layer", "role"], how="left", validate="one_to_one")


def _blas_threads(n: int | None):
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


@contextlib.contextmanager
def _threads(n: int | None):
    """BLAS (threadpoolctl) and torch intra-op threads capped at ``n`` (None: unchanged)."""
    if n is None:
        yield
        return
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            torch = None
    before = torch.get_num_threads() if torch is not None else None
    with _blas_threads(n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(before)


def _run_dask(store, cells, kw, config: SweepConfig, bar, fn=None) -> list[dict]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if config.scheduler == "local":
        cluster = LocalCluster(n_workers=config.n_workers, threads_per_worker=1,
                               processes=config.processes, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        client = Client(config.scheduler, timeout="10s")
    try:
        ref = store if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__") \
            else client.scatter(store, broadcast=True)
        if fn is None:
            futures = [client.submit(run_cell, ref, layer=layer, role=role, pure=False,
                                     blas_threads=config.threads or 1, **kw)
                       for layer, role in cells]
        else:
            futures = [client.submit(fn, ref, layers=layers, role=role, pure=False,
                                     threads=config.threads or 1, **kw)
                       for layers, role in cells]
        outs = []
        for fut in as_completed(futures):
            res = fut.result()
            if isinstance(res, list):
                outs.extend(res)
                bar.update(len(res))
            else:
                outs.append(res)
                bar.update()
        return outs
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _export(outs: list[dict], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    index = []
    for o in outs:
        d = o["direction"]
        if d is None:
            continue
        family = d.site.rsplit(".", 1)[0] if d.site.rsplit(".", 1)[-1].isdigit() else d.site
        name = f"{family}__{d.role}__layer{d.layer:03d}"
        save_direction(d, root / name)
        index.append({"path": name, "model": d.model, "site": d.site, "layer": d.layer,
                      "role": d.role, "label": d.label, "cv_accuracy": d.cv_accuracy,
                      "components": list(d.components), "width": d.width})
    index.sort(key=lambda e: (e["layer"], e["role"]))
    (root / "index.json").write_text(json.dumps(index, indent=1))
