"""Integer-only quantization (HAWQ-V3 dyadic form): calibrate, choose qparams, rewrite, export QDQ.

The integer-only form (the contract between the rewrite pass, the numpy reference interpreter
``compiler/reference.py``, ONNX Runtime and the TVM converters in ``targets/lowering``)
=======================================================================================

Only standard ONNX ops (opset 17), so ONNX Runtime runs the graph unchanged. No float op between
the input ``QuantizeLinear`` and the output ``DequantizeLinear`` except in *float islands* (below).

Tensors
    activations  uint8, asymmetric, per tensor: real = scale * (q - zp), zp in [0, 255]
                 (int8 symmetric when the target policy asks for it)
    weights      int8, symmetric, per output channel, range [-127, 127] (never -128, so the
                 u8 x s8 pairwise sums of VNNI cannot saturate)
    bias         int32 = round(b / (s_in * s_w[c])), zero point 0
    accumulator  int32

Entry / exit
    x_q = QuantizeLinear(x, s_x, zp_x)                       float -> uint8 (standard rounding)
    y   = DequantizeLinear(y_q, s_y, zp_y)                    uint8 -> float

Conv / Gemm / MatMul with constant weights
    acc = ConvInteger(x_q, W_q, zp_x)                         (MatMulInteger for Gemm/MatMul;
                                                               Gemm weights stored [K, N])
    acc = Add(acc, B_q)                                       int32 bias, shape [C,1,1] / [N]
    y_q = Requantize(acc)                                     see below

Requantize(acc) by the dyadic multiplier M / 2^S (per output channel), round half up:
    r          = s_in * s_w[c] / s_out                        real rescale factor
    M, S       : M integer in [2^29, 2^30), S integer in [1, 62], |r - M/2^S| minimal
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

Float islands: an op without an integer form (Softmax, LayerNormalization, Gelu, ...) is wrapped
    DequantizeLinear -> float op -> QuantizeLinear, and the report lists it with the reason.
    Only graphs without islands are claimed bit-exact across runtimes.
"""

from passes.quantize import (  # noqa: E402  (imports register the passes; the docstring above is the spec)
    bias_correction,
    calibrate,
    emit,
    integer,
    layers,
    observers,
    qdq,
    qparams,
)

__all__ = ["bias_correction", "calibrate", "emit", "integer", "layers", "observers", "qdq", "qparams"]
