"""Hand-built stimuli for vlms tests (no generator needed): squares aligned with a token grid."""
from __future__ import annotations

import numpy as np

from scenegen.record import Entity, Prompt, Rendered, Stimulus, entity_from_mask

COLOURS = {"red": (230, 25, 25), "green": (25, 200, 25), "blue": (25, 25, 230),
           "yellow": (230, 230, 25), "purple": (140, 25, 200)}


def squares(idx: int = 0, *, size: int = 448, cell: int = 28, axis: str = "horizontal",
            colours=("red", "green", "blue"), distractor: str | None = "purple",
            offset: int = 0) -> Rendered:
    """Three 2x2-cell squares along ``axis`` (+ an optional 1x1 distractor) on white."""
    n = size // cell
    img = np.full((size, size, 3), 255, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mid = n // 2 - 1
    slots = [2 + offset, 7 + offset, 12 + offset] if n >= 16 else [1, 5, 9]
    ents = []
    for k, (c, s) in enumerate(zip(colours, slots)):
        r, q = (mid, s) if axis == "horizontal" else (s, mid)
        y0, x0 = r * cell, q * cell
        img[y0:y0 + 2 * cell, x0:x0 + 2 * cell] = COLOURS[c]
        mask[y0:y0 + 2 * cell, x0:x0 + 2 * cell] = k + 1
    if distractor:
        y0, x0 = (1 * cell, 1 * cell)
        img[y0:y0 + cell, x0:x0 + cell] = COLOURS[distractor]
        mask[y0:y0 + cell, x0:x0 + cell] = 4
    for k, c in enumerate(colours):
        ents.append(entity_from_mask(mask, k + 1, role="target", ordinal=k, kind="square",
                                     color=c, rgb=COLOURS[c], name=f"{c} square"))
    if distractor:
        ents.append(entity_from_mask(mask, 4, role="distractor", ordinal=None, kind="square",
                                     color=distractor, rgb=COLOURS[distractor]))
    rel = "left" if axis == "horizontal" else "above"
    text = f"The color of the square to the {rel} of the {colours[1]} square is "
    if axis == "vertical":
        text = f"The color of the square {rel} the {colours[1]} square is "
    ref = text.index(colours[1])
    spans = {"subject": (text.index("square"), text.index("square") + 6),
             "reference": (ref, ref + len(colours[1]) + 7),
             "relation": (text.index(rel), text.index(rel) + len(rel))}
    prompt = Prompt(kind="completion", text=text, answer=colours[0],
                    options=tuple(colours), spans=spans,
                    system="You are a helpful assistant. You respond in one token.")
    sid = f"sq{idx:04d}"
    stim = Stimulus(id=sid, file_name=f"images/{sid}.png", mask_file_name=f"masks/{sid}.png",
                    width=size, height=size, generator="flat", task="squares", relation=rel,
                    axis=axis, entities=tuple(ents), prompts=(prompt,), scene_id=sid, index=idx)
    return Rendered(stimulus=stim, image=img, mask=mask)


def write_squares(root, n: int = 4, *, size: int = 448, cell: int = 28) -> None:
    """A small dataset directory of :func:`squares` stimuli (metadata.jsonl + pixels)."""
    from pathlib import Path

    from scenegen.dataset import prepare_output, write_rendered
    from scenegen.record import dumps

    root = Path(root)
    prepare_output(root, {"test": "squares", "n": n, "size": size})
    items = [squares(i, size=size, cell=cell, axis="horizontal" if i % 2 == 0 else "vertical",
                     colours=[("red", "green", "blue"), ("blue", "yellow", "red"),
                              ("green", "red", "yellow")][i % 3], offset=i % 2)
             for i in range(n)]
    recs = write_rendered(root, items)
    (root / "metadata.jsonl").write_text("".join(dumps(s) + "\n" for s in recs))
