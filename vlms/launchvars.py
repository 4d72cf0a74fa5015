"""Shard and GPU of this process from launcher variables (torchrun, Slurm, MPI); see
:mod:`vlms.launch` for the table. Kept apart from :mod:`vlms.launch` so that :mod:`vlms.extract`
can use it without an import cycle (``launch`` runs ``extract`` on cluster workers)."""
from __future__ import annotations

import os
from typing import Mapping

from .errors import ExtractError

# (rank variable, size variable, name shown to the user)
LAUNCHER_VARS = (
    ("RANK", "WORLD_SIZE", "RANK/WORLD_SIZE (torchrun)"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK/SIZE (mpirun)"),
    ("PMI_RANK", "PMI_SIZE", "PMI_RANK/PMI_SIZE (MPI)"),
)


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ExtractError(f"launcher variable {name}={env[name]!r} is not an integer; unset it "
                           "or pass --shard i/n explicitly") from None


def launcher_shard(env: Mapping[str, str] | None = None) -> tuple[tuple[int, int] | None, str | None]:
    """``((i, n), description)`` from launcher variables, or ``(None, None)`` when there are none
    (or the world has one process).

    Raises
    ------
    ExtractError
        A variable that is not an integer, or a rank outside ``0..size-1``.
    """
    env = os.environ if env is None else env
    found: tuple[int, int, str] | None = None
    for rv, sv, name in LAUNCHER_VARS:
        if rv in env and sv in env:
            found = (_int(env, rv), _int(env, sv), name)
            break
    if found is None:
        arr = None
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            lo = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
            arr = (_int(env, "SLURM_ARRAY_TASK_ID") - lo, _int(env, "SLURM_ARRAY_TASK_COUNT"))
        proc = None
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            proc = (_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"))
        if arr and proc and proc[1] > 1:
            found = (arr[0] * proc[1] + proc[0], arr[1] * proc[1],
                     "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT x SLURM_PROCID/SLURM_NTASKS")
        elif arr:
            found = (*arr, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (Slurm array)")
        elif proc:
            found = (*proc, "SLURM_PROCID/SLURM_NTASKS (srun)")
    if found is None:
        return None, None
    i, n, name = found
    if not (n >= 1 and 0 <= i < n):
        raise ExtractError(f"launcher variables {name} give shard {i}/{n}, outside 0 <= i < n; "
                           "check the launcher's settings or pass --shard i/n explicitly")
    if n == 1:
        return None, None
    return (i, n), name


def launcher_device(env: Mapping[str, str] | None = None) -> str | None:
    """``cuda:LOCAL_RANK`` (or ``cuda:SLURM_LOCALID``) when CUDA is available and a launcher set
    one of them; else None."""
    env = os.environ if env is None else env
    local = env.get("LOCAL_RANK", env.get("SLURM_LOCALID"))
    if local is None:
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return f"cuda:{int(local) % torch.cuda.device_count()}"
