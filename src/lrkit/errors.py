"""Exceptions shared across lrkit."""


class SpecError(ValueError):
    """A schedule text or config could not be read."""


class NonFiniteGradientError(FloatingPointError):
    """An optimizer step met a NaN or Inf gradient (with ``nonfinite="raise"``)."""


class TargetError(ValueError):
    """A TARGET or optimizer text that cannot be turned into what it names."""
