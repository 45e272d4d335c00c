"""Low-rank rewrites: truncated SVD of Gemm/MatMul weights, Tucker-2 / channel SVD of Conv kernels.

Importing this package registers ``factorize-gemm`` and ``factorize-conv``. Modules, one job each:

- ``decompose``     the linear algebra (plain and data-aware SVD, Tucker-2, error of every rank);
- ``rank``          rank selection: fixed, energy threshold, or ``auto`` by the target's cost model;
- ``cost``          estimated time of a dense or factorized layer from ``ctx.cost_model``;
- (``compiler.layer_grams`` gives the input Gram matrices of the candidate layers);
- ``_graph``        small IR helpers for the rewrites;
- ``gemm``          the ``factorize-gemm`` pass;
- ``conv``          the ``factorize-conv`` pass.
"""

from passes.lowrank import conv, gemm

__all__ = ["conv", "gemm"]
