"""The test suite's tolerance table: the single source of numeric tolerances (no magic numbers).

Re-exports the compiler's policies so tests and the per-pass check in ``compile`` agree.
"""

from compiler.verify import TOLERANCES

EXACT = TOLERANCES["exact"]
FP32_REWRITE = TOLERANCES["fp32-rewrite"]
TVM_BACKEND = TOLERANCES["tvm-backend"]
LOSSY = TOLERANCES["lossy"]

# Quantized vs float is an accuracy budget, not an equivalence (DESIGN.md): the largest allowed
# drop in top-1 accuracy, in percentage points, of an 8-bit model against its fp32 original.
QUANT_TOP1_DROP_POINTS = 0.5
