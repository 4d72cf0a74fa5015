"""What'sUp importer on the fixture: records, relations, layouts, refusals and the dataset contract."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenegen import read_dataset
from scenegen.importers import SUBSETS, WhatsUpError, import_whatsup, parse_caption, whatsup_mask
from scenegen.importers.whatsup import candidate_paths, match_category, original_preposition

FIX = Path(__file__).parents[1] / "fixtures" / "whatsup"
COCO = FIX / "instances_val2017.json"
COUNTS = {"Controlled_Images_A": 12, "Controlled_Images_B": 8, "COCO_QA_one_obj": 3,
          "COCO_QA_two_obj": 4, "VG_QA_one_obj": 2, "VG_QA_two_obj": 4}


@pytest.mark.parametrize("subset", list(SUBSETS))
def test_every_subset_imports_with_first_option_correct(subset):
    items = import_whatsup(FIX, subset)
    assert len(items) == COUNTS[subset]
    raw = json.loads((FIX / SUBSETS[subset].json_name).read_text())
    for (stim, path), entry in zip(items, raw):
        assert path.is_file()
        (p,) = stim.prompts
        caps = entry["caption_options"] if isinstance(entry, dict) else entry[1:]
        assert list(p.options) == caps and p.answer == caps[0]
        assert stim.task == subset and stim.generator == "whatsup"
        with Image.open(path) as im:
            assert (stim.width, stim.height) == im.size


def test_relations_axes_and_names_from_captions():
    a = import_whatsup(FIX, "Controlled_Images_A")
    got = [(s.relation, s.axis, s.factors["subject"], s.factors["reference"]) for s, _ in a[:4]]
    assert got == [("on", "vertical", "mug", "table"), ("under", "vertical", "mug", "table"),
                   ("left", "horizontal", "mug", "table"), ("right", "horizontal", "mug", "table")]
    assert a[4].stimulus.factors["subject"] == "beer bottle"
    b = import_whatsup(FIX, "Controlled_Images_B")
    assert [s.relation for s, _ in b[:4]] == ["left", "right", "front", "behind"]
    assert b[2].stimulus.axis == "depth"
    # ordinal slots: subject left of / on / in front of the reference -> slot 0
    s = a[2].stimulus
    assert [e.ordinal for e in s.entities] == [0, 1]
    assert [e.ordinal for e in a[3].stimulus.entities] == [1, 0]
    one = import_whatsup(FIX, "COCO_QA_one_obj")
    assert [(s.relation, s.axis, len(s.entities)) for s, _ in one] == [
        ("left", "horizontal", 1), ("bottom", "vertical", 1), ("right", "horizontal", 1)]
    vg = import_whatsup(FIX, "VG_QA_two_obj")
    assert [s.relation for s, _ in vg] == ["left", "front", "behind", "above"]


def test_original_preposition_labels_follow_the_original_code():
    labels = {sub: [s.factors["preposition"] for s, _ in import_whatsup(FIX, sub)]
              for sub in SUBSETS}
    assert labels["Controlled_Images_A"][:4] == ["on", "under", "left_of", "right_of"]
    assert labels["Controlled_Images_B"][:4] == ["left_of", "right_of", "in-front_of", "behind"]
    assert labels["COCO_QA_two_obj"] == ["left", "right", "above", "below"]
    assert labels["COCO_QA_one_obj"] == ["left", "bottom", "right"]
    # the original VG two-object rule maps everything that is not left/right/front/behind to 'top'
    assert labels["VG_QA_two_obj"] == ["left", "front", "behind", "top"]
    spec = SUBSETS["Controlled_Images_A"]
    assert original_preposition(spec, {"image_path": "x/cup_under_table.jpeg"}) == "under"


@pytest.mark.parametrize("caption,objects,expected", [
    ("A beer bottle on a armchair", 2, ("beer bottle", "on", "armchair")),
    ("A photo of a dining table to the left of a refrigerator", 2,
     ("dining table", "left", "refrigerator")),
    ("A photo of a cup in front of a plate", 2, ("cup", "front", "plate")),
    ("A photo of a dog below a person.", 2, ("dog", "below", "person")),
    ("A photo of a dog on the left", 1, ("dog", "left", None)),
    ("A photo of a car on the top", 1, ("car", "top", None)),
    ("no relation words here", 2, (None, None, None)),
])
def test_parse_caption(caption, objects, expected):
    assert parse_caption(caption, objects) == expected


def test_parse_caption_prefers_the_known_relation():
    cap = "A photo of a person on a skateboard to the left of a car"
    assert parse_caption(cap)[1] == "on"  # first phrase wins without a hint
    assert parse_caption(cap, prefer="left") == ("person on a skateboard", "left", "car")
    assert parse_caption("A mug on a table", prefer="left") == ("mug", "on", "table")


def _copy(dst: Path, layout: str) -> Path:
    """The fixture (Controlled A + COCO two) laid out as users do."""
    ja, jc = "controlled_images_dataset.json", "coco_qa_two_obj.json"
    if layout == "repo":  # a clone of whatsup_vlms: ROOT/data/...
        shutil.copytree(FIX, dst / "data")
    elif layout == "flat":  # everything in one folder
        dst.mkdir()
        for f in [ja, jc]:
            shutil.copy(FIX / f, dst / f)
        for d in ("controlled_images", "val2017"):
            for p in (FIX / d).iterdir():
                shutil.copy(p, dst / p.name)
    elif layout == "json_top_images_in_data":
        (dst / "data").mkdir(parents=True)
        for f in [ja, jc]:
            shutil.copy(FIX / f, dst / f)
        for d in ("controlled_images", "val2017"):
            shutil.copytree(FIX / d, dst / "data" / d)
    elif layout == "renamed_json_dir":  # JSON names a directory the user does not have
        dst.mkdir()
        raw = json.loads((FIX / ja).read_text())
        for e in raw:
            e["image_path"] = "data/some_other_dir/" + e["image_path"].split("/")[-1]
        (dst / ja).write_text(json.dumps(raw))
        shutil.copy(FIX / jc, dst / jc)
        for d in ("controlled_images", "val2017"):
            shutil.copytree(FIX / d, dst / d)
    return dst


@pytest.mark.parametrize("layout", ["repo", "flat", "json_top_images_in_data",
                                    "renamed_json_dir"])
def test_path_resolution_under_user_layouts(tmp_path, layout):
    root = _copy(tmp_path / "root", layout)
    ref = import_whatsup(FIX, "Controlled_Images_A")
    got = import_whatsup(root, "Controlled_Images_A")
    assert [s.relation for s, _ in got] == [s.relation for s, _ in ref]
    for (s, p), (s0, p0) in zip(got, ref):
        assert p.is_file() and p.name == p0.name and root in p.parents
        assert p.read_bytes() == p0.read_bytes()
    coco = import_whatsup(root, "COCO_QA_two_obj")
    assert [p.name for _, p in coco][0] == "000000037777.jpg"


def test_candidate_paths_order():
    spec = SUBSETS["Controlled_Images_A"]
    c = candidate_paths(Path("/r"), "data/controlled_images/x.jpeg", spec)
    assert [str(p) for p in c] == ["/r/data/controlled_images/x.jpeg",
                                   "/r/controlled_images/x.jpeg", "/r/x.jpeg"]


@pytest.mark.parametrize("bad", ["../outside/x_left_of_y.jpeg", "/etc/x_left_of_y.jpeg",
                                 "data/../../x_left_of_y.jpeg", "C:/x_left_of_y.jpeg"])
def test_path_escaping_the_root_is_refused(tmp_path, bad):
    root = _copy(tmp_path / "root", "repo") / "data"
    f = root / "controlled_images_dataset.json"
    raw = json.loads(f.read_text())
    raw[5]["image_path"] = bad
    f.write_text(json.dumps(raw))
    with pytest.raises(WhatsUpError, match=r"item 5: field 'image_path'.*escapes"):
        import_whatsup(root, "Controlled_Images_A")


def test_vg_id_with_a_path_is_refused(tmp_path):
    root = _copy(tmp_path / "root", "repo") / "data"
    f = root / "vg_qa_two_obj.json"
    raw = json.loads(f.read_text())
    raw[2][0] = "../../secret"
    f.write_text(json.dumps(raw))
    with pytest.raises(WhatsUpError, match=r"item 2: field 'image_id"):
        import_whatsup(root, "VG_QA_two_obj")


def test_missing_images_one_error_with_count_first_names_and_fix(tmp_path):
    root = _copy(tmp_path / "root", "repo") / "data"
    (root / "controlled_images" / "mug_under_table.jpeg").unlink()
    (root / "controlled_images" / "scarf_on_chair.jpeg").unlink()
    with pytest.raises(WhatsUpError) as e:
        import_whatsup(root, "Controlled_Images_A")
    msg = str(e.value)
    assert "2 of 12 images" in msg and "mug_under_table.jpeg" in msg
    assert "scarf_on_chair.jpeg" in msg and "controlled_images.tar.gz" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("subset,index,mutate,field", [
    ("Controlled_Images_A", 3, lambda e: e.update(caption_options=["a", "b", "c"]),
     "caption_options"),
    ("Controlled_Images_A", 7, lambda e: e.pop("image_path"), "image_path"),
    ("Controlled_Images_B", 1, lambda e: e.update(caption_options=["a", "b", "c", 4]),
     "caption_options"),
])
def test_malformed_controlled_entry_names_file_item_and_field(tmp_path, subset, index, mutate,
                                                              field):
    root = _copy(tmp_path / "root", "repo") / "data"
    f = root / SUBSETS[subset].json_name
    raw = json.loads(f.read_text())
    mutate(raw[index])
    f.write_text(json.dumps(raw))
    with pytest.raises(WhatsUpError) as e:
        import_whatsup(root, subset)
    msg = str(e.value)
    assert str(f) in msg and f"item {index}:" in msg and f"'{field}'" in msg


@pytest.mark.parametrize("entry,index,needle", [
    ([139, "A photo of a cup above a bowl"], 2, "expected [image_id, caption_true"),
    (["abc", "x", "y"], 1, "field 'image_id (position 0)'"),
    ([139, "A photo of a cup above a bowl", ""], 0, "field 'caption_false (position 2)'"),
])
def test_malformed_qa_entry(tmp_path, entry, index, needle):
    root = _copy(tmp_path / "root", "repo") / "data"
    f = root / "coco_qa_two_obj.json"
    raw = json.loads(f.read_text())
    raw[index] = entry
    f.write_text(json.dumps(raw))
    with pytest.raises(WhatsUpError) as e:
        import_whatsup(root, "COCO_QA_two_obj")
    assert f"item {index}" in str(e.value) and needle in str(e.value)


def test_invalid_json_unknown_subset_and_missing_root(tmp_path):
    root = _copy(tmp_path / "root", "repo") / "data"
    (root / "coco_qa_one_obj.json").write_text("[1, 2,")
    with pytest.raises(WhatsUpError, match="not valid JSON"):
        import_whatsup(root, "COCO_QA_one_obj")
    with pytest.raises(WhatsUpError, match="Did you mean 'Controlled_Images_A'"):
        import_whatsup(root, "Controlled_Image_A")
    with pytest.raises(WhatsUpError, match="not a directory"):
        import_whatsup(tmp_path / "nope", "COCO_QA_one_obj")
    with pytest.raises(WhatsUpError, match="annotation file vg_qa_one_obj.json not found"):
        import_whatsup(tmp_path, "VG_QA_one_obj")


def test_coco_boxes_attached_and_masks_drawn():
    items = import_whatsup(FIX, "COCO_QA_two_obj", coco_annotations=COCO)
    s = items[0].stimulus  # dining table left of refrigerator, image 37777
    table, fridge = s.entities
    # the larger of the two dining tables; boxes are floor/ceil of COCO's [x, y, w, h]
    assert table.box == (2, 10, 20, 22) and table.area == 18 * 12
    assert fridge.box == (28, 6, 43, 26) and fridge.area == 15 * 20
    assert s.factors["masks"] == "coco_boxes"
    m = whatsup_mask(s)
    assert m.shape == (s.height, s.width)
    assert (m == 1).sum() == table.area and (m == 2).sum() == fridge.area
    assert table.centroid == pytest.approx((11.0, 16.0))
    # without the COCO file: no boxes, all-background mask, and the record says so
    plain = import_whatsup(FIX, "COCO_QA_two_obj")[0].stimulus
    assert plain.factors["masks"] == "none" and all(e.area == 0 for e in plain.entities)
    assert not whatsup_mask(plain).any()
    vg = import_whatsup(FIX, "VG_QA_two_obj", coco_annotations=COCO)[0].stimulus
    assert vg.factors["masks"] == "none"


def test_match_category():
    cats = {"dining table", "person", "cell phone", "cup"}
    assert match_category("table", cats) == "dining table"
    assert match_category("man", cats) == "person"
    assert match_category("cups", cats) == "cup"
    assert match_category("mobile phone", cats) == "cell phone"
    assert match_category("giraffe", cats) is None


def test_dataset_directory_satisfies_the_contract(tmp_path):
    out = tmp_path / "ds"
    got = import_whatsup(FIX, "COCO_QA_two_obj", out, coco_annotations=COCO, progress=False)
    assert got == out
    ds = read_dataset(out)
    mem = import_whatsup(FIX, "COCO_QA_two_obj", coco_annotations=COCO)
    assert [s.id for s in ds] == [s.id for s, _ in mem]
    for stim, (s0, path) in zip(ds, mem):
        assert (out / stim.file_name).is_file() and stim.file_name.endswith(".png")
        with Image.open(path) as im:
            assert np.array_equal(ds.image(stim), np.asarray(im.convert("RGB")))
        assert np.array_equal(ds.mask(stim), whatsup_mask(s0))
        assert stim.entities == s0.entities and stim.relation == s0.relation
        assert stim.factors["original_file"] == s0.file_name
    # rerun: resumes (nothing to do) and leaves identical bytes
    before = (out / "metadata.jsonl").read_bytes()
    import_whatsup(FIX, "COCO_QA_two_obj", out, coco_annotations=COCO, progress=False)
    assert (out / "metadata.jsonl").read_bytes() == before


def test_same_category_subject_and_reference_get_distinct_instances():
    from scenegen.importers.whatsup import _pick_instances

    people = {"person": [[0, 0, 10, 10, 100], [30, 0, 10, 10, 90], [5, 5, 2, 2, 4]],
              "dog": [[1, 20, 5, 5, 25]]}
    # "a person to the right of a person": the subject is the right one of the two largest
    (cs, bs), (cr, br) = _pick_instances(["person", "person"], people, "right", 1)
    assert cs == cr == "person" and bs[0] == 30 and br[0] == 0
    (_, bs), (_, br) = _pick_instances(["person", "person"], people, "left", 0)
    assert bs[0] == 0 and br[0] == 30
    # depth cannot be read from boxes: only the subject gets one
    got = _pick_instances(["person", "person"], people, "front", 0)
    assert got[0][1][0] == 0 and got[1] is None
    # different categories: the largest of each
    assert _pick_instances(["dog", "person"], people, "below", 1) == [
        ("dog", [1, 20, 5, 5, 25]), ("person", [0, 0, 10, 10, 100])]
