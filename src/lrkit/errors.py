"""Exceptions shared across lrkit, and where its warnings point."""
import os
import sys

_LRKIT = os.path.dirname(os.path.abspath(__file__)) + os.sep


class SpecError(ValueError):
    """A schedule text or config could not be read."""


class NonFiniteGradientError(FloatingPointError):
    """An optimizer step met a NaN or Inf gradient (with ``nonfinite="raise"``)."""


class TargetError(ValueError):
    """A TARGET or optimizer text that cannot be turned into what it names."""


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by the caller of this function that
    points at the user's call: the first frame whose file lies outside the lrkit and torch
    packages, whichever path (kernel or reference, hooks, torch's step wrappers) led there.
    """
    # the packages' directories, not a name in the path: a checkout or a script folder
    # that happens to be called "lrkit" or "torch" is still the user's
    torch = sys.modules.get("torch")
    internal = (_LRKIT,) + ((os.path.dirname(torch.__file__) + os.sep,) if torch else ())
    frame, level = sys._getframe(1), 1
    while frame is not None:
        if not os.path.abspath(frame.f_code.co_filename).startswith(internal):
            return level
        frame, level = frame.f_back, level + 1
    return 1
