"""``JsonConfig``: a checkpoint's ``config.json`` read as attributes, without transformers.

Building ``transformers.AutoConfig`` imports the model's configuration module, which costs
1.5-3 s, more than everything else ``conceptvec map`` does before its first GEMM on a GPU.
Weight-only work needs a dozen fields, all in ``config.json``; where a field is absent,
the value transformers' config class would default to is given here. The real config is
built only when asked for (:meth:`JsonConfig.transformers`), e.g. to build the model.
"""

from __future__ import annotations

from typing import Any

from conceptvec.errors import UnsupportedArchitectureError

from .arch import spec_for_model_type


def _default(model_type: Any, name: str) -> Any:
    """Return transformers' default for ``name`` of ``model_type`` (from its family's
    :attr:`ArchSpec.config_defaults`, checked against transformers 4.56-5.x), or raise
    AttributeError."""
    try:
        spec = spec_for_model_type(str(model_type))
    except UnsupportedArchitectureError:
        raise AttributeError(name) from None
    return spec.default(str(model_type), name)


class JsonConfig:
    """Attribute access over a ``config.json`` dict (nested ``*_config`` dicts included)."""

    def __init__(self, data: dict[str, object], folder: str | None = None, **kwargs: Any):
        self.__dict__["_data"] = data
        self.__dict__["_folder"] = folder
        self.__dict__["_kwargs"] = kwargs
        self.__dict__["_real"] = None

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__["_data"]
        if name in data:
            value = data[name]
            if isinstance(value, dict) and name.endswith("_config"):
                return JsonConfig(value)
            return value
        model_type = data.get("model_type")
        if name == "tie_word_embeddings":
            if "text_config" in data:
                raise AttributeError(name)  # the text config's own value (or default) applies
            try:
                return bool(_default(model_type, name))
            except AttributeError:
                return False  # PretrainedConfig's default
        return _default(model_type, name)

    def __setattr__(self, name: str, value: object) -> None:
        self.__dict__["_data"][name] = value

    def __delattr__(self, name: str) -> None:
        self.__dict__["_data"].pop(name, None)

    def to_dict(self) -> dict[str, object]:
        """Return the config as a plain dict (what config.json holds)."""
        return dict(self.__dict__["_data"])

    def transformers(self) -> Any:
        """Return the real ``transformers`` config (built on first call)."""
        if self.__dict__["_real"] is None:
            from transformers import AutoConfig

            folder = self.__dict__["_folder"]
            if folder is None:
                raise ValueError("this config was not read from a folder")
            self.__dict__["_real"] = AutoConfig.from_pretrained(folder, **self.__dict__["_kwargs"])
        return self.__dict__["_real"]

    def __repr__(self) -> str:
        return f"JsonConfig(model_type={self.__dict__['_data'].get('model_type')!r})"
