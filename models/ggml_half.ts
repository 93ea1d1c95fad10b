/**
 * Scalar conversions between numbers and the 16-bit float formats GGML stores: IEEE half floats
 * (every block scale of the quantized formats, and F16 tensors) and bfloat16 (BF16 tensors). Shared
 * by the 32-element formats (ggml_quants.ts) and the K-quants (ggml_quants_k.ts).
 *
 * @module
 */

// One scratch cell per conversion direction: Float16Array does IEEE round-to-nearest-even and handles
// subnormals, infinities and NaN, so no bit-twiddling is needed here.
const f16Cell = new Float16Array(1);
const f16Bits = new Uint16Array(f16Cell.buffer);
const f32Cell = new Float32Array(1);
const f32Bits = new Uint32Array(f32Cell.buffer);

/**
 * Rounds a number to the nearest half float (ties to even) and returns its 16 bits.
 *
 * @param x The value.
 * @returns IEEE binary16 bits.
 * @example
 * ```ts
 * import { f32ToF16Bits } from "./ggml_half.ts";
 * f32ToF16Bits(1); // 0x3c00
 * ```
 */
export function f32ToF16Bits(x: number): number {
  f16Cell[0] = x;
  return f16Bits[0];
}

/**
 * The value of half-float bits.
 *
 * @param bits IEEE binary16 bits.
 * @returns The value (exact).
 * @example
 * ```ts
 * import { f16BitsToF32 } from "./ggml_half.ts";
 * f16BitsToF32(0x3c00); // 1
 * ```
 */
export function f16BitsToF32(bits: number): number {
  f16Bits[0] = bits;
  return f16Cell[0];
}

/**
 * The bits of the smallest half float at least `x` (for x >= 0): a scale rounded this way never
 * makes a block's range too small for its codes, where round-to-nearest could clip the largest one.
 *
 * @param x A non-negative value.
 * @returns IEEE binary16 bits of a value >= x (infinity above 65504).
 * @example
 * ```ts
 * import { f16BitsToF32, f16CeilBits } from "./ggml_half.ts";
 * f16BitsToF32(f16CeilBits(1 + 2 ** -12)); // 1 + 2^-10
 * ```
 */
export function f16CeilBits(x: number): number {
  const bits = f32ToF16Bits(x);
  // Positive half floats are ordered like their bits, so the next one up is bits + 1.
  return f16BitsToF32(bits) < x ? bits + 1 : bits;
}

/**
 * Rounds a number to bfloat16 (float32 first, then ties to even on the upper 16 bits; NaN stays a
 * quiet NaN), as PyTorch and ggml do.
 *
 * @param x The value.
 * @returns bfloat16 bits.
 * @example
 * ```ts
 * import { f32ToBf16Bits } from "./ggml_half.ts";
 * f32ToBf16Bits(1); // 0x3f80
 * ```
 */
export function f32ToBf16Bits(x: number): number {
  f32Cell[0] = x;
  const bits = f32Bits[0];
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * The value of bfloat16 bits.
 *
 * @param bits bfloat16 bits.
 * @returns The value (exact).
 * @example
 * ```ts
 * import { bf16BitsToF32 } from "./ggml_half.ts";
 * bf16BitsToF32(0x3f80); // 1
 * ```
 */
export function bf16BitsToF32(bits: number): number {
  f32Bits[0] = (bits & 0xffff) << 16;
  return f32Cell[0];
}
