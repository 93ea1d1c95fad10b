/**
 * TypeScript quantizers and dequantizers for the GGML weight types sparrow computes with: F32, F16,
 * BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 here and the K-quants Q4_K, Q5_K, Q6_K in ggml_quants_k.ts.
 * The 32-element quantizers round to nearest exactly as ggml's reference (`quantize_row_*_ref`)
 * quantizers do, in float32 arithmetic, so a row quantized here has the bytes llama.cpp would write
 * for it; the K-quant quantizers use a simpler one-pass scheme (see ggml_quants_k.ts). Dequantizers
 * can write float64, where every value (Q4_1's q*d + m included) is exact, which is what the float64
 * reference forward (reference_forward.ts) needs.
 *
 * Block layouts (little-endian, ggml's structs; scales are IEEE half floats):
 * - Q4_0: 32 elements in 18 bytes `{d: f16, qs: u8[16]}`: element j (j < 16) is the low nibble of
 *   qs[j], element j + 16 its high nibble; x = (q - 8) * d.
 * - Q4_1: 32 elements in 20 bytes `{d: f16, m: f16, qs: u8[16]}`, nibbles as Q4_0; x = q * d + m.
 * - Q5_0: 32 elements in 22 bytes `{d: f16, qh: u8[4], qs: u8[16]}`: nibbles as Q4_0, and bit j of
 *   the little-endian u32 qh is bit 4 of element j's code; x = (q - 16) * d.
 * - Q5_1: 32 elements in 24 bytes `{d: f16, m: f16, qh: u8[4], qs: u8[16]}`, codes as Q5_0;
 *   x = q * d + m.
 * - Q8_0: 32 elements in 34 bytes `{d: f16, qs: i8[32]}`; x = q * d.
 * - F16 / BF16: one half float / the upper 16 bits of a float32 per element.
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";
import { ggmlType, ggmlTypeName } from "../core/gguf_types.ts";
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "./ggml_half.ts";
import { dequantizeK, qkK, quantizeK } from "./ggml_quants_k.ts";

export { bf16BitsToF32, f16BitsToF32, f16CeilBits, f32ToBf16Bits, f32ToF16Bits } from "./ggml_half.ts";
export { qkK };

/** GGML type ids of the formats this module handles. */
export const QuantType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  BF16: 30,
} as const;
/** One of the {@link QuantType} ids. */
export type QuantType = typeof QuantType[keyof typeof QuantType];

/** Elements per block of the 32-element formats. */
export const qk = 32;

const supported: ReadonlySet<number> = new Set(Object.values(QuantType));

function checkType(type: number): void {
  if (!supported.has(type)) {
    throw new SparrowError(
      "unsupported",
      `GGML type ${ggmlTypeName(type)} is not one of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K`,
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

/** Writes the 32 five-bit codes of a Q5_0/Q5_1 block: low nibbles as Q4_0, fifth bits into qh. */
function packQ5(codes: Uint8Array, out: DataView, qhAt: number): void {
  let qh = 0;
  for (let j = 0; j < 16; j++) {
    out.setUint8(qhAt + 4 + j, (codes[j] & 15) | ((codes[j + 16] & 15) << 4));
    qh |= ((codes[j] >> 4) << j) | ((codes[j + 16] >> 4) << (j + 16));
  }
  out.setUint32(qhAt, qh >>> 0, true);
}

function quantizeQ5_0(x: ArrayLike<number>, out: DataView, blocks: number): void {
  const codes = new Uint8Array(qk);
  for (let b = 0; b < blocks; b++) {
    const base = b * qk;
    // As Q4_0: the signed value of largest magnitude maps to -16, so the full range -16..15 is used.
    let amax = 0;
    let max = 0;
    for (let j = 0; j < qk; j++) {
      const v = fround(x[base + j]);
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = fround(max / -16);
    const id = d !== 0 ? fround(1 / d) : 0;
    out.setUint16(b * 22, f32ToF16Bits(d), true);
    for (let j = 0; j < qk; j++) codes[j] = Math.min(31, Math.trunc(fround(fround(fround(x[base + j]) * id) + 16.5)));
    packQ5(codes, out, b * 22 + 2);
  }
}

function quantizeQ5_1(x: ArrayLike<number>, out: DataView, blocks: number): void {
  const codes = new Uint8Array(qk);
  for (let b = 0; b < blocks; b++) {
    const base = b * qk;
    let min = Infinity;
    let max = -Infinity;
    for (let j = 0; j < qk; j++) {
      const v = fround(x[base + j]);
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const d = fround(fround(max - min) / 31);
    const id = d !== 0 ? fround(1 / d) : 0;
    out.setUint16(b * 24, f32ToF16Bits(d), true);
    out.setUint16(b * 24 + 2, f32ToF16Bits(min), true);
    // ggml does not clamp here; the clamp only matters where f32 rounding would give 32.
    for (let j = 0; j < qk; j++) {
      codes[j] = Math.min(31, Math.trunc(fround(fround(fround(x[base + j]) - min) * id) + 0.5));
    }
    packQ5(codes, out, b * 24 + 4);
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
    case QuantType.Q5_0:
      quantizeQ5_0(x, view, n / qk);
      break;
    case QuantType.Q5_1:
      quantizeQ5_1(x, view, n / qk);
      break;
    case QuantType.Q8_0:
      quantizeQ8_0(x, view, n / qk);
      break;
    case QuantType.Q4_K:
    case QuantType.Q5_K:
    case QuantType.Q6_K:
      quantizeK(type, x, bytes, n / qkK);
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
    case QuantType.Q5_0:
    case QuantType.Q5_1: {
      const bb = type === QuantType.Q5_1 ? 24 : 22;
      const qhAt = type === QuantType.Q5_1 ? 4 : 2;
      for (let b = 0; b < n / qk; b++) {
        const at = b * bb;
        const d = f16BitsToF32(view.getUint16(at, true));
        const m = type === QuantType.Q5_1 ? f16BitsToF32(view.getUint16(at + 2, true)) : -16 * d;
        const qh = view.getUint32(at + qhAt, true);
        for (let j = 0; j < 16; j++) {
          const q = bytes[at + qhAt + 4 + j];
          y[b * qk + j] = ((q & 15) | (((qh >>> j) & 1) << 4)) * d + m;
          y[b * qk + j + 16] = ((q >> 4) | (((qh >>> (j + 16)) & 1) << 4)) * d + m;
        }
      }
      break;
    }
    case QuantType.Q8_0:
      for (let b = 0; b < n / qk; b++) {
        const at = b * 34;
        const d = f16BitsToF32(view.getUint16(at, true));
        for (let j = 0; j < qk; j++) y[b * qk + j] = view.getInt8(at + 2 + j) * d;
      }
      break;
    case QuantType.Q4_K:
    case QuantType.Q5_K:
    case QuantType.Q6_K:
      dequantizeK(type, bytes, n / qkK, y);
      break;
  }
  return y;
}
