"""Bad inputs across every command: each one is refused with exit status 1 and exactly one line
on stderr that names the problem and the fix, with no traceback, and every file that existed
before is byte-identical afterwards (hashes of the whole tmp tree before and after).

Each case runs the real CLI in its own subprocess (``python -c "import cli; cli.main()"``) so
stderr is what a user sees. Read-only locations are made with ``chmod 0o555``; when the tests run
as root (which ignores permission bits) the child runs under ``setpriv`` without
CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so the bits apply to it as to any user.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TINY = "tiny-qwen2-vl"
_SETPRIV = shutil.which("setpriv")
_ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0
CAN_READONLY = not _ROOT_USER or _SETPRIV is not None


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable  # (world, case_dir) -> list of CLI arguments
    expect: tuple[str, ...]  # substrings (case-insensitive) the error line must hold
    readonly: bool = False  # needs a read-only directory
    absent: tuple[str, ...] = ()  # paths (relative to the case dir) that must not exist after


@dataclass
class World:
    base: Path
    ds: Path
    store: Path
    first: str  # id of the first stimulus with entities

    def copy_ds(self, t: Path) -> Path:
        d = t / "ds"
        shutil.copytree(self.ds, d)
        return d


# ----------------------------------------------------------------------------- helpers
def _ro(t: Path) -> Path:
    d = t / "ro"
    d.mkdir()
    (d / "keep.txt").write_text("already here\n")
    d.chmod(0o555)
    return d


def _edit_first(ds: Path, stim_id: str, **fields) -> None:
    meta = ds / "metadata.jsonl"
    lines = meta.read_text().splitlines()
    out = []
    for line in lines:
        rec = json.loads(line)
        if rec["id"] == stim_id:
            rec.update(fields)
        out.append(json.dumps(rec))
    meta.write_text("\n".join(out) + "\n")


def _file(t: Path, name: str, data: bytes | str = "not yours\n") -> Path:
    p = t / name
    p.parent.mkdir(parents=True, exist_ok=True)
    (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
    return p


def _remote_code_dir(t: Path, *, known_type: bool) -> Path:
    d = t / "remote-model"
    d.mkdir()
    cfg = {"architectures": ["Qwen2VLForConditionalGeneration" if known_type
                             else "FancyVLForConditionalGeneration"],
           "model_type": "qwen2_vl" if known_type else "fancy_vl",
           **({"auto_map": {"AutoModelForImageTextToText": "modeling_fancy.FancyVL"}}
              if known_type else {})}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "modeling_fancy.py").write_text("raise SystemExit('remote code ran')\n")
    return d


def _store_copy(w: World, t: Path) -> Path:
    s = t / "store.zarr"
    shutil.copytree(w.store, s)
    return s


def _half_created(w: World, t: Path) -> Path:
    """A copy of the store whose model group is marked as still being created."""
    s = _store_copy(w, t)
    zj = s / TINY / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["attributes"]["complete"] = False
    zj.write_text(json.dumps(meta))
    return s


def _ext(w, data, store, *extra):
    return ["extract", "--model", TINY, "--data", str(data), "--store", str(store),
            "--sites", "projector", "--no-progress", *extra]


GEN = ["generate", "--preset", "squares-qwen2-vl", "--n", "1", "--no-progress"]

CASES = [
    # ------------------------------------------------------------------ generate
    Case("generate-out-is-file", lambda w, t: [*GEN, "--out", str(_file(t, "f.txt"))],
         ("f.txt", "file")),
    Case("generate-out-readonly", lambda w, t: [*GEN, "--out", str(_ro(t) / "ds")],
         ("ro", "permission"), readonly=True),
    Case("generate-config-missing", lambda w, t: ["generate", "--config", str(t / "no.yaml"),
                                                  "--out", str(t / "o")],
         ("no.yaml", "does not exist"), absent=("o",)),
    Case("generate-config-bad-yaml", lambda w, t: ["generate", "--config",
                                                   str(_file(t, "c.yaml", "a: [1,\n")),
                                                   "--out", str(t / "o")],
         ("c.yaml", "yaml"), absent=("o",)),
    Case("generate-config-not-utf8", lambda w, t: ["generate", "--config",
                                                   str(_file(t, "c.yaml", b"\xff\xfe\x00bad")),
                                                   "--out", str(t / "o")],
         ("c.yaml", "utf-8"), absent=("o",)),
    Case("generate-config-unknown-key", lambda w, t: ["generate", "--config",
                                                      str(_file(t, "c.json", '{"bogus": 1}')),
                                                      "--out", str(t / "o")],
         ("bogus",), absent=("o",)),
    Case("generate-unknown-preset", lambda w, t: ["generate", "--preset", "squares-qwen",
                                                  "--out", str(t / "o")],
         ("squares-qwen", "did you mean"), absent=("o",)),
    Case("generate-out-not-empty", lambda w, t: [*GEN, "--out", str(_file(t, "o/notes.txt").parent)],
         ("not empty", "--out")),
    Case("generate-out-foreign-config", lambda w, t: [*GEN, "--out",
                                                      str(_file(t, "o/config.json", "{oops").parent)],
         ("config.json", "--out")),
    Case("generate-workers-zero", lambda w, t: [*GEN, "--workers", "0", "--out", str(t / "o")],
         ("--workers", ">= 1"), absent=("o",)),
    # ------------------------------------------------------------------ show
    Case("show-corrupt-config", lambda w, t: ["show", str(_file(w.copy_ds(t), "config.json",
                                                                "{x").parent),
                                              "--out", str(t / "s.png")],
         ("config.json", "regenerate"), absent=("s.png",)),
    Case("show-missing-dir", lambda w, t: ["show", str(t / "nope")], ("nope", "metadata.jsonl")),
    Case("show-out-readonly", lambda w, t: ["show", str(w.ds), "--n", "1", "--out",
                                            str(_ro(t) / "s.png")],
         ("s.png", "permission"), readonly=True),
    Case("show-out-is-dir", lambda w, t: ["show", str(w.ds), "--n", "1", "--out", str(t)],
         ("directory", "png")),
    Case("show-file-name-escapes", lambda w, t: _escape(w, t, "show", file_name="../outside.png"),
         ("outside.png", "inside")),
    Case("show-mask-absolute", lambda w, t: _escape(w, t, "show", mask_file_name="ABS"),
         ("outside.png", "inside")),
    Case("show-corrupt-image", lambda w, t: _corrupt_image(w, t),
         ("corrupt", "regenerate")),
    # ------------------------------------------------------------------ extract
    Case("extract-mask-size-mismatch", lambda w, t: _mask_mismatch(w, t),
         ("120x100", "336x336", "masks/")),
    Case("extract-store-is-file", lambda w, t: _ext(w, w.ds, _file(t, "st.zarr")),
         ("st.zarr", "file")),
    Case("extract-store-foreign-folder", lambda w, t: _ext(w, w.ds, _file(t, "st/notes.txt").parent),
         ("not an activation store", "--store")),
    Case("extract-store-foreign-zarr", lambda w, t: _ext(w, w.ds, _file(
        t, "st/zarr.json", '{"zarr_format": 3, "node_type": "group", "attributes": {"mine": 1}}'
    ).parent), ("not an activation store", "--store")),
    Case("extract-corrupt-config", lambda w, t: _ext(w, _file(w.copy_ds(t), "config.json",
                                                              "{x").parent, t / "st.zarr"),
         ("config.json", "regenerate"), absent=("st.zarr",)),
    Case("extract-store-readonly", lambda w, t: _ext(w, w.ds, _ro(t) / "st.zarr"),
         ("st.zarr", "permission"), readonly=True),
    Case("extract-file-name-escapes", lambda w, t: _escape(w, t, "extract",
                                                           file_name="../outside.png"),
         ("outside.png", "inside")),
    Case("extract-depth-absolute", lambda w, t: _escape(w, t, "extract", depth_file_name="ABS"),
         ("outside.png", "inside")),
    Case("extract-remote-code-model", lambda w, t: ["extract", "--model",
                                                    str(_remote_code_dir(t, known_type=True)),
                                                    "--data", str(w.ds), "--store",
                                                    str(t / "st.zarr"), "--no-progress"],
         ("remote code", "auto_map"), absent=("st.zarr",)),
    Case("extract-remote-code-unknown-type", lambda w, t: [
        "extract", "--model", str(_remote_code_dir(t, known_type=False)), "--data", str(w.ds),
        "--store", str(t / "st.zarr"), "--no-progress"], ("remote code", "fancy_vl"),
         absent=("st.zarr",)),
    Case("extract-model-dir-without-weights", lambda w, t: [
        "extract", "--model", str(_file(t, "m/config.json", json.dumps(
            {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl"})).parent),
        "--data", str(w.ds), "--store", str(t / "st.zarr"), "--no-progress"],
         ("cannot load model", "save_pretrained"), absent=("st.zarr",)),
    Case("extract-unknown-site", lambda w, t: _ext(w, w.ds, t / "st.zarr")[:-3] + [
        "--sites", "projectr", "--no-progress"], ("projectr", "did you mean"), absent=("st.zarr",)),
    Case("extract-other-params-same-store", lambda w, t: _ext(w, w.ds, w.store,
                                                              "--object-fraction", "0.25"),
         ("params", "--store")),
    # ------------------------------------------------------------------ query
    Case("query-export-readonly", lambda w, t: ["query", str(w.store), "--site", "projector",
                                                "--role", "object", "--export", "npy", "--out",
                                                str(_ro(t) / "x.npy")],
         ("x.npy", "permission"), readonly=True),
    Case("query-export-under-a-file", lambda w, t: ["query", str(w.store), "--site", "projector",
                                                    "--role", "object", "--export", "npy",
                                                    "--out", str(_file(t, "f.txt") / "x.npy")],
         ("f.txt", "is a file")),
    Case("query-corrupt-zarr-json", lambda w, t: ["query", str(_file(t, "st/zarr.json",
                                                                     "{oops").parent)],
         ("zarr.json",)),
    Case("query-unknown-role", lambda w, t: ["query", str(w.store), "--site", "projector",
                                             "--role", "objet"], ("objet", "did you mean")),
    Case("query-being-created", lambda w, t: ["query", str(_half_created(w, t))],
         ("being created",)),
    # ------------------------------------------------------------------ probe
    Case("probe-out-readonly", lambda w, t: ["probe", "--store", str(w.store), "--model", TINY,
                                             "--site", "projector", "--roles", "object",
                                             "--scheduler", "serial", "--map-samples", "0",
                                             "--no-control", "--n-splits", "2",
                                             "--out", str(_ro(t) / "p")],
         ("permission",), readonly=True),
    Case("probe-unknown-model", lambda w, t: ["probe", "--store", str(w.store), "--model",
                                              "tiny-qwen", "--scheduler", "serial",
                                              "--out", str(t / "p")],
         ("tiny-qwen", "did you mean"), absent=("p",)),
    # ------------------------------------------------------------------ patch / ablate / amplify
    Case("ablate-not-a-dataset", lambda w, t: ["ablate", "--model", TINY, "--data",
                                               str(_file(t, "nd/x.txt").parent), "--out",
                                               str(t / "out"), "--quiet"],
         ("nd", "metadata.jsonl"), absent=("out",)),
    Case("patch-bad-layers", lambda w, t: ["patch", "--model", TINY, "--data", str(w.ds),
                                           "--out", str(t / "out"), "--layers", "99", "--quiet"],
         ("99",), absent=("out",)),
    Case("patch-out-under-a-file", lambda w, t: ["patch", "--model", TINY, "--data", str(w.ds),
                                                 "--out", str(_file(t, "o.txt") / "sub"),
                                                 "--quiet"],
         ("o.txt", "is a file")),
    Case("amplify-bad-alphas", lambda w, t: ["amplify", "--model", TINY, "--data", str(w.ds),
                                             "--out", str(t / "out"), "--alphas", "x:y",
                                             "--direction", "mean-diff", "--quiet"],
         ("alphas",), absent=("out",)),
    # ------------------------------------------------------------------ evaluate
    Case("evaluate-not-a-dataset", lambda w, t: ["evaluate", "--model", TINY, "--data",
                                                 str(t / "nope"), "--out", str(t / "out"),
                                                 "--quiet"],
         ("nope",), absent=("out",)),
    Case("evaluate-out-readonly", lambda w, t: ["evaluate", "--model", TINY, "--data", str(w.ds),
                                                "--out", str(_ro(t) / "ev"), "--limit", "1",
                                                "--quiet"],
         ("permission",), readonly=True),
    # ------------------------------------------------------------------ model save
    Case("model-save-unknown", lambda w, t: ["model", "save", "tiny-qwen3", str(t / "m")],
         ("tiny-qwen3",), absent=("m",)),
    Case("model-save-readonly", lambda w, t: ["model", "save", TINY, str(_ro(t) / "m")],
         ("permission",), readonly=True),
    Case("model-save-not-empty", lambda w, t: ["model", "save", TINY,
                                               str(_file(t, "m/x.txt").parent)],
         ("not empty", "--force")),
    # ------------------------------------------------------------------ organism
    Case("organism-check-no-config", lambda w, t: ["organism", "check",
                                                   str(_file(t, "org/x.txt").parent)],
         ("config.json",)),
    Case("organism-check-remote-code", lambda w, t: ["organism", "check",
                                                     str(_remote_code_dir(t, known_type=True))],
         ("remote code",)),
    # ------------------------------------------------------------------ demo
    Case("demo-out-readonly", lambda w, t: ["demo", "--out", str(_ro(t) / "demo")],
         ("permission",), readonly=True),
    Case("demo-bad-n", lambda w, t: ["demo", "--out", str(t / "demo"), "--n", "1"],
         ("'n'", ">= 4"), absent=("demo",)),
]


def _outside(t: Path) -> Path:
    p = t / "outside.png"
    Image.new("RGB", (336, 336), "white").save(p)
    return p


def _escape(w: World, t: Path, cmd: str, **fields) -> list[str]:
    ds = w.copy_ds(t)
    out = _outside(t)
    fields = {k: (str(out) if v == "ABS" else v) for k, v in fields.items()}
    _edit_first(ds, w.first, **fields)
    if cmd == "show":
        return ["show", str(ds), "--n", "1", "--out", str(t / "s.png")]
    return _ext(w, ds, t / "st.zarr")


def _corrupt_image(w: World, t: Path) -> list[str]:
    ds = w.copy_ds(t)
    p = ds / "images" / f"{w.first}.png"
    p.write_bytes(p.read_bytes()[:100])
    return ["show", str(ds), "--n", "1", "--out", str(t / "s.png")]


def _mask_mismatch(w: World, t: Path) -> list[str]:
    ds = w.copy_ds(t)
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(ds / "masks" / f"{w.first}.png")
    return _ext(w, ds, t / "st.zarr")


# ----------------------------------------------------------------------------- running
def _snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import cli; cli.main()", *args]
    if _ROOT_USER and _SETPRIV:
        cmd = [_SETPRIV, "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MPLCONFIGDIR=str(cwd / ".mpl"), PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from scenegen.config import GenerateConfig
    from scenegen.generate import generate
    from scenegen.presets import preset
    from vlms.extract import ExtractConfig, run_extract

    base = tmp_path_factory.mktemp("bad_inputs")
    d = preset("squares-qwen2-vl")
    d["n"] = 1
    ds = generate(GenerateConfig.from_dict(d), base / "ds", progress=False)
    store = base / "store.zarr"
    run_extract(ExtractConfig(model=TINY, data=str(ds), store=str(store), sites=("projector",)),
                progress=False, echo=lambda *_: None)
    first = next(json.loads(l)["id"] for l in (ds / "metadata.jsonl").read_text().splitlines()
                 if json.loads(l)["entities"])
    return World(base=base, ds=ds, store=store, first=first)


@pytest.fixture(scope="module")
def results(world, tmp_path_factory):
    """Run every case (a few at a time) and record what it did."""
    shared_before = _snapshot(world.base)

    def one(case: Case):
        t = tmp_path_factory.mktemp(case.id)
        (t / ".mpl").mkdir()
        args = [str(a) for a in case.args(world, t)]
        before = _snapshot(t)
        proc = _run(args, t)
        for p in t.rglob("*"):  # let the cleanup remove what the case made read-only
            if p.is_dir():
                p.chmod(0o755)
        return case.id, (t, args, before, proc)

    todo = [c for c in CASES if CAN_READONLY or not c.readonly]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        out = dict(pool.map(one, todo))
    out["_shared"] = (shared_before, _snapshot(world.base))
    return out


def test_enough_cases_across_commands():
    assert len(CASES) >= 30
    ids = {c.id.split("-")[0] for c in CASES}
    assert {"generate", "show", "extract", "query", "probe", "patch", "ablate", "amplify",
            "evaluate", "model", "organism", "demo"} <= ids


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, results):
    if case.readonly and not CAN_READONLY:
        pytest.skip("running as root without setpriv: permission bits cannot be enforced")
    t, args, before, proc = results[case.id]
    err = proc.stderr.strip()
    lines = err.splitlines()
    assert proc.returncode == 1, f"exit {proc.returncode}; stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    line = lines[0].lower()
    for want in case.expect:
        assert want.lower() in line, f"{want!r} not in {lines[0]!r}"
    after = _snapshot(t)
    changed = sorted(k for k, h in before.items() if after.get(k) != h)
    assert not changed, f"files changed or removed: {changed}"
    for rel in case.absent:
        assert not (t / rel).exists(), f"{rel} was created although the command failed"


def test_shared_fixtures_untouched(results):
    before, after = results["_shared"]
    assert before == after
