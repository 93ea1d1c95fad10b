/**
 * The data of one synthetic tensor, produced in chunks for the GGUF writer: the two ways
 * models/synth.ts makes weights.
 * - "float": draw float32 Gaussians and convert or quantize them (models/ggml_quants.ts), so the
 *   quantized blocks are what a quantizer makes of such weights. Small models.
 * - "direct": write the encoded elements straight from random bits: random codes under block scales
 *   drawn around the value that gives the tensor's element spread (floats: lookups in a per-tensor
 *   table of Gaussians), so a 7B model is written at disk speed.
 *
 * Direct K-quant blocks keep their scales in realistic ranges rather than drawing them from all 64
 * values: real Q4_K/Q5_K scales sit near the top of the 6-bit range (d is the largest sub-block
 * scale / 63 and sub-blocks of Gaussians have similar spreads), so sc and m are uniform in 48..63,
 * with dmin = d * mean(q) so that sub-block means d (sc mean(q) - m mean(q)) centre on zero (their
 * spread is ~0.2 of the element spread, as for a real sub-block's sample mean of 32 Gaussians); Q6_K
 * scales are ±(64..127) with random signs, as ggml's sign trick gives.
 *
 * @module
 */
import type { TensorToWrite } from "../core/gguf_writer.ts";
import type { Rng } from "../core/rng.ts";
import { f32ToBf16Bits, f32ToF16Bits, quantize, quantizedBytes, QuantType } from "./ggml_quants.ts";

/** One tensor to make: its GGUF dims ([columns, rows]) and the spread of its elements. */
export interface TensorPlan {
  name: string;
  cols: number;
  rows: number;
  /** Norm vectors: F32, N(1, 0.1²). Matrices: N(0, sigma²) in their type. */
  norm: boolean;
  sigma: number;
}

/** Bytes per emitted chunk: large enough that write calls are few, small enough to stay in cache-ish memory. */
const chunkBytesTarget = 4 << 20;

/**
 * Float path: Gaussian float32 rows, converted or quantized by ggml_quants.
 *
 * @param t The tensor.
 * @param type Its GGML type.
 * @param rng The tensor's own random stream.
 * @returns A producer for the GGUF writer.
 * @example
 * ```ts ignore
 * const data = floatProducer({ name: "w", cols: 256, rows: 4, norm: false, sigma: 1 / 16 }, 12, rng);
 * ```
 */
export function floatProducer(t: TensorPlan, type: number, rng: Rng): TensorToWrite["data"] {
  return (emit) => {
    const rowBytes = quantizedBytes(type, t.cols);
    const rowsPerChunk = Math.max(1, Math.floor(chunkBytesTarget / rowBytes));
    const x = new Float32Array(rowsPerChunk * t.cols);
    const out = new Uint8Array(rowsPerChunk * rowBytes);
    for (let r = 0; r < t.rows; r += rowsPerChunk) {
      const n = Math.min(rowsPerChunk, t.rows - r);
      const xs = x.subarray(0, n * t.cols);
      for (let i = 0; i < xs.length; i++) xs[i] = (t.norm ? 1 : 0) + t.sigma * rng.normal();
      emit(quantize(type, xs, out.subarray(0, n * rowBytes)).subarray(0, n * rowBytes));
    }
  };
}

/** E[v²] of a variable uniform over the integers lo..hi. */
function uniformSquare(lo: number, hi: number): number {
  const n = hi - lo + 1;
  return ((lo + hi) / 2) ** 2 + (n * n - 1) / 12;
}
/** Variance of a variable uniform over n consecutive integers. */
const uniformVar = (n: number) => (n * n - 1) / 12;

/** K-quant sub-block scales and mins (Q4_K/Q5_K) in 48..63: bytes 0..7 of `scales` OR 0xF0 (see module doc). */
const kScaleLo = 48;
/** Q6_K group scales: ±(64..127). */
const q6ScaleLo = 64;

/**
 * Element spread of a direct block per unit of its scale d, for each quantized type (variance of the
 * decoded value / d², from the code and scale distributions; see directProducer).
 */
function spreadPerScale(type: number): number {
  switch (type) {
    case QuantType.Q8_0:
      return Math.sqrt(uniformVar(255)); // q uniform in -127..127 (0x80 is remapped)
    case QuantType.Q4_0:
    case QuantType.Q4_1:
      return Math.sqrt(uniformVar(16));
    case QuantType.Q5_0:
    case QuantType.Q5_1:
      return Math.sqrt(uniformVar(32));
    case QuantType.Q4_K:
    case QuantType.Q5_K: {
      // d (sc q - mean(q) m), sc, m uniform in 48..63, q uniform over 16 or 32 codes.
      const levels = type === QuantType.Q4_K ? 16 : 32;
      const meanQ = (levels - 1) / 2;
      const meanS = (kScaleLo + 63) / 2;
      const scq = uniformSquare(kScaleLo, 63) * uniformSquare(0, levels - 1) - (meanS * meanQ) ** 2;
      return Math.sqrt(scq + meanQ ** 2 * uniformVar(64 - kScaleLo));
    }
    case QuantType.Q6_K:
      return Math.sqrt(uniformSquare(q6ScaleLo, 127) * uniformSquare(-32, 31));
    default:
      return 1;
  }
}

/** Scratch shared by the producers of one file (one chunk is alive at a time). */
export interface DirectScratch {
  buf: ArrayBuffer;
}

/**
 * Direct path: random codes under random block scales (quantized types) or table lookups of
 * Gaussians (float types), written into one reused buffer per chunk of rows.
 *
 * @param t The tensor (a matrix).
 * @param type Its GGML type.
 * @param rng The tensor's own random stream.
 * @param scratch The file's shared chunk buffer.
 * @returns A producer for the GGUF writer.
 * @example
 * ```ts ignore
 * const data = directProducer(plan, QuantType.Q4_K, rng, { buf: new ArrayBuffer(0) });
 * ```
 */
export function directProducer(
  t: TensorPlan,
  type: number,
  rng: Rng,
  scratch: DirectScratch,
): TensorToWrite["data"] {
  return (emit) => {
    const rowBytes = quantizedBytes(type, t.cols);
    const rowsPerChunk = Math.max(1, Math.floor(chunkBytesTarget / rowBytes));
    const need = Math.ceil((rowsPerChunk * rowBytes) / 4) * 4;
    if (scratch.buf.byteLength < need) scratch.buf = new ArrayBuffer(need);
    const words = new Uint32Array(scratch.buf, 0, need / 4);
    const bytes = new Uint8Array(scratch.buf, 0, need);
    // Per-tensor tables: 256 block scales (±25% around the scale that gives element spread sigma)
    // indexed by a random byte, and 4096 Gaussians for the float types.
    const scaleFor = t.sigma / spreadPerScale(type);
    const dBits = new Uint16Array(256);
    const mBits = new Uint16Array(256);
    for (let k = 0; k < 256; k++) {
      const d = scaleFor * (0.75 + 0.5 * rng.uniform());
      // Q4_0's d = max / -8 takes the sign opposite to the block's largest element: half are negative,
      // which also cancels the -d/2 mean of the codes (Q5_0 likewise).
      const signed = (type === QuantType.Q4_0 || type === QuantType.Q5_0) && k % 2 === 1;
      dBits[k] = f32ToF16Bits(signed ? -d : d);
      // Q4_1/Q5_1: m centres q * d + m near zero; K-quants: dmin = d * mean(q) centres sub-blocks.
      // (Drawn for every type, so the random stream, and the bytes of older types, stay as they were.)
      const u = rng.uniform();
      mBits[k] = type === QuantType.Q4_1
        ? f32ToF16Bits(-d * (7 + u))
        : type === QuantType.Q5_1
        ? f32ToF16Bits(-d * (15 + u))
        : f32ToF16Bits(d * (type === QuantType.Q5_K ? 15.5 : 7.5));
    }
    // Q6_K's int8 group scales by random byte: the top bit picks the sign, the low six the magnitude.
    const q6Scales = Uint8Array.from({ length: 256 }, (_, b) => ((b & 128 ? -1 : 1) * (q6ScaleLo + (b & 63))) & 255);
    const gauss = new Float32Array(4096);
    for (let k = 0; k < gauss.length; k++) gauss[k] = t.sigma * rng.normal();
    const gauss32 = new Uint32Array(gauss.buffer);
    const gauss16 = Uint16Array.from(gauss, type === QuantType.BF16 ? f32ToBf16Bits : f32ToF16Bits);
    /** Sets the f16 at `at` from the table entry a random byte picks (the byte the f16 replaces). */
    const setHalf = (table: Uint16Array, at: number, pick: number) => {
      const v = table[pick];
      bytes[at] = v & 255, bytes[at + 1] = v >>> 8;
    };
    for (let r = 0; r < t.rows; r += rowsPerChunk) {
      const n = Math.min(rowsPerChunk, t.rows - r);
      const len = n * rowBytes;
      const nWords = Math.ceil(len / 4);
      switch (type) {
        case QuantType.F32: {
          // One random word picks two elements: fill the first half, then expand backwards in place
          // (element pair i lands at words 2i, 2i+1, never on a word not yet read).
          const half = Math.ceil(nWords / 2);
          rng.fill(words.subarray(0, half));
          for (let i = half - 1; i >= 0; i--) {
            const w = words[i];
            if (2 * i + 1 < nWords) words[2 * i + 1] = gauss32[(w >>> 16) & 4095];
            words[2 * i] = gauss32[w & 4095];
          }
          break;
        }
        case QuantType.F16:
        case QuantType.BF16:
          rng.fill(words.subarray(0, nWords));
          for (let i = 0; i < nWords; i++) {
            const w = words[i];
            words[i] = gauss16[w & 4095] | (gauss16[(w >>> 16) & 4095] << 16);
          }
          break;
        case QuantType.Q4_0:
        case QuantType.Q5_0:
          rng.fill(words.subarray(0, nWords));
          for (let at = 0, bb = type === QuantType.Q4_0 ? 18 : 22; at < len; at += bb) setHalf(dBits, at, bytes[at]);
          break;
        case QuantType.Q4_1:
        case QuantType.Q5_1:
          rng.fill(words.subarray(0, nWords));
          for (let at = 0, bb = type === QuantType.Q4_1 ? 20 : 24; at < len; at += bb) {
            const k = bytes[at];
            setHalf(dBits, at, k);
            setHalf(mBits, at + 2, k);
          }
          break;
        case QuantType.Q8_0:
          rng.fill(words.subarray(0, nWords));
          // ggml's quantizer never writes -128 (and SIMD kernels that take |q| with sign tricks would
          // overflow on it): turn every 0x80 byte into 0x81 (-127), four bytes at a time. A byte is 0x80
          // when its top bit is set and its low seven bits are zero.
          for (let i = 0; i < nWords; i++) {
            const w = words[i];
            const lowZero = (((w & 0x7f7f7f7f) + 0x7f7f7f7f) & 0x80808080) ^ 0x80808080;
            words[i] = w | ((lowZero & w) >>> 7);
          }
          for (let at = 0; at < len; at += 34) setHalf(dBits, at, bytes[at]);
          break;
        case QuantType.Q4_K:
        case QuantType.Q5_K:
          rng.fill(words.subarray(0, nWords));
          for (let at = 0, bb = type === QuantType.Q4_K ? 144 : 176; at < len; at += bb) {
            const k = bytes[at];
            setHalf(dBits, at, k);
            setHalf(mBits, at + 2, k);
            // Bytes 0..7 of the scales hold bits 4 and 5 of all 16 six-bit values (low bits of
            // sub-blocks 0..3, top bits of 4..7): setting their high nibbles puts every sc and m in 48..63.
            for (let i = at + 4; i < at + 12; i++) bytes[i] |= 0xf0;
          }
          break;
        case QuantType.Q6_K:
          rng.fill(words.subarray(0, nWords));
          for (let at = 0; at < len; at += 210) {
            for (let i = at + 192; i < at + 208; i++) bytes[i] = q6Scales[bytes[i]];
            setHalf(dBits, at + 208, bytes[at + 208]);
          }
          break;
      }
      emit(bytes.subarray(0, len));
    }
  };
}
