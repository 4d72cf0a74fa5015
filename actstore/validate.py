"""Check a store against the schema and report every problem at once.

``problems(path)`` returns a list of one-line findings (empty when the store is valid);
``validate(path)`` raises one :class:`~actstore.errors.SchemaError` listing all of them. Used by
``actstore.testing.assert_valid`` and by anyone handed a store they did not write.
"""
from __future__ import annotations

import numpy as np

from . import schema as S
from .errors import SchemaError

MODEL_ATTRS = ("model", "provenance", "params", "role_names", "sites", "batch_size", "n_samples",
               "schema_version", "complete")


def validate(path, *, check_values: bool = True, storage_options: dict | None = None) -> None:
    """Raise one :class:`SchemaError` listing every problem of the store at ``path``.

    Parameters
    ----------
    path : str or path-like
        Local directory or fsspec URL.
    check_values : bool
        Also scan the activations of done samples for NaN (reads every stored byte).

    Raises
    ------
    SchemaError
        ``"<path>: N problems: 1) ...; 2) ..."``.
    """
    found = problems(path, check_values=check_values, storage_options=storage_options)
    if found:
        listed = "; ".join(f"{i}) {p}" for i, p in enumerate(found, 1))
        raise SchemaError(f"{path}: {len(found)} problem{'s' * (len(found) > 1)}: {listed}")


def problems(path, *, check_values: bool = True, storage_options: dict | None = None) -> list[str]:
    """Every schema violation of the store at ``path`` (empty list when valid)."""
    import zarr

    try:
        root = zarr.open_group(S.resolve_store(path, mode="r", storage_options=storage_options),
                               mode="r", zarr_format=3)
    except Exception as e:  # noqa: BLE001 - any failure to open is one finding
        return [f"cannot open as a zarr v3 group ({type(e).__name__}: {e})"]
    out = []
    v = root.attrs.get("schema_version")
    if v != S.SCHEMA_VERSION:
        out.append(f"root attr schema_version is {v!r}, expected {S.SCHEMA_VERSION}")
    for key, g in sorted(root.groups()):
        out += _model_problems(key, g, check_values)
    return out


def _model_problems(key, g, check_values) -> list[str]:
    out = []
    a = g.attrs.asdict()
    missing = [k for k in MODEL_ATTRS if k not in a]
    if missing:
        out.append(f"{key}: missing attrs {missing}")
    if "schema_version" in a and a["schema_version"] != S.SCHEMA_VERSION:
        out.append(f"{key}: attr schema_version is {a['schema_version']!r}, expected {S.SCHEMA_VERSION}")
    if "role_names" in a and list(a["role_names"]) != list(S.ROLE_NAMES):
        out.append(f"{key}: role_names {a['role_names']} differ from the schema's {list(S.ROLE_NAMES)}")
    prov = a.get("provenance", {})
    lacking = [k for k in (*S.PROVENANCE_KEYS, "toolkit_version", "schema_version") if k not in prov]
    if lacking:
        out.append(f"{key}: provenance lacks {lacking}")
    if a.get("complete") is False:
        out.append(f"{key}: creation never completed (attr complete=False); delete the group and re-extract")
    n = a.get("n_samples")
    names = set(g.keys())
    if "samples" not in names:
        out.append(f"{key}: missing group 'samples'")
        done = None
    else:
        sg = g["samples"]
        for arr in ("sample_id", "done"):
            if arr not in sg:
                out.append(f"{key}/samples: missing array {arr!r}")
        for name, arr in sorted(sg.arrays()):
            if n is not None and arr.shape != (n,):
                out.append(f"{key}/samples/{name}: shape {arr.shape}, expected ({n},)")
            if tuple(arr.metadata.dimension_names or ()) != (S.SAMPLE,):
                out.append(f"{key}/samples/{name}: dimension_names {arr.metadata.dimension_names}, "
                           f"expected ('sample',)")
            if arr.attrs.get("kind") == "string":
                codes = arr[:]
                if codes.size and (codes.min() < 0 or codes.max() >= len(arr.attrs.get("categories", []))):
                    out.append(f"{key}/samples/{name}: string codes out of range of its categories")
        done = np.asarray(sg["done"][:], bool) if "done" in sg else None
    for d in a.get("sites", []):
        try:
            spec = S.SiteSpec.from_dict(d)
        except Exception as e:  # noqa: BLE001
            out.append(f"{key}: bad site entry {d!r} ({e})")
            continue
        if spec.name not in names:
            out.append(f"{key}: site family {spec.name!r} is listed in attrs but has no group")
            continue
        out += _site_problems(f"{key}/{spec.name}", g[spec.name], spec, n, done, check_values)
    if done is not None and n is not None and len(done) == n and not out:
        from . import _index

        out += _index.check(g, key, done)
    return out


def _site_problems(where, fg, spec, n, done, check_values) -> list[str]:
    out = []
    L, T, H = len(spec.layers), spec.n_tokens, spec.hidden
    expect = {"acts": ((n, L, T, H), S.ACTS_DIMS), "layer": ((L,), (S.LAYER,)),
              "n_tokens": ((n,), (S.SAMPLE,)),
              **{k: ((n, T), S.TOKEN_DIMS) for k in S.TOKEN_LABELS}}
    for name, (shape, dims) in expect.items():
        if name not in fg:
            out.append(f"{where}: missing array {name!r}")
            continue
        arr = fg[name]
        if n is not None and arr.shape != shape:
            out.append(f"{where}/{name}: shape {arr.shape}, expected {shape}")
        if tuple(arr.metadata.dimension_names or ()) != dims:
            out.append(f"{where}/{name}: dimension_names {arr.metadata.dimension_names}, expected {dims}")
    if "acts" in fg and str(fg["acts"].dtype) != spec.dtype:
        out.append(f"{where}/acts: dtype {fg['acts'].dtype}, expected {spec.dtype}")
    if "layer" in fg and list(fg["layer"][:]) != list(spec.layers):
        out.append(f"{where}/layer: {list(fg['layer'][:])}, expected {list(spec.layers)}")
    if "role" in fg:  # read in blocks of samples: memory does not grow with the store
        ra = fg["role"]
        nt = np.asarray(fg["n_tokens"][:]) if "n_tokens" in fg and \
            ra.shape[0] == fg["n_tokens"].shape[0] else None
        n_bad, first_bad, n_mism = 0, None, 0
        c = max(1, ra.chunks[0])
        step = max(c, 8192 // c * c)
        for a in range(0, ra.shape[0], step):
            role = np.asarray(ra[a:a + step])
            bad = (role < 0) | (role >= len(S.ROLE_NAMES))
            if bad.any():
                n_bad += int(bad.sum())
                first_bad = int(role[bad][0]) if first_bad is None else first_bad
            if nt is not None:
                mism = (role != S.PAD).sum(1) != nt[a:a + step]
                if done is not None and len(done) == len(nt):
                    mism &= done[a:a + step]
                n_mism += int(mism.sum())
        if n_bad:
            out.append(f"{where}/role: {n_bad} codes outside 0..{len(S.ROLE_NAMES) - 1} "
                       f"(e.g. {first_bad})")
        if n_mism:
            out.append(f"{where}/n_tokens: {n_mism} done samples whose n_tokens differs "
                       f"from their count of non-pad roles")
    if check_values and done is not None and "acts" in fg and fg["acts"].shape[0] == len(done):
        bad = _nan_samples(fg["acts"], done)
        if len(bad):
            out.append(f"{where}/acts: {len(bad)} done samples hold NaN (e.g. sample {bad[0]}); "
                       f"re-extract them (clear their done flag)")
    return out


def _nan_samples(arr, done) -> np.ndarray:
    """Indices of done samples with any NaN, read one shard-row of samples at a time."""
    bad = []
    step = max(1, arr.shards[0] if arr.shards else arr.chunks[0])
    for s0 in range(0, arr.shape[0], step):
        sl = slice(s0, min(s0 + step, arr.shape[0]))
        if not done[sl].any():
            continue
        has_nan = np.isnan(arr[sl]).reshape(sl.stop - sl.start, -1).any(axis=1)
        bad.extend(np.flatnonzero(has_nan & done[sl]) + s0)
    return np.array(bad, dtype=np.int64)
