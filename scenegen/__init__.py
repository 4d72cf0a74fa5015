"""scenegen: controlled spatial stimuli with pixel-exact masks and counterfactual twins.

Generators (``flat``: the paper's grid-aligned canvases; ``scene3d``: offscreen trimesh +
pyrender scenes) return :class:`~scenegen.record.Rendered` items; :mod:`scenegen.dataset` writes
them to the on-disk format every later stage reads. Imports nothing else of ours.
"""
from .config import DegradationSpec, FlatConfig, GenerateConfig, GridConfig, SplitConfig
from .dataset import Dataset, read_dataset, write_dataset
from .degrade import degrade
from .errors import ConfigError, DatasetError, PlacementError, SceneGenError
from .generate import build_generator, generate
from .presets import preset_config, preset_names
from .record import Entity, Prompt, Rendered, Stimulus

__all__ = [
    "ConfigError", "Dataset", "DatasetError", "DegradationSpec", "Entity", "FlatConfig",
    "GenerateConfig", "GridConfig", "PlacementError", "Prompt", "Rendered", "SceneGenError",
    "SplitConfig", "Stimulus", "build_generator", "degrade", "generate", "preset_config",
    "preset_names", "read_dataset", "write_dataset",
]
