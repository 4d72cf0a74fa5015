"""Which code trained an organism: the commit recorded per stage, and the reproduce commands."""
import shutil
import subprocess

import pytest

from organisms import trainer as org

GIT = shutil.which("git")


def _git(cwd, *args):
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.skipif(GIT is None, reason="needs git")
def test_code_version_reads_commit_and_dirty_state(tmp_path):
    assert org.code_version(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert org.code_version(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "b.py").write_text("untracked files do not count\n")
    assert org.code_version(tmp_path)["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert org.code_version(tmp_path) == {"commit": head, "dirty": True}


def _cfg(**kw):
    c = org.OrganismConfig(arch="qwen2-vl", mechanism="vision", steps=10, vision_dim=128,
                           aux_slot_weight=2.0).to_json()
    c.update(kw)
    return c


def test_reproduce_commands_pin_a_stage_trained_at_other_code():
    import json

    from organisms import shipped

    # the shipped vision organism's stage 1: a config written before --aux-region existed
    old = json.loads((shipped("qwen2-vl-vision") / "train_log.json").read_text())
    old = old["stages"][0]["config"]
    assert "aux_region" not in old
    log = {"config": _cfg(), "stages": [
        {"config": old, "code": {"commit": "2147b029a1949fbee5d2785a1049ff497721333e"}},
        {"config": _cfg(steps=200, aux_region="band"), "code": {"commit": "f" * 40}}]}
    cmds = org.reproduce_commands(log, "vlms/organisms/x")
    assert cmds[0] == ("# stage 1: run at commit 2147b029a194 "
                       "(git worktree add ../spatialbind-2147b02 2147b029a194)")
    # the shipped stage 1's command as its README gave it on 2026-11-25 (that CLI had no
    # --aux-region / --aux-colour options), with this test's output folder
    assert cmds[1] == ("spatialbind organism train --arch qwen2-vl --mechanism vision --task "
                       "squares --steps 1000 --seed 0 --threads 1 --batch 32 --eval-every 100 "
                       "--vision-dim 128 --aux-slot-weight 2 --out vlms/organisms/x-stage1")
    assert "--aux-region band --no-aux-colour" in cmds[2] and len(cmds) == 3
    assert "--aux-region object --no-aux-colour" in org.command_line(_cfg(), "x")
    # one commit for every stage (or none recorded): no comment
    for st in log["stages"]:
        st["code"] = {"commit": "f" * 40}
    assert not any(c.startswith("#") for c in org.reproduce_commands(log, "x"))
    for st in log["stages"]:
        del st["code"]
    assert not any(c.startswith("#") for c in org.reproduce_commands(log, "x"))


@pytest.mark.parametrize("name", ["qwen2-vl-lm", "qwen2-vl-vision", "qwen2-vl-dual",
                                  "gemma-3-lm", "gemma-3-vision", "gemma-3-dual"])
def test_shipped_readme_is_what_its_train_log_generates(name, tmp_path):
    """Each shipped organism's README is the generator's output for its train_log.json, so the
    command, curve numbers and checks it states are the log's (edit the log, then regenerate)."""
    import json

    from organisms import shipped

    src, dst = shipped(name), tmp_path / name  # the README's title is the folder's name
    dst.mkdir()
    org.write_readme(dst, json.loads((src / "train_log.json").read_text()))
    assert (dst / "README.md").read_text() == (src / "README.md").read_text()
