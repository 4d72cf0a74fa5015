"""Token roles: stimulus masks projected on a model's image-token grid, plus prompt text roles.

Image tokens (per sample, row-major over the ``rows x cols`` grid):

``object``      the token's cell is covered by a *target* entity's mask for at least
                ``object_fraction`` of its area (the entity with most coverage wins);
``distractor``  same, for a distractor entity;
``strip``       any other token in the band of a target along the stimulus axis: for a
                horizontal triple the grid columns spanned by that target's object tokens, all
                rows; for a vertical one its rows, all columns (the paper's "strip" region; it
                is empty for ``depth`` stimuli);
``background``  everything else.

Each image token also gets the ``mask_id`` and ordinal ``slot`` of its entity (object, distractor:
its own; strip: the target whose band it is in; background: 0 and -1).

Sequence roles add the text roles: ``subject``, ``reference``, ``relation`` (prompt char spans),
``last`` (the final input token), ``text`` (every other real token) and ``pad``. Precedence where
they overlap: ``last`` > span roles in the order above > ``text``. Roles partition the sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

IMAGE_ROLES = ("object", "strip", "distractor", "background")
TEXT_ROLES = ("subject", "reference", "relation", "last", "text")
ROLES = IMAGE_ROLES + TEXT_ROLES + ("pad",)
#: default share of a token's cell an entity must cover for the token to be that entity's
DEFAULT_OBJECT_FRACTION = 0.5


@dataclass(frozen=True)
class ImageRoles:
    """Roles of one image's tokens (arrays of length ``rows * cols``, row-major)."""

    role: np.ndarray
    """Role names (``object``, ``strip``, ``distractor``, ``background``)."""
    entity: np.ndarray
    """``mask_id`` of the entity (0 for background)."""
    slot: np.ndarray
    """Ordinal slot of the target (-1 for distractors and background)."""
    coverage: np.ndarray
    """``(n_tokens, n_ids)`` share of each cell covered by each mask id (column 0 = background)."""


def cell_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Share of each token cell covered by each mask id.

    A pixel belongs to the cell that contains its centre: cell ``(i, j)`` of a
    ``rows x cols`` grid covers ``[jW/cols, (j+1)W/cols) x [iH/rows, (i+1)H/rows)``
    (this is the token geometry of both Qwen2-VL after resizing and Gemma-3).

    Returns
    -------
    np.ndarray
        ``(rows*cols, max_id+1)`` float64; rows sum to 1.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be (H, W), got shape {mask.shape}")
    rows, cols = grid
    h, w = mask.shape
    ci = np.minimum(((np.arange(h) + 0.5) * rows / h).astype(np.int64), rows - 1)
    cj = np.minimum(((np.arange(w) + 0.5) * cols / w).astype(np.int64), cols - 1)
    cell = (ci[:, None] * cols + cj[None, :]).ravel()
    ids = mask.astype(np.int64).ravel()
    n_ids = int(ids.max()) + 1 if ids.size else 1
    counts = np.bincount(cell * n_ids + ids, minlength=rows * cols * n_ids)
    counts = counts.reshape(rows * cols, n_ids).astype(np.float64)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def image_roles(stimulus, mask: np.ndarray, grid: tuple[int, int], *,
                object_fraction: float = DEFAULT_OBJECT_FRACTION) -> ImageRoles:
    """Project a stimulus' instance mask on a token grid and label every image token.

    Parameters
    ----------
    stimulus
        A :class:`scenegen.Stimulus` (its entities give role, ordinal and ``mask_id``; its
        ``axis`` gives the strip direction).
    mask
        ``(H, W)`` instance mask of the stimulus (0 = background).
    grid
        ``(rows, cols)`` from the adapter's :meth:`~vlms.base.VLMAdapter.token_grid`.
    object_fraction
        Minimum covered share of a cell for a token to be ``object``/``distractor``.
    """
    if not 0.0 < object_fraction <= 1.0:
        raise InputError(f"object_fraction must be in (0, 1], got {object_fraction}")
    rows, cols = grid
    cov = cell_coverage(mask, grid)
    n = rows * cols
    role = np.full(n, "background", dtype=object)
    entity = np.zeros(n, dtype=np.int64)
    slot = np.full(n, -1, dtype=np.int64)
    ents = {e.mask_id: e for e in stimulus.entities}
    if cov.shape[1] > 1:
        best = 1 + np.argmax(cov[:, 1:], axis=1)
        share = cov[np.arange(n), best]
        for k in np.nonzero(share >= object_fraction)[0]:
            e = ents.get(int(best[k]))
            if e is None:
                raise InputError(f"stimulus {stimulus.id}: mask id {int(best[k])} has no entity "
                                 "in metadata; regenerate the dataset")
            entity[k] = e.mask_id
            if e.role == "target":
                role[k], slot[k] = "object", -1 if e.ordinal is None else int(e.ordinal)
            else:
                role[k] = "distractor"
    axis = getattr(stimulus, "axis", None)
    if axis in ("horizontal", "vertical"):
        r_of, c_of = np.divmod(np.arange(n), cols)
        band_of = c_of if axis == "horizontal" else r_of
        for e in stimulus.targets:
            own = (role == "object") & (entity == e.mask_id)
            if not own.any():  # an object smaller than the object threshold: use its centroid
                if e.centroid is None:
                    continue
                x, y = e.centroid
                h, w = mask.shape
                band = {int(min(x * cols / w, cols - 1))} if axis == "horizontal" else \
                    {int(min(y * rows / h, rows - 1))}
            else:
                band = set(band_of[own].tolist())
            sel = (role == "background") & np.isin(band_of, list(band))
            role[sel] = "strip"
            entity[sel] = e.mask_id
            slot[sel] = -1 if e.ordinal is None else int(e.ordinal)
    return ImageRoles(role=role.astype(str), entity=entity, slot=slot, coverage=cov)


def sequence_roles(batch, item: int, image: ImageRoles | None = None) -> np.ndarray:
    """Role name of every position of one batch item (roles partition the sequence).

    Parameters
    ----------
    batch
        A :class:`vlms.base.Batch` from ``adapter.prepare``.
    item
        Index in the batch.
    image
        Image roles of the item (without them, image tokens are ``background``).
    """
    seq = batch.seq_len
    out = np.full(seq, "text", dtype=object)
    out[: batch.n_pad[item]] = "pad"
    pos = np.asarray(batch.image_positions[item], dtype=np.int64)
    out[pos] = image.role if image is not None else "background"
    tp = batch.text_positions[item]
    for r in ("relation", "reference", "subject", "last"):  # later wins
        if r in tp:
            keep = tp[r][np.isin(out[tp[r]], ("text",) + TEXT_ROLES[:3])] if r != "last" \
                else tp[r]
            out[keep] = r
    return out.astype(str)
