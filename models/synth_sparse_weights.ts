/**
 * The tensors a sparse-FFN synthetic model writes differently from a dense one (the construction is
 * described in models/synth_sparse.ts): the low-rank gate (and dReLU up) with each neuron's bias in
 * element 0, and row patches of dense tensors (the bias channel in the embedding, zero rows and
 * columns, the constant parts of q and k). A Q4_0 gate is copies of precomputed blocks under per-row
 * scales, so a 7B model's gates take seconds (~0.2 s per layer).
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";
import type { TensorToWrite } from "../core/gguf_writer.ts";
import { ggmlType } from "../core/gguf_types.ts";
import { Rng } from "../core/rng.ts";
import { dequantize, f16BitsToF32, f32ToF16Bits, quantize, quantizedBytes, QuantType } from "./ggml_quants.ts";
import { channelInput, type SparseFfnPlan } from "./synth_sparse.ts";
import type { TensorPlan } from "./synth_weights.ts";

/** A producer of a tensor's bytes, as the GGUF writer takes it. */
export type Producer = Exclude<TensorToWrite["data"], Uint8Array>;

const chunkBytesTarget = 4 << 20;

/** Elements per block of B's groups: a Q4_0 block, so a Q4_0 gate is copies of precomputed blocks. */
export const groupBlock = 32;
/** Noise variants per block (see lowRankProducer). */
const variants = 64;

/** The layer's neurons' ranks into plan.firing, and B's entries (shared by gate and dReLU up). */
function layerDraw(plan: SparseFfnPlan, layer: number): { rankOf: Uint32Array; weight: Float32Array } {
  const rng = new Rng(plan.seed, 0x5a17 + layer);
  const rankOf = Uint32Array.from({ length: plan.ffnDim }, (_, i) => i);
  for (let i = rankOf.length - 1; i > 0; i--) {
    const j = rng.nextU32() % (i + 1);
    [rankOf[i], rankOf[j]] = [rankOf[j], rankOf[i]];
  }
  const weight = new Float32Array(plan.dim); // weight[0] = 0: the bias channel is not an input of B
  for (let j = 1; j < plan.dim; j++) weight[j] = rng.normal();
  return { rankOf, weight };
}

const f32Cell = new Float32Array(1);
const f32CellBits = new Uint32Array(f32Cell.buffer);

/**
 * f32ToF16Bits for values in the normal half range, by bit arithmetic (round to nearest, ties to
 * even): the Float16Array conversion f32ToF16Bits uses is several times slower.
 */
function halfBits(x: number): number {
  f32Cell[0] = x;
  const b = f32CellBits[0];
  const exp = (b >>> 23) & 255;
  if (exp < 113 || exp > 141) return f32ToF16Bits(x); // zero, subnormal or near overflow: the exact path
  let h = ((exp - 112) << 10) | ((b >>> 13) & 1023);
  const rest = b & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // a carry into the exponent is right
  return ((b >>> 16) & 0x8000) | h;
}

/** Q4_0 block of x[from, from + 32) into out at `at`, as ggml's reference quantizer does (in f64). */
function quantizeBlockQ4_0(x: Float32Array, from: number, out: Uint8Array, at: number): void {
  let max = 0;
  let amax = 0;
  for (let j = from; j < from + 32; j++) {
    const a = Math.abs(x[j]);
    if (a > amax) amax = a, max = x[j];
  }
  // The signed value of largest magnitude maps to code 0 (-8 d), so it is kept exactly.
  const d = max / -8;
  const id = d !== 0 ? 1 / d : 0;
  const h = halfBits(d);
  out[at] = h & 255;
  out[at + 1] = h >>> 8;
  for (let j = 0; j < 16; j++) {
    const lo = Math.min(15, Math.trunc(x[from + j] * id + 8.5));
    const hi = Math.min(15, Math.trunc(x[from + j + 16] * id + 8.5));
    out[at + 2 + j] = lo | (hi << 4);
  }
}

/**
 * The gate (or dReLU up) of one layer. Input dimensions come in blocks of 32, and B's column k holds
 * the blocks in a contiguous run (rank <= blocks). Row i, block b is a_{i,k(b)} (w_b + e_{v(i,b)}):
 * w_b B's entries, A's entries a ~ N(0, (1 - gateNoise) sigma²), and e_v one of 64 Gaussian variants
 * per block with variance gateNoise / (1 - gateNoise) picked at random per row and block, which makes
 * the part a·e full rank and `gateNoise` of the variance. Element 0 is z_i times the rms of the
 * row's others, z_i the neuron's firing quantile (see models/synth_sparse.ts).
 *
 * Scaling a Q4_0 block scales its d and keeps its codes, so a Q4_0 row is precomputed blocks (one
 * per block and variant) under per-row scales: 1.9G gate elements of a 7B model take seconds.
 * Other types build each row in floats from the same tables and quantize it.
 *
 * @param plan The construction.
 * @param layer The layer.
 * @param z Firing quantile by rank.
 * @param t The tensor (ffn rows of dim).
 * @param type Its GGML type.
 * @param rng The tensor's own stream (A, the variants and their picks).
 * @returns The producer.
 */
export function lowRankProducer(
  plan: SparseFfnPlan,
  layer: number,
  z: Float64Array,
  t: TensorPlan,
  type: number,
  rng: Rng,
): Producer {
  return (emit) => {
    const { dim, gateRank } = plan;
    const { rankOf, weight } = layerDraw(plan, layer);
    const blocks = Math.ceil(dim / groupBlock);
    const groupOf = Int32Array.from({ length: blocks }, (_, b) => Math.floor((b * gateRank) / blocks));
    // vals[(b * variants + v) * 32 + e]: w + e_v of block b (0 at the bias channel and past dim).
    const noiseStd = Math.sqrt(plan.gateNoise / (1 - plan.gateNoise));
    const vals = new Float32Array(blocks * variants * groupBlock);
    const sq = new Float64Array(blocks * variants);
    for (let b = 0; b < blocks; b++) {
      for (let v = 0; v < variants; v++) {
        const at = (b * variants + v) * groupBlock;
        for (let e = 0; e < groupBlock; e++) {
          const j = b * groupBlock + e;
          const x = j === 0 || j >= dim ? 0 : weight[j] + noiseStd * rng.normal();
          vals[at + e] = x;
          sq[b * variants + v] += x * x;
        }
      }
    }
    const fast = type === QuantType.Q4_0;
    const codes = new Uint8Array(fast ? blocks * variants * 18 : 0);
    const scales = new Float32Array(fast ? blocks * variants : 0);
    for (let k = 0; fast && k < blocks * variants; k++) {
      quantizeBlockQ4_0(vals, k * groupBlock, codes, k * 18);
      scales[k] = f16BitsToF32(codes[k * 18] | (codes[k * 18 + 1] << 8));
    }
    const aScale = t.sigma * Math.sqrt(1 - plan.gateNoise);
    const gauss = Float32Array.from({ length: 65536 }, () => aScale * rng.normal());
    const a = new Float32Array(gateRank);
    const aWords = Math.ceil(gateRank / 2);
    const bits = new Uint32Array(aWords + Math.ceil(blocks / 4));
    const aPicks = new Uint16Array(bits.buffer, 0, aWords * 2);
    const vPicks = new Uint8Array(bits.buffer, aWords * 4, blocks);
    const rowBytes = quantizedBytes(type, dim);
    const rowsPerChunk = Math.max(1, Math.floor(chunkBytesTarget / rowBytes));
    const out = new Uint8Array(rowsPerChunk * rowBytes);
    const out16 = new Uint16Array(out.buffer, 0, fast ? out.length >>> 1 : 0);
    const codes16 = new Uint16Array(codes.buffer);
    const x = new Float32Array(blocks * groupBlock);
    for (let r0 = 0; r0 < t.rows; r0 += rowsPerChunk) {
      const n = Math.min(rowsPerChunk, t.rows - r0);
      for (let r = 0; r < n; r++) {
        rng.fill(bits);
        for (let k = 0; k < gateRank; k++) a[k] = gauss[aPicks[k]];
        let ss = 0;
        for (let b = 0; b < blocks; b++) {
          const ab = a[groupOf[b]];
          ss += ab * ab * sq[b * variants + (vPicks[b] & 63)];
        }
        // The rest of the pre-activation has spread ~ the row's norm (xb's other elements are ~N(0, 1)).
        const bias = (z[rankOf[r0 + r]] * Math.sqrt(ss)) / channelInput;
        const at = r * rowBytes;
        if (fast) {
          // Block 0 holds the bias: quantized from floats. The others: a scaled precomputed block.
          const v0 = (vPicks[0] & 63) * groupBlock;
          for (let e = 0; e < groupBlock; e++) x[e] = a[groupOf[0]] * vals[v0 + e];
          x[0] = bias;
          quantizeBlockQ4_0(x, 0, out, at);
          // Q4_0 blocks are 18 bytes and rows whole blocks, so every block starts 2-byte aligned.
          for (let b = 1; b < blocks; b++) {
            const k = b * variants + (vPicks[b] & 63);
            const o = (at + b * 18) >>> 1;
            out16[o] = halfBits(a[groupOf[b]] * scales[k]);
            for (let c = k * 9 + 1, e = o + 1; e < o + 9; c++, e++) out16[e] = codes16[c];
          }
        } else {
          for (let b = 0; b < blocks; b++) {
            const ab = a[groupOf[b]];
            const v = (b * variants + (vPicks[b] & 63)) * groupBlock;
            for (let e = 0; e < groupBlock; e++) x[b * groupBlock + e] = ab * vals[v + e];
          }
          x[0] = bias;
          quantize(type, x.subarray(0, dim), out.subarray(at, at + rowBytes));
        }
      }
      emit(out.subarray(0, n * rowBytes));
    }
  };
}

/**
 * Wraps a producer of whole rows, letting `patch` rewrite each row's bytes before they are written.
 *
 * @param base The dense model's producer.
 * @param rowBytes Bytes per row.
 * @param patch Called with (row index, the row's bytes).
 * @returns The producer.
 */
export function patchRows(
  base: TensorToWrite["data"],
  rowBytes: number,
  patch: (row: number, bytes: Uint8Array) => void,
): Producer {
  if (typeof base !== "function") throw new SparrowError("internal", "synthetic tensors are produced in chunks");
  return (emit) => {
    let row = 0;
    base((chunk) => {
      if (chunk.length % rowBytes !== 0) throw new SparrowError("internal", "synthetic chunks are whole rows");
      for (let at = 0; at < chunk.length; at += rowBytes, row++) patch(row, chunk.subarray(at, at + rowBytes));
      emit(chunk);
    });
  };
}

/**
 * A row patch setting element 0 to `first(row)` (where not undefined): the row's first block (one
 * element for float types) is dequantized, changed and quantized again. With `clampBelow`, the
 * block's other elements are first clamped to 3/4 of |element 0|, so that it is the block's
 * largest, which the 32-element quantizers reproduce exactly (it sets the scale).
 *
 * @param type The tensor's GGML type.
 * @param first Element 0 of each row, or undefined to leave the row.
 * @param clampBelow Clamp the block's other elements.
 * @returns The patch.
 */
export function firstElementPatch(
  type: number,
  first: (row: number) => number | undefined,
  clampBelow = false,
): (row: number, bytes: Uint8Array) => void {
  const elems = ggmlType(type)!.blockElems;
  const blockBytes = quantizedBytes(type, elems);
  const values = new Float32Array(elems);
  return (row, bytes) => {
    const v0 = first(row);
    if (v0 === undefined) return;
    if (v0 === 0 && type === QuantType.Q4_0) {
      // Code 8 is zero under any scale: a 7B ReLU up has 460k rows to patch, this is ~10x quicker.
      bytes[2] = (bytes[2] & 0xf0) | 8;
      return;
    }
    const block = bytes.subarray(0, blockBytes);
    dequantize(type, block, elems, values);
    values[0] = v0;
    const limit = clampBelow ? 0.75 * Math.abs(v0) : Infinity;
    for (let j = 1; j < elems; j++) values[j] = Math.max(-limit, Math.min(limit, values[j]));
    quantize(type, values, block);
  };
}

/**
 * Element 0 of each attn_q / attn_k row: the constant parts of q and k, in the rotary pairs slow
 * enough (angle per position at most 1 / contextWindow) to hardly turn within the window. The
 * attention input's xb[0] is about channelInput (attn_norm[0] is calibrated so), so each such
 * pair of q and of k holds beta channelInput in its first coordinate: their products add `score`
 * to a key's score at distance 0, and their cosines' sum falls off once distance turns them.
 *
 * @param plan The construction.
 * @param score The score a key at distance 0 gains, in attention-logit units.
 * @returns Element 0 by row (0 for rows of other pairs).
 */
export function recencyColumn(plan: SparseFfnPlan, score: number): (row: number) => number {
  const pairs = plan.ropeDim / 2;
  const slow = (pair: number) => plan.contextWindow > 0 && plan.ropeTheta ** (-pair / pairs) <= 1 / plan.contextWindow;
  let chosen = 0;
  for (let i = 0; i < pairs; i++) if (slow(i)) chosen++;
  const beta = chosen === 0 ? 0 : Math.sqrt((score * Math.sqrt(plan.headDim)) / chosen) / channelInput;
  return (row) => {
    const i = row % plan.headDim;
    const pair = plan.ropeLayout === "interleaved"
      ? (i % 2 === 0 && i < plan.ropeDim ? i / 2 : -1)
      : i < pairs
      ? i
      : -1;
    return pair >= 0 && slow(pair) ? beta : 0;
  };
}
