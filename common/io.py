"""The input/output boundary: OS and decoding errors on files become one line with the path and
the fix.

Every package reads and writes files through :func:`boundary` (a context manager) or checks an
output location up front with :func:`check_writable`; both raise the *calling package's* error
class, so the ``spatialbind`` CLI prints them as one line with exit status 1. ``cli.py`` uses
:func:`describe` as the last resort for an ``OSError`` with a file name that escaped every
boundary. This module imports nothing but the standard library, so every package may use it.

It also holds the two test hooks of the kill/resume tests (:func:`test_point`): the process
SIGKILLs itself, or sleeps, at a named point when an environment variable asks for it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import time
from pathlib import Path
from typing import Iterator

KILL_ENV = "SPATIALBIND_TEST_KILL_AT"
"""``NAME`` or ``NAME@K``: the process SIGKILLs itself when it reaches test point NAME (the K-th
time; default the first). Tests only."""
PAUSE_ENV = "SPATIALBIND_TEST_PAUSE_AT"
"""``NAME:SECONDS`` or ``NAME:PATH``: at test point NAME the process sleeps SECONDS, or until
PATH exists (at most 10 minutes). Tests only."""


class FileError(ValueError):
    """An input/output problem raised without a package error class (same one-line contract)."""


def test_point(name: str) -> None:
    """Test hook at a named point of a long operation; does nothing unless the env asks.

    Points in use: ``store-lock`` (extract holds the store-creation lock, group not yet made),
    ``store-created`` (group made, nothing written), ``extract-forward`` (after each forward,
    before its shard is written), ``extract-batch`` (after each batch is written),
    ``generate-dirs`` (dataset subfolders made, config.json not yet written), ``generate-unit``
    (after each unit's record is written).
    """
    kill = os.environ.get(KILL_ENV)
    if kill and kill.partition("@")[0] == name:
        _HITS[name] = _HITS.get(name, 0) + 1
        if _HITS[name] == int(kill.partition("@")[2] or 1):
            os.kill(os.getpid(), signal.SIGKILL)
    point, _, arg = os.environ.get(PAUSE_ENV, "").partition(":")
    if point == name and arg:
        try:
            time.sleep(float(arg))
        except ValueError:
            deadline = time.monotonic() + 600
            while not os.path.exists(arg) and time.monotonic() < deadline:
                time.sleep(0.05)


test_point.__test__ = False  # not a pytest test
_HITS: dict[str, int] = {}


_OS_FIX = {
    errno.EACCES: "permission denied; choose another location or change its permissions",
    errno.EPERM: "operation not permitted; choose another location or change its permissions",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.ENOSPC: "disk full; free some space and rerun the same command (finished work is kept)",
    errno.EDQUOT: "disk quota exceeded; free some space and rerun the same command",
    errno.EEXIST: "it already exists; remove it or choose another path",
    errno.ENOTDIR: "it (or a folder above it) is a file, not a directory; give a directory path",
    errno.EISDIR: "it is a directory; give a file path",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def describe(e: OSError, path=None, action: str | None = None) -> str:
    """One line for an ``OSError``: what failed, on which path, and how to fix it."""
    where = e.filename if e.filename is not None else path
    fix = _OS_FIX.get(e.errno) or f"{e.strerror or e}; check the path and rerun"
    return f"cannot {action or 'use'} {where if where is not None else 'a file'}: {fix}"


def _decode_line(e: Exception, path, action: str, fix: str | None) -> str | None:
    fix = fix or "fix it or regenerate it"
    if isinstance(e, json.JSONDecodeError):
        return f"{path} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); {fix}"
    if isinstance(e, UnicodeDecodeError):
        return f"{path} is not UTF-8 text (byte {e.start}); {fix}"
    mod = type(e).__module__
    if mod.startswith("yaml"):
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return f"{path} is not valid YAML ({first}); {fix}"
    if type(e).__name__ in ("UnidentifiedImageError", "DecompressionBombError") or (
            mod.startswith("PIL") and isinstance(e, (OSError, SyntaxError))):
        return f"{path} is corrupt or not an image ({type(e).__name__}); {fix}"
    return None


@contextlib.contextmanager
def boundary(path, *, action: str = "read", fix: str | None = None,
             error: type[Exception] = FileError) -> Iterator[None]:
    """Turn OS and decoding errors raised inside the block into ``error`` with one line.

    Parameters
    ----------
    path
        The file or folder being read or written (an ``OSError``'s own file name wins).
    action
        What is done to it, for the message: ``read``, ``write``, ``create`` ...
    fix
        How to fix a file that cannot be decoded (default: fix or regenerate it).
    error
        The package's error class to raise.
    """
    try:
        yield
    except OSError as e:
        if type(e).__module__.startswith("PIL") or e.errno is None and e.filename is None:
            # no errno: a library's format error (PIL's "image file is truncated", ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            line = _decode_line(e, path, action, fix) or \
                f"cannot {action} {path}: {first}; {fix or 'fix it or regenerate it'}"
            raise error(line) from None
        raise error(describe(e, path, action)) from None
    except (ValueError, SyntaxError) as e:
        line = _decode_line(e, path, action, fix)
        if line is None:
            raise
        raise error(line) from None
    except Exception as e:  # noqa: BLE001 - yaml/PIL errors that are neither of the above
        line = _decode_line(e, path, action, fix)
        if line is None:
            raise
        raise error(line) from None


def check_writable(path, *, what: str = "--out", kind: str = "dir",
                   error: type[Exception] = FileError) -> Path:
    """Refuse, before any work, an output location that cannot be written.

    ``kind="dir"``: ``path`` must be a directory or not exist yet; ``kind="file"``: not a
    directory. The nearest existing folder above it must be a writable directory. Nothing is
    created. Local paths only (URLs are returned unchecked).
    """
    p = Path(os.path.expanduser(str(path)))
    if "://" in str(path):
        return p
    if p.exists():
        if kind == "dir" and not p.is_dir():
            raise error(f"{what} {p} is a file; give a directory (new or empty)")
        if kind == "file" and p.is_dir():
            raise error(f"{what} {p} is a directory; give a file path")
    probe = p if p.exists() else p.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise error(f"cannot create {what} {p}: {probe} is a file, not a directory; give "
                    f"another path")
    target = p if p.is_dir() or (p.exists() and kind == "file") else probe
    if not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
        raise error(f"cannot write to {what} {p}: permission denied on {target}; choose a "
                    f"location you may write to or change its permissions")
    return p
