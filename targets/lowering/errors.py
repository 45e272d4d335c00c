"""Turn exceptions raised inside TVM into edgekiln's one-line user errors.

TVM's messages are long (C++ back-traces, Python frames, the offending IR). The user needs one line
that says which lowering step failed and TVM's own reason; the full exception stays attached as
``__cause__`` for ``--debug`` style tracebacks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from compiler.errors import EdgekilnError, LoweringError

_MAX_REASON = 400  # characters of TVM's reason kept in the one-line message


def one_line(exc: BaseException) -> str:
    """The most informative single line of ``exc``: its type and the first line of its message
    that is not back-trace noise, truncated to a readable length."""
    lines = [line.strip() for line in str(exc).splitlines()]
    noise = ("Traceback", "File ", "#", "^", "Stack trace", "Error converting operator")
    reason = next((line for line in lines if line and not line.startswith(noise)), "")
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 3] + "..."
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


@contextlib.contextmanager
def lowering_step(step: str, subject: str = "") -> Iterator[None]:
    """Run a block as lowering step ``step``; a non-edgekiln exception becomes a LoweringError.

    ``subject`` (e.g. the model or target name) is added to the message when given. Edgekiln's own
    errors (UnsupportedModelError, OptionError) pass through untouched: they are already clear.
    """
    try:
        yield
    except EdgekilnError:
        raise
    except Exception as exc:  # TVM raises RuntimeError, ValueError, TVMError, AssertionError...
        where = f" ({subject})" if subject else ""
        raise LoweringError(f"TVM {step} failed{where}: {one_line(exc)}") from exc
