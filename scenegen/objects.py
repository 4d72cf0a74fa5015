"""Object sprites of the Objects task: a folder of RGBA images, one object per file.

The paper's Objects task (PAPER-NOTES 1.4) places three object thumbnails on the model's grid
cells instead of squares and asks ``"The object {prep} the {middle} is a(n) "``. The authors' 8
stickpng thumbnails (orange, apple, pot, bell, hat, rose, key, bomb) cannot be downloaded here, so:

- ``--objects DIR`` (``flat.objects_dir``) takes a user's folder: every ``*.png`` / ``*.webp`` /
  ``*.tif`` in it with an alpha channel is one object, named by its file name without the
  extension (``apple.png`` -> ``apple``). Names must be lower-case words (letters, digits, ``-``),
  as they are written into prompts;
- without it, the toolkit's own 8 sprites in ``scenegen/data/objects/`` are used (made by
  ``scripts/make_object_sprites.py`` from the ``scene3d`` vocabulary's 3D shapes, so the task runs
  offline and never needs GL at generation time).

Pixels: a sprite is resized (PIL bilinear) to the entity's ``size x size`` token cells and pasted
where its resized alpha is >= 128 (no blending), so the instance mask equals the drawn pixels
exactly, as for Squares and Shapes.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import ConfigError

#: The paper's object list, in the authors' order (PAPER-NOTES 1.4; ``shared/objects.py``).
PAPER_OBJECTS: tuple[str, ...] = ("orange", "apple", "pot", "bell", "hat", "rose", "key", "bomb")
#: The shipped default set, in the order the presets enumerate it.
DEFAULT_OBJECTS: tuple[str, ...] = ("cube", "sphere", "cylinder", "cone", "ring", "capsule",
                                    "pyramid", "prism")
SUFFIXES = (".png", ".webp", ".tif", ".tiff")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
ALPHA_CUT = 128


def default_dir() -> Path:
    """The shipped sprite folder (``scenegen/data/objects``)."""
    return Path(__file__).resolve().parent / "data" / "objects"


@dataclass(frozen=True)
class ObjectSet:
    """Validated sprites: names (in enumeration order) and their RGBA arrays."""

    directory: Path
    names: tuple[str, ...]
    files: tuple[Path, ...]
    sha256: str
    """Digest over (name, file bytes) of every used sprite: guards resumed datasets."""

    def rgba(self, name: str) -> np.ndarray:
        return _load_rgba(str(self.files[self.names.index(name)]))


def _bad(where: str, why: str) -> ConfigError:
    return ConfigError(f"{where}: {why}")


def scan(directory: str | Path | None) -> dict[str, Path]:
    """``{name: file}`` of every sprite file in ``directory`` (default: the shipped set)."""
    d = default_dir() if directory is None else Path(directory).expanduser()
    if not d.is_dir():
        raise _bad(f"--objects {d}", "is not a directory; pass a folder of RGBA images "
                   "(one object per file, named by the file name, e.g. apple.png)")
    out: dict[str, Path] = {}
    for f in sorted(d.iterdir()):
        if f.suffix.lower() not in SUFFIXES or not f.is_file():
            continue
        name = f.stem
        if not NAME_RE.match(name):
            raise _bad(f"--objects {d}", f"file {f.name!r} gives the object name {name!r}; "
                       "rename it to a lower-case word (letters, digits, '-'), e.g. apple.png")
        if name in out:
            raise _bad(f"--objects {d}", f"object {name!r} has two files ({out[name].name}, "
                       f"{f.name}); keep one")
        out[name] = f
    return out


def load_objects(directory: str | Path | None, names: Sequence[str] = (),
                 expect_sha256: str | None = None) -> ObjectSet:
    """Validate and load a sprite folder.

    Parameters
    ----------
    directory
        Folder of RGBA images; None = the shipped default set.
    names
        Objects to use, in enumeration order; empty = the default set's order for the shipped
        folder, else every sprite in file-name order.
    expect_sha256
        When given (a resumed or re-built generation), the sprites must still hash to it.

    Raises
    ------
    ConfigError
        One line naming the folder or file and the fix: missing folder, fewer than 3 sprites, a
        name that is not a lower-case word, an unknown requested name, an unreadable image, an
        image without alpha or with an empty / full alpha.
    """
    found = scan(directory)
    d = default_dir() if directory is None else Path(directory).expanduser()
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise _bad(f"--objects {d}", f"no sprite file for object(s) {missing}; "
                       f"the folder has {sorted(found)}")
        if len(set(names)) != len(names):
            raise _bad("flat.objects", f"repeated object names in {list(names)}")
        use = tuple(names)
    elif directory is None:
        use = tuple(n for n in DEFAULT_OBJECTS if n in found)
    else:
        use = tuple(found)
    if len(use) < 3:
        raise _bad(f"--objects {d}", f"holds {len(use)} usable sprite(s) ({list(use)}); the task "
                   "places 3 different objects per image, so add at least 3 RGBA images")
    h = hashlib.sha256()
    for n in use:
        f = found[n]
        check_sprite(f)
        h.update(n.encode() + b"\0" + f.read_bytes())
    digest = h.hexdigest()
    if expect_sha256 is not None and expect_sha256 != digest:
        raise _bad(f"--objects {d}", "the sprite files changed since this dataset was started "
                   f"(sha256 {digest[:12]} != {expect_sha256[:12]}); restore them or generate "
                   "into a new --out directory")
    return ObjectSet(directory=d, names=use, files=tuple(found[n] for n in use), sha256=digest)


def check_sprite(path: Path) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a readable image with a usable alpha."""
    try:
        with Image.open(path) as im:
            im.load()
            mode, bands = im.mode, im.getbands()
            rgba = np.asarray(im.convert("RGBA"))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise _bad(f"sprite {path}", f"is not a readable image ({e.__class__.__name__}); "
                   "replace it with an RGBA PNG") from None
    if "A" not in bands and "transparency" not in getattr(im, "info", {}):
        raise _bad(f"sprite {path}", f"has no alpha channel (mode {mode}); save it as an RGBA "
                   "PNG with a transparent background (the alpha is the object's mask)")
    a = rgba[..., 3] >= ALPHA_CUT
    if not a.any():
        raise _bad(f"sprite {path}", "is fully transparent (no alpha >= 128); the object would "
                   "be invisible")
    if a.all():
        raise _bad(f"sprite {path}", "is fully opaque (alpha >= 128 everywhere), so its mask "
                   "would be the whole cell block; give it a transparent background")


@functools.lru_cache(maxsize=64)
def _load_rgba(path: str) -> np.ndarray:
    with Image.open(path) as im:
        out = np.asarray(im.convert("RGBA")).copy()
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=256)
def _sprite_at(path: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    im = Image.fromarray(_load_rgba(path), "RGBA").resize((side, side), Image.BILINEAR)
    arr = np.asarray(im)
    fp = arr[..., 3] >= ALPHA_CUT
    rgb = np.ascontiguousarray(arr[..., :3])
    fp.flags.writeable = False
    rgb.flags.writeable = False
    return fp, rgb


def sprite_pixels(objects: ObjectSet, name: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``(footprint bool (side, side), rgb uint8 (side, side, 3))`` of ``name`` at ``side`` px."""
    return _sprite_at(str(objects.files[objects.names.index(name)]), int(side))


def mean_rgb(objects: ObjectSet, name: str) -> tuple[int, int, int]:
    """Mean colour of the sprite's opaque pixels (the entity's ``rgb`` label)."""
    arr = objects.rgba(name)
    fp = arr[..., 3] >= ALPHA_CUT
    return tuple(int(round(float(v))) for v in arr[..., :3][fp].mean(0))


def token_report(tokenizer: Any, names: Iterable[str]) -> dict[str, list[str]]:
    """Which names are a single token for ``tokenizer``, in lower-case and Capitalised form.

    The authors keep What'sUp side objects (and read Objects answers) only when
    ``len(tokenizer.tokenize(name)) == 1`` for both ``name`` and ``name.capitalize()``
    (``behavioral_analysis/src/tasks/whatsup.py``). Returns ``{"single": [...], "split":
    [...]}`` in input order; ``split`` entries are written ``name (pieces)``.
    """
    single, split = [], []
    for n in names:
        lo, up = tokenizer.tokenize(n), tokenizer.tokenize(n.capitalize())
        if len(lo) == 1 and len(up) == 1:
            single.append(n)
        else:
            split.append(f"{n} ({'|'.join(lo)} / {'|'.join(up)})")
    return {"single": single, "split": split}


def is_single_token(tokenizer: Any, name: str) -> bool:
    """The authors' filter: one token both lower-case and capitalised."""
    return len(tokenizer.tokenize(name)) == 1 and len(tokenizer.tokenize(name.capitalize())) == 1


def load_tokenizer(name_or_dir: str) -> Any:
    """A Hugging Face tokenizer from a local directory or a hub id (``--tokenizer``), without
    remote code. Tiny builds: save one first (``spatialbind model save tiny-qwen2-vl DIR``).

    Raises
    ------
    ConfigError
        One line naming the tokenizer and the fix (e.g. a local directory when offline).
    """
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError("--tokenizer needs transformers; install spatialbind[models]") from None
    try:
        return AutoTokenizer.from_pretrained(str(Path(name_or_dir).expanduser())
                                             if Path(name_or_dir).expanduser().is_dir()
                                             else name_or_dir, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - offline hub, missing files, bad directory
        first = (str(e).splitlines() or [e.__class__.__name__])[0][:160]
        raise ConfigError(f"--tokenizer {name_or_dir}: cannot load it ({first}); pass a local "
                          "directory holding the model or its tokenizer files (save_pretrained; "
                          "for a tiny build: spatialbind model save tiny-qwen2-vl DIR)") from None
