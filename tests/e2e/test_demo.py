"""`spatialbind demo` on the shipped organisms: the report's validation table holds the paper's
effects as criteria with thresholds fixed in ``organisms.criteria`` (issue 11).

Small samples here; the default-size run is the slow test below. Verdicts are the report's own
(``study.report.validation``), computed from measured numbers.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import spatialbind
from organisms.criteria import THRESHOLDS
from study.demo import ORGANISMS, shipped_organisms
from study.report import effects_shown, validation

pytestmark = pytest.mark.skipif(not shipped_organisms(), reason="organisms not shipped")


def _run(out, *args, orgs: dict | None = None):
    """Run the demo; the validation rows of ``orgs`` (name -> mechanism; default: every shipped
    organism) by ``(model, criterion)``, the stage results and the rows as a list."""
    res = CliRunner().invoke(spatialbind, ["demo", "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    log = json.loads((out / "stages.json").read_text())
    orgs = dict(shipped_organisms()) if orgs is None else orgs
    results = {m: {k.split("/", 1)[1]: v["result"] for k, v in log.items()
                   if k.startswith(m + "/")} for m in orgs}
    rows = validation(results, orgs)
    return {(r["model"], r["criterion"]): r for r in rows}, results, rows


#: Criteria a small sample (16 items, 48 degraded; since 2026-11-30 drawn from the 24 colour
#: triples every organism held out of training, ``--items heldout``) resolves, per organism.
#: Measured on that sample on 2026-11-30 (c037f79):
#: - qwen2-vl-vision: 1 (probe object 0.958, strip 0.997), 2 (object flip 0.00, band 0.94),
#:   3 (E5 1.00 -> 0.31, threshold 0.48); 4 fails (held-out alpha 0: nothing fixed; cross-fitted,
#:   read by criterion 4 since 2026-11-30, folds of triples with their mirrors: fold alphas
#:   4, 2, 4, 4, 4 fixed / 4 broken of 17 failing, net 0, fix rate 0.24, random 2 of 48).
#: - qwen2-vl-dual: 1 (0.979 / 0.991), 3 (E5 0.50 in [0.48, 0.85], E6 flips at LM layer 1);
#:   2 not resolved here (band flip 0.75 < 0.8; 0.94 at the default size on all triples).
#: - gemma-3-vision: 1 (1.000 / 0.973); 2 fails (object flip 1.00, as at every size); 3 not
#:   resolved here (E5 0.50 on 16 items against 0.48; 0.375 at the default size on all triples).
#: - gemma-3-dual (the one shipped until its retraining): 1 (1.00 / 1.00), 2 (object flip 0.00,
#:   band 1.00), 3 (E5 0.75, E6 layer 1). Retrained later on 2026-11-30 (a mixed answer target on
#:   noisy items), measured again on this sample: 1 (1.00 / 1.00), 2 (object flip 0.00, band
#:   0.88), 3 (E5 1.00 -> 0.81 in [0.48, 0.85], E6 layer 1); its criterion 4 fails here (fold
#:   alphas 0, 4, 0, 0: 0 fixed / 2 broken of 11) and holds at the default size (slow test below).
#:   With its last stage's mix 0.2 and code drop 0.25 (measured alone on this sample): 1 (1.00 /
#:   1.00), 2 (object 0.00, band 0.94), 3 (E5 0.81, E6 layer 1); 4 fails (fold alphas 2, 2, 0, 2:
#:   1 fixed / 1 broken of 8).
#: - the lm organisms: 1, 2, 3 (probes 0.33-0.44, no strip flip, E5 1.00 -> 1.00).
#: Criterion 4 at the cross-fitted alpha on this sample (48 `hard` items of 12 mirror pairs, 4
#: folds; measured 2026-11-30) fails for the other three vision/dual organisms too: qwen2-vl-dual
#: 0 / 0 of 14 (every fold alpha 0), gemma-3-vision 3 / 1 of 18 (all 4, fix rate 0.17),
#: gemma-3-dual 0 / 0 of 8 (0 / 2 of 11 after its retraining); so no organism's criterion 4 is
#: asserted here.
#: Up to c037f79 the items were every ordered triple (81 of 96 training triples) and this test
#: asserted vision 3, dual 3, lm 1-3 and gemma-3-dual 2.
SMALL = {"organism-qwen2-vl-vision": (1, 2, 3), "organism-qwen2-vl-dual": (1, 3),
         "organism-qwen2-vl-lm": (1, 2, 3), "organism-gemma-3-vision": (1,),
         "organism-gemma-3-dual": (1, 2, 3), "organism-gemma-3-lm": (1, 2, 3)}


def test_demo_validation_on_small_samples(tmp_path):
    rows, results, flat = _run(tmp_path / "demo", "--n", "16", "--n-degraded", "48",
                               "--alphas", "0:8:2")
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "Validation: the paper's effects" in html and "data:image/png;base64," in html
    assert "held-out accuracy (from their training)" in html
    assert f"probe_min = {THRESHOLDS['probe_min']:g}" in html
    orgs = dict(shipped_organisms())
    assert {m for m, _ in rows} == set(orgs)
    assert {c for _, c in rows} == {1, 2, 3, 4}
    for name, mech in orgs.items():
        assert results[name]["extract"]["total"] > 0
        assert results[name]["e1"]["accuracy"] >= 0.9          # every organism solves the task
        for c in SMALL[name]:
            assert rows[(name, c)]["holds"], rows[(name, c)]
    # the items were the organisms' held-out triples, and the report says so
    from organisms.data import make_splits
    from scenegen import read_dataset

    held = set(make_splits(8, seed=0).heldout_triples)
    for sub in ("clean", "degraded"):
        seen = {tuple(st.factors["triple"]) for st in read_dataset(tmp_path / "demo" / "data" / sub)
                if st.factors.get("triple")}
        assert seen and seen <= held, (sub, seen - held)
    assert "held out of its training" in html
    shown = {r["model"]: r for r in effects_shown(flat)}
    assert set(shown) == set(orgs)
    # both recipes ran, side by side, and every paper number says whether it is comparable
    assert "The two recipes side by side" in html and "not comparable: model" in html
    for name in orgs:
        assert results[name]["e5-paper"]["recipe"] == "paper"
        assert results[name]["e5"]["recipe"] == "robust"
        assert (tmp_path / "demo" / name.replace("/", "--") / "e4-paper"
                / "regions.parquet").is_file()
    # E1, E3 and E7 under the paper recipe too: E7's paper directions are trained on the
    # golden items E1 wrote (golden.txt), pooled over layout cells, and used by e7-paper
    assert "E7 fix rate (robust: held-out alpha; paper: Probe" in html
    # criterion 4 reads E7's cross-fitted selection, shown with its folds in the E7 section
    assert "E7 fix rate (robust: cross-fitted alpha" in html and "Cross-fitted selection:" in html
    for name, mech in orgs.items():
        e7 = results[name]["e7"]
        if "error" in e7:
            continue
        cf = next(x for x in e7["selections"] if x["selection"] == "cross-fitted alpha (K-fold)"
                  and x["control"] == "probe")
        assert len(cf["fold_alphas"]) == 4 and cf["n"] == 48, cf
        if mech != "lm":
            assert "selection cross-fitted (4 folds)" in rows[(name, 4)]["measured"]
    for name in orgs:
        r, slug = results[name], name.replace("/", "--")
        golden = (tmp_path / "demo" / slug / "e1-paper" / "golden.txt").read_text().split()
        assert r["e1-paper"]["recipe"] == "paper" and r["e1-paper"]["n_golden"] == len(golden)
        assert len(golden) >= 0.9 * r["e1-paper"]["n"]  # every organism solves the task
        e3p = r["e3-paper"]
        assert e3p["region"] == "layout" and e3p["e7_directions"]["n_exported"] == 2, e3p
        assert set(e3p["projector_object_accuracy_by_orientation"]) == {"horizontal",
                                                                        "vertical"}
        for e in e3p["e7_directions"]["exported"]:
            d = json.loads((tmp_path / "demo" / slug / "e3-paper" / "directions-e7" / e["path"]
                            / "direction.json").read_text())
            x = d["extra"]
            assert (x["recipe"], x["rank"], x["golden_only"], x["region"]) == (
                "paper", 2, True, "layout")
            assert set(x["split"]["train_items"]) | set(x["split"]["test_items"]) <= set(golden)
        assert r["e7-paper"]["recipe"] == "paper" and "e3-paper" in r["e7-paper"]["direction"]
    # the paper's other tasks ran through the same records and appear in the report
    assert "The paper's other tasks" in html and "Sanity controls" in html
    for name in orgs:
        r = results[name]
        assert r["e1-objects"]["n"] == 16 and 0.0 <= r["e1-objects"]["accuracy"] <= 1.0
        assert r["e3-grid2"]["n_classes"] == 2 and r["e3-grid3"]["n_classes"] == 3
        assert r["e3-grid2"]["n_images"] == 16
        assert r["e1-whatsup-stitched"] == {"skipped": "no --whatsup ROOT given"}
        ctl = {(x["control"], x["axis"]): x for x in r["e7-controls"]["rows"]}
        assert ctl[("shuffled images", "all")]["n"] == ctl[("swapped objects", "all")]["n"] > 0
    # rerunning the same command resumes: every stage is skipped and the report rewritten
    res = CliRunner().invoke(spatialbind, ["demo", "--out", str(tmp_path / "demo"), "--n", "16",
                                           "--n-degraded", "48", "--alphas", "0:8:2"])
    assert res.exit_code == 0 and "done earlier, skipped" in res.output


def test_default_items_lm_organism_records_why_e7_did_not_run(tmp_path):
    """On the default (held-out, mirror-balanced) items every colour stands on both sides
    equally often, so an lm organism's projector tokens have the same mean on both sides and
    E3's side probe returns exactly zero weights. The demo used to stop there ("directions
    contain a zero-norm or non-finite vector", found by the default demo on 2026-11-30); it
    now records why E7 did not run, finishes the report, and criterion 4 stays n/a."""
    name = "organism-gemma-3-lm"
    if name not in dict(shipped_organisms()):
        pytest.skip("gemma-3-lm not shipped")
    rows, results, _ = _run(tmp_path / "demo", "--model", name, "--recipe", "robust",
                            "--tasks", "none", orgs={name: "lm"})
    e3, e7 = results[name]["e3"], results[name]["e7"]
    assert set(e3["directions_not_exported"]) == {"horizontal", "vertical"}
    assert all("all zero" in why for why in e3["directions_not_exported"].values())
    assert not (tmp_path / "demo" / name / "e3" / "directions-e7").exists()
    assert e7["error"].startswith("E7 not run: E3 exported no ordering direction")
    assert rows[(name, 4)]["holds"] is None
    assert all(rows[(name, c)]["holds"] for c in (1, 2, 3))
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "E7 not run: E3 exported no ordering direction" in html


def test_demo_refuses_other_options_in_the_same_out(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "demo_config.json").write_text(json.dumps({"n": 5}))
    res = CliRunner().invoke(spatialbind, ["demo", "--out", str(out), "--n", "8"])
    assert res.exit_code == 1 and "other options" in res.output
    assert len(res.output.strip().splitlines()) == 1


#: Criteria measured to fail in the default demo (96 held-out items, `--degraded hard`), reported
#: as found (issue 11; vlms/organisms/README.md, "Default demo on held-out items" and "Criterion 4
#: with a cross-fitted alpha", 2026-11-30): criterion 4 on `hard` for three vision / dual
#: organisms (their errors there are mostly colour errors; cross-fitted fold alphas net -4 to +1)
#: and `gemma-3-vision`'s criterion 2 (object-only criss-cross flips 1.00). Strict: a criterion
#: that starts to hold fails its case, so this list and the README are updated with it.
#: `gemma-3-dual`'s criterion 4 holds since its retraining with a mixed answer target on noisy
#: items (2026-11-30, "Criterion 4 for the duals: the mixed answer target"): measured in the
#: default demo on held-out items (that organism alone), fold alphas 3, 8, 3, 8, 13 fixed / 2
#: broken of 30 failing (fix rate 0.43), random direction 3 of 96 answers changed; after its
#: last stage with `--noise-answer-mix 0.2 --noise-code-drop 0.25` ("`gemma-3-dual` on both
#: sets"): fold alphas 1, 2, 2, 2, 7 fixed / 0 broken of 21 (fix rate 0.333, one item above the
#: threshold), random 1 of 96.
KNOWN_FAILURES_DEFAULT = {("organism-qwen2-vl-vision", 4), ("organism-qwen2-vl-dual", 4),
                          ("organism-gemma-3-vision", 2), ("organism-gemma-3-vision", 4)}


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory):
    """The default demo (every shipped organism, default size), run once for the module."""
    rows, _, _ = _run(tmp_path_factory.mktemp("default") / "demo")
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("name,crit", [(m, c) for m, _ in ORGANISMS for c in (1, 2, 3, 4)])
def test_default_demo_criteria_1_to_4(name, crit, default_demo, request):
    """Criterion ``crit`` for organism ``name`` at the default size, from the report's own
    validation rows (lm: 1-3 hold, 4 is n/a); the known failures are strict xfails."""
    orgs = dict(shipped_organisms())
    if name not in orgs:
        pytest.skip(f"{name} not shipped")
    if (name, crit) in KNOWN_FAILURES_DEFAULT:
        request.applymarker(pytest.mark.xfail(strict=True, reason="measured to fail; see "
                                              "vlms/organisms/README.md"))
    r = default_demo[(name, crit)]
    assert r["holds"] is (None if (orgs[name] == "lm" and crit == 4) else True), r


@pytest.mark.slow
@pytest.mark.parametrize("name", ["organism-gemma-3-vision", "organism-qwen2-vl-vision",
                                  "organism-gemma-3-dual"])
def test_criterion_4_on_the_noise_set(name, tmp_path):
    """Criterion 4 (E7: the cross-fitted alpha fixes more than it breaks, fix rate >= 0.3, the
    random direction changes <= 5 % of answers) for the vision organisms and `gemma-3-dual` on
    `--degraded noise` at the default size, the set whose errors are ordering errors
    (vlms/organisms/README.md, criterion 4). Measured 2026-11-30 on the organisms' held-out
    triples (the default items since c037f79), cross-fitted (4 folds of colour triples with their
    mirrors; criterion 4 reads it since 2026-11-30):

    - gemma-3-vision: fold alphas 8, 7, 7, 8, 30 fixed / 6 broken of 96 (61 failing, fix rate
      0.49), random direction 2 of 96 answers changed. At the held-out alpha (chosen on the 8
      `val` items, read by criterion 4 before): alpha 5, 19 fixed / 5 broken of 88 (56 failing,
      fix rate 0.34), random 1 %; on every triple (before --items): alpha 8, 17 fixed / 10
      broken of 88 (44 failing), random 4 of 96.
    - qwen2-vl-vision, at the edge of both thresholds: fold alphas 4, 4, 4, 4, 15 fixed / 8
      broken of 96 (50 failing, fix rate 0.300), random 4 of 96 (4.2 %); at the held-out alpha
      3 it failed (10 / 8 of 46, 0.22).
    - gemma-3-dual (retrained with `--noise-answer-mix 0.2 --noise-code-drop 0.25` in its last
      stage, 2026-11-30): fold alphas 1, 1, 1, 1, 6 fixed / 0 broken of 96 (6 failing, fix rate
      1.0), random 1 of 96; it rests on 6 items (stimulus seeds 1, 2, 3: 2 / 0 of 3, random 0;
      4 / 0 of 5, random 4 of 96; 5 / 0 of 6, random 2 of 96)."""
    orgs = dict(shipped_organisms())
    if name not in orgs:
        pytest.skip(f"{name} not shipped")
    rows, _, _ = _run(tmp_path / "demo", "--model", name, "--degraded", "noise", "--recipe",
                      "robust", "--tasks", "none", orgs={name: orgs[name]})
    assert rows[(name, 4)]["holds"], rows[(name, 4)]
