/**
 * A plain float64 Llama forward pass in TypeScript: the oracle the Zig engine is tested against.
 *
 * It reads the same metadata through models/llama.ts, dequantizes every weight exactly (into
 * float64) with models/ggml_quants.ts and computes every activation in float64 without quantizing
 * it, so the only differences from the engine are the engine's own roundings (f32 arithmetic, 8-bit
 * activation blocks for quantized weights: 32 elements per block for the 32-element types, 256 for
 * the K-quants); on request it applies the 8-bit rounding too. It is slow and holds all weights as
 * float64: small models only.
 *
 * The code reads top to bottom like llama2.c's `forward()`; shapes are noted as (rows, columns) of
 * row-major float64 arrays.
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";
import { type GgufTensorInfo, readGguf } from "../core/gguf.ts";
import type { LlamaHparams } from "../core/model_desc.ts";
import { dequantize, f16BitsToF32, f32ToF16Bits, qk, qkK, QuantType } from "./ggml_quants.ts";
import { llamaHparams, type LlamaOverrides, llamaTensors } from "./llama.ts";

/** Options of {@link referenceForward}: the overrides `loadModel` accepts, plus engine emulation. */
export interface ReferenceForwardOptions extends LlamaOverrides {
  /**
   * Round the input of every quantized matrix to 8-bit blocks as the engine does before its integer
   * dot products: for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 per 32 elements d = max|x|/127, q = round(x/d) half
   * away from zero, x = q times d rounded to f16 ("q8"); for Q4_K/Q5_K/Q6_K per 256 elements, with d
   * kept in f32 ("q8k"). Off by default: the plain oracle is the unquantized model; on, the engine
   * should match to within float32 rounding, which exposes small bugs that the 8-bit error would hide.
   */
  emulateActivationQuantization?: boolean;
  /**
   * Observes every layer's FFN at every position: the gate and up pre-activations (ffn, before the
   * activation function) and the FFN input (dim: rmsnorm(x) times ffn_norm), for measuring activation
   * statistics (models/activation_stats.ts). The arrays are the pass's own buffers, valid only during
   * the call: copy what you keep.
   */
  onFfn?: FfnObserver;
}

/** Called with (layer, position, gate, up, input); see {@link ReferenceForwardOptions.onFfn}. */
export type FfnObserver = (
  layer: number,
  position: number,
  gate: Float64Array,
  up: Float64Array,
  input: Float64Array,
) => void;

/** How the engine rounds a matrix's input: not at all (float weights), q8 or q8k blocks. */
type InputRounding = "none" | "q8" | "q8k";

/** A weight matrix (rows, cols) and how its input is rounded (when emulating). */
interface Matrix {
  w: Float64Array;
  rows: number;
  cols: number;
  inputRounding: InputRounding;
}

/** The engine's activation format for each quantized weight type (zig/src/kernels/dot.zig). */
const inputRoundingOf: ReadonlyMap<number, InputRounding> = new Map([
  [QuantType.Q8_0, "q8"],
  [QuantType.Q4_0, "q8"],
  [QuantType.Q4_1, "q8"],
  [QuantType.Q5_0, "q8"],
  [QuantType.Q5_1, "q8"],
  [QuantType.Q4_K, "q8k"],
  [QuantType.Q5_K, "q8k"],
  [QuantType.Q6_K, "q8k"],
]);

/** Every weight, dequantized to float64. */
interface Weights {
  tokenEmbd: Matrix; // (vocab, dim)
  layers: {
    attnNorm: Float64Array; // (dim)
    wq: Matrix; // (n_heads * head_dim, dim)
    wk: Matrix; // (n_kv_heads * head_dim, dim)
    wv: Matrix; // (n_kv_heads * head_dim, dim)
    wo: Matrix; // (dim, n_heads * head_dim)
    ffnNorm: Float64Array; // (dim)
    wGate: Matrix; // (ffn, dim)
    wUp: Matrix; // (ffn, dim)
    wDown: Matrix; // (dim, ffn)
  }[];
  outputNorm: Float64Array; // (dim)
  classifier: Matrix; // (vocab, dim): output.weight, or the token embedding when tied
}

function readBytes(file: Deno.FsFile, path: string, t: GgufTensorInfo): Uint8Array {
  const bytes = new Uint8Array(t.nBytes);
  file.seekSync(t.offset, Deno.SeekMode.Start);
  let got = 0;
  while (got < bytes.length) {
    const n = file.readSync(bytes.subarray(got));
    if (n === null || n === 0) throw new SparrowError("io", `${path}: unexpected end of file reading '${t.name}'`);
    got += n;
  }
  return bytes;
}

/**
 * The engine's 8-bit activation blocks, as values: x <- d * round(x / d) with d = max|x| / 127 per
 * block; "q8": blocks of 32, d rounded to f16 (the offset terms of Q4_0/Q5_0 and the mins of
 * Q4_1/Q5_1 multiply the same rounded values, f16(d) * sum(q)); "q8k": blocks of 256, d in f32 (the
 * K-quants' mins and Q6_K's -32 use the integer sums of the same q).
 */
function roundToInt8Blocks(x: Float64Array, rounding: "q8" | "q8k"): Float64Array {
  const out = new Float64Array(x.length);
  const block = rounding === "q8" ? qk : qkK;
  for (let b = 0; b < x.length; b += block) {
    let amax = 0;
    for (let j = b; j < b + block; j++) amax = Math.max(amax, Math.abs(x[j]));
    // The engine works in f32: d and 1/d are f32, the product x * (1/d) is rounded to f32.
    const d = Math.fround(amax / 127);
    const id = d !== 0 ? Math.fround(1 / d) : 0;
    const dStored = rounding === "q8" ? f16BitsToF32(f32ToF16Bits(d)) : d;
    for (let j = b; j < b + block; j++) {
      const v = Math.fround(Math.fround(x[j]) * id);
      out[j] = (v < 0 ? -Math.round(-v) : Math.round(v)) * dStored; // halves away from zero, as Zig's @round
    }
  }
  return out;
}

/** y (rows) = W (rows, cols) · x (cols) */
function matvec(y: Float64Array, m: Matrix, x: Float64Array): void {
  const { w, rows, cols } = m;
  const input = m.inputRounding === "none" ? x : roundToInt8Blocks(x, m.inputRounding);
  for (let r = 0; r < rows; r++) {
    let sum = 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) sum += w[base + c] * input[c];
    y[r] = sum;
  }
}

/** out = x / sqrt(mean(x²) + eps) * weight */
function rmsnorm(out: Float64Array, x: Float64Array, weight: Float64Array, eps: number): void {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  for (let i = 0; i < x.length; i++) out[i] = weight[i] * (x[i] * scale);
}

/**
 * Rotates the first rope_dim elements of each head of `vec` by position `pos`: pair i turns by
 * pos * theta^(-2i / rope_dim); "interleaved" pairs (2i, 2i+1), "neox" pairs (i, i + rope_dim/2).
 */
function rope(vec: Float64Array, hp: LlamaHparams, pos: number): void {
  const half = hp.ropeDim / 2;
  for (let h = 0; h < vec.length; h += hp.headDim) {
    for (let i = 0; i < half; i++) {
      const angle = pos * Math.pow(hp.ropeTheta, -(2 * i) / hp.ropeDim);
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      const a = h + (hp.ropeLayout === "interleaved" ? 2 * i : i);
      const b = h + (hp.ropeLayout === "interleaved" ? 2 * i + 1 : i + half);
      const x0 = vec[a];
      const x1 = vec[b];
      vec[a] = x0 * c - x1 * s;
      vec[b] = x0 * s + x1 * c;
    }
  }
}

function softmax(x: Float64Array, n: number): void {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, x[i]);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    x[i] = Math.exp(x[i] - max);
    sum += x[i];
  }
  for (let i = 0; i < n; i++) x[i] /= sum;
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * Runs the Llama forward pass over `tokens` (positions 0, 1, ...) in float64 and returns the logits
 * of every position.
 *
 * @param path A Llama GGUF file (weights of type F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
 * Q5_K or Q6_K, in any mixture).
 * @param tokens Token ids, from position 0.
 * @param options Activation and RoPE layout overrides, as `loadModel` takes them; optionally round
 * activations to 8 bits as the engine does, and observe FFN pre-activations (see
 * {@link ReferenceForwardOptions}).
 * @returns One float64 logits row (vocab) per token.
 * @throws {SparrowError} as `llamaHparams`/`llamaTensors` do for a bad file, `invalid_argument` for a
 * token id outside the vocabulary or more tokens than the context length, `unsupported` for a
 * weight type it cannot dequantize.
 * @example
 * ```ts ignore
 * import { referenceForward } from "./reference_forward.ts";
 * const logits = referenceForward("tiny.gguf", [1, 42, 7]);
 * logits.length; // 3
 * ```
 */
export function referenceForward(
  path: string,
  tokens: readonly number[],
  options: ReferenceForwardOptions = {},
): Float64Array[] {
  const gguf = readGguf(path);
  const hp = llamaHparams(gguf, options);
  const tensors = llamaTensors(gguf, hp);
  for (const [i, t] of tokens.entries()) {
    if (!Number.isInteger(t) || t < 0 || t >= hp.vocabSize) {
      throw new SparrowError("invalid_argument", `token ${i} = ${t} is outside the vocabulary of ${hp.vocabSize}`);
    }
  }
  if (tokens.length > hp.contextLength) {
    throw new SparrowError("invalid_argument", `${tokens.length} tokens exceed the context length ${hp.contextLength}`);
  }

  const file = Deno.openSync(path);
  let w: Weights;
  try {
    const read = (t: GgufTensorInfo) =>
      dequantize(t.type, readBytes(file, path, t), t.nElements, new Float64Array(t.nElements));
    const emulate = options.emulateActivationQuantization ?? false;
    const matrix = (t: GgufTensorInfo): Matrix => ({
      w: read(t),
      rows: t.dims[1],
      cols: t.dims[0],
      inputRounding: emulate ? inputRoundingOf.get(t.type) ?? "none" : "none",
    });
    const tokenEmbd = matrix(tensors.tokenEmbd);
    w = {
      tokenEmbd,
      layers: tensors.layers.map((l) => ({
        attnNorm: read(l.attnNorm),
        wq: matrix(l.attnQ),
        wk: matrix(l.attnK),
        wv: matrix(l.attnV),
        wo: matrix(l.attnOutput),
        ffnNorm: read(l.ffnNorm),
        wGate: matrix(l.ffnGate),
        wUp: matrix(l.ffnUp),
        wDown: matrix(l.ffnDown),
      })),
      outputNorm: read(tensors.outputNorm),
      classifier: tensors.output ? matrix(tensors.output) : tokenEmbd,
    };
  } finally {
    file.close();
  }

  const { dim, headDim, nHeads, nKvHeads, ffnDim, vocabSize } = hp;
  const qDim = nHeads * headDim;
  const kvDim = nKvHeads * headDim;
  const group = nHeads / nKvHeads; // query heads per kv head
  const nPos = tokens.length;
  // Run state, as llama2.c's RunState.
  const x = new Float64Array(dim); // residual stream
  const xb = new Float64Array(dim); // normed input of a sub-block
  const q = new Float64Array(qDim);
  const k = new Float64Array(kvDim);
  const v = new Float64Array(kvDim);
  const att = new Float64Array(qDim); // attention output, all heads
  const scores = new Float64Array(nPos);
  const delta = new Float64Array(dim); // what a sub-block adds to x
  const hb = new Float64Array(ffnDim);
  const hb2 = new Float64Array(ffnDim);
  const keyCache = w.layers.map(() => new Float64Array(nPos * kvDim)); // (layer)(pos, kv_dim)
  const valueCache = w.layers.map(() => new Float64Array(nPos * kvDim)); // (layer)(pos, kv_dim)
  const logits: Float64Array[] = [];

  for (let pos = 0; pos < nPos; pos++) {
    // x <- token embedding row
    x.set(w.tokenEmbd.w.subarray(tokens[pos] * dim, (tokens[pos] + 1) * dim));

    for (let l = 0; l < hp.nLayers; l++) {
      const lw = w.layers[l];
      // ---- attention ----
      rmsnorm(xb, x, lw.attnNorm, hp.rmsEps);
      matvec(q, lw.wq, xb);
      matvec(k, lw.wk, xb);
      matvec(v, lw.wv, xb);
      rope(q, hp, pos);
      rope(k, hp, pos);
      keyCache[l].set(k, pos * kvDim);
      valueCache[l].set(v, pos * kvDim);
      for (let h = 0; h < nHeads; h++) {
        const qh = h * headDim;
        const kvh = Math.floor(h / group) * headDim;
        for (let t = 0; t <= pos; t++) {
          let dot = 0;
          for (let i = 0; i < headDim; i++) dot += q[qh + i] * keyCache[l][t * kvDim + kvh + i];
          scores[t] = dot / Math.sqrt(headDim);
        }
        softmax(scores, pos + 1);
        for (let i = 0; i < headDim; i++) {
          let sum = 0;
          for (let t = 0; t <= pos; t++) sum += scores[t] * valueCache[l][t * kvDim + kvh + i];
          att[qh + i] = sum;
        }
      }
      matvec(delta, lw.wo, att);
      for (let i = 0; i < dim; i++) x[i] += delta[i];

      // ---- feed-forward ----
      rmsnorm(xb, x, lw.ffnNorm, hp.rmsEps);
      matvec(hb, lw.wGate, xb);
      matvec(hb2, lw.wUp, xb);
      options.onFfn?.(l, pos, hb, hb2, xb);
      for (let i = 0; i < ffnDim; i++) {
        const g = hb[i];
        const u = hb2[i];
        hb[i] = hp.activation === "swiglu"
          ? silu(g) * u
          : hp.activation === "relu"
          ? Math.max(g, 0) * u
          : Math.max(g, 0) * Math.max(u, 0);
      }
      matvec(delta, lw.wDown, hb);
      for (let i = 0; i < dim; i++) x[i] += delta[i];
    }

    // ---- classifier ----
    rmsnorm(xb, x, w.outputNorm, hp.rmsEps);
    const row = new Float64Array(vocabSize);
    matvec(row, w.classifier, xb);
    logits.push(row);
  }
  return logits;
}
