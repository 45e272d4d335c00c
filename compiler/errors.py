"""Error types that reach the user as one clear line.

Every error a user can cause (bad file, bad option, unsupported model) is an :class:`EdgekilnError`.
The CLI prints ``error: <message>`` and exits with :attr:`EdgekilnError.exit_code`; anything else is a
bug in edgekiln and is shown with its traceback.
"""

from __future__ import annotations


class EdgekilnError(Exception):
    """A user-facing error. The message must name the file, node, option or pass at fault."""

    exit_code = 2


class InputModelError(EdgekilnError):
    """The input model cannot be read or is not a valid ONNX graph."""


class OptionError(EdgekilnError):
    """A command-line or API option is invalid (unknown target, bad shape, bad pipeline spec)."""


class UnsupportedModelError(EdgekilnError):
    """The model uses something edgekiln (or its backend) cannot compile, e.g. an unknown operator."""


class PassFailedError(EdgekilnError):
    """A pass raised or broke the graph. The message names the pass and those that ran before it."""

    exit_code = 3


class VerificationError(EdgekilnError):
    """A numeric check against ONNX Runtime failed; the message names the first diverging stage."""

    exit_code = 4


class LoweringError(EdgekilnError):
    """TVM could not import, build or export the model for the target."""

    exit_code = 5
