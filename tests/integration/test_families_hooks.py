"""Projector-site interventions on the families whose projector output is not a plain
``(batch, tokens, hidden)`` tensor: Pixtral (packed ``(1, batch*tokens, hidden)``) and Qwen2.5-VL
(row-major ``pooler_output`` of the vision model; the merger's own output is window-ordered).
Oracle (MODELS.md): replacing item b's image embeddings with those of image C gives exactly the
run on image C, and leaves the other items of the batch untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vlms
from interventions.hooks import Interchange, Patch, pairs, run
from tests.helpers_vlms import squares

GEOM = {"tiny-pixtral": (256, 16), "tiny-qwen2.5-vl": (448, 28), "tiny-llava": (336, 14)}


@pytest.mark.parametrize("name", list(GEOM))
def test_projector_interchange_in_a_batch_equals_the_source_run(name):
    torch.set_num_threads(1)
    ad = vlms.build_tiny(name)
    size, cell = GEOM[name]
    imgs = [squares(i, size=size, cell=cell, axis=ax, colours=c).image for i, ax, c in
            [(0, "horizontal", ("red", "green", "blue")),
             (1, "vertical", ("blue", "yellow", "red")),
             (2, "horizontal", ("green", "red", "yellow"))]]
    prompt = "The color of the square to the left of the green square is"
    both = ad.prepare(imgs[:2], [prompt, prompt])
    src = ad.prepare([imgs[2]], [prompt])
    want = run(ad, src.inputs, capture=["projector"])
    feats = want.acts["projector"][0]
    n = feats.shape[0]
    plain = run(ad, both.inputs)
    patched = run(ad, both.inputs, capture=["projector"], patches=[Patch(
        site="projector", intervention=Interchange(), index=pairs(1, range(n)), source=feats)])
    # item 1 now sees image C's embeddings: its logits are the run on C
    torch.testing.assert_close(patched.logits[1, -1], want.logits[0, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(patched.acts["projector"][1], feats)
    # item 0 is untouched
    torch.testing.assert_close(patched.logits[0, -1], plain.logits[0, -1], rtol=0, atol=0)
    assert not torch.allclose(plain.logits[1, -1], want.logits[0, -1])
    # the captured projector site is row-major: token k of item 0 is the adapter's token k
    _, acts = ad.capture(ad.prepare(imgs[:1], [prompt]), ["projector"])
    torch.testing.assert_close(patched.acts["projector"][0], acts["projector"][0],
                               rtol=1e-5, atol=1e-5)
    pos = np.asarray(both.image_positions[0])
    assert len(pos) == n
    assert ad.image_grid(both.inputs, 1) == both.grids[1]
    # vision.blocks hooks see the raw tower output: LLaVA's row 0 is CLS, so token k's patch is
    # row k+1; Pixtral row k; Qwen2.5-VL the 4 rows of token k's merge unit in window order
    rows = ad.site_tokens("vision.blocks.0", [0, 5], both.grids[0])
    if name == "tiny-llava":
        assert rows.tolist() == [1, 6]
    elif name == "tiny-pixtral":
        assert rows.tolist() == [0, 5]
    else:
        win = list(ad.window_index(both.grids[0]))
        assert rows.tolist() == [4 * win.index(0) + j for j in range(4)] + \
            [4 * win.index(5) + j for j in range(4)]
