"""Activations: what MLP neurons do on real text, read with read-only hooks.

- :func:`read_activations` reads chosen neurons' hidden activations (``act(gate) * up``,
  the down projection's input, signed) on every token of some texts, on any backend the
  interventions take (torch hooks, TransformerLens, nnsight);
- :func:`top_contexts` lists a neuron's strongest (or weakest) tokens in context, as
  Neuronpedia does; :func:`contexts_from` does the same from activations already read;
- :func:`auroc` and :func:`separation` say how well a neuron tells concept text from
  unrelated text.

See ``docs/activations.md``.
"""

from .contexts import Context, TopContexts, contexts_from, top_contexts
from .read import Activations, Window, read_activations
from .stats import Separation, auroc, separation
from .texts import read_texts, split_paragraphs

__all__ = [
    "Activations",
    "Context",
    "Separation",
    "TopContexts",
    "Window",
    "auroc",
    "contexts_from",
    "read_activations",
    "read_texts",
    "separation",
    "split_paragraphs",
    "top_contexts",
]
