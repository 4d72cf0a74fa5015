"""``probe --recipe paper --label side --export-directions`` on too few items says what it could
not export (never nothing, silently), and with nothing to export exits 1 with one line; its E3
probe reads layout cells, and evaluate's ``golden.txt`` is taken as is by ``--golden``."""
from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from cli import spatialbind
from tests.unit.test_probe_layout_cells import write_store


@pytest.fixture(scope="module")
def few(tmp_path_factory):
    root = tmp_path_factory.mktemp("few")
    store, data, ds, stims, _ = write_store(root, n=4)
    return root, store, data, ds


def _probe(store, out, dirs, *extra):
    return CliRunner().invoke(spatialbind, [
        "probe", "--store", str(store), "--model", "m", "--layers", "0", "--roles", "object",
        "--recipe", "paper", "--label", "side", "--pool", "entity", "--scheduler", "serial",
        "--no-progress", "--export-directions", str(dirs), "--out", str(out), *extra])


def _images_per_axis(data, ds):
    """Our own oracle: distinct image files (sha256 of their bytes) of the base items per axis."""
    out: dict[str, set] = {}
    for s in ds.base():
        if s.entities:
            out.setdefault(s.axis, set()).add(
                hashlib.sha256((data / s.file_name).read_bytes()).hexdigest())
    return out


def test_four_items_export_what_they_can_and_list_the_rest(few, tmp_path):
    root, store, data, ds = few
    images = _images_per_axis(data, ds)
    can = {a for a, h in images.items() if len(h) >= 2}   # a held-out split needs two images
    cannot = {"horizontal", "vertical"} - can
    assert can and cannot, images  # this dataset has one axis of each kind
    r = _probe(store, tmp_path / "out", tmp_path / "dirs")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "dirs" / "export.json").read_text())
    assert {e["axis"] for e in rep["exported"]} == can
    assert {f["axis"] for f in rep["not_exported"]} == cannot
    assert rep["n_exported"] + rep["n_not_exported"] == 2 and rep["region"] == "layout"
    for f in rep["not_exported"]:
        assert f"{f['axis']} layer 0 object" in r.output and "independent group" in f["reason"]
        assert not (tmp_path / "dirs" / f["axis"]).exists()
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["e7_directions"] == rep and cfg["region"] == "layout"
    assert [c["orientation"] for c in cfg["failed_cells"]] == sorted(cannot)


def test_nothing_to_export_exits_one_with_one_line(few, tmp_path):
    root, store, data, ds = few
    one = next(s.id for s in ds.base() if s.entities)
    (tmp_path / "golden.txt").write_text(one + "\n")
    r = _probe(store, tmp_path / "out", tmp_path / "dirs", "--golden",
               str(tmp_path / "golden.txt"))
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and "no E7 direction could be trained (2 of 2" in lines[0]
    assert "--golden items" in lines[0] and "--recipe robust" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "dirs").exists()


def test_evaluate_golden_file_is_what_probe_golden_takes(few, tmp_path):
    """A golden.txt written by evaluate's report code from a predictions table: the ids of
    items whose every query is right, one per line; probe trains on exactly those."""
    import pandas as pd

    from study.evaluate_report import golden_text

    root, store, data, ds = few
    ids = sorted(s.id for s in ds.stimuli if s.entities and s.counterfactual_kind != "isolated")
    rows = []
    for k, i in enumerate(ids):  # two orders; an item is golden only when both are right
        rows += [{"id": i, "order": "lr", "correct": k % 3 != 1},
                 {"id": i, "order": "rl", "correct": k % 3 != 2}]
    preds = pd.DataFrame(rows)
    preds["item_correct"] = preds.groupby("id")["correct"].transform("all")
    want = [i for k, i in enumerate(ids) if k % 3 == 0]
    text = golden_text(preds)
    assert text.splitlines() == want and text.endswith("\n")
    (tmp_path / "golden.txt").write_text(text)
    r = _probe(store, tmp_path / "out", tmp_path / "dirs", "--golden",
               str(tmp_path / "golden.txt"))
    rep = json.loads((tmp_path / "dirs" / "export.json").read_text())
    assert r.exit_code == 0 and rep["golden_only"] and rep["n_golden"] == len(want)
    for e in rep["exported"]:
        x = json.loads((tmp_path / "dirs" / e["path"] / "direction.json").read_text())["extra"]
        assert set(x["split"]["train_items"]) | set(x["split"]["test_items"]) <= set(want)
