"""An in-memory activation store with a planted ordinal signal, for tests and demos of ``probes``.

:class:`PlantedStore` answers the same queries as ``actstore``'s reader (``select``, ``pooled``,
``labels``) from arrays generated on the fly, so probes can be tested without an extraction run and
against a known truth:

- scenes of ``n_targets`` entities in one row (``horizontal``) or column (``vertical``) of a
  ``grid × grid`` token grid, one token each, at random distinct positions; each scene has a base
  sample and a colour-reversed twin sharing its ``scene_id``;
- every token of role ``object`` carries ``gain(layer) · strength['object'] · (ordinal - centre) · d``
  along one unit direction ``d`` (:attr:`PlantedStore.direction`); tokens of the entity's strip
  (its column for horizontal layouts, its row for vertical ones) carry the same with
  ``strength['strip']``; far ``background`` tokens carry none;
- nuisance signals (colour, grid position) live in the orthogonal complement of ``d``, and the
  isotropic noise has standard deviation ``noise``, so the Bayes-optimal linear read-out of the
  ordinal is exactly ``d``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

COLORS = ("red", "green", "blue", "black", "brown", "gray")
ROLE_CODE_NAMES = ("pad", "object", "strip", "distractor", "background",
                   "subject", "reference", "relation", "last", "text")
"""actstore's role code table (code = index)."""


class PlantedStore:
    """In-memory store with a planted ordinal direction (see the module docstring).

    Parameters
    ----------
    n_scenes : int
        Base scenes; each also gets one colour-reversed twin with the same ``scene_id``.
    grid : int
        Token grid side.
    hidden : int
        Activation width.
    n_targets : int
        Entities per scene (3 for left/middle/right, 2 for a side task).
    layers : int
        Number of layers per site; the signal gain grows linearly from ``1/layers`` to 1.
    strength : dict
        Signal scale per role.
    noise : float
        Standard deviation of the isotropic noise.
    axes : tuple of str
        Layout axes, cycled over scenes.
    model, sites : str, tuple of str
        Names the store answers to.
    seed : int
        Seed of everything.
    direction : array, optional
        The planted direction (normalised); default a random Gaussian one.
    nuisance : float
        Scale of the colour and grid-position signals (0: none).
    """

    def __init__(self, *, n_scenes: int = 24, grid: int = 6, hidden: int = 16, n_targets: int = 3,
                 layers: int = 3, strength: dict | None = None, noise: float = 1.0,
                 axes: tuple[str, ...] = ("horizontal",), model: str = "tiny",
                 sites: tuple[str, ...] = ("projector",), seed: int = 0, direction=None,
                 nuisance: float = 1.0):
        self.model, self.sites_, self.grid, self.hidden = model, tuple(sites), grid, hidden
        self.n_layers, self.n_targets, self.noise, self.seed = layers, n_targets, noise, seed
        self.strength = {"object": 3.0, "strip": 1.5, "background": 0.0, **(strength or {})}
        rng = np.random.default_rng(seed)
        d = rng.normal(size=hidden)
        if direction is not None:  # drawn anyway, so the other draws do not depend on it
            d = np.asarray(direction, np.float64).reshape(hidden)
        self.direction = d / np.linalg.norm(d)
        """The planted unit direction, shape ``(hidden,)``."""

        def orth(v):
            return v - np.outer(v @ self.direction, self.direction)

        self._color_vec = nuisance * orth(rng.normal(size=(len(COLORS), hidden)))
        self._pos_vec = nuisance * 0.5 * orth(rng.normal(size=(grid * grid, hidden)))
        self._build_layout(rng, n_scenes, axes)

    # -- layout -----------------------------------------------------------------------------
    def _build_layout(self, rng, n_scenes, axes):
        g, k = self.grid, self.n_targets
        rows, labels = [], []
        for s in range(n_scenes):
            axis = axes[s % len(axes)]
            line = int(rng.integers(g))
            pos = np.sort(rng.choice(g, size=k, replace=False))
            cols = rng.choice(len(COLORS), size=k, replace=False)
            for twin, colors in (("", cols), ("_swap", cols[::-1])):
                sid = f"s{s:03d}{twin}"
                labels.append({"sample_id": sid, "scene_id": f"scene{s:03d}", "axis": axis,
                               "relation": "left" if axis == "horizontal" else "above",
                               "counterfactual_kind": "swap" if twin else None,
                               "color_set": "-".join(sorted(COLORS[c] for c in colors)),
                               "layout": "-".join(map(str, pos))})
                for t in range(g * g):
                    r, c = divmod(t, g)
                    along, across = (c, r) if axis == "horizontal" else (r, c)
                    ent, ordn, role, color = 0, -1, "background", -1
                    if along in pos:
                        o = int(np.nonzero(pos == along)[0][0])
                        ent, ordn = o + 1, o
                        role = "object" if across == line else "strip"
                        color = int(colors[o]) if role == "object" else -1
                    # as in actstore: strip tokens name their band's target (entity) but have
                    # no ordinal of their own; band_ordinal drives the planted signal
                    rows.append((sid, t, r, c, role, ent, ordn if role == "object" else -1,
                                 ordn, color))
        self._labels = pd.DataFrame(labels)
        self._tokens = pd.DataFrame(rows, columns=["sample_id", "token", "row", "col", "role",
                                                   "entity", "ordinal", "band_ordinal",
                                                   "color_code"])
        self._tokens["color"] = [COLORS[c] if c >= 0 else "" for c in self._tokens["color_code"]]

    def _acts(self, site: str, layer: int, tok: pd.DataFrame) -> np.ndarray:
        if site not in self.sites_:
            raise KeyError(f"site {site!r} not in store (have {self.sites_})")
        if not 0 <= layer < self.n_layers:
            raise KeyError(f"layer {layer} not in store (0..{self.n_layers - 1})")
        gain = (layer + 1) / self.n_layers
        rng = np.random.default_rng([self.seed, self.sites_.index(site), layer])
        noise = rng.normal(scale=self.noise, size=(len(self._tokens), self.hidden))[tok.index]
        strength = tok["role"].map(self.strength).to_numpy()
        centre = (self.n_targets - 1) / 2
        band = tok["band_ordinal"].to_numpy()
        ordn = np.where(band >= 0, band - centre, 0.0)
        x = noise + (gain * strength * ordn)[:, None] * self.direction
        x += self._pos_vec[tok["token"].to_numpy()]
        has_c = tok["color_code"].to_numpy() >= 0
        x[has_c] += self._color_vec[tok["color_code"].to_numpy()[has_c]]
        return x.astype(np.float32)

    # -- the actstore query API (mirrors actstore/README.md "Reader / query") ----------------
    models = property(lambda self: [self.model])
    roles = property(lambda self: dict(enumerate(ROLE_CODE_NAMES)))

    def sites(self, model: str | None = None) -> list[str]:
        """Site families held."""
        return list(self.sites_)

    def layers(self, model: str | None = None, site: str | None = None) -> list[int]:
        """Layer numbers held per site."""
        return list(range(self.n_layers))

    def labels(self, model: str | None = None) -> pd.DataFrame:
        """Per-sample labels (``sample_id``, ``scene_id``, ``axis``, factors ...), index = sample."""
        self._check_model(model)
        return self._labels.copy()

    def select(self, model: str | None = None, site: str = "projector", layer: int | None = 0,
               role: str | None = None, where: dict | None = None) -> xr.DataArray:
        """``(sample, token, hidden)`` activations of the tokens of ``role`` (all image tokens when
        None): token k = k-th token of that role, padded per sample to the longest with NaN values
        and ``pad=True``; ``role`` is an int8 code coord as in actstore."""
        self._check_model(model)
        samples = self._filter(where)
        tok = self._tokens[self._tokens["sample_id"].isin(samples)]
        if role is not None:
            tok = tok[tok["role"] == role]
        x = self._acts(site, layer, tok)
        pos = pd.Series(np.arange(len(tok)), index=tok.index)
        groups = [tok.index[tok["sample_id"] == s] for s in samples]
        width = max((len(g) for g in groups), default=0)
        out = np.full((len(samples), width, self.hidden), np.nan, np.float32)
        coords = {c: np.full((len(samples), width), -1 if c != "entity" else 0, np.int16)
                  for c in ("row", "col", "entity", "ordinal")}
        codes = np.zeros((len(samples), width), np.int8)
        for i, idx in enumerate(groups):
            out[i, :len(idx)] = x[pos[idx].to_numpy()]
            for c in coords:
                coords[c][i, :len(idx)] = tok.loc[idx, c].to_numpy()
            codes[i, :len(idx)] = tok.loc[idx, "role"].map(ROLE_CODE_NAMES.index).to_numpy()
        lab = self._labels.set_index("sample_id").loc[samples]
        sample_coords = {c: ("sample", lab[c].to_numpy()) for c in lab.columns}
        return xr.DataArray(
            out, dims=("sample", "token", "hidden"),
            coords={"sample": self._labels.index[self._labels["sample_id"].isin(samples)].to_numpy(),
                    "sample_id": ("sample", np.array(samples)), **sample_coords,
                    **{c: (("sample", "token"), v) for c, v in coords.items()},
                    "role": (("sample", "token"), codes),
                    "pad": (("sample", "token"), codes == 0)},
            attrs={"model": self.model, "site": site, "layer": layer})

    def pooled(self, model: str | None = None, site: str = "projector", layer: int | None = 0,
               role: str = "object", by: str = "entity", where: dict | None = None) -> xr.DataArray:
        """``(item, hidden)``: the mean over each entity's tokens of ``role``, one item per
        (sample, entity), with coords ``sample_id``, ``scene_id``, ``mask_id``, ``ordinal``,
        ``n_pooled`` and the sample labels."""
        self._check_model(model)
        samples = self._filter(where)
        tok = self._tokens[self._tokens["sample_id"].isin(samples) & (self._tokens["role"] == role)
                           & (self._tokens["entity"] > 0)]
        x = pd.DataFrame(self._acts(site, layer, tok), index=tok.index)
        mean = x.groupby([tok["sample_id"], tok["entity"]], sort=True).mean()
        first = tok.groupby(["sample_id", "entity"], sort=True).agg(
            ordinal=("ordinal", "first"), n_pooled=("token", "size"))
        lab = self._labels.set_index("sample_id").loc[mean.index.get_level_values(0)]
        coords = {"sample_id": ("item", mean.index.get_level_values(0).to_numpy()),
                  "mask_id": ("item", mean.index.get_level_values(1).to_numpy()),
                  "ordinal": ("item", first["ordinal"].to_numpy()),
                  "n_pooled": ("item", first["n_pooled"].to_numpy())}
        for c in lab.columns:
            coords[c] = ("item", lab[c].to_numpy())
        return xr.DataArray(mean.to_numpy(np.float32), dims=("item", "hidden"), coords=coords,
                            attrs={"model": self.model, "site": site, "layer": layer})

    def _filter(self, where: dict | None) -> list[str]:
        lab = self._labels
        for k, v in (where or {}).items():
            vals = v if isinstance(v, (list, tuple, set)) else [v]
            lab = lab[lab[k].isin(vals)]
        return list(lab["sample_id"])

    def _check_model(self, model: str) -> None:
        if model is not None and model != self.model:
            raise KeyError(f"model {model!r} not in store (have {self.model!r})")
