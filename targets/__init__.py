"""Targets: what a board can do (data in specs/*.toml), its cost model, and how to lower to it.

Only ``targets.lowering`` imports TVM; importing this package is cheap.
"""

from targets.registry import Target, get_target, list_targets

__all__ = ["Target", "get_target", "list_targets"]
