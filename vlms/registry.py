"""Adapter registry: model names, hub ids, local directories and architectures -> adapter class.

Each family file (``vlms/qwen2_vl.py``, ``vlms/gemma3.py``, ...) ends with ``register(Adapter)``;
``vlms/__init__`` imports every sibling module, so adding a family is one new file (see
``vlms/README.md``). Adapters are keyed by the Hugging Face config's ``architectures[0]`` and by
short aliases (``qwen2-vl-7b`` -> ``Qwen/Qwen2-VL-7B-Instruct``, ``tiny-qwen2-vl`` -> tiny build).
The model organisms shipped in ``vlms/organisms/<name>/`` answer to ``organism-<name>``
(``organism-qwen2-vl-lm``, ``organism-qwen2-vl-vision``, ``organism-qwen2-vl-dual``, and any
other shipped directory).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AdapterNotFoundError, VLMError, suggest

if TYPE_CHECKING:  # pragma: no cover
    from .base import VLMAdapter

#: architecture name (``config.architectures[0]``) -> adapter class
ADAPTERS: dict[str, type] = {}
#: short alias -> (architecture, hub id or ``"tiny"``)
ALIASES: dict[str, tuple[str, str]] = {}


def register(cls: type) -> type:
    """Register an adapter class under its architectures, family name and aliases.

    Built-ins register first; a later class never silently replaces an existing key.
    """
    for arch in cls.architectures:
        if arch in ADAPTERS and ADAPTERS[arch] is not cls:
            raise AdapterNotFoundError(
                f"architecture {arch!r} is already served by {ADAPTERS[arch].__name__}; "
                f"{cls.__name__} cannot replace it")
        ADAPTERS[arch] = cls
    for alias, target in cls.aliases.items():
        ALIASES[alias] = (cls.architectures[0], target)
    return cls


def unavailable(cls: type) -> list[str]:
    """Python modules an adapter needs that are not installed."""
    return [m for m in getattr(cls, "requires", ()) if importlib.util.find_spec(m) is None]


#: organisms every checkout is meant to ship (listed even while their directory is missing)
EXPECTED_ORGANISMS = ("qwen2-vl-lm", "qwen2-vl-vision", "qwen2-vl-dual")
ORGANISM_PREFIX = "organism-"
#: where shipped organisms live (data; ``organisms.trainer.SHIPPED`` is this path)
SHIPPED = Path(__file__).parent / "organisms"


def organism_aliases() -> dict[str, Path]:
    """``organism-<name>`` -> ``vlms/organisms/<name>`` for the expected and the shipped ones."""
    names = set(EXPECTED_ORGANISMS)
    if SHIPPED.is_dir():
        names |= {p.name for p in SHIPPED.iterdir() if (p / "config.json").is_file()}
    return {ORGANISM_PREFIX + n: SHIPPED / n for n in sorted(names)}


def _resolve_organism(name: str) -> tuple[type, str]:
    path = organism_aliases()[name]
    if not (path / "config.json").is_file():
        raise AdapterNotFoundError(
            f"model {name!r}: organism {path.name!r} is not shipped ({path} has no saved "
            "model); train it with `spatialbind organism train` or update the checkout "
            "(see `spatialbind model list`)")
    arch = _arch_of_dir(path)
    if arch not in ADAPTERS:
        raise AdapterNotFoundError(f"{path}/config.json names architecture {arch!r}, which has "
                                   "no adapter; re-save the organism")
    return ADAPTERS[arch], str(path)


def known_models() -> list[dict[str, Any]]:
    """One row per alias and architecture: what ``spatialbind model list`` prints."""
    rows = []
    for alias, (arch, target) in sorted(ALIASES.items()):
        cls = ADAPTERS[arch]
        miss = unavailable(cls)
        rows.append({"name": alias, "architecture": arch, "adapter": cls.__name__,
                     "source": target, "status": "ok" if not miss
                     else "unavailable (needs " + ", ".join(miss) + ")"})
    for alias, path in organism_aliases().items():
        try:
            cls, source = _resolve_organism(alias)
        except VLMError:
            rows.append({"name": alias, "architecture": "-", "adapter": "-",
                         "source": str(path), "status": "not shipped"})
            continue
        miss = unavailable(cls)
        rows.append({"name": alias, "architecture": cls.architectures[0],
                     "adapter": cls.__name__, "source": source, "status": "ok" if not miss
                     else "unavailable (needs " + ", ".join(miss) + ")"})
    return rows


def _all_names() -> list[str]:
    return sorted(set(ALIASES) | set(ADAPTERS) | set(organism_aliases())
                  | {t for _, t in ALIASES.values() if t != "tiny"})


def not_found(name: str, why: str = "") -> AdapterNotFoundError:
    """The uniform 'unknown model' error with close-name suggestions."""
    why = f" ({why})" if why else ""
    return AdapterNotFoundError(
        f"unknown model {name!r}{why}.{suggest(name, _all_names())} Known names: "
        f"{', '.join(sorted(ALIASES))}; or pass a hub id or a local directory saved with "
        "save_pretrained (see `spatialbind model list`)")


def refuse_remote_code(path: Path) -> None:
    """Refuse a model directory whose config asks for code shipped with the weights.

    Every ``from_pretrained`` here passes ``trust_remote_code=False``; this says so in one line
    up front instead of a transformers traceback: a config with an ``auto_map``, or a
    ``model_type`` this transformers does not know, needs remote code.
    """
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        return
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except ValueError:
        raise AdapterNotFoundError(f"{cfg_file} is not valid JSON; re-save the model with "
                                   "save_pretrained") from None
    if not isinstance(cfg, dict):
        raise AdapterNotFoundError(f"{cfg_file} is not a model config (a JSON object); re-save "
                                   "the model with save_pretrained")
    why = ""
    if cfg.get("auto_map"):
        why = f"auto_map {sorted(cfg['auto_map'])}"
    else:
        mt = cfg.get("model_type")
        if mt:
            try:
                from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
            except ImportError:  # transformers missing: load_adapter says what to install
                return
            if mt not in CONFIG_MAPPING_NAMES:
                why = f"model_type {mt!r}, which this transformers does not know"
    if why:
        raise AdapterNotFoundError(
            f"{cfg_file} asks for remote code ({why}); remote code is refused (models load with "
            "trust_remote_code=False): use a model whose architecture transformers ships")


def _arch_of_dir(path: Path) -> str:
    cfg = path / "config.json"
    if not cfg.exists():
        raise not_found(str(path), f"directory without config.json")
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or []
    except ValueError:
        raise AdapterNotFoundError(f"{cfg} is not valid JSON; re-save the model") from None
    if not archs:
        raise AdapterNotFoundError(f"{cfg} names no 'architectures'; re-save the model with "
                                   "save_pretrained")
    return archs[0]


def resolve(name: str) -> tuple[type, str]:
    """Map a user-given model name to ``(adapter class, source)``.

    ``source`` is ``"tiny-<family>"`` for tiny builds, a hub id, or a local directory.
    """
    if name in ALIASES:
        arch, target = ALIASES[name]
        return ADAPTERS[arch], target
    if name in organism_aliases():
        return _resolve_organism(name)
    for alias, (arch, target) in ALIASES.items():
        if target == name:
            return ADAPTERS[arch], target
    if name in ADAPTERS:
        return ADAPTERS[name], f"tiny-{ADAPTERS[name].family}"
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        refuse_remote_code(p)
        arch = _arch_of_dir(p)
        if arch not in ADAPTERS:
            raise AdapterNotFoundError(
                f"{p}/config.json names architecture {arch!r}, which has no adapter."
                f"{suggest(arch, ADAPTERS)} Supported: {', '.join(sorted(ADAPTERS))}; "
                "adding one is a new file in vlms/ (see vlms/README.md)")
        return ADAPTERS[arch], str(p)
    if "/" in name and not p.exists():
        # a hub id we have no alias for: read its config when the hub cache has it
        try:
            from transformers import AutoConfig

            arch = (AutoConfig.from_pretrained(name, trust_remote_code=False).architectures
                    or [""])[0]
        except Exception:  # noqa: BLE001 - offline / unknown repo: report as unknown model
            arch = ""
        if arch in ADAPTERS:
            return ADAPTERS[arch], name
    raise not_found(name)


def adapter_for(target: Any) -> "VLMAdapter":
    """The adapter of ``target``: itself when it is an adapter, else an adapter around the bare
    transformers model (chosen by its class name, e.g. ``Qwen2VLForConditionalGeneration``),
    which knows the model's sites and module paths (:meth:`VLMAdapter.for_model`)."""
    from .base import VLMAdapter

    if isinstance(target, VLMAdapter):
        return target
    arch = type(target).__name__
    if arch not in ADAPTERS:
        raise AdapterNotFoundError(
            f"no adapter for a {arch} model.{suggest(arch, ADAPTERS)} Supported: "
            f"{', '.join(sorted(ADAPTERS))}; adding one is a new file in vlms/ (see "
            "vlms/README.md)")
    return ADAPTERS[arch].for_model(target)


def adapter_class(name: str) -> type:
    """The adapter class for a name, alias, architecture, hub id or directory."""
    return resolve(name)[0]


def load_adapter(name_or_path: str, *, dtype: Any = None, device: Any = None,
                 seed: int = 0) -> "VLMAdapter":
    """Load a model and its processor and wrap them in their family's adapter.

    Parameters
    ----------
    name_or_path
        An alias (``qwen2-vl-7b``, ``gemma-3-4b``, ``tiny-qwen2-vl``,
        ``organism-qwen2-vl-lm``, ...), a hub id, or a
        local directory written by ``save_pretrained`` (``spatialbind model save``).
    dtype
        torch dtype or its name (``float32``, ``bfloat16``, ``float16``); default float32.
    device
        torch device (default CPU).
    seed
        Weight seed of tiny builds (ignored for saved weights).

    Raises
    ------
    AdapterNotFoundError
        Unknown name (with close-name suggestions) or an architecture without adapter.
    """
    cls, source = resolve(name_or_path)  # name errors before the (slow) torch import
    import torch

    miss = unavailable(cls)
    if miss:
        raise AdapterNotFoundError(f"model {name_or_path!r} needs {', '.join(miss)}; install "
                                   "spatialbind[models]")
    torch_dtype = parse_dtype(dtype)
    if source.startswith("tiny-"):
        ad = cls.tiny(seed=seed)
        ad.model.to(dtype=torch_dtype)
    else:
        try:
            ad = cls.from_pretrained(source, dtype=torch_dtype)
        except OSError as e:  # transformers: missing weights / processor files, unreachable hub
            if e.filename is not None:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise AdapterNotFoundError(
                f"cannot load model {name_or_path!r}: {first.rstrip('.')}; give a directory "
                "saved with save_pretrained (spatialbind model save) or a hub id in the local "
                "cache") from None
    if device is not None:
        ad.model.to(device)
    ad.name = name_or_path
    return ad


def parse_dtype(dtype: Any):
    """``None``/str/torch.dtype -> torch.dtype (default float32)."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(dtype) not in names:
        raise VLMError(f"unknown dtype {dtype!r}.{suggest(str(dtype), names)} "
                                   f"Use one of {', '.join(names)}")
    return names[str(dtype)]
