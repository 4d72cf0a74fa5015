"""E7 sanity controls (the authors' COCO run_axis_controls): shuffled images and swapped objects,
checked with stand-in models whose behaviour is known by construction (one reads the image, one
reads only the words) and, through the CLI, with a tiny VLM against its own forward pass."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from interventions.controls import (ControlsConfig, _Item, control_lines, run_controls)

VOCAB = ["left", "right", "above", "below", "banana", "%"]
OPP = {"left": "right", "right": "left", "above": "below", "below": "above"}


class Tok:
    def __call__(self, text, add_special_tokens=False):
        w = text.strip().lower()
        return {"input_ids": [VOCAB.index(w)] if w in VOCAB else [VOCAB.index("%")]}

    def decode(self, ids):
        return " " + VOCAB[ids[0]].capitalize()  # top-1 is stripped and lower-cased


class Batch:
    def __init__(self, inputs):
        self.inputs = inputs


class StandIn:
    """``reads_image``: answers from the scene drawn in the image (a dict: subj, ref, truth);
    a question about objects the image does not show gets 'banana' (an invalid answer) on odd
    image ids and the axis's first word on even ones. Otherwise: answers from the words alone (the
    truth of the item whose subject the question names)."""

    name = "stand-in"

    def __init__(self, reads_image: bool, truths: dict):
        self.reads_image, self.truths, self.tokenizer = reads_image, truths, Tok()
        self.model = self._forward

    def prepare(self, images, prompts, system=None):
        return Batch({"image": images[0], "text": prompts[0]})

    def _forward(self, image, text):
        subj = text.split("which side is the ")[-1].split(" on?")[0] \
            if "which side" in text else text.split("where is the ")[-1].split(" located?")[0]
        ref = text.split("Using the ")[1].split(" as the reference")[0]
        if self.reads_image:
            if (image["subj"], image["ref"]) == (subj, ref):
                ans = image["truth"]
            elif (image["subj"], image["ref"]) == (ref, subj):
                ans = OPP[image["truth"]]
            else:
                ans = "banana" if image["id"] % 2 else ("left" if "side" in text else "above")
        else:
            ans = self.truths[subj]
        logits = torch.full((1, 1, len(VOCAB)), -5.0)
        logits[0, 0, VOCAB.index(ans)] = 5.0
        return type("Out", (), {"logits": logits})()


def items(n=12):
    out, truths = [], {}
    for i in range(n):
        truth = ["left", "right", "above", "below"][i % 4]
        axis = "horizontal" if truth in ("left", "right") else "vertical"
        scene = {"subj": f"obj{i}a", "ref": f"obj{i}b", "truth": truth, "id": i}
        truths[scene["subj"]] = truth
        truths[scene["ref"]] = OPP[truth]
        out.append(_Item(i, f"item{i}", axis, truth, scene["subj"], scene["ref"],
                         (lambda s=scene: s)))
    return out, truths


def _rows(summary, control, axis="all"):
    return next(r for r in summary["rows"] if r["control"] == control and r["axis"] == axis)


def test_image_reading_model_flips_on_swap_and_fails_on_shuffle():
    its, truths = items(12)
    cfg = ControlsConfig(n_per_axis=4, seed=1, template="anchor")
    table, summary = run_controls(StandIn(True, truths), its, cfg, progress=False)
    assert len(table) == 2 * 8 and set(table["axis"]) == {"horizontal", "vertical"}
    sw = _rows(summary, "swapped objects")
    assert (sw["n"], sw["valid"], sw["hit"], sw["rate"]) == (8, 8, 8, 1.0)
    assert sw["two_option_rate"] == 1.0
    sh = table[table["control"] == "shuffled images"]
    assert (sh["image_of"] != sh["item"]).all()
    # hand oracle for the shuffled rows: the stand-in answers 'banana' (invalid) on odd image
    # ids, else the axis's first word, which is right only when the truth is that word
    img_id = sh["image_of"].str[4:].astype(int)
    valid = img_id % 2 == 0
    assert list(sh["valid"]) == list(valid)
    first = sh["axis"].map({"horizontal": "left", "vertical": "above"})
    want_hit = valid & (sh["truth"] == first)
    r = _rows(summary, "shuffled images")
    assert r["valid"] == int(valid.sum()) and r["hit"] == int(want_hit.sum())
    lines = control_lines(summary)
    assert len(lines) == 2 and "swapped objects: answered the opposite 8/8 valid (1.000" in lines[1]


def test_text_only_model_keeps_accuracy_on_shuffle_and_never_flips():
    its, truths = items(12)
    cfg = ControlsConfig(n_per_axis=6, seed=0, template="anchor")
    table, summary = run_controls(StandIn(False, truths), its, cfg, progress=False)
    sh, sw = _rows(summary, "shuffled images"), _rows(summary, "swapped objects")
    assert sh["rate"] == 1.0 and sh["valid"] == 12
    # asked about the reference ("which side is obj_b on?"), the words-only model gives obj_b's
    # own side, the opposite of the truth: the swap 'flips' for it too, as it should by words
    assert sw["rate"] == 1.0
    # but on another item's image the image-reading model and this one disagree on every valid row
    t2, _ = run_controls(StandIn(True, truths), its, cfg, progress=False)
    a = table[table["control"] == "shuffled images"].reset_index()
    b = t2[t2["control"] == "shuffled images"].reset_index()
    assert list(a["image_of"]) == list(b["image_of"])  # same seeded draws
    assert not (a["top1"] == b["top1"]).all()


def test_draws_are_seeded_and_per_axis_capped():
    its, truths = items(20)
    m = StandIn(True, truths)
    t1, _ = run_controls(m, its, ControlsConfig(n_per_axis=3, seed=5, template="anchor"),
                         progress=False)
    t2, _ = run_controls(m, its, ControlsConfig(n_per_axis=3, seed=5, template="anchor"),
                         progress=False)
    pd.testing.assert_frame_equal(t1, t2)
    assert t1.groupby(["control", "axis"]).size().tolist() == [3, 3, 3, 3]
    with pytest.raises(Exception, match="controls-n"):
        ControlsConfig(n_per_axis=0)


def test_cli_amplify_controls_with_tiny_vlm(tmp_path):
    """Through ``spatialbind amplify --controls``: controls.json beside the probe / random rows;
    each recorded top-1 equals the tiny model's own forward on that image and prompt."""
    torch.set_num_threads(1)
    from cli import spatialbind
    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.registry import load_adapter

    data = tmp_path / "sq"
    generate(preset_config("squares-qwen2-vl", n=4), data, progress=False)
    out = tmp_path / "e7"
    r = CliRunner().invoke(spatialbind, [
        "amplify", "--model", "tiny-qwen2-vl", "--data", str(data), "--out", str(out),
        "--alphas", "0,5", "--direction", "mean-diff", "--controls", "--controls-n", "1",
        "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "probe |" in r.output and "random |" in r.output
    assert "control | shuffled images" in r.output and "control | swapped objects" in r.output
    s = json.loads((out / "controls.json").read_text())
    assert {x["control"] for x in s["rows"]} == {"shuffled images", "swapped objects"}
    assert "sanity_controls" in json.loads((out / "summary.json").read_text())
    t = pd.read_parquet(out / "controls.parquet")
    ad = load_adapter("tiny-qwen2-vl")
    ds = read_dataset(data)
    row = t.iloc[0]
    stim = next(x for x in ds.stimuli if x.id == row["image_of"])
    batch = ad.prepare([ds.image(stim)], [row["prompt"]])
    with torch.no_grad():
        logits = ad.model(**batch.inputs).logits[0, -1]
    assert ad.tokenizer.decode([int(logits.argmax())]).strip().lower() == row["top1"]
