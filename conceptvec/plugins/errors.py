"""The error the plugins raise for problems a user can fix (a :class:`ConceptvecError`)."""

from __future__ import annotations

from conceptvec.errors import ConceptvecError


class PluginError(ConceptvecError):
    """A plugin asked to do something it cannot: a missing concept or harness checkout, an
    output that is not ours to replace, or a harness config without a required key."""
