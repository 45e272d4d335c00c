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

# Integer transformer kernels (passes/quantize: I-BERT i-GELU / i-exp Softmax / integer LayerNorm,
# activation x activation MatMul, constant scale/Add) on small models: the largest error of the
# integer-only output against fp32, as a fraction of the fp32 output's range (8-bit activations
# alone cost ~1/255 per requantization; the I-BERT polynomials add up to ~1-2% of the range).
QUANT_KERNEL_MAX_ERROR_OF_RANGE = 0.05
# The zoo transformer at int8 (integer-only) against fp32 on its calibration tokens: worst
# per-batch cosine of the logits, and mean per-token top-1 agreement.
QUANT_TRANSFORMER_MIN_COSINE = 0.999
QUANT_TRANSFORMER_MIN_TOP1_AGREEMENT = 0.95

# Channel pruning is exact when the pruned channels are zeroed first (DESIGN.md): the zeroed model
# and the pruned model differ only in the order/count of zero terms in each accumulation.
PRUNE_ZEROED = FP32_REWRITE

# Low-rank (passes/lowrank): Eckart-Young says the relative weight error of a rank-k truncated SVD
# equals sqrt(sum of discarded s_i^2 / sum s_i^2); the factors are stored in float32, so the two
# agree to float32 rounding of the product, well inside this relative tolerance.
LOWRANK_EY_RTOL = 1e-6
# Closed-form output errors (computed from the input Gram in float64) against errors measured by
# running the factorized float32 model in ONNX Runtime: agreement up to float32 accumulation.
LOWRANK_ERROR_FORMULA_RTOL = 1e-3
# Accuracy budget of the low-rank passes on the bundled digits CNN, in top-1 percentage points,
# at the settings the test uses (the DESIGN's "<= 1 point top-1 agreement loss" goal).
LOWRANK_TOP1_DROP_POINTS = 1.0

# Packed int4 weights in the TVM artifact (targets/lowering/int4.py): compared with the same
# 4-bit codes in 8-bit containers, the library must shrink by at least this fraction of the weight
# count in bytes. Ideal is 0.5 (half a byte saved per weight); the unpack kernels and the per-call
# weight re-layout add a few KB of code per layer, which a weight-heavy test model keeps small.
INT4_ARTIFACT_MIN_SAVING_PER_WEIGHT = 0.4

# Hutchinson trace estimates (passes/quantize/hessian.py) against the exact trace of a small
# Hessian: the estimator's standard error is sqrt(2 (||H||_F^2 - sum_i H_ii^2) / samples) (Rademacher
# vectors), computed from the exact H; the estimate must be within this many standard errors
# (a two-sided normal tail of 6e-5; the test is seeded, so it is deterministic).
HUTCHINSON_STANDARD_ERRORS = 4.0
# "The ranking of layers is sensible": Spearman rank correlation between the Hessian estimate of the
# 4-bit sensitivity and the measured output-perturbation KL (the quantity the second-order Taylor
# term approximates) over ResNet-18's 21 layers (measured 0.98 with 2 samples x 4 inputs).
HESSIAN_VS_PERTURBATION_MIN_SPEARMAN = 0.8
