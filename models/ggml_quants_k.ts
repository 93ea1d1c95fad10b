/**
 * The K-quants, GGML's 256-element "super-block" formats: Q4_K, Q5_K and Q6_K, encoded and decoded.
 * models/ggml_quants.ts dispatches here; callers use its `quantize`/`dequantize`.
 *
 * Layouts (little-endian, ggml's structs; d and dmin are IEEE half floats):
 * - Q4_K: 256 elements in 144 bytes `{d, dmin: f16, scales: u8[12], qs: u8[128]}`: 8 sub-blocks of
 *   32, each with a 6-bit scale sc and a 6-bit min m packed in `scales` (sub-block j < 4: sc =
 *   s[j] & 63, m = s[j+4] & 63; j >= 4: sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4, m = (s[j+4] >> 4) |
 *   (s[j] >> 6) << 4). Each 64 elements share 32 bytes of qs: the low nibbles are the first 32, the
 *   high nibbles the next 32. x = d * sc * q - dmin * m.
 * - Q5_K: 256 in 176 bytes `{d, dmin, scales[12], qh: u8[32], qs[128]}`: as Q4_K plus a fifth bit:
 *   element l of sub-block j has bit j of qh[l] as bit 4 of its code.
 * - Q6_K: 256 in 210 bytes `{ql: u8[128], qh: u8[64], scales: i8[16], d: f16}`: 16 groups of 16 with
 *   signed 8-bit scales; per half of 128 elements (64 bytes of ql, 32 of qh, 8 scales) element
 *   l + 32k (l < 32, k < 4) has low bits from ql[l + 32 (k & 1)] (low nibble for k < 2, high for
 *   k >= 2) and high bits (qh[l] >> 2k) & 3; x = d * scale[group] * (q - 32).
 *
 * Quantizers: round to nearest under scales chosen in one pass, not ggml's iterative search
 * (make_qkx2_quants / make_qx_quants), so the bytes differ from llama.cpp's for the same input and
 * the error is somewhat larger, but every element stays within half a step of its value (Q6_K: one
 * step for an element near the group's extreme of the opposite sign, as Q4_0). The one pass:
 * - Q4_K/Q5_K: per sub-block, offset = -min(0, min x) and range = max x + offset. dmin is the
 *   largest offset / 63 and d the largest range / (nmax * 63) (nmax = 15 or 31), both rounded UP to
 *   f16; then m = ceil(offset / dmin) and sc = ceil(range / (nmax * d)), so dmin * m >= offset and
 *   nmax * d * sc >= range: the codes round((x + dmin m) / (d sc)) never clip.
 * - Q6_K: per group, s = (the element of largest magnitude) / -32, so that element is code -32 and
 *   the full range -32..31 is used (ggml's sign trick); d = max |s| / 127 rounded up to f16, scale =
 *   sign(s) * ceil(|s| / d).
 *
 * @module
 */
import { f16BitsToF32, f16CeilBits } from "./ggml_half.ts";

/** Elements per K-quant super-block. */
export const qkK = 256;

/** C's roundf: halves away from zero. */
function roundAway(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

/**
 * Packs eight 6-bit scales and eight 6-bit mins into Q4_K/Q5_K's 12 bytes (see the module doc).
 *
 * @param sc Scales of sub-blocks 0..7, each 0..63.
 * @param m Mins of sub-blocks 0..7, each 0..63.
 * @param out Where to write.
 * @param at Offset of the 12 bytes in `out`.
 * @example
 * ```ts
 * import { packScalesMinsK4, unpackScaleMinK4 } from "./ggml_quants_k.ts";
 * const s = new Uint8Array(12);
 * packScalesMinsK4([1, 2, 3, 4, 50, 51, 52, 53], [9, 8, 7, 6, 60, 61, 62, 63], s, 0);
 * unpackScaleMinK4(s, 0, 5); // { sc: 51, m: 61 }
 * ```
 */
export function packScalesMinsK4(sc: ArrayLike<number>, m: ArrayLike<number>, out: Uint8Array, at: number): void {
  for (let j = 0; j < 4; j++) {
    out[at + j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
    out[at + j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
    out[at + j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
  }
}

/**
 * Scale and min of sub-block `j` of a Q4_K/Q5_K block.
 *
 * @param s The block bytes.
 * @param at Offset of its 12 scale bytes.
 * @param j Sub-block, 0..7.
 * @returns The 6-bit scale and min.
 * @example
 * ```ts
 * import { unpackScaleMinK4 } from "./ggml_quants_k.ts";
 * unpackScaleMinK4(new Uint8Array([5, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]), 0, 0); // { sc: 5, m: 7 }
 * ```
 */
export function unpackScaleMinK4(s: Uint8Array, at: number, j: number): { sc: number; m: number } {
  if (j < 4) return { sc: s[at + j] & 63, m: s[at + j + 4] & 63 };
  return {
    sc: (s[at + j + 4] & 15) | ((s[at + j - 4] >> 6) << 4),
    m: (s[at + j + 4] >> 4) | ((s[at + j] >> 6) << 4),
  };
}

/** Q4_K (five = false) or Q5_K (five = true): `blocks` super-blocks of `x` into `out`. */
function quantizeQ45K(x: ArrayLike<number>, out: Uint8Array, blocks: number, five: boolean): void {
  const nmax = five ? 31 : 15;
  const blockBytes = five ? 176 : 144;
  const qsAt = five ? 48 : 16;
  const offset = new Float64Array(8);
  const range = new Float64Array(8);
  const sc = new Uint8Array(8);
  const m = new Uint8Array(8);
  for (let b = 0; b < blocks; b++) {
    const base = b * qkK;
    const at = b * blockBytes;
    let offsetMax = 0;
    for (let j = 0; j < 8; j++) {
      let lo = 0; // the min is clamped to <= 0: m is unsigned and x = ... - dmin * m
      let hi = -Infinity;
      for (let l = 0; l < 32; l++) {
        const v = x[base + 32 * j + l];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      offset[j] = -lo;
      range[j] = hi; // + the offset as stored, below
      offsetMax = Math.max(offsetMax, -lo);
    }
    const dminBits = f16CeilBits(offsetMax / 63);
    const dmin = f16BitsToF32(dminBits);
    let rangeMax = 0;
    for (let j = 0; j < 8; j++) {
      m[j] = dmin > 0 ? Math.min(63, Math.ceil(offset[j] / dmin)) : 0;
      offset[j] = dmin * m[j];
      range[j] = Math.max(0, range[j] + offset[j]);
      rangeMax = Math.max(rangeMax, range[j]);
    }
    const dBits = f16CeilBits(rangeMax / (nmax * 63));
    const d = f16BitsToF32(dBits);
    for (let j = 0; j < 8; j++) sc[j] = d > 0 ? Math.min(63, Math.ceil(range[j] / (nmax * d))) : 0;
    out[at] = dBits & 255, out[at + 1] = dBits >> 8;
    out[at + 2] = dminBits & 255, out[at + 3] = dminBits >> 8;
    packScalesMinsK4(sc, m, out, at + 4);
    out.fill(0, at + 16, at + blockBytes);
    for (let j = 0; j < 8; j++) {
      const step = d * sc[j];
      const inv = step > 0 ? 1 / step : 0;
      // Sub-block j: chunk j >> 1 of 32 qs bytes, low nibbles for even j, high for odd; fifth bit j of qh[l].
      const qs = at + qsAt + 32 * (j >> 1);
      const shift = 4 * (j & 1);
      for (let l = 0; l < 32; l++) {
        const q = Math.max(0, Math.min(nmax, roundAway((x[base + 32 * j + l] + offset[j]) * inv)));
        out[qs + l] |= (q & 15) << shift;
        if (five) out[at + 16 + l] |= (q >> 4) << j;
      }
    }
  }
}

/** Q6_K: `blocks` super-blocks of `x` into `out`. */
function quantizeQ6K(x: ArrayLike<number>, out: Uint8Array, blocks: number): void {
  const groupScale = new Float64Array(16);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (let b = 0; b < blocks; b++) {
    const base = b * qkK;
    const at = b * 210;
    let sMax = 0;
    for (let g = 0; g < 16; g++) {
      let ext = 0;
      for (let i = 0; i < 16; i++) {
        const v = x[base + 16 * g + i];
        if (Math.abs(v) > Math.abs(ext)) ext = v;
      }
      groupScale[g] = ext / -32;
      sMax = Math.max(sMax, Math.abs(ext / 32));
    }
    const dBits = f16CeilBits(sMax / 127);
    const d = f16BitsToF32(dBits);
    out.fill(0, at, at + 208);
    out[at + 208] = dBits & 255, out[at + 209] = dBits >> 8;
    for (let g = 0; g < 16; g++) {
      const s = groupScale[g];
      const scale = d > 0 ? Math.sign(s) * Math.min(127, Math.ceil(Math.abs(s) / d)) : 0;
      view.setInt8(at + 192 + g, scale);
      const step = d * scale;
      const inv = step !== 0 ? 1 / step : 0;
      for (let i = 0; i < 16; i++) {
        const e = 16 * g + i; // element within the super-block
        const q = Math.max(-32, Math.min(31, roundAway(x[base + e] * inv))) + 32;
        const h = e >> 7; // half
        const k = (e >> 5) & 3; // which of the four runs of 32 in the half
        const l = e & 31;
        out[at + 64 * h + l + 32 * (k & 1)] |= (q & 15) << (k < 2 ? 0 : 4);
        out[at + 128 + 32 * h + l] |= (q >> 4) << (2 * k);
      }
    }
  }
}

/**
 * Encodes `blocks` super-blocks of `x` as Q4_K, Q5_K or Q6_K (by ggml type id 12, 13, 14).
 * Round-to-nearest under one-pass scales; see the module doc for the scheme and its error.
 *
 * @param type 12 (Q4_K), 13 (Q5_K) or 14 (Q6_K).
 * @param x 256 * blocks values.
 * @param out At least blocks * (144, 176 or 210) bytes.
 * @param blocks Super-block count.
 * @example
 * ```ts
 * import { quantizeK } from "./ggml_quants_k.ts";
 * const out = new Uint8Array(144);
 * quantizeK(12, Float32Array.from({ length: 256 }, (_, i) => Math.sin(i)), out, 1);
 * ```
 */
export function quantizeK(type: 12 | 13 | 14, x: ArrayLike<number>, out: Uint8Array, blocks: number): void {
  if (type === 14) quantizeQ6K(x, out, blocks);
  else quantizeQ45K(x, out, blocks, type === 13);
}

/**
 * Decodes `blocks` super-blocks of Q4_K, Q5_K or Q6_K. Written into a Float64Array every value is exact
 * (each product has at most 11 + 6 + 6 significant bits, so d * sc * q - dmin * m is exact unless d
 * and dmin are more than 2^29 apart).
 *
 * @param type 12 (Q4_K), 13 (Q5_K) or 14 (Q6_K).
 * @param bytes The encoded super-blocks.
 * @param blocks Super-block count.
 * @param y Where to write 256 * blocks values.
 * @example
 * ```ts
 * import { dequantizeK } from "./ggml_quants_k.ts";
 * const y = new Float64Array(256);
 * dequantizeK(14, new Uint8Array(210), 1, y); // d = 0: all zeros
 * ```
 */
export function dequantizeK(
  type: 12 | 13 | 14,
  bytes: Uint8Array,
  blocks: number,
  y: Float32Array | Float64Array,
): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (type === 14) {
    for (let b = 0; b < blocks; b++) {
      const at = b * 210;
      const d = f16BitsToF32(view.getUint16(at + 208, true));
      for (let e = 0; e < qkK; e++) {
        const h = e >> 7;
        const k = (e >> 5) & 3;
        const l = e & 31;
        const lo = (bytes[at + 64 * h + l + 32 * (k & 1)] >> (k < 2 ? 0 : 4)) & 15;
        const hi = (bytes[at + 128 + 32 * h + l] >> (2 * k)) & 3;
        y[b * qkK + e] = d * view.getInt8(at + 192 + (e >> 4)) * ((lo | (hi << 4)) - 32);
      }
    }
    return;
  }
  const five = type === 13;
  const blockBytes = five ? 176 : 144;
  const qsAt = five ? 48 : 16;
  for (let b = 0; b < blocks; b++) {
    const at = b * blockBytes;
    const d = f16BitsToF32(view.getUint16(at, true));
    const dmin = f16BitsToF32(view.getUint16(at + 2, true));
    for (let j = 0; j < 8; j++) {
      const { sc, m } = unpackScaleMinK4(bytes, at + 4, j);
      const qs = at + qsAt + 32 * (j >> 1);
      const shift = 4 * (j & 1);
      for (let l = 0; l < 32; l++) {
        let q = (bytes[qs + l] >> shift) & 15;
        if (five) q |= ((bytes[at + 16 + l] >> j) & 1) << 4;
        y[b * qkK + 32 * j + l] = d * sc * q - dmin * m;
      }
    }
  }
}
