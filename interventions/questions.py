"""The questions put to a model about stimuli, shared by evaluation (:mod:`study.evaluate`) and
E7 amplification (:mod:`interventions.amplification`): items named by a ``data`` spec (a scenegen
dataset directory or ``whatsup:ROOT[:SUBSET]``) and the protocols' queries (What'sUp caption
scoring, the paper's two-option question in both orders, completion prompts).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import EvaluationError

PROTOCOLS = ("caption", "two-option", "completion")


# --------------------------------------------------------------------------- items
@dataclass
class EvalItem:
    """One stimulus to evaluate plus a way to load its image."""

    stimulus: Any
    load_image: Callable[[], Any]
    source_path: str = ""
    """What'sUp: the image path as the release JSON writes it (for pair/set grouping)."""


def parse_data(spec: str) -> tuple[str, str, str | None]:
    """Split ``--data``: ``("dir", DIR, None)`` or ``("whatsup", ROOT, SUBSET or None)``."""
    s = str(spec)
    if not s.startswith("whatsup:"):
        return "dir", s, None
    rest = s[len("whatsup:"):]
    from scenegen.importers.whatsup import SUBSETS

    root, _, sub = rest.rpartition(":")
    if root and sub in SUBSETS:
        return "whatsup", root, sub
    if root and sub and not Path(rest).exists():
        from common import suggest

        raise EvaluationError(f"data={s!r}: unknown What'sUp subset {sub!r}."
                              f"{suggest(sub, SUBSETS)} Known: {', '.join(SUBSETS)}")
    if not rest:
        raise EvaluationError("data='whatsup:' needs a root folder: whatsup:ROOT[:SUBSET]")
    return "whatsup", rest, None


def load_items(data: str, *, limit: int | None = None,
               coco_annotations: str | None = None) -> list[EvalItem]:
    """Stimuli named by ``--data`` as :class:`EvalItem` (images loaded lazily).

    For ``whatsup:ROOT`` without a subset, every subset whose annotation file is under ROOT.
    """
    kind, where, subset = parse_data(data)
    if kind == "dir":
        from scenegen import read_dataset

        ds = read_dataset(where)
        stims = ds.base() if any(s.counterfactual_of for s in ds.stimuli) else list(ds.stimuli)
        stims = [s for s in stims if s.prompts]
        if not stims:
            raise EvaluationError(f"dataset {where} has no stimuli with prompts to evaluate; "
                                  "generate it with prompts or pick another --data")
        stims = stims[:limit] if limit else stims
        return [EvalItem(s, (lambda s=s: ds.pil_image(s)),
                         (s.factors or {}).get("source") or s.file_name) for s in stims]
    from scenegen.importers.whatsup import SUBSETS, WhatsUpError, import_whatsup

    root = Path(where)
    if not root.is_dir():
        raise WhatsUpError(f"What'sUp root {root} is not a directory; pass the folder holding "
                           "the release's JSON files and image folders (whatsup:ROOT[:SUBSET])")
    if subset is None:
        subs = [n for n, sp in SUBSETS.items()
                if (root / sp.json_name).is_file() or (root / "data" / sp.json_name).is_file()]
        if not subs:
            raise WhatsUpError(f"no What'sUp annotation file under {root} (looked for "
                               f"{', '.join(sp.json_name for sp in SUBSETS.values())} in ROOT "
                               "and ROOT/data); pass the folder of the download")
    else:
        subs = [subset]
    items: list[EvalItem] = []
    for sub in subs:
        for stim, path in import_whatsup(root, sub, coco_annotations=coco_annotations,
                                         limit=limit, progress=False):
            items.append(EvalItem(stim, (lambda p=path: _open_rgb(p)),
                                  stim.factors.get("source", "")))
    return items


def _open_rgb(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


# --------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Query:
    """One question put to the model about one item."""

    item: int
    """Index into the item list."""
    kind: str
    """``caption`` (score options as captions), ``options`` (next-token option scores) or
    ``completion`` (top-1 next token, plus option scores when options exist)."""
    prompt: str
    options: tuple[str, ...]
    answer: str
    order: str = ""
    system: str | None = None
    prompt_kind: str = ""
    """``caption`` (What'sUp captions), ``two-option``, or the stimulus prompt's kind."""


def caption_queries(i: int, stim) -> list[Query]:
    """The caption-scoring questions of an item.

    What'sUp items carry one ``choice`` prompt with empty text: its options are captions scored
    given the image alone. Generated stimuli's ``choice`` / ``yesno`` prompts with text are
    scored the same way, each option as the whole answer to the prompt (all its tokens).
    """
    caps = [p for p in stim.prompts if p.kind == "choice" and not p.text and len(p.options) >= 2]
    chosen = caps[:1] or [p for p in stim.prompts
                          if p.kind in ("choice", "yesno") and p.text and len(p.options) >= 2]
    if not chosen:
        raise EvaluationError(f"stimulus {stim.id} has no caption or choice options, so the "
                              "caption protocol cannot score it; use --protocol completion or "
                              "two-option")
    out = []
    for p in chosen:
        if p.answer not in p.options:
            raise EvaluationError(f"stimulus {stim.id}: answer {p.answer!r} is not among its "
                                  f"options {list(p.options)}; fix the dataset")
        k = stim.prompts.index(p)
        out.append(Query(i, "caption", p.text, tuple(p.options), p.answer,
                         "" if not p.text else f"p{k}", p.system,
                         "caption" if not p.text else p.kind))
    return out


_CANON = [("left", "right"), ("above", "below"), ("top", "bottom"), ("on", "under"),
          ("front", "behind")]
_PHRASE = {"left": "to the left of", "right": "to the right of", "above": "above",
           "below": "below", "on": "on", "under": "under", "front": "in front of",
           "behind": "behind", "top": "at the top of", "bottom": "at the bottom of"}


def _names(stim) -> tuple[str | None, str | None]:
    f = stim.factors or {}
    if f.get("subject"):
        return f.get("subject"), f.get("reference")
    # generated stimuli: the answer entity is the subject, the prompt's reference span the reference
    for p in stim.prompts:
        ref = p.spans.get("reference") if p.spans else None
        if p.kind == "completion" and ref:
            subj = next((e.name or f"{e.color} {e.kind}".strip() for e in stim.entities
                         if e.role == "target" and p.answer.lower() in
                         {str(e.color).lower(), str(e.kind).lower(), str(e.name or "").lower()}),
                        None)
            return subj, p.text[ref[0]:ref[1]]
    return None, None


def two_option_text(subj: str, ref: str | None, a: str, b: str, template: str) -> str:
    """The paper's two-option question with options ``a`` then ``b``.

    ``anchor``: "Using the {ref} as the reference point, which side is the {subj} on? Answer
    with one word: left or right." (``where is the {subj} located?`` off the horizontal axis).
    ``direct``: "Is the {subj} to the left or to the right of the {ref}? Answer with one word."
    One-object items (no reference): "Where is the {subj} in the photo? Answer with one word:
    {a} or {b}."
    """
    if ref is None:
        return f"Where is the {subj} in the photo? Answer with one word: {a} or {b}."
    if template == "direct":
        if {a, b} == {"left", "right"}:
            return (f"Is the {subj} to the {a} or to the {b} of the {ref}? "
                    "Answer with one word.")
        pa, pb = _PHRASE[a], _PHRASE[b]
        if pa.endswith(" of") and pb.endswith(" of"):
            pa = pa[:-3]
        return f"Is the {subj} {pa} or {pb} the {ref}? Answer with one word."
    q = "which side is the {s} on?" if {a, b} == {"left", "right"} else "where is the {s} located?"
    return (f"Using the {ref} as the reference point, {q.format(s=subj)} "
            f"Answer with one word: {a} or {b}.")


def two_option_queries(i: int, stim, template: str) -> list[Query]:
    """The two orders ("lr": canonical pair order, "rl": reversed) of an item's question."""
    rel = stim.relation
    pair = next((p for p in _CANON if rel in p), None)
    subj, ref = _names(stim)
    if pair is None or not subj:
        why = (f"relation {rel!r} has no opposite" if pair is None
               else "its subject/reference names are unknown")
        raise EvaluationError(f"stimulus {stim.id}: the two-option protocol cannot ask about it "
                              f"({why}); use --protocol caption or completion")
    system = None
    out = []
    for order, (a, b) in (("lr", pair), ("rl", pair[::-1])):
        out.append(Query(i, "options", two_option_text(subj, ref, a, b, template), (a, b), rel,
                         order, system, "two-option"))
    return out


def completion_queries(i: int, stim) -> list[Query]:
    """One query per text prompt of a generated stimulus (see module docstring)."""
    out = []
    texts = [(k, p) for k, p in enumerate(stim.prompts) if p.text]
    if any(p.kind == "completion" for _, p in texts):  # the paper's E1 uses these alone
        texts = [(k, p) for k, p in texts if p.kind == "completion"]
    for k, p in texts:
        if p.kind == "completion":
            out.append(Query(i, "completion", p.text, tuple(p.options), p.answer, f"p{k}",
                             p.system, p.kind))
        else:
            opts = tuple(p.options) or (("yes", "no") if p.kind == "yesno" else ())
            if p.answer not in opts:
                raise EvaluationError(f"stimulus {stim.id} prompt {k}: answer {p.answer!r} is "
                                      f"not among its options {list(opts)}; fix the dataset")
            out.append(Query(i, "options", p.text, opts, p.answer, f"p{k}", p.system, p.kind))
    if not out:
        raise EvaluationError(f"stimulus {stim.id} has no text prompt, so the completion "
                              "protocol cannot score it; use --protocol caption")
    return out


def build_queries(items: Sequence[EvalItem], protocol: str,
                  template: str = "anchor") -> list[Query]:
    """All queries of a protocol over ``items`` (raises on items the protocol cannot ask)."""
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    qs: list[Query] = []
    for i, it in enumerate(items):
        if protocol == "caption":
            qs += caption_queries(i, it.stimulus)
        elif protocol == "two-option":
            qs += two_option_queries(i, it.stimulus, template)
        else:
            qs += completion_queries(i, it.stimulus)
    return qs


def resolve_protocol(protocol: str, items: Sequence[EvalItem]) -> str:
    """``auto`` -> ``caption`` when every item has caption options (What'sUp), else
    ``completion``."""
    if protocol != "auto":
        return protocol
    if items and all(any(p.kind == "choice" and not p.text for p in it.stimulus.prompts)
                     for it in items):
        return "caption"
    return "completion"


def resolve_template(template: str, model_name: str) -> str:
    """``auto`` -> ``direct`` for Gemma models (the paper's Gemma prompt), else ``anchor``."""
    if template != "auto":
        return template
    return "direct" if "gemma" in str(model_name).lower() else "anchor"
