"""Shared by the organism auxiliary-loss tests: a fresh tiny organism with its slot hook."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from organisms import data as od
from organisms import trainer as org
from organisms.model import image_tokens


@contextmanager
def aux_slot_on(cfg, n_items: int):
    """Build the organism of ``cfg``, take ``n_items`` held-out-layout items, attach its
    ``_AuxSlot`` hook and yield ``(aux, items, z, model, proc)``, ``z`` being the items'
    projector tokens (no gradient); the hook is removed afterwards."""
    model, proc = org.build(cfg)
    items = od.eval_items(od.make_splits(8), "hl", n=n_items)
    aux = org._AuxSlot(model, cfg)
    try:
        with torch.no_grad():
            z = image_tokens(model, org.Batcher(proc, 8)(items))
        yield aux, items, z, model, proc
    finally:
        aux.remove()
