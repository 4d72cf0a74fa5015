"""The object vocabulary of the ``scene3d`` generator (``scenegen/data/vocabulary.json``).

Shapes, colours, materials and sizes live in a data file (as clevr's ``properties.json``) and
are validated into a frozen :class:`Vocabulary` on load. Configs name entries of it; an unknown
name raises :func:`scenegen.errors.unknown` with a close-match suggestion.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

from .errors import ConfigError, unknown


@dataclass(frozen=True, kw_only=True)
class ShapeSpec:
    """A primitive shape: relative height (bounding box side is 1 x height x 1) and flags."""

    name: str
    height: float = 1.0
    stackable: bool = False
    """Flat top and bottom at full height: may carry another object in stacked layouts."""
    smooth: bool = False
    """Smooth vertex normals (curved shapes)."""

    def __post_init__(self):
        if not 0.05 <= self.height <= 1.0:
            raise ConfigError(f"vocabulary shape {self.name!r}: height {self.height} must lie "
                              "in [0.05, 1]; fix scenegen/data/vocabulary.json")


@dataclass(frozen=True, kw_only=True)
class MaterialSpec:
    """glTF metallic-roughness factors of a material."""

    name: str
    metallic: float
    roughness: float

    def __post_init__(self):
        for field in ("metallic", "roughness"):
            v = getattr(self, field)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"vocabulary material {self.name!r}: {field} {v} must lie "
                                  "in [0, 1]; fix scenegen/data/vocabulary.json")


@dataclass(frozen=True, kw_only=True)
class Vocabulary:
    """Validated object vocabulary (read-only mappings)."""

    shapes: Mapping[str, ShapeSpec]
    colors: Mapping[str, tuple[int, int, int]]
    materials: Mapping[str, MaterialSpec]
    sizes: Mapping[str, float]
    source: str = ""

    def __post_init__(self):
        for what in ("shapes", "colors", "materials", "sizes"):
            if not getattr(self, what):
                raise ConfigError(f"vocabulary {self.source or ''} has no {what}; add some")
        for name, rgb in self.colors.items():
            if len(rgb) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb):
                raise ConfigError(f"vocabulary colour {name!r}: {list(rgb)} is not three "
                                  f"integers in 0..255; fix {self.source}")
        for name, s in self.sizes.items():
            if not 0.1 <= s <= 3.0:
                raise ConfigError(f"vocabulary size {name!r}: {s} must lie in [0.1, 3] world "
                                  f"units; fix {self.source}")
        if not any(s.stackable for s in self.shapes.values()):
            raise ConfigError(f"vocabulary {self.source}: no stackable shape; mark one "
                              "(e.g. cube) 'stackable': true")

    def check(self, what: str, names: Iterable[str], where: str = "") -> tuple[str, ...]:
        """Validate ``names`` against one table (``shapes``, ``colors``, ``materials``, ``sizes``).

        Returns the names as a tuple; all names of the table when ``names`` is empty.

        Raises
        ------
        scenegen.errors.ConfigError
            For an unknown name, with the closest known name suggested.
        """
        table = getattr(self, what)
        names = tuple(names)
        singular = {"shapes": "shape", "colors": "colour", "materials": "material",
                    "sizes": "size"}[what]
        for n in names:
            if n not in table:
                raise unknown(singular, n, list(table), where)
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: {what} lists a name twice ({list(names)}); "
                              "remove the duplicate")
        return names or tuple(table)


def _parse(data: dict, source: str) -> Vocabulary:
    try:
        shapes = {k: ShapeSpec(name=k, **v) for k, v in data["shapes"].items()}
        materials = {k: MaterialSpec(name=k, **v) for k, v in data["materials"].items()}
        colors = {k: tuple(v) for k, v in data["colors"].items()}
        sizes = {k: float(v) for k, v in data["sizes"].items()}
    except KeyError as e:
        raise ConfigError(f"vocabulary {source} lacks the {e.args[0]!r} table; "
                          "see scenegen/data/vocabulary.json for the format") from None
    except TypeError as e:
        raise ConfigError(f"vocabulary {source}: malformed entry ({e}); "
                          "see scenegen/data/vocabulary.json for the format") from None
    return Vocabulary(shapes=MappingProxyType(shapes), colors=MappingProxyType(colors),
                      materials=MappingProxyType(materials), sizes=MappingProxyType(sizes),
                      source=source)


@lru_cache(maxsize=8)
def load_vocabulary(path: str | None = None) -> Vocabulary:
    """Load and validate a vocabulary file (default: the packaged ``data/vocabulary.json``).

    Parameters
    ----------
    path
        A JSON file with ``shapes``, ``colors``, ``materials`` and ``sizes`` tables.

    Raises
    ------
    scenegen.errors.ConfigError
        If the file is missing, not JSON, or holds invalid entries.
    """
    if path is None:
        text = resources.files("scenegen").joinpath("data/vocabulary.json").read_text()
        source = "scenegen/data/vocabulary.json"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"vocabulary file {p} does not exist; fix the 'vocabulary' path "
                              "in the config or leave it out to use the packaged one")
        text, source = p.read_text(), str(p)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"vocabulary {source} is not valid JSON ({e})") from None
    return _parse(data, source)
