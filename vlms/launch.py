"""Where this extraction process sits among others: shards from launcher variables, and extraction
on a dask.distributed cluster.

Launchers
---------
:func:`launcher_shard` reads the rank / world-size variables the usual launchers set, so
``spatialbind extract`` under any of them fills its share of the store with no ``--shard`` flag
(an explicit ``--shard`` wins):

=================================================  =========================================
variables                                          set by
=================================================  =========================================
``RANK`` / ``WORLD_SIZE`` (+ ``LOCAL_RANK``)        torchrun, torch.distributed.launch, accelerate, deepspeed
``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``  Slurm job arrays (``sbatch --array``); ids
                                                   are taken relative to ``SLURM_ARRAY_TASK_MIN``
``SLURM_PROCID`` / ``SLURM_NTASKS``                 ``srun`` (several tasks per job step)
``OMPI_COMM_WORLD_RANK`` / ``OMPI_COMM_WORLD_SIZE``  Open MPI ``mpirun``
``PMI_RANK`` / ``PMI_SIZE``                         MPICH / Intel MPI
=================================================  =========================================

A Slurm array whose tasks each run several ``srun`` tasks combines both (shard
``array_index * ntasks + procid`` of ``count * ntasks``). ``LOCAL_RANK`` (or
``SLURM_LOCALID``) picks the GPU when no ``--device`` is given.

Cluster
-------
:func:`run_extract_cluster` runs the same extraction on a dask.distributed cluster
(``--scheduler ADDRESS`` or ``local:N``): one task creates the store (the client never loads the
model), then one task per block of consecutive store shards (whole write batches, so two tasks
never write the same stored object) extracts and writes its samples; workers keep the loaded
model between tasks. Failed blocks are retried (``retries``): a block's batches are marked done
only after their data, so a retry writes only what is missing. With a CUDA ``--device`` each task
asks for one ``GPU`` resource (start workers with ``--resources GPU=1``; ``local:N`` declares one
per worker when CUDA is available). One progress bar on the client counts samples.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from .errors import ExtractError

from .launchvars import LAUNCHER_VARS, launcher_device, launcher_shard  # noqa: F401 - re-exported


# --------------------------------------------------------------------------- dask cluster
_ADAPTERS: dict[tuple, Any] = {}


def _adapter(cfg):
    """The worker's loaded adapter for ``cfg`` (loaded once per worker process)."""
    from .registry import load_adapter

    key = (cfg.model, cfg.dtype, cfg.device, cfg.seed)
    if key not in _ADAPTERS:
        _ADAPTERS.clear()
        _ADAPTERS[key] = load_adapter(cfg.model, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed)
    return _ADAPTERS[key]


def _worker_cfg(cfg):
    """``cfg`` with a CUDA device narrowed to this worker's GPU (worker index mod GPU count)."""
    import dataclasses

    if not (cfg.device or "").startswith("cuda") or ":" in cfg.device:
        return cfg
    import torch

    try:
        from distributed import get_worker

        name = str(get_worker().name)
        idx = int(name.rsplit("-", 1)[-1]) if name.rsplit("-", 1)[-1].isdigit() else 0
    except (ImportError, ValueError):
        idx = 0
    return dataclasses.replace(cfg, device=f"cuda:{idx % max(torch.cuda.device_count(), 1)}")


def _prepare_task(cfg) -> list[list[int]]:
    """Create (or reopen) the store; return the pending batches (sample indices)."""
    from .extract import open_writer

    cfg = _worker_cfg(cfg)
    w, _ = open_writer(cfg, _adapter(cfg))
    try:
        return [b.tolist() for b in w.batches(None)]
    finally:
        w.close()


def _block_task(cfg, batches: list[list[int]]) -> int:
    """Extract and write the given batches (whole store shards); return samples written."""
    from .extract import extract_batches

    cfg = _worker_cfg(cfg)
    return extract_batches(cfg, _adapter(cfg), batches)


def parse_scheduler(spec: str) -> tuple[str, int | None]:
    """``local:N`` -> ``("local", N)``; an address -> ``(address, None)``."""
    spec = spec.strip()
    if spec == "local" or spec.startswith("local:"):
        n = spec.partition(":")[2] or "2"
        if not n.isdigit() or int(n) < 1:
            raise ExtractError(f"--scheduler {spec!r}: write local:N with N >= 1 workers, or a "
                               "scheduler address such as tcp://host:8786")
        return "local", int(n)
    if not spec:
        raise ExtractError("--scheduler is empty: give local:N or a scheduler address")
    return spec, None


def block_plan(batches: list[list[int]], n_workers: int, block_batches: int | None = None
               ) -> list[list[list[int]]]:
    """Group consecutive batches into blocks (about 4 blocks per worker unless
    ``block_batches`` is given)."""
    if not batches:
        return []
    k = block_batches or max(1, -(-len(batches) // (4 * max(n_workers, 1))))
    return [batches[i:i + k] for i in range(0, len(batches), k)]


def run_extract_cluster(cfg, scheduler: str, *, progress: bool = True,
                        echo: Callable[[str], Any] = print, retries: int = 2,
                        block_batches: int | None = None) -> dict[str, int]:
    """Run :func:`vlms.extract.run_extract`'s work on a dask.distributed cluster.

    Parameters
    ----------
    cfg : ExtractConfig
        What to extract (``cfg.shard`` is ignored: the blocks cover every pending batch).
    scheduler : str
        ``local:N`` (a LocalCluster of N single-threaded worker processes) or a scheduler
        address; the dataset and store paths must be reachable from the workers.
    retries : int
        Times a failed block is resubmitted (a retry writes only its batches not yet done).
    block_batches : int, optional
        Store shards (write batches) per task.

    Returns
    -------
    dict
        ``written``, ``done``, ``total``, ``blocks``, ``workers``.
    """
    import logging

    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    addr, n_local = parse_scheduler(scheduler)
    cuda = (cfg.device or "").startswith("cuda")
    resources = {"GPU": 1} if cuda else None
    cluster = None
    if addr == "local":
        kw: dict[str, Any] = {}
        try:
            import torch

            if torch.cuda.is_available():
                kw["resources"] = {"GPU": 1}
        except ImportError:
            pass
        cluster = LocalCluster(n_workers=n_local, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR, **kw)
        client = Client(cluster)
    else:
        client = Client(addr, timeout="30s")
    try:
        n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
        batches = client.submit(_prepare_task, cfg, resources=resources, pure=False,
                                retries=retries).result()
        blocks = block_plan(batches, n_workers, block_batches)
        n_todo = sum(len(b) for blk in blocks for b in blk)
        echo(f"dask: {n_todo} samples to extract in {len(blocks)} blocks on {n_workers} "
             f"workers ({client.scheduler.address if cluster is None else 'local cluster'})")
        futs = {client.submit(_block_task, cfg, blk, resources=resources, pure=False,
                              retries=retries): sum(len(b) for b in blk) for blk in blocks}
        written = 0
        with tqdm(total=n_todo, desc="extract", unit="sample", disable=not progress,
                  dynamic_ncols=True) as bar:
            for fut in as_completed(futs):
                written += fut.result()
                bar.update(futs[fut])
        done_total = client.submit(_done_count, cfg, pure=False).result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return {"written": written, "done": done_total[0], "total": done_total[1],
            "blocks": len(blocks), "workers": n_workers}


def _done_count(cfg) -> tuple[int, int]:
    import numpy as np
    import zarr

    from actstore import schema

    root = zarr.open_group(schema.resolve_store(cfg.store, mode="r"), mode="r")
    done = np.asarray(root[schema.model_key(cfg.model)]["samples"]["done"][:], bool)
    return int(done.sum()), len(done)
