"""The one exception family conceptvec raises for problems a user can fix.

Every message is one line: what was wrong, then what to do. The CLI prints it without a
traceback and exits non-zero; Python callers can catch :class:`ConceptvecError`.
"""

from __future__ import annotations


class ConceptvecError(Exception):
    """Base class: a problem with the user's input or environment, with a fix in the message."""


class ModelNotFoundError(ConceptvecError):
    """An alias, path or hub id that does not resolve to a model."""


class NoWeightsError(ConceptvecError):
    """A folder or repository that has no readable weights (safetensors or GGUF)."""


class UnsupportedArchitectureError(ConceptvecError):
    """A model whose architecture has no spec in :mod:`conceptvec.models.arch`."""


class CorruptWeightsError(ConceptvecError):
    """A truncated or damaged safetensors or GGUF file."""


class NeuronOutOfRangeError(ConceptvecError, IndexError):
    """A layer or neuron index outside the model's dimensions."""


class BadNeuronIdError(ConceptvecError, ValueError):
    """A neuron id string that does not parse (expected ``L12.345``)."""


class AtlasError(ConceptvecError):
    """An atlas folder that cannot be written, resumed, read or compared as asked."""


class BadLayersError(AtlasError, ValueError):
    """A layer list (``"0-3,7"``) that cannot be read."""


class CorruptAtlasError(AtlasError):
    """An atlas shard or manifest that does not match its recorded hash or schema."""


class BadInterventionError(ConceptvecError, ValueError):
    """An intervention that cannot be applied as written: a non-finite value, a malformed
    ``L.N=VALUE``, an unknown position set or a vector of the wrong size."""


class UnsupportedModelError(ConceptvecError, TypeError):
    """A model object that interventions cannot hook (not HF, TransformerLens or nnsight)."""


class HookNeverFiredError(ConceptvecError, RuntimeError):
    """An intervention whose hook never fired (or never matched a token) inside its block."""


class BadConceptFileError(ConceptvecError, ValueError):
    """A concepts file (ConceptVectors JSON) that cannot be read or written as asked."""


class BadTextError(ConceptvecError, ValueError):
    """Texts that cannot be read as asked: a missing, empty or malformed text file, an empty
    list of texts, or activations asked for a neuron that was not read."""


class InterventionInUseError(BadInterventionError, RuntimeError):
    """An intervention entered twice, or a model edited from two threads at once."""


class EvaluationError(ConceptvecError, ValueError):
    """Checkpoints or concepts that cannot be compared as asked (``conceptvec eval``)."""


class BuildError(ConceptvecError, ValueError):
    """A concepts build that cannot start or resume as asked."""


class ConceptSearchError(ConceptvecError, ValueError):
    """A concept search that cannot run as asked (no QA to validate with, bad settings)."""


class ConceptTokensError(ConceptvecError, ValueError):
    """A concept name that matches no token of the model's vocabulary."""


class UnlearningError(ConceptvecError, ValueError):
    """An unlearning run that cannot start or finish as asked (method, scope, data, model)."""


class PluginError(ConceptvecError):
    """A plugin asked to do something it cannot: a missing concept or harness checkout, an
    output that is not ours to replace, or a harness config without a required key."""


class PluginImportError(PluginError, ImportError):
    """A plugin module (``--plugin`` or an entry point) that cannot be imported."""


class BadChatTemplateError(ConceptvecError, ValueError):
    """A model's chat template that fails, or breaks the size or time limit, when rendered."""


def listing(names: list[str], limit: int = 8) -> str:
    """Return ``names`` comma-separated for an error message: the first ``limit``, then
    ``... (N more)`` when some were left out."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"
