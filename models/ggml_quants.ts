/**
 * TypeScript quantizers and dequantizers for the GGML weight types sparrow computes with: F32, F16,
 * BF16, Q8_0, Q4_0 and Q4_1. Quantizers round to nearest exactly as ggml's reference
 * (`quantize_row_*_ref`) quantizers do, in float32 arithmetic, so a row quantized here has the bytes
 * llama.cpp would write for it. Dequantizers can write float64, where every Q4_1 value q*d + m is
 * exact, which is what the float64 reference forward (reference_forward.ts) needs.
 *
 * Block layouts (little-endian, ggml's structs; scales are IEEE half floats):
 * - Q4_0: 32 elements in 18 bytes `{d: f16, qs: u8[16]}`: element j (j < 16) is the low nibble of
 *   qs[j], element j + 16 its high nibble; x = (q - 8) * d.
 * - Q4_1: 32 elements in 20 bytes `{d: f16, m: f16, qs: u8[16]}`, nibbles as Q4_0; x = q * d + m.
 * - Q8_0: 32 elements in 34 bytes `{d: f16, qs: i8[32]}`; x = q * d.
 * - F16 / BF16: one half float / the upper 16 bits of a float32 per element.
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";
import { ggmlType, ggmlTypeName } from "../core/gguf_types.ts";

/** GGML type ids of the formats this module handles. */
export const QuantType = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q8_0: 8, BF16: 30 } as const;
/** One of the {@link QuantType} ids. */
export type QuantType = typeof QuantType[keyof typeof QuantType];

/** Elements per block of the 32-element formats. */
export const qk = 32;

const supported: ReadonlySet<number> = new Set(Object.values(QuantType));

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
 * import { f32ToF16Bits } from "./ggml_quants.ts";
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
 * import { f16BitsToF32 } from "./ggml_quants.ts";
 * f16BitsToF32(0x3c00); // 1
 * ```
 */
export function f16BitsToF32(bits: number): number {
  f16Bits[0] = bits;
  return f16Cell[0];
}

/**
 * Rounds a number to bfloat16 (float32 first, then ties to even on the upper 16 bits; NaN stays a
 * quiet NaN), as PyTorch and ggml do.
 *
 * @param x The value.
 * @returns bfloat16 bits.
 * @example
 * ```ts
 * import { f32ToBf16Bits } from "./ggml_quants.ts";
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
 * import { bf16BitsToF32 } from "./ggml_quants.ts";
 * bf16BitsToF32(0x3f80); // 1
 * ```
 */
export function bf16BitsToF32(bits: number): number {
  f32Bits[0] = (bits & 0xffff) << 16;
  return f32Cell[0];
}

function checkType(type: number): void {
  if (!supported.has(type)) {
    throw new SparrowError(
      "unsupported",
      `GGML type ${ggmlTypeName(type)} is not one of F32, F16, BF16, Q8_0, Q4_0, Q4_1`,
    );
  }
}

/**
 * Bytes `n` elements of `type` take.
 *
 * @param type A {@link QuantType} id.
 * @param n Element count, a whole number of blocks.
 * @returns The byte count.
 * @throws {SparrowError} `unsupported` for another type, `invalid_argument` when `n` is not whole blocks.
 * @example
 * ```ts
 * import { QuantType, quantizedBytes } from "./ggml_quants.ts";
 * quantizedBytes(QuantType.Q4_0, 64); // 36
 * ```
 */
export function quantizedBytes(type: number, n: number): number {
  checkType(type);
  const info = ggmlType(type)!;
  if (!Number.isInteger(n) || n < 0 || n % info.blockElems !== 0) {
    throw new SparrowError(
      "invalid_argument",
      `${n} elements are not a whole number of ${info.name} blocks of ${info.blockElems}`,
    );
  }
  return (n / info.blockElems) * info.blockBytes;
}

const fround = Math.fround;

/** C's roundf: halves away from zero (Math.round sends -2.5 to -2). */
function roundAway(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

function quantizeQ4_0(x: ArrayLike<number>, out: DataView, blocks: number): void {
  for (let b = 0; b < blocks; b++) {
    const base = b * qk;
    // The signed value of largest magnitude maps to -8, so the full range -8..7 is used.
    let amax = 0;
    let max = 0;
    for (let j = 0; j < qk; j++) {
      const v = fround(x[base + j]);
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = fround(max / -8);
    const id = d !== 0 ? fround(1 / d) : 0;
    const at = b * 18;
    out.setUint16(at, f32ToF16Bits(d), true);
    for (let j = 0; j < 16; j++) {
      const lo = Math.min(15, Math.trunc(fround(fround(fround(x[base + j]) * id) + 8.5)));
      const hi = Math.min(15, Math.trunc(fround(fround(fround(x[base + j + 16]) * id) + 8.5)));
      out.setUint8(at + 2 + j, lo | (hi << 4));
    }
  }
}

function quantizeQ4_1(x: ArrayLike<number>, out: DataView, blocks: number): void {
  for (let b = 0; b < blocks; b++) {
    const base = b * qk;
    let min = Infinity;
    let max = -Infinity;
    for (let j = 0; j < qk; j++) {
      const v = fround(x[base + j]);
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const d = fround(fround(max - min) / 15);
    const id = d !== 0 ? fround(1 / d) : 0;
    const at = b * 20;
    out.setUint16(at, f32ToF16Bits(d), true);
    out.setUint16(at + 2, f32ToF16Bits(min), true);
    for (let j = 0; j < 16; j++) {
      const lo = Math.min(15, Math.trunc(fround(fround(fround(x[base + j]) - min) * id) + 0.5));
      const hi = Math.min(15, Math.trunc(fround(fround(fround(x[base + j + 16]) - min) * id) + 0.5));
      out.setUint8(at + 4 + j, lo | (hi << 4));
    }
  }
}

function quantizeQ8_0(x: ArrayLike<number>, out: DataView, blocks: number): void {
  for (let b = 0; b < blocks; b++) {
    const base = b * qk;
    let amax = 0;
    for (let j = 0; j < qk; j++) amax = Math.max(amax, Math.abs(fround(x[base + j])));
    const d = fround(amax / 127);
    const id = d !== 0 ? fround(1 / d) : 0;
    const at = b * 34;
    out.setUint16(at, f32ToF16Bits(d), true);
    for (let j = 0; j < qk; j++) out.setInt8(at + 2 + j, roundAway(fround(fround(x[base + j]) * id)));
  }
}

/**
 * Quantizes (or converts) `x` into `type`'s bytes, round-to-nearest as ggml's reference quantizers.
 *
 * @param type A {@link QuantType} id.
 * @param x The values; their count must be a whole number of blocks.
 * @param out Where to write (default: a new array of {@link quantizedBytes}).
 * @returns The bytes (`out` when given).
 * @throws {SparrowError} `unsupported` for another type, `invalid_argument` for a partial block or a
 * too small `out`.
 * @example
 * ```ts
 * import { dequantize, QuantType, quantize } from "./ggml_quants.ts";
 * const x = Float32Array.from({ length: 32 }, (_, i) => i / 31 - 0.5);
 * const back = dequantize(QuantType.Q4_0, quantize(QuantType.Q4_0, x), 32);
 * ```
 */
export function quantize(type: number, x: ArrayLike<number>, out?: Uint8Array): Uint8Array {
  const n = x.length;
  const nBytes = quantizedBytes(type, n);
  const bytes = out ?? new Uint8Array(nBytes);
  if (bytes.length < nBytes) {
    throw new SparrowError("invalid_argument", `output of ${bytes.length} bytes cannot hold ${nBytes} bytes`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, nBytes);
  switch (type) {
    case QuantType.F32:
      for (let i = 0; i < n; i++) view.setFloat32(4 * i, x[i], true);
      break;
    case QuantType.F16:
      for (let i = 0; i < n; i++) view.setUint16(2 * i, f32ToF16Bits(x[i]), true);
      break;
    case QuantType.BF16:
      for (let i = 0; i < n; i++) view.setUint16(2 * i, f32ToBf16Bits(x[i]), true);
      break;
    case QuantType.Q4_0:
      quantizeQ4_0(x, view, n / qk);
      break;
    case QuantType.Q4_1:
      quantizeQ4_1(x, view, n / qk);
      break;
    case QuantType.Q8_0:
      quantizeQ8_0(x, view, n / qk);
      break;
  }
  return bytes;
}

/**
 * Expands `n` elements of `type` from `bytes`. Written into a Float64Array every value is exact
 * (including Q4_1's q * d + m, which float32 would round).
 *
 * @param type A {@link QuantType} id.
 * @param bytes The encoded elements (at least {@link quantizedBytes} of `n`).
 * @param n Element count, a whole number of blocks.
 * @param out Where to write (default: a new Float32Array of `n`).
 * @returns The values (`out` when given).
 * @throws {SparrowError} `unsupported` for another type, `invalid_argument` for short input or output.
 * @example
 * ```ts
 * import { dequantize, QuantType } from "./ggml_quants.ts";
 * const block = new Uint8Array(18); // d = 0: all 32 elements are zero
 * dequantize(QuantType.Q4_0, block, 32, new Float64Array(32));
 * ```
 */
export function dequantize<T extends Float32Array | Float64Array = Float32Array>(
  type: number,
  bytes: Uint8Array,
  n: number,
  out?: T,
): T {
  const nBytes = quantizedBytes(type, n);
  if (bytes.length < nBytes) {
    throw new SparrowError(
      "invalid_argument",
      `${bytes.length} bytes are too few for ${n} ${ggmlTypeName(type)} elements`,
    );
  }
  const y = (out ?? new Float32Array(n)) as T;
  if (y.length < n) throw new SparrowError("invalid_argument", `output of ${y.length} cannot hold ${n} elements`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, nBytes);
  switch (type) {
    case QuantType.F32:
      for (let i = 0; i < n; i++) y[i] = view.getFloat32(4 * i, true);
      break;
    case QuantType.F16:
      for (let i = 0; i < n; i++) y[i] = f16BitsToF32(view.getUint16(2 * i, true));
      break;
    case QuantType.BF16:
      for (let i = 0; i < n; i++) y[i] = bf16BitsToF32(view.getUint16(2 * i, true));
      break;
    case QuantType.Q4_0:
      for (let b = 0; b < n / qk; b++) {
        const at = b * 18;
        const d = f16BitsToF32(view.getUint16(at, true));
        for (let j = 0; j < 16; j++) {
          const q = bytes[at + 2 + j];
          y[b * qk + j] = ((q & 15) - 8) * d;
          y[b * qk + j + 16] = ((q >> 4) - 8) * d;
        }
      }
      break;
    case QuantType.Q4_1:
      for (let b = 0; b < n / qk; b++) {
        const at = b * 20;
        const d = f16BitsToF32(view.getUint16(at, true));
        const m = f16BitsToF32(view.getUint16(at + 2, true));
        for (let j = 0; j < 16; j++) {
          const q = bytes[at + 4 + j];
          y[b * qk + j] = (q & 15) * d + m;
          y[b * qk + j + 16] = (q >> 4) * d + m;
        }
      }
      break;
    case QuantType.Q8_0:
      for (let b = 0; b < n / qk; b++) {
        const at = b * 34;
        const d = f16BitsToF32(view.getUint16(at, true));
        for (let j = 0; j < qk; j++) y[b * qk + j] = view.getInt8(at + 2 + j) * d;
      }
      break;
  }
  return y;
}
