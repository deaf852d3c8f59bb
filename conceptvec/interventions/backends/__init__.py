"""The backends an intervention runs on, one module per library they wrap.

- :mod:`.torch`: forward hooks on a ``transformers`` model (plain torch);
- :mod:`.transformer_lens`: TransformerLens hook points (``TransformerBridge`` or
  ``HookedTransformer``);
- :mod:`.nnsight`: edits placed inside an nnsight trace.

Which one runs is decided by the model object (:func:`conceptvec.interventions.resolve`).
None of them imports the library it is named after: the model object brings its methods.
"""
