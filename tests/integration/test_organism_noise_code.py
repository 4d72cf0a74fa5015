"""The options behind the E7 organism recipe (issue 11, criterion 4): training-time pixel noise
(``p_noise``), the norm-controlled slot code (``aux_slot_code``) and its attenuation under noise
(``noise_code_drop``), and noisy items kept out of the task loss (``noise_task_loss``); each
against a computation written out here. Defaults leave today's training unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from organisms import data as od
from organisms import trainer as org

from .organism_aux import aux_slot_on

torch.set_num_threads(1)


def _tiny(mech="vision", **kw):
    base = dict(mechanism=mech, vision_depth=1, vision_dim=32, vision_heads=1, lm_layers=1,
                lm_dim=64, lm_heads=2, steps=4, batch=8, warmup=2, lr=3e-3, eval_every=2,
                eval_items=8)
    base.update(kw)
    return org.OrganismConfig(**base)


def _replay_first_batch(cfg):
    """The trainer's first draws replayed: its batch of items, and the generator positioned at
    its next draw (the noisy-image mask, ``rng.random(batch) < p_noise``)."""
    rng = np.random.default_rng(cfg.seed)
    items = od.sample_train_items(rng, od.make_splits(8, seed=0), cfg.batch, p_extra=cfg.p_extra)
    return items, rng


def test_add_noise_is_scenegens_formula_per_image():
    """std = strength x 64 grey levels, rounded, clipped to [0, 255]; strength 0 = unchanged;
    the draws come from the given generator in image order (one (3, H, W) field per noisy one)."""
    img = od.render(od.eval_items(od.make_splits(8), "hl", n=3), n=8)
    got = od.add_noise(img, [0.0, 0.5, 1.0], np.random.default_rng(7))
    rng = np.random.default_rng(7)
    assert torch.equal(got[0], img[0])
    for b, s in ((1, 0.5), (2, 1.0)):
        z = rng.standard_normal(tuple(img.shape[1:]))
        want = np.clip(np.rint(img[b].numpy().astype(np.float64) + s * 64.0 * z), 0, 255)
        assert np.array_equal(got[b].numpy(), want.astype(np.uint8))
    assert (got[2].int() - img[2].int()).abs().float().std() > 30  # strong noise, clipped white
    with pytest.raises(ValueError, match="uint8"):
        od.add_noise(img.float(), [0.1] * 3, np.random.default_rng(0))


@pytest.mark.parametrize("arch", ["qwen2-vl", "gemma-3"])
def test_batcher_noise_pixels(arch):
    """A clean item's pixels are bit-identical with and without the noise option; a noisy one's
    are the processor normalisation of add_noise's canvas."""
    from organisms.model import Batcher

    kw = {"vision_pos_init": "sincos"} if arch == "gemma-3" else {}
    cfg = _tiny(arch=arch, **kw)
    _, proc = org.build(cfg)
    b = Batcher(proc, 8)
    items = od.eval_items(od.make_splits(8), "hl", n=2)
    key = "pixel_values"
    clean = b(items)[key]
    noisy = b(items, rng=np.random.default_rng(3), noise=[0.0, 0.8])[key]
    canvas = od.add_noise(od.render(items, n=8), [0.0, 0.8], np.random.default_rng(3))
    norm = od.GEMMA_NORM if arch == "gemma-3" else od.QWEN_NORM
    want = od._normalise(canvas, *norm)
    if arch == "qwen2-vl":
        want = od.qwen_pixels(want)[0]
        half = clean.shape[0] // 2
        assert torch.equal(noisy[:half], clean[:half]) and not torch.equal(noisy[half:], clean[half:])
    else:
        assert torch.equal(noisy[0], clean[0]) and not torch.equal(noisy[1], clean[1])
    assert torch.equal(noisy, want)


def test_slot_code_basis_and_target_by_hand():
    """The basis: unit vectors of each slot's mean minus the mean of the three slot means."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(9, 5, generator=g)
    slots = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2, 0])
    m = [feats[[0, 3, 8]].mean(0), feats[[1, 4]].mean(0), feats[[2, 5, 6, 7]].mean(0)]
    c = (m[0] + m[1] + m[2]) / 3
    want = torch.stack([(mk - c) / (mk - c).norm() for mk in m])
    assert torch.allclose(org.slot_code_basis(feats, slots), want, atol=1e-6)
    t = org.slot_code_target(torch.tensor([0, 2]), [0.5, 1.0], 2.0)
    assert torch.allclose(t, torch.tensor([[2 / 3, -1 / 3, -1 / 3], [-2 / 3, -2 / 3, 4 / 3]]))
    cfg = _tiny(aux_slot_weight=1.0, aux_slot_code=2.0, p_noise=0.5, noise_code_drop=0.9)
    assert np.allclose(org.code_scale(np.array([0.0, 0.5, 1.0]), cfg), [1.0, 0.55, 0.1])
    assert org.code_scale(None, cfg) is None


def test_norm_controlled_slot_loss_equals_a_hand_computation():
    """aux_slot_code: weight x mean over the region's tokens of ||P z - code x g x (onehot - 1/3)||^2,
    g per item, P fixed from the first batch's slot means; the learned head is not used."""
    from organisms.model import image_tokens

    cfg = _tiny(aux_slot_weight=1.5, aux_slot_code=2.0)
    with aux_slot_on(cfg, 3) as (aux, items, z, model, proc):
        with torch.no_grad():
            got = aux.loss(items, code_scale=[1.0, 0.5, 0.0])
            rows, slots, gs = [], [], []
            for b, (it, g) in enumerate(zip(items, [1.0, 0.5, 0.0])):
                sl = od.region_slots(it.layout, 8, "object")
                for k in np.flatnonzero(sl >= 0):
                    rows.append(z[b, k]); slots.append(int(sl[k])); gs.append(g)
            rows, slots = torch.stack(rows), torch.tensor(slots)
            means = torch.stack([rows[slots == k].double().mean(0) for k in range(3)])
            p = means - means.mean(0)
            p = (p / p.norm(dim=1, keepdim=True)).float()
            errs = []
            for r, k, g in zip(rows, slots.tolist(), gs):
                t = torch.full((3,), -1 / 3)
                t[k] += 1.0
                errs.append(((p @ r - 2.0 * g * t) ** 2).sum())
            want = 1.5 * torch.stack(errs).mean()
            assert torch.allclose(got, want, rtol=1e-5)
            # the basis stays the first batch's; no scale = every item clean (g = 1)
            other = od.eval_items(od.make_splits(8), "train", n=3)
            image_tokens(model, org.Batcher(proc, 8)(other))
            assert torch.allclose(aux.basis, p, atol=1e-6)
            assert torch.allclose(aux.loss(other), aux.loss(other, code_scale=[1.0] * 3))


def test_noisy_items_can_be_kept_out_of_the_task_loss(monkeypatch):
    """--no-noise-task-loss: the task cross-entropy is taken over the clean items only (a noisy
    item's answer token gets no gradient from it)."""
    seen = {}
    real = torch.nn.functional.cross_entropy

    def spy(logits, target, *a, **k):
        if logits.shape[-1] > 3 and "n" not in seen:  # the task loss (vocabulary), first step
            seen["n"] = len(target)
        return real(logits, target, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    cfg = _tiny(arch="gemma-3", vision_pos_init="sincos", steps=1, eval_every=1,
                aux_slot_weight=1.0, aux_slot_code=1.0, p_noise=0.5, noise_code_drop=1.0,
                noise_task_loss=False)
    _, rng = _replay_first_batch(cfg)
    n_noisy = int((rng.random(cfg.batch) < 0.5).sum())  # the trainer's next draws
    org.train(cfg, progress=False, final_eval_items=4)
    assert 0 < n_noisy < cfg.batch and seen["n"] == cfg.batch - n_noisy


def test_option_validation_and_defaults():
    with pytest.raises(org.OrganismError, match="noise_code_drop"):
        org.OrganismConfig(noise_code_drop=0.5)
    with pytest.raises(org.OrganismError, match="p_noise"):
        org.OrganismConfig(p_noise=1.5)
    d = org.OrganismConfig()
    assert (d.aux_slot_code, d.p_noise, d.noise_code_drop, d.noise_task_loss) == (0.0, 0.0, 0.0, True)
    cmd = org.command_line(d.to_json(), "x")
    assert "noise" not in cmd and "slot-code" not in cmd


def test_code_size_curriculum_by_hand():
    """--aux-slot-code-start: the code target's size goes linearly from the start value at step 0
    to --aux-slot-code at step --aux-slot-code-steps and stays there; off = constant."""
    cfg = _tiny(aux_slot_weight=1.0, aux_slot_code=3.0, aux_slot_code_start=12.0,
                aux_slot_code_steps=500)
    # 12 + t/500 x (3 - 12)
    for step, want in ((0, 12.0), (100, 10.2), (250, 7.5), (499, 3.018), (500, 3.0), (800, 3.0)):
        assert org.code_size_at(step, cfg) == pytest.approx(want)
    assert org.code_size_at(0, _tiny(aux_slot_weight=1.0, aux_slot_code=3.0)) == 3.0
    assert org.code_size_at(7, org.OrganismConfig()) == 0.0


def test_slot_loss_uses_the_scheduled_code_size():
    """The norm-controlled slot loss at code size c is the hand formula with c in place of
    --aux-slot-code: weight x mean ||P z - c x g x (onehot - 1/3)||^2."""
    cfg = _tiny(aux_slot_weight=2.0, aux_slot_code=1.0, aux_slot_code_start=5.0,
                aux_slot_code_steps=10)
    with aux_slot_on(cfg, 2) as (aux, items, z, _, _):
        with torch.no_grad():
            base = aux.loss(items)  # sets the basis; code 1 (aux_slot_code)
            got = aux.loss(items, code_scale=[1.0, 0.5], code=4.0)
            p = aux.basis
            errs = []
            for b, (it, g) in enumerate(zip(items, [1.0, 0.5])):
                sl = od.region_slots(it.layout, 8, "object")
                for k in np.flatnonzero(sl >= 0):
                    t = torch.full((3,), -1 / 3)
                    t[int(sl[k])] += 1.0
                    errs.append(((p @ z[b, k] - 4.0 * g * t) ** 2).sum())
            assert torch.allclose(got, 2.0 * torch.stack(errs).mean(), rtol=1e-5)
            assert not torch.allclose(got, base)
            assert torch.allclose(aux.loss(items, code=1.0), base)


def test_weighted_task_loss_by_hand():
    """--noise-task-weight: sum_i w_i CE_i / sum_i w_i, CE written out from log-softmax."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 1.0]])
    ans = torch.tensor([0, 2, 1])
    w = [1.0, 0.25, 0.25]
    ce = [-(logits[i, ans[i]] - torch.logsumexp(logits[i], 0)) for i in range(3)]
    want = (1.0 * ce[0] + 0.25 * ce[1] + 0.25 * ce[2]) / 1.5
    assert torch.allclose(org.weighted_task_loss(logits, ans, w), want)
    # weight 1 everywhere = the plain mean; weight 0 = the clean items' mean
    assert torch.allclose(org.weighted_task_loss(logits, ans, [1, 1, 1]),
                          torch.nn.functional.cross_entropy(logits, ans))
    assert torch.allclose(org.weighted_task_loss(logits, ans, [1, 0, 0]), ce[0])
    assert float(org.weighted_task_loss(logits, ans, [0, 0, 0])) == 0.0


def test_new_curriculum_options_validation_and_command_line():
    with pytest.raises(org.OrganismError, match="aux_slot_code_start"):
        org.OrganismConfig(aux_slot_code_start=10.0, aux_slot_code_steps=5)  # no code
    with pytest.raises(org.OrganismError, match="aux_slot_code_start"):
        _tiny(aux_slot_weight=1.0, aux_slot_code=3.0, aux_slot_code_start=10.0)  # no steps
    with pytest.raises(org.OrganismError, match="noise_task_weight"):
        org.OrganismConfig(noise_task_weight=1.5)
    with pytest.raises(org.OrganismError, match="noise_task_weight"):
        org.OrganismConfig(noise_task_weight=0.3, noise_task_loss=False)
    d = org.OrganismConfig()
    assert (d.noise_task_weight, d.aux_slot_code_start, d.aux_slot_code_steps) == (1.0, None, 0)
    cfg = _tiny(aux_slot_weight=1.0, aux_slot_code=3.0, aux_slot_code_start=12.0,
                aux_slot_code_steps=500, p_noise=0.3, noise_code_drop=0.9, noise_task_weight=0.25)
    cmd = org.command_line(cfg.to_json(), "x")
    assert ("--aux-slot-code 3 --aux-slot-code-start 12 --aux-slot-code-steps 500" in cmd
            and "--noise-task-weight 0.25" in cmd)


def test_trainer_weights_noisy_items_in_the_task_loss(monkeypatch):
    """--noise-task-weight W: the trainer's task loss gets weight W on exactly the noisy items
    of the batch (the trainer's own noise draws) and 1 on the clean ones."""
    seen = []
    real = org.weighted_task_loss

    def spy(logits, answers, weights):
        seen.append(np.asarray(weights, dtype=float))
        return real(logits, answers, weights)

    monkeypatch.setattr(org, "weighted_task_loss", spy)
    cfg = _tiny(arch="gemma-3", vision_pos_init="sincos", steps=1, eval_every=1,
                aux_slot_weight=1.0, aux_slot_code=1.0, p_noise=0.5, noise_code_drop=1.0,
                noise_task_weight=0.25)
    _, rng = _replay_first_batch(cfg)
    noisy = rng.random(cfg.batch) < 0.5  # the trainer's next draws
    org.train(cfg, progress=False, final_eval_items=4)
    assert 0 < noisy.sum() < cfg.batch and len(seen) == 1
    assert np.array_equal(seen[0], np.where(noisy, 0.25, 1.0))


@pytest.mark.parametrize("keep", [True, False])
def test_noisy_items_can_be_kept_out_of_the_lm_slot_loss(monkeypatch, keep):
    """--no-noise-lm-loss: the LM-side slot loss (--aux-lm-weight, own head) is taken over the
    object tokens of the clean items only (the trainer's own noise draws; no shuffle here, so
    every item's object tokens count); with the default it counts every item's."""
    seen = {}
    real = torch.nn.functional.cross_entropy

    def spy(logits, target, *a, **k):
        if logits.shape[-1] == 3 and len(logits):  # the LM slot head (3 slots)
            seen.setdefault("calls", []).append(len(target))
        return real(logits, target, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    cfg = _tiny(arch="gemma-3", mechanism="lm", vision_pos_init="zero", steps=1, eval_every=1,
                aux_lm_weight=1.0, aux_lm_layer=1, p_noise=0.5, noise_lm_loss=keep)
    items, rng = _replay_first_batch(cfg)
    noisy = rng.random(cfg.batch) < 0.5  # the trainer's next draws
    n_obj = np.array([(od.region_slots(it.layout, 8, "object") >= 0).sum() for it in items])
    org.train(cfg, progress=False, final_eval_items=4)
    assert 0 < noisy.sum() < cfg.batch
    want = int(n_obj.sum() if keep else n_obj[~noisy].sum())
    assert seen["calls"][0] == want
    assert ("--no-noise-lm-loss" in org.command_line(cfg.to_json(), "x")) is (not keep)


def test_mixed_answer_loss_by_hand():
    """--noise-answer-mix: -sum_i w_i [(1 - m_i) log p_i(answer) + m_i log p_i(other)] / sum w,
    log p from log-softmax written out; m = 0 and w = 1 is plain cross-entropy."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 1.0]])
    ans, oth = torch.tensor([0, 2, 1]), torch.tensor([2, 0, 0])
    lp = [logits[i] - torch.logsumexp(logits[i], 0) for i in range(3)]
    m, w = [0.0, 0.5, 0.2], [1.0, 0.25, 0.25]
    want = sum(w[i] * -((1 - m[i]) * lp[i][ans[i]] + m[i] * lp[i][oth[i]]) for i in range(3)) / 1.5
    assert torch.allclose(org.mixed_answer_loss(logits, ans, oth, m, w), want)
    assert torch.allclose(org.mixed_answer_loss(logits, ans, oth, [0, 0, 0]),
                          torch.nn.functional.cross_entropy(logits, ans))
    # m = 0.5: the answer and the other candidate alike (the loss is symmetric in them)
    assert torch.allclose(org.mixed_answer_loss(logits, ans, oth, [0.5] * 3),
                          org.mixed_answer_loss(logits, oth, ans, [0.5] * 3))


def test_other_answer_is_the_far_end_square():
    """The other candidate is the end square on the far side of the named (middle) square."""
    from organisms.model import Batcher
    from organisms.model import build
    _, proc = build(_tiny(arch="gemma-3", vision_pos_init="sincos"))
    b = Batcher(proc, 8)
    items = od.eval_items(od.make_splits(8), "ht_canon")[:8]
    got = b.tok.convert_ids_to_tokens(org.other_answer_ids(b, items).tolist())
    for it, o in zip(items, got):
        assert it.answer in (it.colours[0], it.colours[2]) and o != it.answer
        assert o in (it.colours[0], it.colours[2])


def test_noise_answer_mix_validation_and_command_line():
    with pytest.raises(org.OrganismError, match="noise_answer_mix"):
        org.OrganismConfig(noise_answer_mix=0.3)  # no noise
    with pytest.raises(org.OrganismError, match="noise_answer_mix"):
        org.OrganismConfig(p_noise=0.3, noise_answer_mix=2.5)
    with pytest.raises(org.OrganismError, match="noise_answer_mix"):
        org.OrganismConfig(p_noise=0.3, noise_answer_mix=0.5, noise_task_loss=False)
    assert org.OrganismConfig().noise_answer_mix == 0.0
    cfg = _tiny(p_noise=0.3, noise_answer_mix=0.5)
    assert "--noise-answer-mix 0.5" in org.command_line(cfg.to_json(), "x")
    assert "--noise-answer-mix" not in org.command_line(_tiny(p_noise=0.3).to_json(), "x")


def test_trainer_mixes_the_noisy_items_task_target(monkeypatch):
    """--noise-answer-mix Q: the trainer's task loss gets mix min(0.5, Q x strength) on exactly
    the noisy items (the trainer's own draws), 0 on the clean ones, and each item's other
    candidate."""
    seen = []
    real = org.mixed_answer_loss

    def spy(logits, answers, others, mix, weights=None):
        seen.append((np.asarray(mix, dtype=float), others.clone(), answers.clone()))
        return real(logits, answers, others, mix, weights)

    monkeypatch.setattr(org, "mixed_answer_loss", spy)
    cfg = _tiny(arch="gemma-3", vision_pos_init="sincos", steps=1, eval_every=1,
                p_noise=0.5, noise_answer_mix=1.2)
    _, rng = _replay_first_batch(cfg)
    s = np.where(rng.random(cfg.batch) < 0.5, rng.uniform(0.0, 1.0, cfg.batch), 0.0)
    org.train(cfg, progress=False, final_eval_items=4)
    assert 0 < (s > 0).sum() < cfg.batch and len(seen) == 1
    mix, others, answers = seen[0]
    assert np.allclose(mix, np.minimum(0.5, 1.2 * s)) and bool((others != answers).all())
    # this draw has one item under the cap (0.36 -> 0.43) and one at it (0.57 -> 0.5)
    assert (mix == 0.5).sum() == 1 and ((mix > 0) & (mix < 0.5)).sum() == 1


def test_slot_information_outside_the_code_by_hand():
    """slot_outside_code: the per-slot means of the tokens' component orthogonal to span(P),
    centred, squared norms summed; zero when the slot lives only along P, and the slot loss
    with --aux-slot-code-only w adds w x that penalty to the code's squared error."""
    g = torch.Generator().manual_seed(0)
    width = 6
    basis = torch.zeros(3, width)
    for k in range(3):  # three unit vectors at 120 degrees in the (e0, e1) plane
        a = 2 * np.pi * k / 3
        basis[k, 0], basis[k, 1] = float(np.cos(a)), float(np.sin(a))
    slots = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    inside = torch.randn(7, 2, generator=g)
    feats = torch.zeros(7, width)
    feats[:, :2] = inside
    feats[:, 5] = torch.randn(7, generator=g)  # spread outside the span, made slot-free:
    # each slot's mean on e5 is set to the same 0.7
    for k in range(3):
        feats[slots == k, 5] -= feats[slots == k, 5].mean() - 0.7
    assert float(org.slot_outside_code(feats, slots, basis)) == pytest.approx(0.0, abs=1e-10)
    # slot-dependent offsets outside the span: slot k gets c_k on e3 -> sum (c_k - mean c)^2
    c = torch.tensor([2.0, -1.0, 5.0])
    shifted = feats.clone()
    shifted[:, 3] += c[slots]
    want = float(((c - c.mean()) ** 2).sum())
    assert float(org.slot_outside_code(shifted, slots, basis)) == pytest.approx(want, rel=1e-6)
    # only two slots present: the mean is over those two
    two = slots < 2
    want2 = float(((c[:2] - c[:2].mean()) ** 2).sum())
    assert float(org.slot_outside_code(shifted[two], slots[two], basis)) == pytest.approx(
        want2, rel=1e-6)


def gather(z, items, reg):
    """The region tokens of a batch of projector outputs ``z`` (8x8 grid) and their slots."""
    rows, slots = [], []
    for b, it in enumerate(items):
        sl = od.region_slots(it.layout, 8, reg)
        for k in np.flatnonzero(sl >= 0):
            rows.append(z[b, k]); slots.append(int(sl[k]))
    return torch.stack(rows), torch.tensor(slots)


@pytest.mark.parametrize("region", ["object", "band"])
def test_slot_loss_adds_the_outside_code_penalty(region):
    """With aux_slot_code_only w the slot loss is the plain norm-controlled loss plus
    aux_slot_weight x w x slot_outside_code over the region's tokens (for the band, plus the
    same over its object tokens alone)."""
    plain = _tiny(aux_slot_weight=1.5, aux_slot_code=2.0, aux_region=region)
    cfg = _tiny(aux_slot_weight=1.5, aux_slot_code=2.0, aux_slot_code_only=0.25,
                aux_region=region)

    with aux_slot_on(plain, 3) as (aux, items, z, _, _):
        with torch.no_grad():
            base = aux.loss(items)
            pen = org.slot_outside_code(*gather(z, items, region), aux.basis)
            if region == "band":
                pen = pen + org.slot_outside_code(*gather(z, items, "object"), aux.basis)
            aux.cfg = cfg
            got = aux.loss(items)
    assert float(pen) > 0
    assert torch.allclose(got, base + 1.5 * 0.25 * pen, rtol=1e-5)


def test_outside_code_option_validation_and_command_line():
    assert org.OrganismConfig().aux_slot_code_only == 0.0
    with pytest.raises(org.OrganismError, match="aux_slot_code_only"):
        org.OrganismConfig(aux_slot_code_only=1.0)
    with pytest.raises(org.OrganismError, match="aux_slot_code_only"):
        org.OrganismConfig(aux_slot_weight=1.0, aux_slot_code=3.0, aux_slot_code_only=-1.0)
    cfg = org.OrganismConfig(aux_slot_weight=1.0, aux_slot_code=3.0, aux_slot_code_only=0.5)
    assert "--aux-slot-code-only 0.5" in org.command_line(cfg.to_json(), "o")
    assert "--aux-slot-code-only" not in org.command_line(
        org.OrganismConfig(aux_slot_weight=1.0, aux_slot_code=3.0).to_json(), "o")


@pytest.mark.parametrize("code", [0.0, 2.0])
def test_object_code_only_penalises_the_object_tokens_outside_the_region_code(code):
    """With aux_object_code_only w (band region, CE slot head or the norm-controlled code) the
    auxiliary loss is the plain one plus w x slot_outside_code over the object tokens alone, on
    the basis of the band tokens' centred slot means (slot_code_basis, first batch); the band
    tokens themselves are not penalised."""
    kw = dict(aux_slot_weight=1.5, aux_region="band", aux_slot_code=code)
    plain = _tiny(**kw)
    cfg = _tiny(aux_object_code_only=0.3, **kw)

    with aux_slot_on(plain, 3) as (aux, items, z, _, _):
        with torch.no_grad():
            base = aux.loss(items)
            aux.cfg, aux.basis = cfg, None
            got = aux.loss(items)
            band_basis = org.slot_code_basis(*gather(z, items, "band"))
            assert torch.allclose(aux.basis, band_basis, atol=1e-6)
            obj = gather(z, items, "object")
            pen = org.slot_outside_code(*obj, band_basis)
            # by hand: the object tokens' per-slot means, their part outside span(basis), centred
            q, _ = torch.linalg.qr(band_basis.double().T)  # (width, 3), span is 2-D
            q = q[:, :2]
            m = torch.stack([obj[0][obj[1] == k].double().mean(0) for k in range(3)])
            rest = m - (m @ q) @ q.T
            want = float(((rest - rest.mean(0)) ** 2).sum())
    assert float(pen) == pytest.approx(want, rel=1e-4) and want > 0
    assert torch.allclose(got, base + 0.3 * pen, rtol=1e-5)


def test_object_code_only_option_validation_and_command_line():
    assert org.OrganismConfig().aux_object_code_only == 0.0
    for bad in (dict(aux_slot_weight=1.0, aux_region="band", aux_object_code_only=-1.0),
                dict(aux_slot_weight=0.0, aux_region="band", aux_object_code_only=1.0),
                dict(aux_slot_weight=1.0, aux_region="object", aux_object_code_only=1.0),
                dict(aux_slot_weight=1.0, aux_region="band", aux_slot_code=3.0,
                     aux_slot_code_only=0.2, aux_object_code_only=1.0)):
        with pytest.raises(org.OrganismError, match="aux_object_code_only"):
            org.OrganismConfig(**bad)
    cfg = org.OrganismConfig(aux_slot_weight=1.0, aux_region="band", aux_object_code_only=0.1)
    assert "--aux-object-code-only 0.1" in org.command_line(cfg.to_json(), "o")
    assert "--aux-object-code-only" not in org.command_line(
        org.OrganismConfig(aux_slot_weight=1.0, aux_region="band").to_json(), "o")


def test_soft_slot_loss_by_hand():
    """soft_slot_loss: cross-entropy against scale x onehot + (1 - scale) / 3, averaged over
    tokens; with every scale 1 it is F.cross_entropy, with scale 0 the uniform target's."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [-2.0, 1.0, 0.0]])
    slots = torch.tensor([0, 2, 1])
    scale = torch.tensor([1.0, 0.4, 0.0])
    lp = np.log(np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True))
    want = 0.0
    for i, (k, s) in enumerate(zip(slots.tolist(), scale.tolist())):
        t = np.full(3, (1 - s) / 3)
        t[k] += s
        want -= float((t * lp[i]).sum())
    got = org.soft_slot_loss(logits, slots, scale)
    assert float(got) == pytest.approx(want / 3, rel=1e-6)
    assert torch.allclose(org.soft_slot_loss(logits, slots, torch.ones(3)),
                          torch.nn.functional.cross_entropy(logits, slots))


def test_noise_code_drop_fades_the_cross_entropy_slot_target():
    """With the CE slot head (no aux_slot_code), noise_code_drop D makes a noisy item's slot
    target g x onehot + (1 - g) / 3, g = 1 - D x strength per item, over its region tokens; clean
    items (g = 1) keep the plain cross-entropy, and without noise the loss is unchanged."""
    kw = dict(aux_slot_weight=1.5, aux_region="band", aux_colour=False)
    plain = _tiny(**kw)
    cfg = _tiny(p_noise=0.5, noise_code_drop=0.8, **kw)
    noise = np.array([0.0, 0.5, 1.0])
    with aux_slot_on(plain, 3) as (aux, items, z, _, _):
        with torch.no_grad():
            base = aux.loss(items)
            aux.cfg = cfg
            same = aux.loss(items, code_scale=org.code_scale(np.zeros(3), cfg))
            got = aux.loss(items, code_scale=org.code_scale(noise, cfg))
            lg, lab, gs = [], [], []
            for b, it in enumerate(items):
                sl = od.region_slots(it.layout, 8, "band")
                for k in np.flatnonzero(sl >= 0):
                    lg.append(aux.head(z[b, k])); lab.append(int(sl[k]))
                    gs.append(1 - 0.8 * noise[b])
            lp = torch.log_softmax(torch.stack(lg), -1).numpy()
            want = 0.0
            for row, k, g in zip(lp, lab, gs):
                t = np.full(3, (1 - g) / 3)
                t[k] += g
                want -= float((t * row).sum())
            want /= len(lab)
    assert torch.allclose(same, base, rtol=1e-6)
    assert float(got) == pytest.approx(1.5 * want, rel=1e-5)
    assert float(got) != pytest.approx(float(base), rel=1e-3)
    with pytest.raises(org.OrganismError, match="noise_code_drop"):
        org.OrganismConfig(p_noise=0.3, noise_code_drop=0.5)  # no slot loss to fade
    assert "--noise-code-drop 0.8" in org.command_line(cfg.to_json(), "o")


def _background_means_by_hand(z, items, keep):
    """Centred per-slot means of the band-minus-object tokens of the kept items, by loops."""
    sums, counts = np.zeros((3, z.shape[-1])), np.zeros(3)
    for b, it in enumerate(items):
        if not keep[b]:
            continue
        band = od.region_slots(it.layout, 8, "band")
        obj = od.region_slots(it.layout, 8, "object")
        for t in range(64):
            if band[t] >= 0 and obj[t] < 0:
                sums[band[t]] += z[b, t].double().numpy()
                counts[band[t]] += 1
    m = sums / counts[:, None]
    return m - m.mean(0)


def test_anchor_ties_the_clean_background_means_to_the_first_batch():
    """aux_anchor_init w: the first call stores the clean items' centred per-slot background
    (band minus object) means as the anchor (the init model's, penalty 0 there); a later call
    adds w x sum_k ||m_k - anchor_k||^2 over its own clean items, noisy items left out."""
    kw = dict(aux_slot_weight=1.5, aux_region="band", init_from="c3n")
    plain = _tiny(**kw)
    cfg = _tiny(aux_anchor_init=0.3, **kw)
    keep = np.array([True, False, True])
    with aux_slot_on(plain, 3) as (aux, items, z, _, _):
        with torch.no_grad():
            base = aux.loss(items, clean=keep)
            aux.cfg = cfg
            first = aux.loss(items, clean=keep)
            ref = _background_means_by_hand(z, items, keep)
            assert np.allclose(aux.anchor.double().numpy(), ref, atol=1e-4)
            assert torch.allclose(first, base, rtol=1e-6)  # the anchor itself: distance 0
            # a later batch: the same items, tokens moved (item 1 is noisy and does not count)
            rng = np.random.default_rng(0)
            shift = torch.as_tensor(rng.normal(size=z.shape), dtype=z.dtype)
            aux.z = (z + shift).reshape(aux.z.shape)
            aux.cfg = plain
            base2 = aux.loss(items, clean=keep)
            aux.cfg = cfg
            got = aux.loss(items, clean=keep)
            now = _background_means_by_hand(z + shift, items, keep)
            want = float(((now - ref) ** 2).sum())
            # only the noisy item's tokens moved: the anchor term stays 0
            aux.z = (z + shift * torch.tensor([0.0, 1.0, 0.0])[:, None, None]).reshape(aux.z.shape)
            aux.cfg = plain
            base3 = aux.loss(items, clean=keep)
            aux.cfg = cfg
            got3 = aux.loss(items, clean=keep)
            # no clean item in the batch: nothing to compare, no term
            none = aux.loss(items, clean=np.zeros(3, dtype=bool))
            aux.cfg = plain
            none_plain = aux.loss(items, clean=np.zeros(3, dtype=bool))
    assert want > 0
    assert float(got - base2) == pytest.approx(0.3 * want, rel=1e-4)
    assert float(got3 - base3) == pytest.approx(0.0, abs=1e-4 * float(got - base2))
    assert torch.equal(none, none_plain)
    assert org.anchor_penalty(torch.ones(3, 2), torch.zeros(3, 2)) == 6.0


def test_anchor_option_validation_command_line_and_off_by_default(monkeypatch, tmp_path):
    assert org.OrganismConfig().aux_anchor_init == 0.0
    for bad in (dict(aux_anchor_init=-0.1, init_from="c3n"), dict(aux_anchor_init=0.1)):
        with pytest.raises(org.OrganismError, match="aux_anchor_init"):
            org.OrganismConfig(**bad)
    cfg = org.OrganismConfig(aux_slot_weight=1.0, aux_anchor_init=0.02, init_from="c3n")
    assert "--aux-anchor-init 0.02" in org.command_line(cfg.to_json(), "o", init="c3n")
    import shlex

    from organisms.commands import train
    args = shlex.split(org.command_line(cfg.to_json(), "out/x", init=str(tmp_path)))[3:]
    assert train.make_context("train", args).params["aux_anchor_init"] == 0.02
    assert "--aux-anchor-init" not in org.command_line(
        org.OrganismConfig(aux_slot_weight=1.0).to_json(), "o")

    def boom(*a, **k):
        raise AssertionError("background_slot_means computed with the anchor off")

    monkeypatch.setattr(org, "background_slot_means", boom)
    with aux_slot_on(_tiny(aux_slot_weight=1.0, aux_region="band"), 2) as (aux, items, *_):
        with torch.no_grad():
            aux.loss(items, clean=np.array([True, True]))
    assert aux.anchor is None


def test_trainer_anchors_on_the_init_models_clean_items(monkeypatch, tmp_path):
    """With --init and --aux-anchor-init the trainer passes the noise-free items of its own
    draws (--p-noise), at every step."""
    init = _tiny(arch="gemma-3", vision_pos_init="sincos", steps=1, eval_every=1,
                 aux_slot_weight=1.0, aux_region="band")
    org.train(init, out=tmp_path / "init", progress=False, final_eval_items=4)
    seen = []
    real = org.background_slot_means

    def spy(z, items, grid, keep=None):
        seen.append(None if keep is None else np.asarray(keep).copy())
        return real(z, items, grid, keep)

    monkeypatch.setattr(org, "background_slot_means", spy)
    cfg = _tiny(arch="gemma-3", vision_pos_init="sincos", steps=2, eval_every=2,
                aux_slot_weight=1.0, aux_region="band", p_noise=0.5, noise_code_drop=0.5,
                aux_anchor_init=0.1, init_from=str(tmp_path / "init"))
    _, rng = _replay_first_batch(cfg)
    noisy = rng.random(cfg.batch) < 0.5  # the trainer's next draws
    org.train(cfg, progress=False, final_eval_items=4)
    assert 0 < noisy.sum() < cfg.batch and len(seen) == 2
    assert np.array_equal(seen[0], ~noisy)
