"""Dataset directories: byte determinism (runs, worker counts, resumption, SIGKILL), the
imagefolder contract, and bad input that must not damage what is already written."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import scenegen.dataset as dsmod
from scenegen import read_dataset
from scenegen.config import GenerateConfig
from scenegen.errors import DatasetError
from scenegen.generate import generate
from scenegen.presets import preset_config


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (relative path -> digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def small(n=6, **kw):
    return preset_config("shapes-qwen2-vl", n=n, **kw)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "ds"
    generate(small(), out, progress=False)
    return out


def test_layout_and_records(clean):
    names = {p.name for p in clean.iterdir()}
    assert {"config.json", "metadata.jsonl", "manifest.parquet", "images", "masks"} <= names
    ds = read_dataset(clean)
    assert len(ds) == 1 + 6 * 6  # blank + 6 units x (base, swap, cc, 3 isolated)
    cfg = json.loads((clean / "config.json").read_text())
    assert cfg["config"] == small().to_dict() and ds.config_hash == cfg["hash"]
    for s in ds:
        img, m = ds.image(s), ds.mask(s)
        assert img.shape == (336, 336, 3) and m.shape == (336, 336)
        assert set(np.unique(m)) == {0} | {e.mask_id for e in s.entities}
    b = ds.base()[0]
    assert {t.counterfactual_kind for t in ds.twins(b.id)} == {"swap", "crisscross", "isolated"}
    import pandas as pd

    man = pd.read_parquet(clean / "manifest.parquet")
    assert list(man["id"]) == [s.id for s in ds]
    assert [len(e) for e in man["entities"]] == [len(s.entities) for s in ds]


def test_records_equal_generator_output(clean):
    from scenegen.generate import build_generator

    gen = build_generator(small())
    ds = read_dataset(clean)
    for i in range(len(gen)):
        for r in gen.unit(i):
            assert ds[r.stimulus.id] == r.stimulus
            assert (ds.image(r.stimulus) == r.image).all()
            assert (ds.mask(r.stimulus) == r.mask).all()


def test_byte_identical_across_runs_and_workers(clean, tmp_path):
    a = tmp_path / "a"
    generate(small(), a, progress=False, workers=2)
    assert tree(a) == tree(clean)


def test_resume_after_limit_equals_clean(clean, tmp_path):
    out = tmp_path / "r"
    generate(small(), out, progress=False, limit=3)
    assert not (out / "metadata.jsonl").exists()
    with pytest.raises(DatasetError, match="rerun the same generate command"):
        read_dataset(out)
    generate(small(), out, progress=False, limit=2)
    generate(small(), out, progress=False)
    assert tree(out) == tree(clean)


def test_sigkill_mid_run_then_resume_equals_clean(tmp_path):
    cmd = [sys.executable, "-c", "import cli; cli.main()", "generate", "--preset",
           "squares-qwen2-vl", "--n", "60", "--no-progress"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(cmd + ["--out", str(ref)], check=True, capture_output=True)
    p = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        parts = out / "parts"
        if parts.exists() and len(list(parts.glob("*.jsonl"))) >= 8:
            break
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    n_done = len(list((out / "parts").glob("*.jsonl")))
    assert 8 <= n_done < 61, n_done  # really killed mid-run
    assert not (out / "metadata.jsonl").exists()
    r = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote 361 items (60 base stimuli" in r.stdout
    assert not list(out.rglob(".*.tmp*"))  # temp files a kill leaves behind are cleaned up
    assert tree(out) == tree(ref)


def test_stale_temp_files_are_removed_on_resume(clean, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(clean, out)
    (out / "images" / ".squares-000001.png.tmp999").write_bytes(b"half a png")
    generate(small(), out, progress=False)
    assert tree(out) == tree(clean)


def test_out_dir_with_other_config_is_refused_untouched(clean, tmp_path):
    before = tree(clean)
    with pytest.raises(DatasetError) as e:
        generate(small(seed=1), clean, progress=False)
    assert "different config" in str(e.value) and "differs in seed" in str(e.value)
    assert tree(clean) == before


def test_disk_full_keeps_earlier_files_and_resumes(clean, tmp_path, monkeypatch):
    out = tmp_path / "full"
    real_open = open
    calls = {"n": 0}

    def full_open(path, mode="r", *a, **kw):
        if "w" in mode:
            calls["n"] += 1
            if calls["n"] > 40:  # config + a few units fit, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(dsmod, "open", full_open, raising=False)
    with pytest.raises(DatasetError) as e:
        generate(small(), out, progress=False)
    msg = str(e.value)
    assert msg.startswith("disk full while writing") and "run the same command again" in msg
    assert "\n" not in msg
    monkeypatch.undo()
    done = sorted((out / "parts").glob("*.jsonl"))
    assert done, "some units were finished before the disk filled"
    assert not list(out.rglob(".*.tmp*"))  # no half-written temp files left
    ref = tree(clean)
    for part in done:  # finished units are intact: records parse, their pixels match clean
        for line in part.read_text().splitlines():
            s = json.loads(line)
            for key in ("file_name", "mask_file_name"):
                assert tree(out)[s[key]] == ref[s[key]]
    generate(small(), out, progress=False)
    assert tree(out) == ref


def test_imagefolder_loads_images_masks_and_labels(clean, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    hf = datasets.load_dataset("imagefolder", data_dir=str(clean), split="train",
                               cache_dir=str(tmp_path / "cache"))
    ds = read_dataset(clean)
    assert hf.num_rows == len(ds)
    # datasets >= 4 turns every *_file_name column into an Image column named without the suffix
    assert type(hf.features["image"]).__name__ == "Image"
    assert type(hf.features["mask"]).__name__ == "Image"
    row = hf[1]
    s = ds[row["id"]]
    assert (np.asarray(row["image"].convert("RGB")) == ds.image(s)).all()
    assert (np.asarray(row["mask"]) == ds.mask(s)).all()
    assert row["relation"] == s.relation and row["axis"] == s.axis
    assert [e["ordinal"] for e in row["entities"]] == [e.ordinal for e in s.entities]
    assert row["prompts"][0]["answer"] == s.prompts[0].answer


def test_degraded_dataset_roundtrip(tmp_path):
    cfg = GenerateConfig.from_dict({"n": 4, "twins": ["swap"], "degradations": [
        {"kind": "occluder", "strength": 0.5}, {"kind": "noise", "strength": 0.2}]})
    out = generate(cfg, tmp_path / "deg", progress=False)
    ds = read_dataset(out)
    kinds = {s.degradation["kind"] for s in ds}
    assert kinds <= {"occluder", "noise"} and len(ds) == 8
    for s in ds:
        m = ds.mask(s)
        for e in s.entities:
            assert e.area == int((m == e.mask_id).sum())
