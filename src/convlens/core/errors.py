"""The errors every layer raises about models (pictures raise
:class:`~convlens.core.images.ImageError`, names
:class:`~convlens.core.naming.UnknownNameError`)."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model source that cannot be loaded; the message says what was expected."""


class PickleRefusedError(ModelLoadError):
    """The file holds pickled Python objects and the user did not opt in."""


class WrongTaskError(ValueError):
    """A classifier where a detector was expected, or the reverse; the message says which."""
