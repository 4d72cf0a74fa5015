"""Property tests of the flat generator on arbitrary grids (R12): labels follow geometry."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scenegen.config import FlatConfig, GridConfig
from scenegen.flat import FlatGenerator


@st.composite
def grids(draw):
    size = draw(st.integers(1, 3))
    spacing = draw(st.integers(0, 3))
    n = draw(st.integers(3 * size + 2 * spacing, 3 * size + 2 * spacing + 4))
    return GridConfig(num_tokens=n, token_px=draw(st.sampled_from([4, 7, 8])), size=size,
                      spacing=spacing)


@settings(max_examples=25, deadline=None)
@given(grid=grids(), task=st.sampled_from(["squares", "shapes"]),
       layout=st.sampled_from(["centred", "random"]), seed=st.integers(0, 2**32),
       index=st.integers(0, 119))
def test_any_grid_labels_follow_centroids(grid, task, layout, seed, index):
    cfg = FlatConfig(task=task, grid=grid, layout=layout)
    gen = FlatGenerator(cfg, seed=seed, twins=("swap",))
    base, swap = gen.unit(index % len(gen))
    for r in (base, swap):
        s = r.stimulus
        along = 0 if s.axis == "horizontal" else 1
        ents = sorted(s.entities, key=lambda e: e.ordinal)
        # ordinals follow centroids; masks are disjoint and exactly the coloured pixels
        assert all(a.centroid[along] < b.centroid[along] for a, b in zip(ents, ents[1:]))
        assert set(np.unique(r.mask)) == {0, 1, 2, 3}
        for e in ents:
            assert (r.image[r.mask == e.mask_id] == np.array(e.rgb)).all()
            cell = [v * grid.token_px for v in s.factors["layout"]["cells"][e.ordinal]]
            assert cell[0] <= e.box[0] and cell[1] <= e.box[1]
            assert e.box[2] <= cell[2] and e.box[3] <= cell[3]
            if task == "squares":
                assert list(e.box) == cell
        # left_of(a, b) <=> right_of(b, a): the completion answer is the neighbour on that side
        tgt = ents[0] if s.relation in ("left", "above") else ents[2]
        assert s.prompts[0].answer == tgt.color
