"""``spatialbind generate`` / ``show`` end to end, including every bad input of issue 2."""
from __future__ import annotations

import errno
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import scenegen.dataset as dsmod
from cli import spatialbind
from scenegen import read_dataset


def run(*args):
    return CliRunner().invoke(spatialbind, list(args))


def one_line_error(r, *needles):
    assert r.exit_code == 1, r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for n in needles:
        assert n in lines[0], lines[0]


def digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_preset_and_show(tmp_path):
    out = tmp_path / "ds"
    r = run("generate", "--preset", "squares-gemma-3", "--n", "3", "--seed", "2", "--out",
            str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"wrote 19 items (3 base stimuli, 16 twins/extras) to {out}"
    ds = read_dataset(out)
    assert ds.config["seed"] == 2 and ds.config["n"] == 3
    assert ds.image(ds.base()[0]).shape == (896, 896, 3)
    png = tmp_path / "sheet.png"
    r = run("show", str(out), "--n", "1", "--out", str(png))
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"wrote contact sheet of 1 samples to {png}"
    im = np.asarray(Image.open(png).convert("RGB"))
    assert im.shape[0] > 200 and im.shape[1] > 600 and im.std() > 10  # not blank
    r = run("show", str(out))
    assert r.exit_code == 0 and (out / "contact_sheet.png").exists()


def test_generate_from_yaml_and_json_config(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("generator: flat\nseed: 1\nn: 2\ntwins: [isolated]\n"
                 "flat:\n  task: shapes\n  grid: {num_tokens: 10, token_px: 16, size: 2, "
                 "spacing: 1}\n  directions: [above, below]\n  prompts: [completion]\n")
    r = run("generate", "--config", str(y), "--out", str(tmp_path / "y"), "--no-progress")
    assert r.exit_code == 0, r.output
    ds = read_dataset(tmp_path / "y")
    assert len(ds) == 2 * 4
    s = ds.base()[0]
    assert s.axis == "vertical" and s.width == 160 and len(s.prompts) == 1
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"n": 2, "flat": {"task": "squares", "colors": ["red", "cyan",
                                                                            "pink"]}}))
    r = run("generate", "--config", str(j), "--out", str(tmp_path / "j"), "--no-progress",
            "--workers", "2")
    assert r.exit_code == 0, r.output
    assert {e.color for e in read_dataset(tmp_path / "j").base()[0].entities} == {
        "red", "cyan", "pink"}


def test_bad_preset():
    one_line_error(run("generate", "--preset", "squares-gema-3", "--out", "/tmp/never"),
                   "unknown preset 'squares-gema-3'", "Did you mean 'squares-gemma-3'?")


@pytest.mark.parametrize("cfg,needles", [
    ({"flat": {"task": "shapes", "shapes": ["circle", "hexagon", "star"]}},
     ["unknown shape 'hexagon'"]),
    ({"flat": {"colors": ["red", "magenta", "blue"]}}, ["unknown colour 'magenta'"]),
    ({"flat": {"grid": {"num_tokens": 10, "size": 3, "spacing": 1}}},
     ["impossible layout", "need 11 tokens", "raise num_tokens to at least 11"]),
    ({"flat": {"taks": "shapes"}}, ["unknown option 'taks' in flat", "Did you mean 'task'?"]),
    ({"n": 500}, ["n=500 exceeds the 480 distinct squares items"]),
])
def test_bad_config_one_line(tmp_path, cfg, needles):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(cfg))
    out = tmp_path / "o"
    one_line_error(run("generate", "--config", str(f), "--out", str(out)), *needles)
    assert not out.exists()  # nothing written for a bad config


def test_out_dir_with_other_config(tmp_path):
    out = tmp_path / "ds"
    assert run("generate", "--preset", "shapes-qwen2-vl", "--n", "2", "--out", str(out),
               "--no-progress").exit_code == 0
    before = digest(out)
    one_line_error(run("generate", "--preset", "shapes-qwen2-vl", "--n", "3", "--out", str(out)),
                   "holds a dataset made with a different config", "differs in n",
                   "choose a new --out")
    assert digest(out) == before
    # the same command again is a no-op resume
    r = run("generate", "--preset", "shapes-qwen2-vl", "--n", "2", "--out", str(out),
            "--no-progress")
    assert r.exit_code == 0 and digest(out) == before


def test_full_disk_cli(tmp_path, monkeypatch):
    real_open = open
    n = {"w": 0}

    def full_open(path, mode="r", *a, **kw):
        if "w" in mode:
            n["w"] += 1
            if n["w"] > 12:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(dsmod, "open", full_open, raising=False)
    out = tmp_path / "ds"
    one_line_error(run("generate", "--preset", "squares-qwen2-vl", "--n", "4", "--out", str(out),
                       "--no-progress"), "disk full while writing", "run the same command again")
    monkeypatch.undo()
    r = run("generate", "--preset", "squares-qwen2-vl", "--n", "4", "--out", str(out),
            "--no-progress")
    assert r.exit_code == 0 and "wrote 25 items" in r.output


def test_usage_errors():
    r = run("generate", "--out", "/tmp/x")
    assert r.exit_code == 2 and "exactly one of --preset NAME or --config FILE" in r.output
    r = run("generate", "--preset", "scene3d", "--config", "x.yaml", "--out", "/tmp/x")
    assert r.exit_code == 2
    one_line_error(run("generate", "--preset", "squares-qwen2-vl", "--workers", "0", "--out",
                       "/tmp/x"), "--workers must be >= 1")
    one_line_error(run("show", "/tmp/definitely-not-a-dataset"), "is not a spatialbind dataset")
