"""``spatialbind organism``: bad input is one clear line with exit status 1, nothing overwritten;
``organism check`` runs the mechanism check on a saved organism."""
from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from cli import spatialbind

torch.set_num_threads(1)


def test_train_rejects_unimplemented_task(tmp_path):
    r = CliRunner().invoke(spatialbind, ["organism", "train", "--mechanism", "lm", "--task",
                                         "shapes", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert "task" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_train_refuses_to_overwrite_a_model(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"keep me")
    r = CliRunner().invoke(spatialbind, ["organism", "train", "--mechanism", "vision", "--steps",
                                         "1", "--out", str(out)])
    assert r.exit_code == 1 and "already holds a trained model" in r.output
    assert (out / "model.safetensors").read_bytes() == b"keep me"


def test_bad_mechanism_is_a_usage_error(tmp_path):
    r = CliRunner().invoke(spatialbind, ["organism", "train", "--mechanism", "both", "--out",
                                         str(tmp_path / "o")])
    assert r.exit_code == 2 and "both" in r.output


def test_check_on_a_saved_organism(tmp_path):
    from organisms import trainer as org

    cfg = org.OrganismConfig(mechanism="lm", vision_depth=1, vision_dim=32, vision_heads=1,
                             lm_layers=1, lm_dim=64, lm_heads=2, steps=2, batch=4, eval_every=2,
                             eval_items=4)
    org.train(cfg, out=tmp_path / "o", progress=False, final_eval_items=4)
    r = CliRunner().invoke(spatialbind, ["organism", "check", str(tmp_path / "o"), "--images", "12",
                                         "--items", "16"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert f"mechanism: {summary['mechanism']}" in r.stdout
    assert set(summary) >= {"probe_projector_slot", "probe_init_control", "accuracy_shuffled_tokens",
                            "probe_projector_slot_strip", "accuracy_ablated_vision_ordering",
                            "flip_object", "flip_band", "mechanism"}
    assert 0 <= summary["probe_projector_slot"] <= 1
    assert 0 <= summary["flip_object"] <= 1 and 0 <= summary["accuracy_ablated_vision_ordering"] <= 1
    # a 2-step model has no slot code and answers near chance: the check does not call it
    # vision or dual (those need a projector probe >= 0.9)
    assert summary["mechanism"] in ("lm", "unclear")
    # absolute position decodes slot well above chance on these layouts (the control's point)
    assert summary["probe_position_only"] > 0.6
