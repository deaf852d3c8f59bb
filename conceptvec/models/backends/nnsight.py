"""The nnsight backend: the same hook functions, placed inside an nnsight trace.

nnsight runs the code of a ``with model.trace(...)`` block alongside the forward pass and
lets it read and overwrite module inputs and outputs. :meth:`NNsightBackend.place` must be
called inside a trace; it visits the hooked modules in forward order (layer by layer, the
MLP's output projection before the layer's output), as nnsight requires. nnsight is never
imported here: the model object brings its own envoys.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from conceptvec.errors import UnsupportedModelError

from .base import Backend, Fn, Place, Point, _nothing, is_library_object, walk

if TYPE_CHECKING:
    import torch

    from conceptvec.models.arch import ArchSpec


class NNsightBackend(Backend):
    """An nnsight ``LanguageModel`` / ``TransformersModel`` wrapping a ``transformers`` LM."""

    name = "nnsight"
    run_hint = "call run.apply() inside model.trace(...)"

    @classmethod
    def claims(cls, obj: object) -> bool:
        """Return True for any nnsight object (refused in :meth:`open` when it wraps no
        ``transformers`` model)."""
        return is_library_object(obj, "nnsight")

    @classmethod
    def open(cls, obj: Any) -> Backend:
        """Return the backend over an nnsight model, or raise for other nnsight objects."""
        hf = obj.__dict__.get("_module") or obj.__dict__.get("_model")
        if hf is None or not hasattr(obj, "trace"):
            raise UnsupportedModelError(
                f"cannot use an nnsight {type(obj).__name__}: pass a LanguageModel or "
                "TransformersModel wrapping a transformers causal LM"
            )
        return cls(obj, hf, getattr(obj, "tokenizer", None))

    def point(self, spec: ArchSpec, layer: int, kind: Point) -> str:
        """Return the dotted module name whose input (MLP) or output (residual) is traced."""
        base = f"{spec.layers_module}.{layer}"
        return f"{base}.{spec.down_module}" if kind == "mlp" else base

    def hooks(self, spec: ArchSpec, mlp: dict[int, Fn], resid: dict[int, Fn]) -> Any:
        """Return a no-op: nnsight edits are placed inside its trace (:meth:`place`)."""
        del spec, mlp, resid
        return nullcontext()

    def place(self, spec: ArchSpec, mlp: dict[int, Fn], resid: dict[int, Fn]) -> None:
        """Overwrite the traced model's MLP activations and layer outputs with what the
        functions return, layer by layer in forward order."""
        for layer in sorted(set(mlp) | set(resid)):
            block = walk(self.obj, f"{spec.layers_module}.{layer}")
            if layer in mlp:
                down = walk(block, spec.down_module)
                down.input = mlp[layer](down.input)
            if layer in resid:
                output = block.output
                if isinstance(output, tuple):  # older transformers: (hidden_states, ...)
                    block.output = (resid[layer](output[0]),) + tuple(output[1:])
                else:
                    block.output = resid[layer](output)

    def logits(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None, place: Place = _nothing
    ) -> Any:
        """Return the logits of one trace with ``place()`` inside it."""
        kwargs = {} if mask is None else {"attention_mask": mask}
        with self.obj.trace(ids, **kwargs):
            place()
            out = self.obj.output.logits.save()
        return out

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None, place: Place = _nothing
    ) -> None:
        """Run one trace with ``place()`` inside it, saving nothing."""
        kwargs = {} if mask is None else {"attention_mask": mask}
        with self.obj.trace(ids, **kwargs):
            place()

    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        mask: torch.Tensor,
        pad: int | None,
        place: Place = _nothing,
    ) -> torch.Tensor:
        """Return greedy continuations, with ``place()`` run at every step."""
        inputs = {"input_ids": ids, "attention_mask": mask}
        with self.obj.generate(
            inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
        ) as tracer:
            for _step in tracer.iter[:max_new_tokens]:
                place()
            out = tracer.result.save()
        return out[:, ids.shape[1] :]
