"""What'sUp importer: the real release (Kamath et al., EMNLP 2023) read into :class:`Stimulus` records.

Where it sits: an external data source for ``scenegen``'s dataset format, used by the behavioural
evaluation (``spatialbind evaluate --data whatsup:ROOT[:SUBSET]``) and by the interventions.

The release (GitHub ``amitakamath/whatsup_vlms``, Google Drive downloads) ships one JSON file per
subset; the first caption option is always the correct one:

==========================  ================================  ====================  =============
subset                      annotation file                   images                entry
==========================  ================================  ====================  =============
``Controlled_Images_A``     ``controlled_images_dataset.json``  ``controlled_images/``  ``{"image_path", "caption_options"[4]}``
``Controlled_Images_B``     ``controlled_clevr_dataset.json``   ``controlled_clevr/``   same
``COCO_QA_one_obj``         ``coco_qa_one_obj.json``            ``val2017/{id:012d}.jpg``  ``[image_id, caption_true, caption_false]``
``COCO_QA_two_obj``         ``coco_qa_two_obj.json``            same                  same
``VG_QA_one_obj``           ``vg_qa_one_obj.json``              ``vg_images/{id}.jpg``  same
``VG_QA_two_obj``           ``vg_qa_two_obj.json``              same                  same
==========================  ================================  ====================  =============

Accepted layouts under the user's ROOT (annotation files in ``ROOT/`` or ``ROOT/data/``):

- the repository layout: ``ROOT/data/controlled_images/x.jpeg`` (the JSON path taken literally);
- the data folder itself: ``ROOT/controlled_images/x.jpeg`` (the JSON's leading ``data/`` dropped);
- ``ROOT/<image dir>/<file>`` or ``ROOT/data/<image dir>/<file>`` (the image directory of the
  subset, whatever directory the JSON names);
- everything flat: ``ROOT/<file>``.

A JSON path that is absolute or contains ``..`` is refused (it would read outside ROOT); the
check is lexical, so symbolic links inside ROOT (e.g. ``val2017`` linked to a shared COCO copy)
are followed.

Relations are labelled as the original code does (``factors["preposition"]``: Controlled A from
the file name ``left_of``/``right_of``/``_on_``/else ``under``; B ``left_of``/``right_of``/
``_in-front_of_``/else ``behind``; COCO/VG one-object the caption's last word; COCO two-object
``left of``/``right of``/``above``/else ``below``; VG two-object ``left of``/``right of``/
``front of``/``behind``/else ``top``), and parsed from the correct caption into our vocabulary
(``relation`` in left, right, above, below, on, under, front, behind, top, bottom; ``axis``
horizontal, vertical or depth), with subject and reference names.

What'sUp has no masks. When the user gives COCO's ``instances_val2017.json`` the largest instance
of the COCO category matching each object name becomes that entity's box and mask (rectangles);
otherwise the mask is all background. ``factors["masks"]`` says which (``coco_boxes``,
``partial_coco_boxes``, ``none``).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..record import Entity, Prompt, Rendered, Stimulus, entity_from_mask


class WhatsUpError(DatasetError):
    """A What'sUp root, annotation file or COCO annotation file is missing or malformed."""


@dataclass(frozen=True)
class SubsetSpec:
    """How one What'sUp subset is stored."""

    name: str
    json_name: str
    image_dir: str
    kind: str  # "controlled" or "qa"
    n_options: int
    objects: int  # 1 or 2 named objects per caption
    archive: str


SUBSETS: dict[str, SubsetSpec] = {s.name: s for s in (
    SubsetSpec("Controlled_Images_A", "controlled_images_dataset.json", "controlled_images",
               "controlled", 4, 2, "controlled_images.tar.gz"),
    SubsetSpec("Controlled_Images_B", "controlled_clevr_dataset.json", "controlled_clevr",
               "controlled", 4, 2, "controlled_clevr.tar.gz"),
    SubsetSpec("COCO_QA_one_obj", "coco_qa_one_obj.json", "val2017", "qa", 2, 1, "val2017.zip"),
    SubsetSpec("COCO_QA_two_obj", "coco_qa_two_obj.json", "val2017", "qa", 2, 2, "val2017.zip"),
    SubsetSpec("VG_QA_one_obj", "vg_qa_one_obj.json", "vg_images", "qa", 2, 1, "vg_images.tar.gz"),
    SubsetSpec("VG_QA_two_obj", "vg_qa_two_obj.json", "vg_images", "qa", 2, 2, "vg_images.tar.gz"),
)}

AXIS_OF = {"left": "horizontal", "right": "horizontal", "above": "vertical", "below": "vertical",
           "top": "vertical", "bottom": "vertical", "on": "vertical", "under": "vertical",
           "front": "depth", "behind": "depth"}
"""Axis of every relation an imported item can carry."""
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above", "top": "bottom",
            "bottom": "top", "on": "under", "under": "on", "front": "behind", "behind": "front"}
# slot of the subject along the axis (0 = leftmost / topmost / nearest); the reference gets 1 - s
_SUBJECT_SLOT = {"left": 0, "right": 1, "above": 0, "below": 1, "top": 0, "bottom": 1, "on": 0,
                 "under": 1, "front": 0, "behind": 1}

_ART = r"(?:(?:a|an|the|some)\s+)?"
_PHRASES = [  # longest first so "to the left of" wins over "left of"
    ("to the left of", "left"), ("to the right of", "right"), ("on the left of", "left"),
    ("on the right of", "right"), ("left of", "left"), ("right of", "right"),
    ("in front of", "front"), ("in-front of", "front"), ("front of", "front"),
    ("behind", "behind"), ("on top of", "above"), ("above", "above"), ("below", "below"),
    ("beneath", "below"), ("underneath", "under"), ("under", "under"), ("on", "on"),
]
_TWO = re.compile(
    rf"^(?:a\s+photo\s+of\s+)?{_ART}(?P<subj>.+?)\s+(?P<rel>"
    + "|".join(re.escape(p) for p, _ in _PHRASES)
    + rf")\s+{_ART}(?P<ref>.+?)[\s.]*$", re.IGNORECASE)
_ONE = re.compile(
    rf"^(?:a\s+photo\s+of\s+)?{_ART}(?P<subj>.+?)\s+(?:on|at|in|to)\s+the\s+"
    r"(?P<rel>left|right|top|bottom)(?:\s+(?:side|part))?(?:\s+of\s+the\s+(?:photo|image|picture))?"
    r"[\s.]*$", re.IGNORECASE)


class ImportedItem(NamedTuple):
    """One imported item in memory: its record and where its image is on disk."""

    stimulus: Stimulus
    image_path: Path


# --------------------------------------------------------------------------- parsing
def parse_caption(caption: str, objects: int = 2,
                  prefer: str | None = None) -> tuple[str | None, str | None, str | None]:
    """Parse a What'sUp caption into ``(subject, relation, reference)``.

    Parameters
    ----------
    caption
        E.g. ``"A beer bottle on a armchair"``, ``"A photo of a dining table to the left of a
        refrigerator"`` or (one object) ``"A photo of a dog on the left"``.
    objects
        1 for the one-object subsets (the relation is a place in the photo), else 2.
    prefer
        A relation the caption is known to state (from the file name or the original label):
        when several relation phrases occur (``"a person on a skateboard to the left of a
        car"``), the split at that relation's phrase wins.

    Returns
    -------
    tuple
        Subject name, relation (our vocabulary, see module docstring), reference name (None for
        one-object captions). All three are None when the caption does not parse.
    """
    text = " ".join(str(caption).split())
    if objects == 1:
        m = _ONE.match(text)
        if m:
            return m["subj"].lower(), m["rel"].lower(), None
        return None, None, None
    m = None
    if prefer is not None:
        phrases = [re.escape(p) for p, r in _PHRASES if r == prefer]
        if phrases:
            m = re.match(rf"^(?:a\s+photo\s+of\s+)?{_ART}(?P<subj>.+?)\s+(?P<rel>"
                         + "|".join(phrases) + rf")\s+{_ART}(?P<ref>.+?)[\s.]*$", text,
                         re.IGNORECASE)
    m = m or _TWO.match(text)
    if not m:
        return None, None, None
    rel = dict(_PHRASES)[" ".join(m["rel"].lower().split())]
    return m["subj"].lower(), rel, m["ref"].lower()


def original_preposition(spec: SubsetSpec, entry: Any) -> str:
    """The relation label exactly as the original What'sUp code derives it."""
    if spec.kind == "controlled":
        p = entry["image_path"]
        if "left_of" in p:
            return "left_of"
        if "right_of" in p:
            return "right_of"
        if spec.name.endswith("A"):
            return "on" if "_on_" in p else "under"
        return "in-front_of" if "_in-front_of_" in p else "behind"
    cap = entry[1]
    if spec.objects == 1:
        return cap.split()[-1] if cap.split() else ""
    for key, label in (("left of", "left"), ("right of", "right")):
        if key in cap:
            return label
    if spec.name.startswith("COCO"):
        return "above" if "above" in cap else "below"
    if "front of" in cap:
        return "front"
    return "behind" if "behind" in cap else "top"


_FROM_PREPOSITION = {"left_of": "left", "right_of": "right", "in-front_of": "front"}
# original labels that name the caption's relation reliably (VG's catch-all 'top' does not)
_PREFERABLE = {"left", "right", "front", "behind", "on", "under", "above", "below"}


# --------------------------------------------------------------------------- reading the release
def _find_annotation(root: Path, spec: SubsetSpec) -> Path:
    tried = [root / spec.json_name, root / "data" / spec.json_name]
    for p in tried:
        if p.is_file():
            return p
    raise WhatsUpError(
        f"What'sUp subset {spec.name}: annotation file {spec.json_name} not found under {root} "
        f"(looked at {', '.join(str(t) for t in tried)}); download it from the What'sUp release "
        "(github.com/amitakamath/whatsup_vlms) into that root")


def _bad(path: Path, i: int, field: str, why: str) -> WhatsUpError:
    return WhatsUpError(f"{path} item {i}: field {field!r} {why}; fix that entry or re-download "
                        "the file from the What'sUp release")


def _load_entries(path: Path, spec: SubsetSpec) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise WhatsUpError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: "
                           f"{e.msg}); re-download it") from None
    except UnicodeDecodeError:
        raise WhatsUpError(f"{path} is not UTF-8 text; re-download it") from None
    if not isinstance(data, list):
        raise WhatsUpError(f"{path} must hold a JSON list of items, got {type(data).__name__}; "
                           "is it the right file?")
    for i, e in enumerate(data):
        if spec.kind == "controlled":
            if not isinstance(e, dict):
                raise WhatsUpError(f"{path} item {i}: expected an object with 'image_path' and "
                                   f"'caption_options', got {type(e).__name__}; fix that entry")
            if not isinstance(e.get("image_path"), str) or not e["image_path"].strip():
                raise _bad(path, i, "image_path", "is missing or not a non-empty string")
            _check_relative(e["image_path"], path, i, "image_path")
            caps = e.get("caption_options")
            if (not isinstance(caps, list) or len(caps) != spec.n_options
                    or not all(isinstance(c, str) and c.strip() for c in caps)):
                got = (f"{len(caps)} items" if isinstance(caps, list) else
                       "nothing" if caps is None else type(caps).__name__)
                raise _bad(path, i, "caption_options",
                           f"must be a list of {spec.n_options} non-empty strings "
                           f"(first = correct caption), got {got}")
        else:
            if not isinstance(e, list) or len(e) != 3:
                raise WhatsUpError(
                    f"{path} item {i}: expected [image_id, caption_true, caption_false], got "
                    f"{json.dumps(e)[:80]}; fix that entry or re-download the file")
            _check_image_id(e[0], spec, path, i)
            for k, name in ((1, "caption_true"), (2, "caption_false")):
                if not isinstance(e[k], str) or not e[k].strip():
                    raise _bad(path, i, f"{name} (position {k})", "is not a non-empty string")
    return data


def _check_relative(rel: str, path: Path, i: int, field: str) -> None:
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", rel):
        raise _bad(path, i, field,
                   f"{rel!r} escapes the What'sUp root (absolute paths and '..' are refused); "
                   "use a path relative to the root")


def _check_image_id(v: Any, spec: SubsetSpec, path: Path, i: int) -> None:
    ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or (
        isinstance(v, str) and v.strip() != "" and (v.isdigit() or spec.name.startswith("VG")))
    if not ok:
        raise _bad(path, i, "image_id (position 0)",
                   f"must be a non-negative integer id, got {v!r}")
    if isinstance(v, str):
        _check_relative(v, path, i, "image_id (position 0)")
        if "/" in v or "\\" in v:
            raise _bad(path, i, "image_id (position 0)", f"{v!r} must not contain a path")


def _relative_path(spec: SubsetSpec, entry: Any) -> str:
    if spec.kind == "controlled":
        return entry["image_path"].replace("\\", "/")
    if spec.name.startswith("COCO"):
        return f"val2017/{int(entry[0]):012d}.jpg"
    return f"vg_images/{entry[0]}.jpg"


def candidate_paths(root: Path, rel: str, spec: SubsetSpec) -> list[Path]:
    """Where an image named ``rel`` (as the release writes it) may sit under ``root``, in order."""
    p = PurePosixPath(rel)
    out = [root / p]
    if p.parts and p.parts[0] == "data":
        out.append(root.joinpath(*p.parts[1:]))
    else:
        out.append(root / "data" / p)
    out += [root / spec.image_dir / p.name, root / "data" / spec.image_dir / p.name, root / p.name]
    seen: list[Path] = []
    for c in out:
        if c not in seen:
            seen.append(c)
    return seen


def _resolve_images(root: Path, spec: SubsetSpec, rels: list[str]) -> list[Path]:
    found: list[Path | None] = []
    for rel in rels:
        found.append(next((c for c in candidate_paths(root, rel, spec) if c.is_file()), None))
    missing = [r for r, f in zip(rels, found) if f is None]
    if missing:
        example = PurePosixPath(missing[0]).name
        raise WhatsUpError(
            f"{len(missing)} of {len(rels)} images of What'sUp {spec.name} are missing under "
            f"{root} (first: {', '.join(missing[:3])}); download {spec.archive} from the What'sUp "
            f"release and extract it so that e.g. {root / spec.image_dir / example} exists "
            "(also accepted: ROOT/data/<dir>/<file>, the JSON path under ROOT, or ROOT/<file>)")
    return [f for f in found if f is not None]


# --------------------------------------------------------------------------- COCO boxes
_COCO_SYNONYMS = {
    "table": "dining table", "sofa": "couch", "phone": "cell phone", "mobile phone": "cell phone",
    "cellphone": "cell phone", "television": "tv", "monitor": "tv", "tv monitor": "tv",
    "motorbike": "motorcycle", "bike": "bicycle", "man": "person", "woman": "person",
    "people": "person", "boy": "person", "girl": "person", "child": "person", "kid": "person",
    "player": "person", "plant": "potted plant", "hydrant": "fire hydrant", "ball": "sports ball",
    "glass": "wine glass", "doughnut": "donut", "aeroplane": "airplane", "plane": "airplane",
    "racket": "tennis racket", "bat": "baseball bat", "glove": "baseball glove",
    "hotdog": "hot dog",
    "computer": "laptop", "fridge": "refrigerator", "ski": "skis", "lamp post": "traffic light",
}


def load_coco_boxes(path: str | Path) -> tuple[dict[int, dict[str, list]], set[str]]:
    """Read COCO ``instances_*.json`` as ``{image_id: {category: [[x, y, w, h, area], ...]}}``.

    Returns the table and the set of category names. Raises :class:`WhatsUpError` when the file
    is missing or is not a COCO instances file.
    """
    path = Path(path)
    if not path.is_file():
        raise WhatsUpError(f"COCO annotation file {path} not found; pass the path of "
                           "instances_val2017.json (from annotations_trainval2017.zip)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        table: dict[int, dict[str, list]] = {}
        for a in data["annotations"]:
            x, y, w, h = (float(v) for v in a["bbox"])
            name = cats[int(a["category_id"])]
            area = float(a.get("area", w * h))
            table.setdefault(int(a["image_id"]), {}).setdefault(name, []).append(
                [x, y, w, h, area])
    except (ValueError, KeyError, TypeError) as e:
        raise WhatsUpError(f"{path} is not a COCO instances file ({e.__class__.__name__}: {e}); "
                           "pass instances_val2017.json") from None
    return table, set(cats.values())


def match_category(name: str | None, available) -> str | None:
    """The COCO category among ``available`` that an object name refers to, or None."""
    if not name:
        return None
    n = " ".join(name.lower().replace("-", " ").replace("_", " ").split())
    avail = set(available)
    cands = [n, _COCO_SYNONYMS.get(n, n)]
    if n.endswith("s"):
        cands += [n[:-1], _COCO_SYNONYMS.get(n[:-1], n[:-1])]
    last = n.split()[-1] if n else n
    cands += [last, _COCO_SYNONYMS.get(last, last)]
    return next((c for c in cands if c in avail), None)


def _pick_instances(cats: list[str | None], boxes: dict[str, list], rel: str | None,
                    slot: int | None) -> list[tuple[str, list] | None]:
    """COCO instance per entity: the largest of its category (as the paper's code does).

    When subject and reference name the same category, the two largest instances are assigned
    so that their order along the relation's axis matches the caption (the subject is the
    leftmost / topmost one when its slot is 0); along the depth axis that cannot be read from
    boxes, so only the subject gets one.
    """
    out: list[tuple[str, list] | None] = [
        None if c is None else (c, max(boxes[c], key=lambda r: r[4])) for c in cats]
    if len(cats) == 2 and cats[0] is not None and cats[0] == cats[1]:
        axis = AXIS_OF.get(rel or "")
        two = sorted(boxes[cats[0]], key=lambda r: -r[4])[:2]
        if axis in ("horizontal", "vertical") and len(two) == 2 and slot is not None:
            c = 0 if axis == "horizontal" else 1  # centre coordinate along the axis
            first, second = sorted(two, key=lambda r: r[c] + r[c + 2] / 2)
            out = [(cats[0], first if slot == 0 else second),
                   (cats[0], second if slot == 0 else first)]
        else:
            out[1] = None
    return out


def _box_px(b: list[float], w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0 = max(0, math.floor(b[0])), max(0, math.floor(b[1]))
    x1, y1 = min(w, math.ceil(b[0] + b[2])), min(h, math.ceil(b[1] + b[3]))
    return x0, y0, max(x0, x1), max(y0, y1)


# --------------------------------------------------------------------------- records
def _entities(names: list[tuple[str | None, int | None]], mask: np.ndarray | None) -> tuple:
    ents = []
    for k, (name, slot) in enumerate(names, start=1):
        attrs = dict(role="target", ordinal=slot, kind=name or "object", color="", rgb=(0, 0, 0),
                     name=name)
        if mask is not None and (mask == k).any():
            ents.append(entity_from_mask(mask, k, **attrs))
        else:
            ents.append(Entity(mask_id=k, box=(0, 0, 0, 0), centroid=None, area=0, **attrs))
    return tuple(ents)


def whatsup_mask(stim: Stimulus) -> np.ndarray:
    """The instance mask of an imported item, drawn from its entity boxes (all zero without boxes).

    The reference is drawn first, the subject over it, so the subject's box is fully visible.
    """
    mask = np.zeros((stim.height, stim.width), dtype=np.uint8)
    for e in sorted(stim.entities, key=lambda e: -e.mask_id):  # reference (2) before subject (1)
        if e.area > 0:
            x0, y0, x1, y1 = e.box
            mask[y0:y1, x0:x1] = e.mask_id
    return mask


def _build(spec: SubsetSpec, i: int, entry: Any, image: Path, root: Path,
           coco: dict | None) -> Stimulus:
    caps = list(entry["caption_options"]) if spec.kind == "controlled" else [entry[1], entry[2]]
    prep = original_preposition(spec, entry)
    known = _FROM_PREPOSITION.get(prep, prep)
    subj, rel, ref = parse_caption(caps[0], spec.objects,
                                   prefer=known if known in _PREFERABLE else None)
    parsed = rel is not None
    if not parsed:  # fall back to the original label (and, for Controlled, the file name)
        rel = _FROM_PREPOSITION.get(prep, prep.strip(".").lower())
        if spec.kind == "controlled":
            parts = PurePosixPath(entry["image_path"]).name.split("_")
            subj, ref = parts[0].replace("-", " "), parts[-1].rsplit(".", 1)[0].replace("-", " ")
    rel_axis = AXIS_OF.get(rel)
    try:
        with Image.open(image) as im:
            width, height = im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise WhatsUpError(f"image {image} of {spec.name} item {i} is corrupt or not an image "
                           f"({e.__class__.__name__}); re-extract {spec.archive}") from None
    slot = _SUBJECT_SLOT.get(rel)
    names = [(subj, slot)] + ([(ref, None if slot is None else 1 - slot)] if spec.objects == 2
                              else [])
    rel_path = image.relative_to(root).as_posix()
    factors: dict[str, Any] = {"subset": spec.name, "source": _relative_path(spec, entry),
                               "preposition": prep, "caption_parsed": parsed,
                               "subject": subj, "reference": ref}
    mask = None
    if spec.kind == "qa":
        factors["image_id"] = entry[0]
        scene = f"{spec.name.split('_')[0].lower()}:{entry[0]}"
    else:
        stem = PurePosixPath(entry["image_path"]).name
        scene = f"{spec.name}:{stem.split('_')[0]}_{stem.split('_')[-1][:-5]}"
    if coco is not None and spec.name.startswith("COCO"):
        boxes = coco.get(int(entry[0]), {})
        found = {}
        mask = np.zeros((height, width), dtype=np.uint8)
        chosen = _pick_instances([match_category(n, boxes) if boxes else None for n, _ in names],
                                 boxes, rel, slot)
        for k in reversed(range(len(names))):  # reference first, subject drawn over it
            if chosen[k] is not None:
                cat, b = chosen[k]
                x0, y0, x1, y1 = _box_px(b, width, height)
                mask[y0:y1, x0:x1] = k + 1
                found[("subject", "reference")[k]] = {"category": cat, "bbox": b[:4]}
        factors["masks"] = ("coco_boxes" if len(found) == len(names) else
                            "partial_coco_boxes" if found else "none")
        factors["coco"] = found
    else:
        factors["masks"] = "none"
    sid = f"{spec.name}-{i:05d}"
    return Stimulus(
        id=sid, file_name=rel_path, mask_file_name="", width=width, height=height,
        generator="whatsup", task=spec.name, relation=rel, axis=rel_axis,
        entities=_entities(names, mask),
        prompts=(Prompt(kind="choice", text="", answer=caps[0], options=tuple(caps)),),
        scene_id=scene, index=i, split="test", factors=factors)


# --------------------------------------------------------------------------- public entry point
def import_whatsup(root: str | Path, subset: str, out: str | Path | None = None, *,
                   coco_annotations: str | Path | None = None, limit: int | None = None,
                   workers: int = 1, progress: bool = True) -> list[ImportedItem] | Path:
    """Import one What'sUp subset from a user's download.

    Parameters
    ----------
    root
        Folder holding the release (see the module docstring for the accepted layouts).
    subset
        One of :data:`SUBSETS` (``Controlled_Images_A``, ``Controlled_Images_B``,
        ``COCO_QA_one_obj``, ``COCO_QA_two_obj``, ``VG_QA_one_obj``, ``VG_QA_two_obj``).
    out
        None: return the items in memory. A folder: write a dataset directory in our format
        (images converted to PNG, masks from COCO boxes or all background) readable with
        :func:`scenegen.read_dataset`; rerunning resumes.
    coco_annotations
        COCO ``instances_val2017.json``; attaches boxes and masks to COCO subsets.
    limit
        Import only the first ``limit`` items.

    Returns
    -------
    list of ImportedItem or Path
        ``(stimulus, image_path)`` pairs in file order, or the dataset directory.

    Raises
    ------
    WhatsUpError
        Unknown subset, missing annotation file or images, malformed entry (file, item index,
        field), or a path escaping ``root``.
    """
    from ..errors import unknown

    if subset not in SUBSETS:
        e = unknown("What'sUp subset", subset, SUBSETS)
        raise WhatsUpError(str(e))
    if limit is not None and limit < 1:
        raise WhatsUpError(f"limit must be a positive integer, got {limit}")
    spec = SUBSETS[subset]
    root = Path(root)
    if not root.is_dir():
        raise WhatsUpError(f"What'sUp root {root} is not a directory; pass the folder holding "
                           f"{spec.json_name} and {spec.image_dir}/")
    ann = _find_annotation(root, spec)
    entries = _load_entries(ann, spec)
    if limit is not None:
        entries = entries[:limit]
    images = _resolve_images(root, spec, [_relative_path(spec, e) for e in entries])
    coco = None
    if coco_annotations is not None:
        coco, _ = load_coco_boxes(coco_annotations)
    items = [ImportedItem(_build(spec, i, e, p, root, coco), p)
             for i, (e, p) in enumerate(zip(entries, images))]
    if out is None:
        return items
    from ..dataset import write_dataset

    config = {"importer": "whatsup", "subset": subset, "n_items": len(items),
              "annotation_sha256": hashlib.sha256(ann.read_bytes()).hexdigest()[:16],
              "coco_annotations": None if coco_annotations is None else Path(
                  coco_annotations).name}
    gen = _ImportGenerator(items)
    return write_dataset(gen, out, config=config, factory=partial(_ImportGenerator, items),
                         workers=workers, progress=progress)


class _ImportGenerator:
    """Adapts imported items to :func:`scenegen.dataset.write_dataset`'s Generator protocol."""

    def __init__(self, items: list[ImportedItem]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def extras(self) -> list[Rendered]:
        return []

    def unit(self, index: int) -> list[Rendered]:
        stim, path = self.items[index]
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        stim = replace(stim, file_name=f"images/{stim.id}.png",
                       mask_file_name=f"masks/{stim.id}.png",
                       factors=dict(stim.factors, original_file=stim.file_name))
        return [Rendered(stimulus=stim, image=rgb, mask=whatsup_mask(stim))]
