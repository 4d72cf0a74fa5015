"""E4 / E6 under ``--recipe paper`` on the authors' pairs (``interventions.authors_pairs``),
checked against the published rule written out here: which triples are drawn and kept, how the
clean and counterfactual images look (``three_rect_image``: 12x12 tokens of 28 px, squares 2x2
tokens 2 apart, centred; the authors' ``COLOR_RGB``), and which tokens ``regions.parquet`` pairs
(the authors' layout cells and 4/4/4 strips for Qwen2-VL)."""
from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli import spatialbind

MODEL = "tiny-qwen2-vl"
# the authors' criss_cross_patching/src/data.py COLOR_RGB minus White, in its order
AUTHORS_RGB = {"Red": (255, 0, 0), "Green": (0, 255, 0), "Blue": (0, 0, 255),
               "Black": (0, 0, 0), "Brown": (150, 75, 0), "Gray": (128, 128, 128),
               "Orange": (255, 165, 0)}
DIRS = ("left", "right", "above", "below")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    from scenegen.generate import generate
    from scenegen.presets import preset_config

    out = tmp_path_factory.mktemp("ap") / "squares"
    generate(preset_config("squares-qwen2-vl", n=2), out, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def tokenizer():
    from vlms.registry import load_adapter

    return load_adapter(MODEL).tokenizer


def _rule(pool, keep, target, max_attempts=2000):
    """The authors' build_cf_pairs: one random.Random(0) for all directions; per direction draw
    sample(pool, 3), skip a repeat, keep when the model is right, until target or the cap."""
    rng = random.Random(0)
    out = {}
    for d in DIRS:
        seen, kept, n = set(), [], 0
        while len(kept) < target and n < max_attempts:
            n += 1
            t = tuple(rng.sample(pool, 3))
            if t in seen:
                continue
            seen.add(t)
            if keep(t):
                kept.append((n, t))
        out[d] = kept
    return out


def _pool(tokenizer):
    # candidate_pool: a colour is kept when its Capitalised name is one token
    return [c for c in AUTHORS_RGB if len(tokenizer.tokenize(c)) == 1]


def _paint(slots, direction):
    """three_rect_image at the Qwen2-VL geometry, from the published formula."""
    img = np.full((336, 336, 3), 255, np.uint8)
    horizontal = direction in ("left", "right")
    for i, c in enumerate(slots):
        col, row = (1 + 4 * i, 5) if horizontal else (5, 1 + 4 * i)
        img[row * 28:(row + 2) * 28, col * 28:(col + 2) * 28] = AUTHORS_RGB[c]
    return img


def _cells(col, row):
    return sorted(r * 12 + c for r in (row, row + 1) for c in (col, col + 1))


def _plant_verdicts(monkeypatch, wrong: str):
    """A model that answers right unless the answer is ``wrong`` (both runs are checked)."""
    import interventions.patching as patching

    monkeypatch.setattr(patching, "vocab_top1", lambda tok, logits: "x")
    monkeypatch.setattr(patching, "vocab_top1_answer", lambda a: "y" if a == wrong else "x")


def test_rendered_pairs_are_the_authors_images_and_prompts(data, tokenizer):
    from scenegen import read_dataset

    from interventions.authors_pairs import AuthorsData
    from interventions.stimuli import pick_prompt, twin

    ds = read_dataset(data)
    ad = AuthorsData(ds, tokenizer, isolated=True)
    assert [ad.name(c) for c in ad.pool] == _pool(tokenizer)
    for direction in DIRS:
        triple = ("black", "gray", "red")
        stim = ad.render(direction, 7, triple)
        cc = twin(ad, stim, "crisscross")
        clean_slots = ["Black", "Gray", "Red"]
        if direction in ("right", "below"):
            clean_slots = clean_slots[::-1]
        assert np.array_equal(ad.image(stim), _paint(clean_slots, direction))
        assert np.array_equal(ad.image(cc), _paint(clean_slots[::-1], direction))
        p, q = pick_prompt(stim), pick_prompt(cc)
        assert p.text == q.text  # the same question on both runs
        assert (p.answer, q.answer) == ("black", "red")  # t0 on the clean run, t2 on the cf
        assert p.text == ("The color of the square "
                          + {"left": "to the left of", "right": "to the right of",
                             "above": "above", "below": "below"}[direction]
                          + " the gray square is ")
        iso = sorted(ad.twins(stim.id, "isolated"), key=lambda s: s.isolates)
        assert len(iso) == 3  # each entity alone at the middle slot (the authors' references)
        for s in iso:
            e = next(x for x in stim.entities if x.mask_id == s.isolates)
            want = np.full((336, 336, 3), 255, np.uint8)
            want[5 * 28:7 * 28, 5 * 28:7 * 28] = AUTHORS_RGB[e.color.capitalize()]
            assert np.array_equal(ad.image(s), want)
        ad.forget(stim)
        assert ad.base() == [] and ad.twins(stim.id) == []


def test_patch_e4_paper_runs_the_authors_pairs(data, tokenizer, tmp_path, monkeypatch):
    """Default recipe (paper) and pairs (authors) on a paper preset: the kept pairs per direction
    are the rule's with this model's verdicts, and regions.parquet pairs the authors' cells."""
    _plant_verdicts(monkeypatch, "blue")
    out = tmp_path / "e4"
    r = CliRunner().invoke(spatialbind, ["patch", "--model", MODEL, "--data", data, "--out",
                                         str(out), "--experiment", "e4", "--layers", "0",
                                         "--limit", "2", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert (s["recipe"], s["pairs_source"]) == ("paper", "authors")
    want = _rule(_pool(tokenizer), lambda t: "Blue" not in (t[0], t[2]), 2)
    assert s["pairs"] == {d: [list(t) for _, t in v] for d, v in want.items()}
    assert s["pool"] == _pool(tokenizer) and s["n_items"] == 8
    dropped = [tuple(x["triple"]) for x in s["dropped_wrong"]]
    assert dropped and all("Blue" in (t[0], t[2]) for t in dropped)
    got = pd.read_parquet(out / "regions.parquet")
    assert list(got.columns) == ["id", "region", "clean_token", "source_token", "source"]
    ids = [f"authors-{d}-{n:04d}" for d, v in want.items() for n, _ in v]
    assert list(dict.fromkeys(got["id"])) == ids
    table = pd.read_parquet(out / "e4.parquet")
    assert list(dict.fromkeys(table["item"])) == ids
    assert (got["source"] == "counterfactual").all()
    for sid, g in got.groupby("id"):
        horizontal = sid.split("-")[1] in ("left", "right")
        a, b = ((1, 5), (9, 5)) if horizontal else ((5, 1), (5, 9))
        obj = g[g["region"] == "object"]
        assert obj["clean_token"].tolist() == _cells(*a) + _cells(*b)
        assert obj["source_token"].tolist() == _cells(*b) + _cells(*a)
        k = np.arange(144)
        along = k % 12 if horizontal else k // 12
        first, last = k[along < 4].tolist(), k[along >= 8].tolist()  # strips 4, 4, 4
        strip = g[g["region"] == "strip"]
        assert strip["clean_token"].tolist() == first + last
        assert strip["source_token"].tolist() == last + first


def test_e6_paper_authors_pairs_keep_pairs_right_under_ablation(data, tokenizer, monkeypatch):
    from scenegen import read_dataset

    from interventions.patching import PatchConfig, run_e6

    _plant_verdicts(monkeypatch, "green")
    regions: list = []
    table, s = run_e6(__import__("vlms.registry", fromlist=["load_adapter"]).load_adapter(MODEL),
                      read_dataset(data), PatchConfig(experiment="e6", layers="0", limit=1,
                                                      recipe="paper"),
                      progress=False, regions=regions)
    want = _rule(_pool(tokenizer), lambda t: "Green" not in (t[0], t[2]), 1)
    assert s["pairs"] == {d: [list(t) for _, t in v] for d, v in want.items()}
    assert s["pairs_per_direction"]["left"]["attempts"] == want["left"][-1][0]
    assert s["n_dropped_ablated_wrong"] == len(s["dropped_ablated_wrong"]) >= 1
    assert sorted(set(table["layer"])) == [-1, 0] and table["item"].nunique() == 4
    reg = pd.concat(regions)
    kinds = dict(reg.groupby("region")["source"].first())
    assert kinds["object"] == "counterfactual" and kinds["ablation:object"] == "isolated"
    assert kinds["cf-ablation:background"] == "blank"
    # every clean image token is ablated exactly once on each run
    for run in ("ablation:", "cf-ablation:"):
        one = reg[(reg["id"] == reg["id"].iloc[0]) & reg["region"].str.startswith(run)]
        assert sorted(one["clean_token"]) == list(range(144))


def test_pairs_dataset_keeps_the_dataset_items(data, monkeypatch):
    from scenegen import read_dataset

    from interventions.patching import PatchConfig, run_e4
    from interventions.stimuli import base_items
    from vlms.registry import load_adapter

    _plant_verdicts(monkeypatch, "nothing")
    ds = read_dataset(data)
    t, s = run_e4(load_adapter(MODEL), ds, PatchConfig(experiment="e4", layers="0",
                                                       pairs="dataset"), progress=False)
    assert s["pairs_source"] == "dataset" and "pairs" not in s
    assert list(dict.fromkeys(t["item"])) == [x.id for x in base_items(ds)]


def test_bad_pairs_options_are_one_line_errors(data, tmp_path):
    for extra, words in ((["--pairs", "authors", "--recipe", "robust"], "paper recipe"),
                         (["--pairs", "nope"], "nope")):
        r = CliRunner().invoke(spatialbind, ["patch", "--model", MODEL, "--data", data, "--out",
                                             str(tmp_path / "x"), "--experiment", "e4", *extra])
        assert r.exit_code != 0 and words in r.output
        assert not (tmp_path / "x").exists()


def test_pairs_ignore_a_datasets_triple_restriction(tmp_path, tokenizer):
    """A dataset of a few triples only (the demo's held-out items, ``flat.triples``) still gives
    the authors' pairs over their whole pool: the pixels equal those rendered from an
    unrestricted dataset of the same geometry."""
    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset, preset_config

    from interventions.authors_pairs import AuthorsData

    d = preset("squares-qwen2-vl")
    d["flat"] = {**d["flat"], "triples": [["red", "green", "blue"]]}
    d["n"] = 2
    from scenegen.config import GenerateConfig

    restricted = generate(GenerateConfig.from_dict(d), tmp_path / "r", progress=False)
    full = generate(preset_config("squares-qwen2-vl", n=2), tmp_path / "f", progress=False)
    a = AuthorsData(read_dataset(restricted), tokenizer)
    b = AuthorsData(read_dataset(full), tokenizer)
    for direction in DIRS:
        sa = a.render(direction, 3, ("black", "gray", "brown"))   # not one of the dataset's
        sb = b.render(direction, 3, ("black", "gray", "brown"))
        assert np.array_equal(a.image(sa), b.image(sb))
    # the paper-recipe E2 generator (the authors' seven-colour pool) drops it too
    from interventions import patching

    assert patching._paper_generator(read_dataset(restricted)).config.triples == ()
    assert len(patching._paper_generator(read_dataset(restricted)).enumeration) == 7 * 6 * 5 * 4
