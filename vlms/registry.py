"""Adapter registry: model names, hub ids, local directories and architectures -> adapter class.

Each family file (``vlms/qwen2_vl.py``, ``vlms/gemma3.py``, ...) ends with ``register(Adapter)``;
``vlms/__init__`` imports every sibling module, so adding a family is one new file (see
``vlms/README.md``). Adapters are keyed by the Hugging Face config's ``architectures[0]`` and by
short aliases (``qwen2-vl-7b`` -> ``Qwen/Qwen2-VL-7B-Instruct``, ``tiny-qwen2-vl`` -> tiny build).
The model organisms shipped in ``vlms/organisms/<name>/`` answer to ``organism-<name>``
(``organism-qwen2-vl-lm``, ``organism-qwen2-vl-vision``, ``organism-qwen2-vl-dual``,
``organism-gemma-3-vision``, and any
other shipped directory).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AdapterNotFoundError, VLMError, suggest

if TYPE_CHECKING:  # pragma: no cover
    from .base import VLMAdapter

#: architecture name (``config.architectures[0]``) -> adapter class
ADAPTERS: dict[str, type] = {}
#: short alias -> (architecture, hub id or ``"tiny"``)
ALIASES: dict[str, tuple[str, str]] = {}


#: (architecture, ``vision_config.model_type``) -> adapter class, for architectures that several
#: families share (``LlavaForConditionalGeneration`` with a CLIP tower = LLaVA, with a Pixtral
#: tower = Pixtral); such adapters declare ``vision_model_types``
VARIANTS: dict[tuple[str, str], type] = {}


def register(cls: type) -> type:
    """Register an adapter class under its architectures, family name and aliases.

    Built-ins register first; a later class never silently replaces an existing key. An
    adapter with ``vision_model_types`` shares its architecture with other such adapters and
    is picked by the checkpoint's ``vision_config.model_type`` (:data:`VARIANTS`);
    ``ADAPTERS[arch]`` is then the first one registered.
    """
    vts = tuple(getattr(cls, "vision_model_types", ()) or ())
    for arch in cls.architectures:
        if vts:
            for vt in vts:
                old = VARIANTS.get((arch, vt))
                if old is not None and old is not cls:
                    raise AdapterNotFoundError(
                        f"architecture {arch!r} with a {vt!r} vision tower is already served by "
                        f"{old.__name__}; {cls.__name__} cannot replace it")
                VARIANTS[(arch, vt)] = cls
            prev = ADAPTERS.get(arch)
            if prev is not None and prev is not cls and not getattr(prev, "vision_model_types", ()):
                raise AdapterNotFoundError(
                    f"architecture {arch!r} is already served by {prev.__name__}; "
                    f"{cls.__name__} cannot replace it")
            ADAPTERS.setdefault(arch, cls)
            continue
        if arch in ADAPTERS and ADAPTERS[arch] is not cls:
            raise AdapterNotFoundError(
                f"architecture {arch!r} is already served by {ADAPTERS[arch].__name__}; "
                f"{cls.__name__} cannot replace it")
        ADAPTERS[arch] = cls
    for alias, target in cls.aliases.items():
        ALIASES[alias] = (cls.architectures[0], target)
        ALIAS_CLASSES[alias] = cls
    return cls


#: alias -> adapter class (aliases of variants of one architecture name different classes)
ALIAS_CLASSES: dict[str, type] = {}


def variant_for(arch: str, config: dict | None = None) -> type | None:
    """The adapter of ``arch``, picking the variant by ``config["vision_config"]["model_type"]``."""
    vt = ((config or {}).get("vision_config") or {}).get("model_type")
    if vt is not None and (arch, vt) in VARIANTS:
        return VARIANTS[(arch, vt)]
    return ADAPTERS.get(arch)


def unavailable(cls: type) -> list[str]:
    """Python modules an adapter needs that are not installed."""
    return [m for m in getattr(cls, "requires", ()) if importlib.util.find_spec(m) is None]


#: organisms every checkout is meant to ship (listed even while their directory is missing)
EXPECTED_ORGANISMS = ("qwen2-vl-lm", "qwen2-vl-vision", "qwen2-vl-dual", "gemma-3-vision",
                      "gemma-3-lm", "gemma-3-dual")
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
    arch, conf = _config_of_dir(path)
    if arch not in ADAPTERS:
        raise AdapterNotFoundError(f"{path}/config.json names architecture {arch!r}, which has "
                                   "no adapter; re-save the organism")
    return variant_for(arch, conf), str(path)


def known_models() -> list[dict[str, Any]]:
    """One row per alias and architecture: what ``spatialbind model list`` prints."""
    rows = []
    for alias, (arch, target) in sorted(ALIASES.items()):
        cls = ALIAS_CLASSES[alias]
        miss = unavailable(cls)
        rows.append({"name": alias, "architecture": arch, "adapter": cls.__name__,
                     "family": cls.family, "source": target, "status": "ok" if not miss
                     else "unavailable (needs " + ", ".join(miss) + ")"})
    for alias, path in organism_aliases().items():
        try:
            cls, source = _resolve_organism(alias)
        except VLMError:
            rows.append({"name": alias, "architecture": "-", "adapter": "-", "family": "-",
                         "source": str(path), "status": "not shipped"})
            continue
        miss = unavailable(cls)
        rows.append({"name": alias, "architecture": cls.architectures[0],
                     "adapter": cls.__name__, "family": cls.family, "source": source, "status": "ok" if not miss
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
    return _config_of_dir(path)[0]


def _config_of_dir(path: Path) -> tuple[str, dict]:
    cfg = path / "config.json"
    if not cfg.exists():
        raise not_found(str(path), f"directory without config.json")
    try:
        d = json.loads(cfg.read_text())
    except ValueError:
        raise AdapterNotFoundError(f"{cfg} is not valid JSON; re-save the model") from None
    archs = d.get("architectures") or []
    if not archs:
        raise AdapterNotFoundError(f"{cfg} names no 'architectures'; re-save the model with "
                                   "save_pretrained")
    return archs[0], d


def resolve(name: str) -> tuple[type, str]:
    """Map a user-given model name to ``(adapter class, source)``.

    ``source`` is ``"tiny-<family>"`` for tiny builds, a hub id, or a local directory.
    """
    if name in ALIASES:
        return ALIAS_CLASSES[name], ALIASES[name][1]
    if name in organism_aliases():
        return _resolve_organism(name)
    for alias, (arch, target) in ALIASES.items():
        if target == name:
            return ALIAS_CLASSES[alias], target
    if name in ADAPTERS:
        return ADAPTERS[name], f"tiny-{ADAPTERS[name].family}"
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        refuse_remote_code(p)
        arch, conf = _config_of_dir(p)
        if arch not in ADAPTERS:
            raise AdapterNotFoundError(
                f"{p}/config.json names architecture {arch!r}, which has no adapter."
                f"{suggest(arch, ADAPTERS)} Supported: {', '.join(sorted(ADAPTERS))}; "
                "adding one is a new file in vlms/ (see vlms/README.md)")
        return variant_for(arch, conf), str(p)
    if "/" in name and not p.exists():
        # a hub id we have no alias for: read its config when the hub cache has it
        try:
            from transformers import AutoConfig

            hub = AutoConfig.from_pretrained(name, trust_remote_code=False)
            arch = (hub.architectures or [""])[0]
            conf = hub.to_dict()
        except Exception:  # noqa: BLE001 - offline / unknown repo: report as unknown model
            arch, conf = "", {}
        if arch in ADAPTERS:
            return variant_for(arch, conf), name
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
    cfg = getattr(target, "config", None)
    conf = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    return variant_for(arch, conf).for_model(target)


def adapter_class(name: str) -> type:
    """The adapter class for a name, alias, architecture, hub id or directory."""
    return resolve(name)[0]


def load_adapter(name_or_path: str, *, dtype: Any = None, device: Any = None,
                 seed: int = 0) -> "VLMAdapter":
    """Load a model and its processor and wrap them in their family's adapter.

    Parameters
    ----------
    name_or_path
        An alias (``qwen2-vl-7b``, ``gemma-3-4b``, ``pixtral-12b``, ``tiny-qwen2-vl``,
        ``organism-qwen2-vl-lm``, ...), a hub id, or a
        local directory written by ``save_pretrained`` (``spatialbind model save``).
    dtype
        torch dtype or its name (``auto``, ``float32``, ``bfloat16``, ``float16``). Default
        ``auto``: the checkpoint's own dtype (``torch_dtype`` / ``dtype`` in its config.json;
        tiny builds are float32), so a bf16 checkpoint is not up-cast. The paper ran Qwen2-VL
        and Gemma-3 in float32 and Pixtral in bfloat16 (PAPER-NOTES 1.1); pass that dtype to
        reproduce it.
    device
        Where the weights go: ``cpu`` (default), ``cuda``, ``cuda:1``, or ``auto`` (spread
        over every visible GPU when one is not enough; accelerate's ``device_map="auto"``).
        Saved weights are loaded straight onto it with ``device_map`` (never materialised in
        host RAM and then moved).
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
    device_map = parse_device(device)
    if source.startswith("tiny-"):
        ad = cls.tiny(seed=seed)
        if torch_dtype != "auto":
            ad.model.to(dtype=torch_dtype)
        if device_map is not None:
            target = device_map
            if target == "auto":
                target = "cuda" if torch.cuda.is_available() else "cpu"
            ad.model.to(target)
    else:
        try:
            ad = cls.from_pretrained(source, dtype=torch_dtype, device_map=device_map)
        except OSError as e:  # transformers: missing weights / processor files, unreachable hub
            if e.filename is not None:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise AdapterNotFoundError(
                f"cannot load model {name_or_path!r}: {first.rstrip('.')}; give a directory "
                "saved with save_pretrained (spatialbind model save) or a hub id in the local "
                "cache") from None
    ad.name = name_or_path
    return ad


DTYPE_NAMES = ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16")


def parse_dtype(dtype: Any):
    """``None``/str/torch.dtype -> torch.dtype, or ``"auto"`` (the checkpoint's dtype; the
    default)."""
    import torch

    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(dtype) not in names:
        raise VLMError(f"unknown dtype {dtype!r}.{suggest(str(dtype), DTYPE_NAMES)} "
                       f"Use one of {', '.join(DTYPE_NAMES)}")
    return names[str(dtype)]


def parse_device(device: Any):
    """``None`` (CPU) / ``cpu`` / ``cuda[:i]`` / ``auto`` / torch.device -> a ``device_map``
    value for ``from_pretrained`` (None = CPU)."""
    if device is None:
        return None
    d = str(device)
    if d == "auto" or d == "cpu" or d == "mps" or re.fullmatch(r"cuda(:\d+)?", d):
        return d
    raise VLMError(f"unknown device {device!r}; use cpu, cuda, cuda:<i> or auto (several GPUs)")
