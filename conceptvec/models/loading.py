"""``load``: open a model from an alias, a hub id, a local folder, a GGUF file or a live object.

Opening is cheap: it reads the config and the weight files' headers (a GGUF is
memory-mapped); tensors are read one at a time when asked for. The torch model is built
only when :attr:`Model.hf` is used, and the tokenizer only when tokens are shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from conceptvec.errors import (
    ConceptvecError,
    CorruptWeightsError,
    ModelNotFoundError,
    NoWeightsError,
    UnsupportedArchitectureError,
    UnsupportedModelError,
)
from conceptvec.files import confine_folder, read_json
from conceptvec.types import Tokenizer

from .aliases import ALIASES, find_alias
from .arch import dims_from_config, spec_for_model_type, text_config
from .backends import unwrap
from .config import JsonConfig
from .gguf_cache import gguf_config, gguf_hf_model, gguf_tokenizer
from .model import Model, known_tokenizer, local_tokenizer_loader
from .readers import (
    INDEX_FILE,
    SINGLE_FILE,
    GGUFWeightReader,
    ModuleReader,
    SafetensorsReader,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "*.model",
    "chat_template*",
]


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        log.info(message)


def load(
    source: Any,
    *,
    tokenizer: Tokenizer | None = None,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    quiet: bool = False,
) -> Model:
    """Return a :class:`Model` for ``source``.

    ``source`` may be an alias (``smollm2-135m``, ``llama-3.1-8b``; see ``conceptvec
    aliases``), a Hugging Face hub id (``org/name``; read from the local cache, downloaded
    only when online and not cached), a local folder with ``config.json`` and safetensors, a
    ``.gguf`` file, or an already-loaded ``transformers`` model, TransformerLens
    ``TransformerBridge`` or nnsight ``LanguageModel``. ``dtype`` applies when the torch
    model is built; weight-only work reads tensors as stored.
    """
    if isinstance(source, Model):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return from_object(source, tokenizer=tokenizer)
    text = os.fspath(source)
    alias = find_alias(text)
    if alias is not None:
        if alias.locate is not None:
            path = alias.locate()
            _say(quiet, f"{alias.name} -> {path} ({alias.note})")
            return _from_gguf(path, name=alias.name, source="alias", dtype=dtype)
        _say(quiet, f"{alias.name} -> {alias.target} ({alias.note})")
        folder, rev = _hub_snapshot(alias.target, revision, quiet)
        return _from_folder(
            folder,
            name=alias.name,
            source="alias",
            revision=rev,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _from_gguf(path, name=text, source="gguf", dtype=dtype)
        if path.name == "config.json":
            path = path.parent
        else:
            raise ModelNotFoundError(
                f"{path} is a file but not a .gguf model; pass a .gguf file or a folder with "
                "config.json and safetensors"
            )
    if path.is_dir():
        return _from_folder(
            path, name=text, source="folder", dtype=dtype, trust_remote_code=trust_remote_code
        )
    looks_like_path = (
        text.startswith((".", "/", "~")) or text.count("/") > 1 or text.endswith(".gguf")
    )
    if looks_like_path:
        raise ModelNotFoundError(
            f"{text} does not exist; pass an existing folder or .gguf file, an alias "
            f"({', '.join(ALIASES)}) or a hub id (org/name)"
        )
    if HUB_ID.match(text):
        folder, rev = _hub_snapshot(text, revision, quiet)
        return _from_folder(
            folder,
            name=text,
            source="hub",
            revision=rev,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
    raise ModelNotFoundError(
        f"{text!r} is not an alias, an existing path or a hub id (org/name); aliases: "
        f"{', '.join(ALIASES)}"
    )


# ---------------------------------------------------------------------------- sources
def _from_folder(
    folder: Path,
    *,
    name: str,
    source: str,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
) -> Model:
    folder = Path(folder)
    # A Hugging Face cache snapshot links its files into the repo's blobs/ folder.
    root = folder.parent.parent if source in ("hub", "alias") else folder
    confine_folder(folder, root, CorruptWeightsError, "copy the file into the model folder")
    config_file = folder / "config.json"
    if not config_file.exists():
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            return _from_gguf(ggufs[0], name=name, source=source, dtype=dtype)
        what = f"{len(ggufs)} .gguf files (pass one of them)" if ggufs else "no weights"
        raise NoWeightsError(
            f"{folder} has no config.json and {what}; pass a folder with config.json and "
            "*.safetensors, or a .gguf file"
        )
    raw = read_json(config_file, NoWeightsError, "re-download it")
    if not isinstance(raw, dict) or not isinstance(raw.get("text_config") or {}, dict):
        raise UnsupportedArchitectureError(
            f"{config_file} holds a JSON {type(raw).__name__} where a config object belongs "
            "(with text_config, if any, an object too); re-download it"
        )
    model_type = (raw.get("text_config") or {}).get("model_type") or raw.get("model_type")
    spec = spec_for_model_type(str(model_type))
    reader = SafetensorsReader(folder, root=root)
    config = JsonConfig(raw, str(folder), trust_remote_code=trust_remote_code)
    missing = [k for k in ("vocab_size",) if not hasattr(text_config(config), k)]
    if missing or not any(hasattr(text_config(config), k) for k in ("hidden_size", "n_embd")):
        raise UnsupportedArchitectureError(
            f"{config_file} lacks {', '.join(missing) or 'hidden_size'}; it is not a complete "
            "causal-LM config (re-download it)"
        )

    def load_tokenizer():
        if not any((folder / f).exists() for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"{folder} has no tokenizer files")  # skip importing them
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)

    def load_hf():
        return hf_from_safetensors(folder, reader, dtype, trust_remote_code)

    return Model(
        name=name,
        spec=spec,
        config=config,
        reader=reader,
        source=source,
        location=str(folder),
        revision=revision,
        tokenizer_loader=load_tokenizer,
        hf_loader=load_hf,
    )


def _from_gguf(
    path: Path, *, name: str, source: str, dtype: torch.dtype | str | None = None
) -> Model:
    path = Path(path)
    reader = GGUFWeightReader(path)  # raises for an architecture without a spec
    spec = reader.spec
    try:
        config = gguf_config(path)
    except ConceptvecError:
        raise
    except Exception as e:
        raise NoWeightsError(
            f"transformers cannot read the config of {path.name} ({str(e).splitlines()[0]}); "
            "is the GGUF complete?"
        ) from None
    return Model(
        name=name,
        spec=spec,
        config=config,
        reader=reader,
        source=source,
        location=str(path),
        tokenizer_loader=lambda: gguf_tokenizer(path),
        hf_loader=lambda: gguf_hf_model(path, dtype),
    )


def from_object(
    obj: object, *, tokenizer: Tokenizer | None = None, changed_ok: bool = False
) -> Model:
    """Wrap a live HF, TransformerLens (bridge or HookedTransformer) or nnsight model without
    copying weights.

    Refuses an object whose library rewrote its weights in place (a TransformerBridge after
    ``enable_compatibility_mode()``): they are no longer the checkpoint's, so decoding them
    would give other tokens and scores. ``changed_ok`` lets interventions, which only run the
    model, through.
    """
    try:
        backend = unwrap(obj)
    except UnsupportedModelError as e:
        raise ModelNotFoundError(str(e)) from None
    changed = backend.weights_changed()
    if changed and not changed_ok:
        raise UnsupportedArchitectureError(changed)
    own = backend.own_weights(tokenizer)  # a classic HookedTransformer keeps its own weights
    if own is not None:
        return own
    hf = backend.hf
    tokenizer = tokenizer or backend.tokenizer
    config = getattr(hf, "config", None)
    if config is None or not hasattr(hf, "state_dict"):
        raise ModelNotFoundError(
            f"cannot use a {type(obj).__name__} as a model; pass an alias, path, hub id, a "
            "transformers PreTrainedModel, a TransformerBridge or an nnsight LanguageModel"
        )
    spec = spec_for_model_type(str(getattr(text_config(config), "model_type", None)))
    name = getattr(config, "_name_or_path", "") or type(hf).__name__
    loader = local_tokenizer_loader(name)
    known = known_tokenizer(hf)  # a module a Model built (load(m.hf)) keeps m's tokenizer
    if tokenizer is None and known is not None:
        tokenizer, loader = known[0], known[1] or loader

    return Model(
        name=name,
        spec=spec,
        config=config,
        reader=ModuleReader(hf),
        source="object",
        location="<in memory>",
        tokenizer=tokenizer,
        tokenizer_loader=None if tokenizer is not None else loader,
        hf_model=hf,
    )


def hf_from_safetensors(
    folder: Path,
    reader: SafetensorsReader,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Return the ``transformers`` causal LM of ``folder``, built from the same safetensors
    files ``reader`` reads (never a pickled ``.bin``, whatever else the folder holds)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_file = folder / "config.json"
    standard = (folder / INDEX_FILE).exists() or (folder / SINGLE_FILE).exists()
    try:
        if standard:  # transformers reads the same files; use_safetensors forbids a .bin
            with _no_load_report():  # what it reports, missing weights, we refuse below
                loaded = AutoModelForCausalLM.from_pretrained(
                    str(folder),
                    dtype=dtype or "auto",
                    trust_remote_code=trust_remote_code,
                    use_safetensors=True,
                    output_loading_info=True,
                )
            hf, info = cast("tuple[torch.nn.Module, dict[str, list[str]]]", loaded)
            _refuse_missing(folder, info.get("missing_keys") or ())
            return hf
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ConceptvecError:
        raise
    except Exception as e:  # transformers raises many types for configs it cannot read
        raise UnsupportedArchitectureError(
            f"transformers cannot read {config_file} ({str(e).splitlines()[0][:160]}); "
            "upgrade transformers, or check that config.json belongs to these weights"
        ) from None
    # Safetensors files under other names: load exactly the tensors the readers see.
    state = {key: reader.get(key) for key in model.state_dict() if reader.has(key)}
    try:
        result = model.load_state_dict(state, strict=False)
        model.tie_weights()
    except Exception as e:
        raise CorruptWeightsError(
            f"the weights in {folder} do not fit the model its config.json describes "
            f"({str(e).splitlines()[0][:160]}); re-download the checkpoint"
        ) from None
    tied = {"lm_head.weight"} if dims_from_config(model.config).tied else set()
    _refuse_missing(folder, [k for k in result.missing_keys if k not in tied])
    if dtype not in (None, "auto"):
        import torch

        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return model


@contextlib.contextmanager
def _no_load_report() -> Iterator[None]:
    """Drop transformers' multi-line LOAD REPORT warning inside the block: the errors it
    lists (missing or mismatched weights) end in conceptvec's own one-line error."""

    def keep(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _refuse_missing(folder: Path, missing: Iterable[str]) -> None:
    """Raise naming the weights the model needs that ``folder`` lacks (transformers would
    fill them with random values and run, silently, a different model)."""
    missing = sorted(missing)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CorruptWeightsError(
            f"{folder} lacks {len(missing)} weight(s) the model needs ({', '.join(missing[:3])}"
            f"{more}); the checkpoint is incomplete: re-download it"
        )


# ------------------------------------------------------------------------------- hub
def _hub_snapshot(repo_id: str, revision: str | None, quiet: bool) -> tuple[Path, str | None]:
    """Return (local snapshot folder, commit) for a hub repo: cache first, download if allowed."""
    from huggingface_hub import snapshot_download

    folder: str | None
    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_FILES, local_files_only=True
        )
    except Exception:
        folder = None
    if folder is None or not any(Path(folder).glob("*.safetensors")):
        if _offline():
            raise ModelNotFoundError(
                f"{repo_id} is not in the local Hugging Face cache and the hub is offline "
                "(HF_HUB_OFFLINE is set); download it on a machine with internet or pass a "
                "local folder"
            )
        _say(
            quiet, f"{repo_id} is not in the local cache; downloading it from the Hugging Face Hub"
        )
        try:
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
        except Exception as e:
            raise ModelNotFoundError(
                f"could not download {repo_id} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                "check the id, your network, and for gated models `hf auth login`"
            ) from None
    snapshot = Path(folder)
    if not any(snapshot.glob("*.safetensors")):
        raise NoWeightsError(
            f"{repo_id} has no safetensors weights; conceptvec never unpickles .bin files"
        )
    return snapshot, snapshot.name


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}
