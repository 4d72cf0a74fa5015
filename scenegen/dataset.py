"""On-disk dataset format: writing (parallel, resumable, byte-deterministic) and reading.

Layout of a dataset directory ``DIR``::

    DIR/config.json         resolved generator config, its hash, toolkit version
    DIR/metadata.jsonl      one Stimulus per line (the contract other tools read)
    DIR/manifest.parquet    the same records as a table (nested entities / prompts)
    DIR/images/<id>.png     RGB
    DIR/masks/<id>.png      instance ids (8- or 16-bit, lossless), 0 = background
    DIR/depth/<id>.npy      float32 depth, 3D scenes only
    DIR/parts/              per-unit records while generating (resume bookkeeping)

A *unit* is one base stimulus together with its counterfactual twins. Each unit is produced from
``numpy.random.default_rng([seed, index])`` alone, so the output does not depend on the number of
workers or on interruptions: a killed run resumed with the same command gives the same bytes.
A unit's pixels are written first (to temporary names, then renamed); its record file in
``parts/`` is written last and marks the unit as done.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from common.io import boundary, test_point

from .errors import DatasetError
from .record import Rendered, Stimulus, dumps

FORMAT_VERSION = 1


class Generator(Protocol):
    """What :func:`write_dataset` needs from a generator."""

    def __len__(self) -> int:
        """Number of units (base stimuli)."""

    def unit(self, index: int) -> list[Rendered]:
        """The base stimulus ``index`` and its twins; deterministic in (config, seed, index)."""

    def extras(self) -> list[Rendered]:
        """Stimuli shared by the whole dataset (e.g. the blank canvas); may be empty."""


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a resolved config (JSON with sorted keys)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _toolkit_version() -> str:
    try:
        from importlib.metadata import version

        return version("spatialbind")
    except Exception:  # noqa: BLE001 - running from a source tree without install
        return "0+unknown"


# --------------------------------------------------------------------------- writing
def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DatasetError(
                f"disk full while writing {path}; free some space and run the same command "
                "again: finished items are kept and generation resumes where it stopped"
            ) from None
        raise


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if arr.ndim == 2 and arr.dtype == np.uint16:
        img = Image.fromarray(arr, mode="I;16")
    else:
        img = Image.fromarray(arr)
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def mask_dtype(n_ids: int):
    return np.uint8 if n_ids < 256 else np.uint16


def write_rendered(root: Path, items: Sequence[Rendered]) -> list[Stimulus]:
    """Write pixels of ``items`` under ``root``; return their records."""
    out = []
    for r in items:
        s = r.stimulus
        _atomic_write(root / s.file_name, _png_bytes(np.asarray(r.image, dtype=np.uint8)))
        m = np.asarray(r.mask)
        m = m.astype(mask_dtype(int(m.max()) + 1 if m.size else 1), copy=False)
        _atomic_write(root / s.mask_file_name, _png_bytes(m))
        if r.depth is not None:
            if s.depth_file_name is None:
                raise DatasetError(f"stimulus {s.id} has depth pixels but no depth_file_name")
            _atomic_write(root / s.depth_file_name, _npy_bytes(r.depth))
        out.append(s)
    return out


def _part_path(root: Path, key: str) -> Path:
    return root / "parts" / f"{key}.jsonl"


def _do_unit(root: Path, gen: Generator, key: str, index: int | None) -> str:
    items = gen.extras() if index is None else gen.unit(index)
    recs = write_rendered(root, items)
    _atomic_write(_part_path(root, key), "".join(dumps(s) + "\n" for s in recs).encode())
    return key


_WORKER: dict[str, Any] = {}


def _worker_init(factory: Callable[[], Generator], root: str) -> None:
    _WORKER["gen"] = factory()
    _WORKER["root"] = Path(root)


def _worker_run(job: tuple[str, int | None]) -> str:
    key, index = job
    return _do_unit(_WORKER["root"], _WORKER["gen"], key, index)


def prepare_output(out: Path, config: dict[str, Any]) -> str:
    """Create ``out`` for ``config`` or check that it already holds the same config.

    Returns the config hash. Raises :class:`DatasetError` when ``out`` holds another config or
    unrelated files.
    """
    out = Path(out)
    h = config_hash(config)
    cfg_file = out / "config.json"
    if out.exists() and not out.is_dir():
        raise DatasetError(f"output {out} is a file; choose a new or empty directory for --out")
    if cfg_file.exists():
        try:
            old = json.loads(cfg_file.read_text())
            old_hash = old["hash"]
        except (ValueError, KeyError):
            raise DatasetError(
                f"{cfg_file} is not a spatialbind dataset config; choose another --out"
            ) from None
        if old_hash != h:
            diff = _config_diff(old.get("config", {}), config)
            raise DatasetError(
                f"output directory {out} holds a dataset made with a different config "
                f"(hash {old_hash}, this run {h}; differs in {diff}); choose a new --out or "
                "delete the old directory"
            )
        return h
    if out.exists() and not _only_our_empty_subdirs(out):
        raise DatasetError(
            f"output directory {out} is not empty and holds no spatialbind dataset; "
            "choose an empty or new --out"
        )
    for sub in ("images", "masks", "parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    test_point("generate-dirs")
    meta = {"format_version": FORMAT_VERSION, "toolkit_version": _toolkit_version(),
            "hash": h, "config": config}
    _atomic_write(cfg_file, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return h


def _only_our_empty_subdirs(out: Path) -> bool:
    """True when ``out`` holds nothing but hidden temp files and the empty subfolders a killed
    run makes before its config.json (so the same command may start there again)."""
    for p in out.iterdir():
        if p.name.startswith("."):
            continue
        if not (p.name in _SUBDIRS and p.is_dir() and not any(p.iterdir())):
            return False
    return True


_SUBDIRS = ("images", "masks", "parts", "depth")


def _config_diff(a: dict, b: dict, prefix: str = "") -> str:
    keys = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                keys.append(_config_diff(a[k], b[k], prefix + k + "."))
            else:
                keys.append(prefix + k)
    return ", ".join(keys) or "nothing visible"


def write_dataset(
    gen: Generator,
    out: str | os.PathLike,
    *,
    config: dict[str, Any],
    factory: Callable[[], Generator] | None = None,
    workers: int = 1,
    progress: bool = True,
    limit: int | None = None,
) -> Path:
    """Generate every unit of ``gen`` into ``out`` (resuming a partial run) and write the manifest.

    Parameters
    ----------
    gen
        The generator, already configured.
    config
        The resolved config; its hash identifies the dataset and guards the directory.
    factory
        Picklable zero-argument callable that rebuilds ``gen`` in a worker process
        (required when ``workers > 1``).
    workers
        Processes to use; the output is identical for any value.
    limit
        Stop after this many units in this call (for tests of resumption).
    """
    out = Path(out)
    with boundary(out, action="write", error=DatasetError):
        return _write_dataset(gen, out, config=config, factory=factory, workers=workers,
                              progress=progress, limit=limit)


def _write_dataset(gen, out: Path, *, config, factory, workers, progress, limit) -> Path:
    from tqdm.auto import tqdm

    prepare_output(out, config)
    _remove_stale_temps(out)
    jobs: list[tuple[str, int | None]] = [("extras", None)] + [
        (f"{i:07d}", i) for i in range(len(gen))
    ]
    todo = [j for j in jobs if not _part_path(out, j[0]).exists()]
    if limit is not None:
        todo = todo[:limit]
    if todo:
        (out / "depth").mkdir(exist_ok=True)
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="generate",
                   unit="scene", disable=not progress, dynamic_ncols=True)
        try:
            if workers <= 1 or len(todo) == 1:
                for key, idx in todo:
                    _do_unit(out, gen, key, idx)
                    test_point("generate-unit")
                    bar.update(1)
            else:
                if factory is None:
                    raise DatasetError("workers > 1 needs a generator factory")
                ctx = mp.get_context("spawn")
                with ctx.Pool(workers, initializer=_worker_init,
                              initargs=(factory, str(out))) as pool:
                    for _ in pool.imap_unordered(_worker_run, todo, chunksize=1):
                        bar.update(1)
        finally:
            bar.close()
    if limit is None or all(_part_path(out, k).exists() for k, _ in jobs):
        finalize(out, [k for k, _ in jobs])
    return out


def _remove_stale_temps(out: Path) -> None:
    """Delete temp files a killed run left behind (``.<name>.tmp<pid>``; never final names)."""
    for sub in (out, out / "images", out / "masks", out / "depth", out / "parts"):
        if sub.is_dir():
            for p in sub.glob(".*.tmp*"):
                try:
                    p.unlink()
                except OSError:
                    pass


def finalize(out: Path, keys: Iterable[str]) -> None:
    """Merge per-unit records (in generation order) into metadata.jsonl and manifest.parquet."""
    lines: list[str] = []
    for key in keys:
        lines.extend(_part_path(out, key).read_text().splitlines())
    if not (out / "depth").exists() or not any((out / "depth").iterdir()):
        try:
            (out / "depth").rmdir()
        except OSError:
            pass
    _atomic_write(out / "metadata.jsonl", ("\n".join(lines) + "\n").encode())
    records = [json.loads(l) for l in lines]
    _write_manifest(out / "manifest.parquet", records)


def _write_manifest(path: Path, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for r in records:
        r = dict(r)
        # free-form dicts vary between generators: keep them as JSON text in the table
        r["factors"] = json.dumps(r.get("factors") or {}, sort_keys=True)
        r["degradation"] = None if r.get("degradation") is None else json.dumps(
            r["degradation"], sort_keys=True)
        r["prompts"] = [dict(p, spans=json.dumps(p.get("spans") or {}, sort_keys=True))
                        for p in r.get("prompts") or []]
        rows.append(r)
    table = pa.Table.from_pylist(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    _atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------- reading
@dataclass
class Dataset:
    """A dataset directory opened for reading: records plus lazy access to pixels."""

    root: Path
    stimuli: list[Stimulus]
    config: dict[str, Any]
    config_hash: str

    def __len__(self) -> int:
        return len(self.stimuli)

    def __iter__(self) -> Iterator[Stimulus]:
        return iter(self.stimuli)

    def __getitem__(self, key: int | str) -> Stimulus:
        if isinstance(key, str):
            try:
                return self._by_id[key]
            except KeyError:
                raise DatasetError(f"no stimulus with id {key!r} in {self.root}") from None
        return self.stimuli[key]

    @property
    def _by_id(self) -> dict[str, Stimulus]:
        if not hasattr(self, "_index"):
            self._index = {s.id: s for s in self.stimuli}
        return self._index

    def base(self) -> list[Stimulus]:
        """Base stimuli: neither twins nor dataset-wide extras (such as the ``blank`` canvas)."""
        return [s for s in self.stimuli
                if s.counterfactual_of is None and s.counterfactual_kind is None]

    def twins(self, stim_id: str, kind: str | None = None) -> list[Stimulus]:
        """Twins of ``stim_id`` (optionally of one ``kind``)."""
        return [s for s in self.stimuli if s.counterfactual_of == stim_id
                and (kind is None or s.counterfactual_kind == kind)]

    def _load(self, rel: str, stim: Stimulus, field: str) -> Image.Image:
        path = self.root / rel
        if not path.exists():
            raise DatasetError(f"{field} of stimulus {stim.id} is missing: {path}; "
                               "regenerate the dataset or fix metadata.jsonl")
        try:
            img = Image.open(path)
            img.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
            raise DatasetError(f"{field} of stimulus {stim.id} is corrupt or not an image: "
                               f"{path} ({e.__class__.__name__}); regenerate it") from None
        return img

    def image(self, stim: Stimulus | str) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB of a stimulus."""
        stim = self[stim] if isinstance(stim, str) else stim
        return np.asarray(self._load(stim.file_name, stim, "image").convert("RGB"))

    def pil_image(self, stim: Stimulus | str) -> Image.Image:
        stim = self[stim] if isinstance(stim, str) else stim
        return self._load(stim.file_name, stim, "image").convert("RGB")

    def mask(self, stim: Stimulus | str) -> np.ndarray:
        """``(H, W)`` integer instance mask (0 = background)."""
        stim = self[stim] if isinstance(stim, str) else stim
        m = np.asarray(self._load(stim.mask_file_name, stim, "mask")).astype(np.int32)
        if m.shape[:2] != (stim.height, stim.width):
            raise DatasetError(
                f"mask of stimulus {stim.id} ({self.root / stim.mask_file_name}) is "
                f"{m.shape[1]}x{m.shape[0]} but its image is {stim.width}x{stim.height} "
                "(metadata.jsonl); regenerate the mask at the image's size")
        return m

    def depth(self, stim: Stimulus | str) -> np.ndarray | None:
        stim = self[stim] if isinstance(stim, str) else stim
        if stim.depth_file_name is None:
            return None
        path = self.root / stim.depth_file_name
        with boundary(path, fix="regenerate the dataset", error=DatasetError):
            return np.load(path, allow_pickle=False)


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Open a dataset directory (generated or imported)."""
    root = Path(path)
    meta = root / "metadata.jsonl"
    if not meta.exists():
        hint = (" (generation did not finish: rerun the same generate command to complete it)"
                if (root / "parts").exists() else "")
        raise DatasetError(f"{root} is not a spatialbind dataset: {meta} is missing{hint}")
    stimuli = []
    with boundary(meta, fix="fix or regenerate it", error=DatasetError):
        text = meta.read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            stim = Stimulus.from_dict(json.loads(line))
        except (ValueError, TypeError) as e:
            raise DatasetError(f"{meta}:{n}: malformed record ({e}); fix or regenerate it") from None
        check_inside(root, stim, f"{meta}:{n}")
        stimuli.append(stim)
    cfg: dict[str, Any] = {}
    h = ""
    cfg_file = root / "config.json"
    if cfg_file.exists():
        with boundary(cfg_file, fix="regenerate the dataset (or restore its config.json)",
                      error=DatasetError):
            c = json.loads(cfg_file.read_text(encoding="utf-8"))
        if not isinstance(c, dict):
            raise DatasetError(f"{cfg_file} is not a spatialbind dataset config (a JSON object); "
                               "regenerate the dataset (or restore its config.json)")
        cfg, h = c.get("config", {}), c.get("hash", "")
    return Dataset(root=root, stimuli=stimuli, config=cfg, config_hash=h)


def check_inside(root: Path, stim: Stimulus, where: str) -> None:
    """Refuse a record whose file paths are absolute or lead outside the dataset directory."""
    for field in ("file_name", "mask_file_name", "depth_file_name"):
        rel = getattr(stim, field)
        if rel is None:
            continue
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts or p.drive:
            raise DatasetError(
                f"{where}: {field} {rel!r} of stimulus {stim.id} points outside the dataset "
                f"directory {root} (absolute paths and '..' are refused); keep every file "
                "inside the dataset directory and give its path relative to it")
