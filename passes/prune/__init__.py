"""Structured pruning: channel pruning over a dependency graph, least-squares repair, N:M sparsity.

Importing this package registers the passes ``prune-channels`` and ``sparsify-nm``.

Modules (one responsibility each):

- ``dependency``  which channels of which tensors are coupled (networkx view), and why a group
  cannot be pruned;
- ``importance``  one score per channel unit (L1/L2 filter norm, BatchNorm scale, activation energy);
- ``latency``     a group's estimated time as a function of its kept channels (``ctx.cost_model``);
- ``selection``   kept counts per group (uniform, global threshold, latency greedy), rounding;
- ``surgery``     the graph rewrite that deletes the chosen channels;
- ``reconstruct`` ridge least-squares re-fit of the consumers on calibration data;
- ``channels``    the ``prune-channels`` pass;
- ``sparsity``    the ``sparsify-nm`` pass (2:4).
"""

from passes.prune import (  # noqa: E402
    channels,
    dependency,
    importance,
    latency,
    reconstruct,
    selection,
    sparsity,
    surgery,
)

__all__ = ["channels", "dependency", "importance", "latency", "reconstruct", "selection", "sparsity", "surgery"]
