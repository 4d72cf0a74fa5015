"""scenegen: controlled spatial stimuli with pixel-exact masks and counterfactual twins.

Generators (``flat``: the paper's grid-aligned canvases; ``scene3d``: offscreen trimesh +
pyrender scenes) return :class:`~scenegen.record.Rendered` items; :mod:`scenegen.dataset` writes
them to the on-disk format every later stage reads. Imports nothing else of ours.
"""
from .dataset import Dataset, read_dataset, write_dataset
from .errors import ConfigError, DatasetError, PlacementError, SceneGenError
from .record import Entity, Prompt, Rendered, Stimulus

__all__ = [
    "ConfigError", "Dataset", "DatasetError", "Entity", "PlacementError", "Prompt", "Rendered",
    "SceneGenError", "Stimulus", "read_dataset", "write_dataset",
]
