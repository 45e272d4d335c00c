"""Built-in passes. Importing this package registers them with ``compiler.pass_base``."""

from passes import canonicalize  # noqa: F401
from passes import quantize  # noqa: F401
from passes import prune  # noqa: F401
from passes import lowrank  # noqa: F401
