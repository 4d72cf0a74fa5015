"""common: the few helpers every package shares, defined once (imports nothing of ours, so every
package, ``scenegen`` and ``actstore`` included, may import it).

- :mod:`common.io`: the input/output boundary (OS and decoding errors on files as one line with
  the path and the fix; output locations checked before work; the kill/resume test hooks);
- :func:`suggest`: the " Did you mean 'x'?" tail of an unknown-name error;
- :func:`parse_layers`: one grammar of layer selections for every command and config
  (``'all'``, ``'0,4,8'``, inclusive ranges ``'0-3'`` or ``'0:3'``, with a step ``'0:12:4'``).

Messages speak of parameters (``layers='0-99': ...``); the CLI maps parameter names to its flags
when it prints them (:func:`cli.flag_message`).
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable, Sequence

__all__ = ["lazy_exports", "parse_layers", "suggest"]


def suggest(name, choices: Iterable, *, n: int = 1, cutoff: float = 0.5) -> str:
    """``" Did you mean 'x'?"`` (or ``'x' or 'y'`` with ``n > 1``) for the closest of
    ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


_RANGE = re.compile(r"^(-?\d+)\s*(?:([-:])\s*(-?\d+)\s*(?::\s*(-?\d+))?)?$")


def parse_layers(spec, available: Sequence[int] | None = None, *, param: str = "layers",
                 where: str = "the available layers", error: type[Exception] = ValueError
                 ) -> tuple[int, ...] | None:
    """Read a layer selection; the one grammar of every command and config.

    Parameters
    ----------
    spec
        ``None``, ``''`` or ``'all'`` (every layer of ``available``; None when ``available`` is
        None), an int, a sequence of ints, or a string of comma-separated parts, each a layer
        ``'4'`` or an inclusive range ``'0-3'`` / ``'0:3'``, optionally with a step
        (``'0:12:4'``, ``'0-12:4'``).
    available
        The layers there are; every selected layer must be one of them.
    param
        The parameter's name, used in messages (``layers='0-99': ...``).
    where
        What ``available`` is, for messages (``"the store for this site"``).
    error
        Exception class to raise (the caller's package error).

    Returns
    -------
    tuple of int or None
        Sorted distinct layers.
    """
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        if available is None:
            return None
        if not len(available):
            raise error(f"{param}={spec!r}: {where} lists no layers; give {param} explicitly")
        return tuple(sorted({int(x) for x in available}))
    out: set[int] = set()
    if isinstance(spec, (int, tuple, list, range)) and not isinstance(spec, bool):
        items = [spec] if isinstance(spec, int) else list(spec)
        try:
            out = {int(x) for x in items}
        except (TypeError, ValueError):
            raise error(f"{param}={spec!r}: layers must be ints") from None
    else:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            m = _RANGE.match(part)
            if m is None:
                raise error(f"{param}={spec!r}: cannot read {part!r}; use 'all', a list such as "
                            "'0,4,8' or an inclusive range '0-3' / '0:3' (step: '0:12:4')")
            a, sep, b, step = m.groups()
            if sep is None:
                out.add(int(a))
                continue
            s = int(step) if step is not None else 1
            if s <= 0:
                raise error(f"{param}={spec!r}: the step of {part!r} must be >= 1")
            out |= set(range(int(a), int(b) + 1, s))
    if not out:
        hint = f"; e.g. use 0-{max(available)}" if available else ""
        raise error(f"{param}={spec!r} selects no layer{hint}")
    if available is not None:
        bad = sorted(x for x in out if x not in set(int(a) for a in available))
        if bad:
            avail = list(available)
            shown = (f"{avail[0]}..{avail[-1]}" if avail == list(range(avail[0], avail[-1] + 1))
                     else str(avail)) if avail else "none"
            raise error(f"{param}={spec!r}: layer(s) {bad} not in {where} (out of range; "
                        f"available: {shown})")
    return tuple(sorted(out))


def lazy_exports(package: str, exports: dict[str, str], *, eager: Iterable[str] = ()):
    """A package's lazy public API: ``__getattr__, __dir__, __all__ = lazy_exports(__name__, ...)``.

    ``exports`` maps a public name to the submodule that defines it (imported on first use, so
    ``import package`` stays light); ``eager`` names are defined in the package itself and only
    listed in ``__all__``.
    """
    import importlib

    names = sorted({*exports, *eager})

    def __getattr__(name: str):
        mod = exports.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{mod}"), name)

    def __dir__():
        return names

    return __getattr__, __dir__, names

