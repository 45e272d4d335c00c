"""Canonicalization passes: bring any exporter's graph into the form later passes expect.

Importing this package registers the passes and the ``canonicalize`` alias. The alias order
follows what each pass needs and what it may undo:

1. ``infer-shapes``      - types for the folder's per-op shortcuts (Cast, Reshape, Shape);
2. ``lift-constants``    - so the folder and every later pass see weights as initializers;
3. ``fold-constants``    - may create Constant/Identity nodes and dead producers, hence:
4. ``lift-constants``    - again, re-establishing CONSTANTS_LIFTED for fold-batchnorm;
5. ``eliminate-identity`` - before BN folding: ``Conv -> Identity -> BN`` becomes foldable;
6. ``eliminate-dead-code`` - before BN folding: a Conv whose other consumer was dead feeds BN alone;
7. ``fold-batchnorm``    - preserves every fact above (it deletes the initializers it replaces);
8. ``topological-sort``  - cheap, and guarantees the order for the backend;
9. ``infer-shapes``      - shapes of everything the folder created.
"""

from compiler.pass_base import register_alias
from passes.canonicalize import (
    eliminate_dead_code,
    eliminate_identity,
    fold_batchnorm,
    fold_constants,
    infer_shapes,
    lift_constants,
    topological_sort,
)

__all__ = [
    "eliminate_dead_code",
    "eliminate_identity",
    "fold_batchnorm",
    "fold_constants",
    "infer_shapes",
    "lift_constants",
    "topological_sort",
]

CANONICALIZE = [
    "infer-shapes",
    "lift-constants",
    "fold-constants",
    "lift-constants",
    "eliminate-identity",
    "eliminate-dead-code",
    "fold-batchnorm",
    "topological-sort",
    "infer-shapes",
]

register_alias("canonicalize", CANONICALIZE)
