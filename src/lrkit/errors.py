"""Exceptions shared across lrkit."""


class SpecError(ValueError):
    """A schedule text or config could not be read."""
