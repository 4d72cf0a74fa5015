"""Test helpers for packages that read or write stores: small synthetic stores and ``assert_valid``.

``make_store(path)`` writes a store through the real :class:`~actstore.StoreWriter` with random
activations, realistic token roles (objects with ordinals, strips, distractors, text roles,
variable sequence lengths with padding) and, if asked, a planted signal: object tokens of
ordinal ``k`` get ``planted * direction[k]`` added, so a probe should find ordinal from them.
It returns the ground truth (:class:`Synthetic`) that tests compare against.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import schema as S
from .errors import SchemaError
from .validate import validate
from .writer import StoreWriter

DEFAULT_PROVENANCE = {"model_id": "synthetic/tiny", "revision": "0", "adapter": "synthetic",
                      "dtype": "float32", "data_hash": "synthetic-0"}


@dataclass(kw_only=True)
class Synthetic:
    """Ground truth of a synthetic store: exactly what was written, padded as stored."""

    path: str
    model: str
    samples: pd.DataFrame
    sites: list[S.SiteSpec]
    acts: dict[str, np.ndarray]
    """``{family: (N, L, T, H)}`` in the stored dtype; padding slots are 0."""
    tokens: dict[str, dict[str, np.ndarray]]
    """``{family: {label: (N, T)}}`` with padding slots at their "none" values."""
    directions: np.ndarray | None = None
    """``(n_ordinals, H)`` unit directions planted per ordinal (None when nothing was planted)."""
    written: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Sample indices written (all of them unless ``stop_after`` was given)."""


def default_sites(*, hidden: int = 8, grid: int = 4, n_text: int = 8,
                  layers: tuple[int, ...] = (0, 1, 2), dtype: str = "float32") -> list[S.SiteSpec]:
    """A projector site (grid × grid image tokens) and an lm.resid site (image + text tokens)."""
    return [S.SiteSpec(name="projector", n_tokens=grid * grid, hidden=hidden, dtype=dtype),
            S.SiteSpec(name="lm.resid", layers=layers, n_tokens=grid * grid + n_text,
                       hidden=hidden, dtype=dtype)]


def synthetic_samples(n: int, *, seed: int = 0) -> pd.DataFrame:
    """Sample labels like extraction writes them (two samples per scene, alternating axes)."""
    rng = np.random.default_rng(seed)
    axis = np.where(np.arange(n) % 2 == 0, "horizontal", "vertical")
    rel = np.where(axis == "horizontal", rng.choice(["left", "right"], n), rng.choice(["above", "below"], n))
    return pd.DataFrame({
        "sample_id": [f"s{i:05d}" for i in range(n)],
        "scene_id": [f"scene{i // 2:04d}" for i in range(n)],
        "relation": rel, "axis": axis, "task": "squares",
        "split": rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2]),
        "counterfactual_of": [None if i % 2 == 0 else f"s{i - 1:05d}" for i in range(n)],
        "target0_color": rng.choice(["red", "green", "blue"], n),
        "n_objects": np.full(n, 2, dtype=np.int64),
        "n_targets": np.full(n, 2, dtype=np.int64),
    })


def synthetic_tokens(n: int, spec: S.SiteSpec, *, grid: int, rng: np.random.Generator,
                     lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Token labels for ``n`` samples of one site family (image grid first, then text tokens)."""
    T = spec.n_tokens
    lab = {k: np.full((n, T), none, dt) for k, (dt, none) in S.TOKEN_LABELS.items()}
    n_img = grid * grid
    for i in range(n):
        length = T if lengths is None else int(lengths[i])
        cells = rng.permutation(n_img)
        roles = np.full(n_img, S.ROLE_CODES["background"], np.int8)
        ent = np.zeros(n_img, np.int16)
        ordn = np.full(n_img, -1, np.int8)
        k0, k1, kd, ks = (int(x) for x in rng.integers(1, 4, 4))
        parts = np.split(cells[:k0 + k1 + kd + ks], np.cumsum([k0, k1, kd]))
        for o, part in enumerate(parts[:2]):
            roles[part], ent[part], ordn[part] = S.ROLE_CODES["object"], o + 1, o
        roles[parts[2]], ent[parts[2]] = S.ROLE_CODES["distractor"], 3
        roles[parts[3]], ent[parts[3]] = S.ROLE_CODES["strip"], 1
        take = min(n_img, length)
        lab["role"][i, :take] = roles[:take]
        lab["entity"][i, :take] = ent[:take]
        lab["ordinal"][i, :take] = ordn[:take]
        lab["row"][i, :take] = (np.arange(n_img) // grid)[:take]
        lab["col"][i, :take] = (np.arange(n_img) % grid)[:take]
        n_txt = length - take
        if n_txt > 0:
            txt = np.full(n_txt, S.ROLE_CODES["text"], np.int8)
            for j, r in enumerate(("subject", "relation", "reference")):
                if j < n_txt - 1:
                    txt[j] = S.ROLE_CODES[r]
            txt[-1] = S.ROLE_CODES["last"]
            lab["role"][i, take:length] = txt
        lab["position"][i, :length] = np.arange(length) + 3  # e.g. after a BOS + chat prefix
    return lab


def make_store(path, *, n_samples: int = 12, model: str = "tiny",
               sites: list[S.SiteSpec] | None = None, grid: int = 4, batch_size: int = 4,
               planted: float | None = None, seed: int = 0, stop_after: int | None = None,
               provenance: dict | None = None, params: dict | None = None,
               shard: tuple[int, int] | None = None, inner_samples: int = 1,
               storage_options: dict | None = None, direct: bool = True) -> Synthetic:
    """Write a small synthetic store through :class:`StoreWriter` and return its ground truth.

    Parameters
    ----------
    path : str or path-like
        Local directory or fsspec URL.
    n_samples, grid, batch_size, seed
        Size of the store, image-token grid side, shard size, random seed.
    sites : list of SiteSpec, optional
        Defaults to :func:`default_sites` (projector + 3 layers of lm.resid, hidden 8).
        Every family's ``n_tokens`` must be at least ``grid**2``.
    planted : float, optional
        Add ``planted * direction[ordinal]`` to every object token (all sites, all layers).
    stop_after : int, optional
        Write only this many batches (a run "killed" part-way).
    shard : (i, n), optional
        Write only the batches of process ``i`` of ``n`` (as ``--shard i/n`` does).
    inner_samples : int
        Inner chunk of a shard along ``sample``.
    direct : bool
        Let the writer write whole activation shards itself (default); False: through zarr.

    Returns
    -------
    Synthetic
    """
    rng = np.random.default_rng(seed)
    sites = sites or default_sites(grid=grid)
    samples = synthetic_samples(n_samples, seed=seed)
    hidden = {s.hidden for s in sites}
    dirs = None
    if planted is not None:
        if len(hidden) != 1:
            raise ValueError("planted signals need one hidden size across sites")
        d = rng.standard_normal((2, hidden.pop()))
        dirs = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype("float32")
    acts, tokens = {}, {}
    for spec in sites:
        if spec.n_tokens < grid * grid:
            raise ValueError(f"site {spec.name} has {spec.n_tokens} tokens < grid**2 = {grid * grid}")
        lengths = None
        if spec.n_tokens > grid * grid:  # a text part of variable length, padded at the end
            lengths = rng.integers(grid * grid + 4, spec.n_tokens + 1, n_samples)
        lab = synthetic_tokens(n_samples, spec, grid=grid, rng=rng, lengths=lengths)
        a = rng.standard_normal((n_samples, len(spec.layers), spec.n_tokens, spec.hidden)).astype("float32")
        if dirs is not None:
            for o in range(len(dirs)):
                m = (lab["role"] == S.ROLE_CODES["object"]) & (lab["ordinal"] == o)
                a += planted * m[:, None, :, None] * dirs[o]
        a[np.broadcast_to((lab["role"] == S.PAD)[:, None, :, None], a.shape)] = 0.0
        acts[spec.name], tokens[spec.name] = a.astype(spec.dtype), lab
    w = StoreWriter.open_or_create(path, model=model, provenance=provenance or DEFAULT_PROVENANCE,
                                   samples=samples, sites=sites, params=params or {"object_coverage": 0.5},
                                   batch_size=batch_size, inner_samples=inner_samples,
                                   storage_options=storage_options, direct=direct)
    written = []
    for b, idx in enumerate(w.batches(shard)):
        if stop_after is not None and b >= stop_after:
            break
        w.write(idx, {f: acts[f][idx] for f in acts},
                {f: {k: v[idx] for k, v in tokens[f].items()} for f in tokens})
        written.extend(idx)
    w.close()
    return Synthetic(path=str(path), model=model, samples=samples, sites=sites, acts=acts,
                     tokens=tokens, directions=dirs, written=np.array(written, np.int64))


def assert_valid(path, *, check_values: bool = True, storage_options: dict | None = None) -> None:
    """Assert that the store at ``path`` follows the schema (AssertionError listing every problem)."""
    try:
        validate(path, check_values=check_values, storage_options=storage_options)
    except SchemaError as e:
        raise AssertionError(str(e)) from None


def assert_stores_equal(a, b, *, storage_options: dict | None = None) -> None:
    """Assert two stores hold the same groups, arrays (values, NaN-aware, dtypes) and attrs.

    ``toolkit_version`` is ignored. Used to check that a resumed or multi-process run equals a
    clean one. The persisted role index (``<model>/role_index``) is compared by what it gives,
    not by its pieces: how many pieces there are depends on how many writers there were, so
    instead every role index of every site family must be equal (element for element) as the
    reader builds it from each store's pieces and labels.
    """
    import zarr

    from . import _index
    from .reader import open_store

    ra, rb = (zarr.open_group(S.resolve_store(p, mode="r", storage_options=storage_options),
                              mode="r", zarr_format=3) for p in (a, b))

    def walk(g, prefix=""):
        out = {}
        for name, node in g.members():
            key = f"{prefix}{name}"
            if key.count("/") == 1 and name == _index.GROUP:
                continue
            out[key] = node
            if isinstance(node, zarr.Group):
                out.update(walk(node, key + "/"))
        return out

    def clean(attrs):
        d = dict(attrs)
        d.pop("toolkit_version", None)
        if isinstance(d.get("provenance"), dict):
            d["provenance"] = {k: v for k, v in d["provenance"].items() if k != "toolkit_version"}
        return d

    na, nb = walk(ra), walk(rb)
    assert sorted(na) == sorted(nb), f"different members: {sorted(set(na) ^ set(nb))}"
    assert clean(ra.attrs) == clean(rb.attrs), "root attrs differ"
    for key in sorted(na):
        x, y = na[key], nb[key]
        assert type(x) is type(y), f"{key}: group vs array"
        assert clean(x.attrs) == clean(y.attrs), f"{key}: attrs differ"
        if isinstance(x, zarr.Array):
            assert x.shape == y.shape and x.dtype == y.dtype, f"{key}: shape/dtype differ"
            vx, vy = x[...], y[...]
            same = np.array_equal(vx, vy, equal_nan=True) if vx.dtype.kind == "f" else np.array_equal(vx, vy)
            assert same, f"{key}: values differ"
    sa, sb = (open_store(p, storage_options=storage_options) for p in (a, b))
    for model in sa.models:
        ga, gb = sa.group(model), sb.group(model)
        for fam in sa.sites(model):
            for code in range(len(S.ROLE_NAMES)):
                x, y = sa._role_index(ga, fam, code), sb._role_index(gb, fam, code)
                assert all(np.array_equal(u, v) and u.dtype == v.dtype for u, v in zip(x[:2], y[:2])) \
                    and all(x[2][k].tobytes() == y[2][k].tobytes() for k in x[2]), \
                    f"{model}/{fam}: role index of {S.ROLE_NAMES[code]!r} differs"
