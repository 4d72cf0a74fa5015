"""E3's default splits never put one image in both train and test.

Left and right questions about one triple show one byte-identical image (above / below too), so
a split by scene id alone leaks test images into training. The probe command joins the dataset's
image hashes onto the rows (``probes.dataset._join_scene_labels``) and groups by them."""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probes.commands import paper_probe_config
from probes.config import ProbeConfig
from probes.dataset import _join_scene_labels
from probes.fit import make_splits, split_groups


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    from scenegen.generate import generate
    from scenegen.presets import preset_config

    out = tmp_path_factory.mktemp("e3") / "squares"
    generate(preset_config("squares-qwen2-vl", twins=["blank"]), out, progress=False)
    return out


def _frame(root: Path) -> pd.DataFrame:
    from scenegen import read_dataset

    ds = read_dataset(root)
    rows = [{"sample_id": s.id, "scene_id": s.scene_id, "axis": s.axis,
             "counterfactual_kind": s.counterfactual_kind or "",
             # our own oracle: the bytes of the image file
             "oracle": hashlib.sha256((root / s.file_name).read_bytes()).hexdigest()}
            for s in ds.base() if s.entities]
    return _join_scene_labels(pd.DataFrame(rows), root)


def test_the_presets_share_images_between_scenes(squares):
    f = _frame(squares)
    assert len(f) == 480 and f["oracle"].nunique() == 240  # left+right share, above+below share
    groups = split_groups(f.drop(columns="image_hash"))  # scene id only: the old split
    leaked = max(len(set(f["oracle"][tr]) & set(f["oracle"][te]))
                 for tr, te in make_splits(groups, ProbeConfig()))
    assert leaked > 0  # the leak the image grouping removes


def test_paper_default_split_is_90_30_images_per_orientation_with_no_overlap(squares):
    f = _frame(squares)
    for axis in ("horizontal", "vertical"):  # one probe per orientation
        fa = f[f["axis"] == axis].reset_index(drop=True)
        (tr, te), = make_splits(split_groups(fa), paper_probe_config(0))
        train, test = set(fa["oracle"][tr]), set(fa["oracle"][te])
        assert (len(train), len(test)) == (90, 30)
        assert train.isdisjoint(test)


def test_robust_default_folds_have_no_image_in_train_and_test(squares):
    f = _frame(squares)
    splits = make_splits(split_groups(f), ProbeConfig())
    assert len(splits) == 5
    for tr, te in splits:
        assert set(f["oracle"][tr]).isdisjoint(set(f["oracle"][te]))
    covered = np.zeros(len(f), bool)
    for _, te in splits:
        covered[te] = True
    assert covered.all()


def test_torch_linear_probe_is_the_authors_training_loop():
    """Oracle: the authors' probe as described (probing/src/probe.py; App. A.4), written here."""
    import torch

    from probes.fit import make_probe

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 16)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)  # 3 classes
    pipe = make_probe(paper_probe_config(0)).fit(X, y)
    torch.manual_seed(0)
    D, K = 16, 3
    W = (torch.randn(D, K) / D ** 0.5).requires_grad_(True)
    b = (torch.randn(K) / D ** 0.5).requires_grad_(True)
    opt = torch.optim.AdamW([W, b], lr=1e-3, weight_decay=1e-4)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(Xt @ W + b, yt).backward()
        opt.step()
    lin = pipe[-1]
    np.testing.assert_allclose(lin.coef_, W.detach().numpy().T, atol=1e-6)
    np.testing.assert_allclose(lin.intercept_, b.detach().numpy(), atol=1e-6)
    want = (Xt @ W + b).argmax(1).numpy()
    assert (pipe.predict(X) == want).all()
