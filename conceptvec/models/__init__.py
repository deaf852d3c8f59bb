"""What a model is: architecture specs, aliases, weight readers and loading."""

from .aliases import ALIASES, DEFAULT_MODEL, Alias, find_alias
from .arch import SPECS, ArchSpec, Dims, spec_for_model_type, supported_model_types
from .loading import load
from .model import Model
from .readers import GGUFWeightReader, ModuleReader, SafetensorsReader

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "SPECS",
    "Alias",
    "ArchSpec",
    "Dims",
    "GGUFWeightReader",
    "Model",
    "ModuleReader",
    "SafetensorsReader",
    "find_alias",
    "load",
    "spec_for_model_type",
    "supported_model_types",
]
