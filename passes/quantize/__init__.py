"""Integer-only quantization (HAWQ-V3 dyadic form): calibrate, choose qparams, rewrite, export QDQ.

The integer-only form (the contract between the rewrite pass, the numpy reference interpreter
``compiler/reference.py``, ONNX Runtime and the TVM converters in ``targets/lowering``)
=======================================================================================

Only standard ONNX ops (opset 17), so ONNX Runtime runs the graph unchanged. No float op between
the input ``QuantizeLinear`` and the output ``DequantizeLinear`` except in *float islands* (below).

Tensors
    activations  uint8, asymmetric, per tensor: real = scale * (q - zp), zp in [0, 255]
                 (int8 symmetric when the target policy asks for it)
    weights      symmetric, per output channel, codes w_q in [-127, 127] (never -128). Stored
                 next to uint8 activations as uint8 w_q + 128 with weight zero point 128
                 (offset binary: ONNX Runtime's u8 x s8 kernels on x86 without VNNI add product
                 pairs in saturating int16, its u8 x u8 kernels are exact); next to int8
                 activations as int8 w_q without zero point
    bias         int32 = round(b / (s_in * s_w[c])), zero point 0
    accumulator  int32

Entry / exit
    x_q = QuantizeLinear(x, s_x, zp_x)                       float -> uint8 (standard rounding)
    y   = DequantizeLinear(y_q, s_y, zp_y)                    uint8 -> float

Conv / Gemm / MatMul with constant weights
    acc = ConvInteger(x_q, W_u8, zp_x, 128)                   (MatMulInteger for Gemm/MatMul;
                                                               Gemm weights stored [K, N];
                                                               int8 activations: (x_q, W_q, 0))
    acc = Add(acc, B_q)                                       int32 bias, shape [C,1,1] / [N]
    y_q = Requantize(acc)                                     see below

Requantize(acc) by the dyadic multiplier M / 2^S (per output channel), round half up:
    r          = s_in * s_w[c] / s_out                        real rescale factor
    M, S       : M integer in [2^29, 2^30), S integer in [1, 62], |r - M/2^S| minimal; for
                 conv/matmul layers S is capped at 22 when M keeps >= 8 bits (qparams.narrow_dyadic:
                 relative error <= 2^-8, and the chain then fits int32 lanes when lowered)
    y          = clip(floor((acc * M + 2^(S-1)) / 2^S) + zp_out, LO, HI)
  as ONNX (shift only exists for unsigned types in ONNX, so the value is made non-negative first
  with an offset 2^62, which is exact because |acc * M| < 2^31 * 2^30 = 2^61):
    a = Cast(acc, to=INT64)
    p = Mul(a, M)                                             M: int64, per channel ([C,1,1] or [N])
    p = Add(p, R)                                             R = 2^(S-1) + 2^62   (int64)
    u = Cast(p, to=UINT64)
    u = BitShift(u, S, direction="RIGHT")                     S: uint64
    q = Cast(u, to=INT64)
    q = Add(q, Z)                                             Z = zp_out - 2^(62-S)  (int64)
    q = Clip(q, LO, HI)                                       int64 scalars
    y_q = Cast(q, to=UINT8)
  Relu / Relu6 / Clip after the producer are folded into LO/HI (LO = max(0, quant(lo)),
  HI = min(255, quant(hi))); the Relu node disappears.

Residual Add (and Sum of two quantized tensors), per-branch rescale to the output scale:
    a = Sub(Cast(a_q, INT64), zp_a) ; b = Sub(Cast(b_q, INT64), zp_b)
    p = Add(Mul(a, M_a), Mul(b, M_b))                          one shared S, M_a/M_b from
                                                                s_a/s_out and s_b/s_out
    then "p = Add(p, R)" onward exactly as Requantize.

Concat: each input is requantized to the output (scale, zp) unless it already has them; then
    Concat on uint8.
MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity: run on uint8 directly
    (scale and zp pass through).
GlobalAveragePool: s = ReduceSum(Cast(x_q, INT32), axes=[2,3], keepdims=1)
    then Requantize of (s - N * zp_x) with r = s_x / (N * s_out).

Float islands: an op without an integer form (Sigmoid, Tanh, a Mul of two activations, ...) is
    wrapped DequantizeLinear -> float op -> QuantizeLinear, and the report lists it with the reason.
    Only graphs without islands are claimed bit-exact across runtimes.

Transformer patterns (all per tensor; c = q - zp is the centered code, int64)
----------------------------------------------------------------------------
Split, Slice, Gather (on the activation): run on the 8-bit tensor; every output keeps (scale, zp).

Embedding Gather(T, idx) with a constant float table T and dynamic integer indices:
    Gather(T_q, idx) with T_q = QuantizeLinear-rounding of T at the output's (s_y, zp_y), done at
    compile time (the gathered codes are the output activation; no QuantizeLinear at run time).

MatMul of two activations (attention Q K^T and A V), optionally followed by Mul/Div by a constant
scalar c (folded, e.g. 1/sqrt(d)):
    acc = MatMulInteger(a_q, b_q, zp_a, zp_b)                          int32
    y_q = Requantize(acc) with r = s_a * s_b * c / s_out               (M signed when c < 0)

Mul / Div by a constant scalar c (not folded):  the one-branch rescale of the residual Add with
    the signed multiplier M ~ c * s_x / s_out * 2^S.
Add of a constant tensor C (position embedding): the residual-Add rescale with the constant's branch
    precomputed exactly at the pre-shift scale:
    p = Mul(c_x, M_x) + K,  K = round(C / s_out * 2^S) (int64, C's shape),  then the Requantize tail.

Wide requantization (int64 accumulators with a known bound |acc| <= B): M has
    b = min(30, 61 - bitlength(B)) bits (|M| in [2^(b-1), 2^b)), so |acc * M| < 2^61 and the
    Requantize tail (offset 2^62) is unchanged; relative error <= 2^-b, b >= 16 required.

I-BERT kernels (Kim et al. 2021), int64 throughout. ONNX integer Div truncates toward zero, so every
division below has a non-negative dividend and a positive divisor (then it is floor); BitShift is
only used on uint64; Min/Clip only see values < 2^31 (ONNX Runtime 1.31 mis-orders int64 values in
[2^31, 2^32) there). "refine by K" multiplies a centered code by the integer K = max(1, ceil(S 2^F))
so that the kernel's fixed-point scale S / K is <= 2^-F: exact, and the kernel's constants (ln2/S,
b/S) then round with relative error ~2^-F instead of ~S.

  i-GELU, GELU(x) = x/2 (1 + erf(x / sqrt2)) (the Gelu op, or torch's Div/Erf/Add/Mul/Mul chain):
    erf(u) ~ sgn(u) [1 - a (min(|u|, b) - b)^2],  a = 0.2888, b = 1.769
    input c (scale S); erf argument scale S_r = S / (sqrt2 K), K refines to F = 10 bits
    T = round(b / S_r), S_L = a S_r^2, ONE = round(1 / S_L)
      A = Abs(c);  u = Min(A K, T) - T;  L = ONE - u*u                 (L S_L ~ |erf|, L > 0)
      h = A L + c ONE                                                   = c (ONE + sgn(c) L)
      y_q = WideRequantize(h, r = S S_L / (2 s_y), B = 2 |c|max ONE)

  i-exp Softmax along an axis of static size N (input scale S, output (s_y, zp_y)):
    exp(p) ~ 0.3585 (p + 1.353)^2 + 0.344 on p in (-ln2, 0];  x - max = -ln2 z + p
    S_f = S / K (K refines to F = 12 bits); Q = round(ln2 / S_f), Bq = round(1.353 / S_f),
    Cq = round(0.344 / (0.3585 S_f^2))
      c = Cast(x_q, INT64); t = (c - ReduceMax(c)) * (-K)                >= 0 (zp cancels)
      z = Div(t, Q)   (floor);  p = z Q - t                             in (-Q, 0]
      L = (p + Bq)^2 + Cq                                               > 0, scale 0.3585 S_f^2
      e = Cast(BitShift(Cast(L, UINT64), Cast(Clip(z, 0, 63), UINT64), RIGHT), INT64)   = L 2^-z
      D = ReduceSum(e)                                                  >= L(0) > 0
      y = Div(e Cn + D 2^(P-1), D 2^P) = round(e / (D s_y)),  Cn = round(2^P / s_y)
      y_q = Clip(y + zp_y, qmin, qmax) -> 8 bits
    P <= 32 is the largest with L_max (Cn + N 2^(P-1)) < 2^62, L_max = Bq^2 + Cq.

  Integer LayerNorm over the last axes (N elements; input scale S; gamma, beta constant):
      c = Cast(x_q, INT64);  d = N c - ReduceSum(c)                     = N (c - mean), exact
      V = ReduceSum(d*d) + E,  E = max(1, round(eps N^3 / S^2))        (var + eps) N^3 / S^2
      r = floor(sqrt(V)) by Newton from x_0 = isqrt(V_max) + 1, V_max = N^3 (qrange/2)^2 + E:
          x <- Min(x, Div(x + Div(V, x), 2)), bitlength(x_0) + 2 steps (unrolled; each step at
          least halves x - sqrt(V), the Min stops the r / r+1 oscillation)
      (x - mean) / sqrt(var + eps) = d sqrt(N) / r   and   |d| <= r
      G = round(gamma sqrt(N) / s_y 2^P),  Bo = round(beta / s_y 2^P) + 2^(P-1) + O 2^P,
      O = ceil(max|gamma sqrt(N)/s_y| + max|beta/s_y|) + 1 keeps the dividend >= 0
      y = Div(d G + r Bo, r 2^P) - O                                    = round(y_real / s_y)
      y_q = Clip(y + zp_y, qmin, qmax) -> 8 bits
    P <= 40 is the largest with x_0 2^P (2 O + 2) < 2^62.
  When the scales would push a bound past int64 (degenerate calibration ranges), the op stays a
  float island and the report says why.
"""

from passes.quantize import (  # noqa: E402  (imports register the passes; the docstring above is the spec)
    bias_correction,
    calibrate,
    emit,
    ibert,
    integer,
    layers,
    mixed,
    observers,
    qdq,
    qparams,
    sensitivity,
)

__all__ = ["bias_correction", "calibrate", "emit", "ibert", "integer", "layers", "mixed", "observers", "qdq", "qparams", "sensitivity"]
