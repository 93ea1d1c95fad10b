/**
 * Synthetic Llama models: a valid GGUF v3 file of any shape and weight type, filled with seeded random
 * weights, for testing and benchmarking without downloading real models. Every file is marked
 * `sparrow.synthetic = true` and named like "synthetic llama2-7b q4_0 (seed 1)" so figures measured
 * on it can be labelled as such.
 *
 * Weights are scaled so activations stay O(1) through every layer: matrices N(0, 1/fan_in), token
 * embeddings N(0, 1), norms N(1, 0.1²). Two ways to make them:
 * - "float": draw float32 Gaussians and convert or quantize them (models/ggml_quants.ts), so the
 *   quantized blocks are what a real quantizer makes of such weights. Small models.
 * - "direct": write the encoded elements straight from random bits (random 4/8-bit codes under block
 *   scales drawn around the value that gives the right element spread; floats drawn from a
 *   per-tensor table of Gaussians), so a 7B Q4_0 model is written at disk speed.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { SparrowError } from "../core/errors.ts";
import { gv, type TensorToWrite, type TypedValue, writeGguf } from "../core/gguf_writer.ts";
import type { Activation, RopeLayout } from "../core/model_desc.ts";
import { f32ToBf16Bits, f32ToF16Bits, quantize, quantizedBytes, QuantType } from "./ggml_quants.ts";
import { llama2cTokenizerMetadata, readLlama2cTokenizer } from "./llama2c_tokenizer.ts";
import { generatedVocab } from "./synth_vocab.ts";
import { Rng } from "../core/rng.ts";

export { generatedVocab };

/** The shape of a synthetic model. */
export interface SynthShape {
  dim: number;
  ffnDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  contextLength: number;
  /** Per-head size; default dim / nHeads (other values are written as `attention.key_length`). */
  headDim?: number;
  /** Dimensions RoPE rotates per head; default headDim. */
  ropeDim?: number;
}

/** Named shapes: toy sizes for tests, and real models' shapes for benchmarks. */
export const synthPresets = {
  tiny: { dim: 64, ffnDim: 192, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 300, contextLength: 256 },
  small: { dim: 256, ffnDim: 704, nLayers: 4, nHeads: 8, nKvHeads: 4, vocabSize: 1000, contextLength: 512 },
  "llama2-7b": {
    dim: 4096,
    ffnDim: 11008,
    nLayers: 32,
    nHeads: 32,
    nKvHeads: 32,
    vocabSize: 32000,
    contextLength: 4096,
  },
  "mistral-7b": {
    dim: 4096,
    ffnDim: 14336,
    nLayers: 32,
    nHeads: 32,
    nKvHeads: 8,
    vocabSize: 32000,
    contextLength: 32768,
  },
} as const satisfies Record<string, SynthShape>;

/** A preset name. */
export type SynthPreset = keyof typeof synthPresets;

/** Weight types a synthetic model's matrices can have (norms are always F32). */
export const synthWeightTypes = {
  f32: QuantType.F32,
  f16: QuantType.F16,
  bf16: QuantType.BF16,
  q8_0: QuantType.Q8_0,
  q4_0: QuantType.Q4_0,
  q4_1: QuantType.Q4_1,
} as const;

/** A weight type name. */
export type SynthWeightType = keyof typeof synthWeightTypes;

/** llama.cpp's `general.file_type` for each weight type. */
const fileTypes: Record<SynthWeightType, number> = { f32: 0, f16: 1, q4_0: 2, q4_1: 3, q8_0: 7, bf16: 32 };

/** Options of {@link synthesizeModel}. */
export interface SynthOptions {
  /** A preset name or explicit sizes. Default "tiny". */
  shape?: SynthPreset | SynthShape;
  /** Type of every matrix. Default "f32". */
  weightType?: SynthWeightType;
  /** Reuse the token embedding as the classifier (no `output.weight`). Default false. */
  tiedEmbeddings?: boolean;
  /** FFN activation (`sparrow.ffn_activation`). Default "swiglu". */
  activation?: Activation;
  /** RoPE pairing (`sparrow.rope_layout`). Default "interleaved". */
  ropeLayout?: RopeLayout;
  /** RoPE base. Default 10000. */
  ropeTheta?: number;
  /** RMSNorm epsilon. Default 1e-5. */
  rmsEps?: number;
  /** PRNG seed; the same seed and options give the same file. Default 1. */
  seed?: number;
  /** "generated" (default): a SentencePiece-style vocabulary of the shape's size; "llama2": the real 32k one. */
  vocab?: "generated" | "llama2";
  /** llama2.c `tokenizer.bin` for `vocab: "llama2"`. Default ../shared/models/llama2-tokenizer/tokenizer.bin. */
  llama2TokenizerPath?: string;
  /** "float", "direct", or "auto" (default): float up to 32M matrix elements, direct above. */
  generation?: "auto" | "float" | "direct";
  /** `general.name`; default "synthetic <shape> <type> (seed <n>)". */
  name?: string;
}

/** What {@link synthesizeModel} wrote. */
export interface SynthResult {
  path: string;
  /** `general.name`. */
  name: string;
  /** The shape, with headDim and ropeDim resolved. */
  shape: Required<SynthShape>;
  weightType: SynthWeightType;
  /** How the weights were made. */
  generation: "float" | "direct";
  tensors: number;
  /** File size. */
  bytes: number;
  /** Wall time of generating and writing. */
  seconds: number;
}

/** Called after each tensor is written: (tensors done, total, bytes written so far, tensor name). */
export type SynthProgress = (done: number, total: number, bytes: number, tensor: string) => void;

/** Default location of the Llama-2 tokenizer: the shared models folder beside the repository. */
export const defaultLlama2TokenizerPath: string = fileURLToPath(
  new URL("../../shared/models/llama2-tokenizer/tokenizer.bin", import.meta.url),
);

/** A stable number per tensor name (FNV-1a), so each tensor's values do not depend on write order. */
function streamOf(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

function resolveShape(shape: SynthPreset | SynthShape): { label: string; shape: Required<SynthShape> } {
  let s: SynthShape;
  let label: string;
  if (typeof shape === "string") {
    if (!(shape in synthPresets)) {
      throw new SparrowError(
        "invalid_argument",
        `unknown synthetic shape '${shape}' (presets: ${Object.keys(synthPresets).join(", ")})`,
      );
    }
    s = synthPresets[shape];
    label = shape;
  } else {
    s = shape;
    label = `d${s.dim}-ffn${s.ffnDim}-l${s.nLayers}-h${s.nHeads}-kv${s.nKvHeads}-v${s.vocabSize}`;
  }
  for (const key of ["dim", "ffnDim", "nLayers", "nHeads", "nKvHeads", "vocabSize", "contextLength"] as const) {
    const v = s[key];
    if (!Number.isInteger(v) || v < 1 || v > 1 << 24) {
      throw new SparrowError("invalid_argument", `synthetic shape ${key} = ${v} is not a size in [1, 2^24]`);
    }
  }
  if (s.nHeads % s.nKvHeads !== 0) {
    throw new SparrowError("invalid_argument", `nHeads ${s.nHeads} is not a multiple of nKvHeads ${s.nKvHeads}`);
  }
  if (s.headDim === undefined && s.dim % s.nHeads !== 0) {
    throw new SparrowError("invalid_argument", `dim ${s.dim} is not a multiple of nHeads ${s.nHeads}`);
  }
  const headDim = s.headDim ?? s.dim / s.nHeads;
  const ropeDim = s.ropeDim ?? headDim;
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
    throw new SparrowError("invalid_argument", `headDim ${headDim} must be an even integer`);
  }
  if (!Number.isInteger(ropeDim) || ropeDim < 2 || ropeDim % 2 !== 0 || ropeDim > headDim) {
    throw new SparrowError("invalid_argument", `ropeDim ${ropeDim} must be even and at most headDim ${headDim}`);
  }
  return { label, shape: { ...s, headDim, ropeDim } };
}

/** One tensor to make: its GGUF dims ([columns, rows]) and the spread of its elements. */
interface TensorPlan {
  name: string;
  cols: number;
  rows: number;
  /** Norm vectors: F32, N(1, 0.1²). Matrices: N(0, sigma²) in the weight type. */
  norm: boolean;
  sigma: number;
}

function planTensors(s: Required<SynthShape>, tied: boolean): TensorPlan[] {
  const qDim = s.nHeads * s.headDim;
  const kvDim = s.nKvHeads * s.headDim;
  const mat = (name: string, cols: number, rows: number, sigma = 1 / Math.sqrt(cols)): TensorPlan => ({
    name,
    cols,
    rows,
    norm: false,
    sigma,
  });
  const norm = (name: string): TensorPlan => ({ name, cols: s.dim, rows: 1, norm: true, sigma: 0.1 });
  const plan = [mat("token_embd.weight", s.dim, s.vocabSize, 1)];
  for (let l = 0; l < s.nLayers; l++) {
    const n = (t: string) => `blk.${l}.${t}.weight`;
    plan.push(
      norm(n("attn_norm")),
      mat(n("attn_q"), s.dim, qDim),
      mat(n("attn_k"), s.dim, kvDim),
      mat(n("attn_v"), s.dim, kvDim),
      mat(n("attn_output"), qDim, s.dim),
      norm(n("ffn_norm")),
      mat(n("ffn_gate"), s.dim, s.ffnDim),
      mat(n("ffn_up"), s.dim, s.ffnDim),
      mat(n("ffn_down"), s.ffnDim, s.dim),
    );
  }
  plan.push(norm("output_norm.weight"));
  if (!tied) plan.push(mat("output.weight", s.dim, s.vocabSize));
  return plan;
}

/** Bytes per emitted chunk: large enough that write calls are few, small enough to stay in cache-ish memory. */
const chunkBytesTarget = 4 << 20;

/** Float path: Gaussian float32 rows, converted or quantized by ggml_quants. */
function floatProducer(t: TensorPlan, type: number, rng: Rng): TensorToWrite["data"] {
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

/** Spread of the codes direct generation draws: uniform 4-bit q - 8 and uniform int8 in ±127. */
const nibbleStd = Math.sqrt((16 * 16 - 1) / 12);
const int8Std = Math.sqrt((255 * 255 - 1) / 12);

/**
 * Direct path: random codes under random block scales (quantized types) or table lookups of
 * Gaussians (float types), written into one reused buffer per chunk of rows.
 */
function directProducer(t: TensorPlan, type: number, rng: Rng, scratch: { buf: ArrayBuffer }): TensorToWrite["data"] {
  return (emit) => {
    const rowBytes = quantizedBytes(type, t.cols);
    const rowsPerChunk = Math.max(1, Math.floor(chunkBytesTarget / rowBytes));
    const need = Math.ceil((rowsPerChunk * rowBytes) / 4) * 4;
    if (scratch.buf.byteLength < need) scratch.buf = new ArrayBuffer(need);
    const words = new Uint32Array(scratch.buf, 0, need / 4);
    const bytes = new Uint8Array(scratch.buf, 0, need);
    // Per-tensor tables: 256 block scales (±25% around the scale that gives element spread sigma)
    // indexed by a random byte, and 4096 Gaussians for the float types.
    const scaleFor = type === QuantType.Q8_0 ? t.sigma / int8Std : t.sigma / nibbleStd;
    const dBits = new Uint16Array(256);
    const mBits = new Uint16Array(256);
    for (let k = 0; k < 256; k++) {
      const d = scaleFor * (0.75 + 0.5 * rng.uniform());
      // Q4_0's d = max / -8 takes the sign opposite to the block's largest element: half are negative,
      // which also cancels the -d/2 mean of the codes.
      dBits[k] = f32ToF16Bits(type === QuantType.Q4_0 && k % 2 === 1 ? -d : d);
      mBits[k] = f32ToF16Bits(-d * (7 + rng.uniform())); // Q4_1: centres q * d + m near zero
    }
    const gauss = new Float32Array(4096);
    for (let k = 0; k < gauss.length; k++) gauss[k] = t.sigma * rng.normal();
    const gauss32 = new Uint32Array(gauss.buffer);
    const gauss16 = Uint16Array.from(gauss, type === QuantType.BF16 ? f32ToBf16Bits : f32ToF16Bits);
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
          rng.fill(words.subarray(0, nWords));
          for (let at = 0; at < len; at += 18) {
            const k = bytes[at];
            bytes[at] = dBits[k] & 255, bytes[at + 1] = dBits[k] >>> 8;
          }
          break;
        case QuantType.Q4_1:
          rng.fill(words.subarray(0, nWords));
          for (let at = 0; at < len; at += 20) {
            const k = bytes[at];
            bytes[at] = dBits[k] & 255, bytes[at + 1] = dBits[k] >>> 8;
            bytes[at + 2] = mBits[k] & 255, bytes[at + 3] = mBits[k] >>> 8;
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
          for (let at = 0; at < len; at += 34) {
            const k = bytes[at];
            bytes[at] = dBits[k] & 255, bytes[at + 1] = dBits[k] >>> 8;
          }
          break;
      }
      emit(bytes.subarray(0, len));
    }
  };
}

function vocabMetadata(options: SynthOptions, vocabSize: number): [string, TypedValue][] {
  const vocab = options.vocab ?? "generated";
  if (vocab !== "generated" && vocab !== "llama2") {
    throw new SparrowError("invalid_argument", `vocab '${vocab}' is not "generated" or "llama2"`);
  }
  if (vocab === "llama2" && vocabSize !== 32000) {
    throw new SparrowError(
      "invalid_argument",
      `vocab "llama2" has 32000 tokens but the shape's vocabSize is ${vocabSize}`,
    );
  }
  const path = options.llama2TokenizerPath ?? defaultLlama2TokenizerPath;
  // Both vocabularies are SentencePiece-style with the same special ids (0 unk, 1 BOS, 2 EOS).
  const v = vocab === "llama2" ? llama2cTokenizerMetadata(readLlama2cTokenizer(path, vocabSize), path) : undefined;
  const g = v ? undefined : generatedVocab(vocabSize);
  return [
    ["tokenizer.ggml.model", gv.str("llama")],
    ["tokenizer.ggml.tokens", gv.strings(g?.tokens ?? v!.get("tokenizer.ggml.tokens") as string[])],
    ["tokenizer.ggml.scores", gv.f32s(g?.scores ?? v!.get("tokenizer.ggml.scores") as Float32Array)],
    ["tokenizer.ggml.token_type", gv.i32s(g?.types ?? v!.get("tokenizer.ggml.token_type") as Int32Array)],
    ["tokenizer.ggml.unknown_token_id", gv.u32(0)],
    ["tokenizer.ggml.bos_token_id", gv.u32(1)],
    ["tokenizer.ggml.eos_token_id", gv.u32(2)],
    ["tokenizer.ggml.add_bos_token", gv.bool(true)],
    ["tokenizer.ggml.add_eos_token", gv.bool(false)],
    ["tokenizer.ggml.add_space_prefix", gv.bool(true)],
  ];
}

/** Matrix elements up to which "auto" generation draws floats and quantizes them (about a second). */
const floatPathMaxElements = 32 << 20;

/**
 * Writes a synthetic Llama GGUF model.
 *
 * @param path Output file (overwritten).
 * @param options Shape, weight type, architecture variants, seed and vocabulary.
 * @param onProgress Called after each tensor.
 * @returns What was written and how long it took.
 * @throws {SparrowError} `invalid_argument` for an impossible shape or option (e.g. a quantized type
 * whose rows are not whole 32-element blocks), `io` when the Llama-2 tokenizer cannot be read.
 * @example
 * ```ts ignore
 * import { synthesizeModel } from "./synth.ts";
 * const r = synthesizeModel("/tmp/tiny.gguf", { shape: "tiny", weightType: "q4_0", seed: 7 });
 * console.log(r.name, r.bytes, r.seconds);
 * ```
 */
export function synthesizeModel(path: string, options: SynthOptions = {}, onProgress?: SynthProgress): SynthResult {
  const t0 = performance.now();
  const { label, shape } = resolveShape(options.shape ?? "tiny");
  const weightType = options.weightType ?? "f32";
  if (!(weightType in synthWeightTypes)) {
    throw new SparrowError(
      "invalid_argument",
      `weight type '${weightType}' is not one of ${Object.keys(synthWeightTypes).join(", ")}`,
    );
  }
  const type = synthWeightTypes[weightType];
  const seed = options.seed ?? 1;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new SparrowError("invalid_argument", `seed ${seed} is not a 32-bit unsigned integer`);
  }
  const ropeTheta = options.ropeTheta ?? 10000;
  const rmsEps = options.rmsEps ?? 1e-5;
  if (!(ropeTheta > 0)) throw new SparrowError("invalid_argument", `ropeTheta ${ropeTheta} must be positive`);
  if (!(rmsEps > 0 && rmsEps < 1)) throw new SparrowError("invalid_argument", `rmsEps ${rmsEps} must be in (0, 1)`);
  const tied = options.tiedEmbeddings ?? false;
  const plan = planTensors(shape, tied);
  for (const t of plan) {
    if (!t.norm && t.cols % 32 !== 0 && type !== QuantType.F32 && type !== QuantType.F16 && type !== QuantType.BF16) {
      throw new SparrowError(
        "invalid_argument",
        `tensor '${t.name}' has rows of ${t.cols}, not a whole number of 32-element ${weightType} blocks`,
      );
    }
  }
  const elements = plan.reduce((a, t) => a + (t.norm ? 0 : t.cols * t.rows), 0);
  const generation = options.generation === "float" || options.generation === "direct"
    ? options.generation
    : elements <= floatPathMaxElements
    ? "float"
    : "direct";
  const name = options.name ?? `synthetic ${label} ${weightType} (seed ${seed})`;
  const kvHeadDims: [string, TypedValue][] = shape.headDim !== shape.dim / shape.nHeads
    ? [["llama.attention.key_length", gv.u32(shape.headDim)], ["llama.attention.value_length", gv.u32(shape.headDim)]]
    : [];
  const metadata: [string, TypedValue][] = [
    ["general.architecture", gv.str("llama")],
    ["general.name", gv.str(name)],
    ["general.file_type", gv.u32(fileTypes[weightType])],
    ["sparrow.synthetic", gv.bool(true)],
    ["sparrow.synthetic_seed", gv.u32(seed)],
    ["llama.context_length", gv.u32(shape.contextLength)],
    ["llama.embedding_length", gv.u32(shape.dim)],
    ["llama.feed_forward_length", gv.u32(shape.ffnDim)],
    ["llama.block_count", gv.u32(shape.nLayers)],
    ["llama.attention.head_count", gv.u32(shape.nHeads)],
    ["llama.attention.head_count_kv", gv.u32(shape.nKvHeads)],
    ...kvHeadDims,
    ["llama.rope.dimension_count", gv.u32(shape.ropeDim)],
    ["llama.rope.freq_base", gv.f32(ropeTheta)],
    ["llama.attention.layer_norm_rms_epsilon", gv.f32(rmsEps)],
    ["llama.vocab_size", gv.u32(shape.vocabSize)],
    ["sparrow.ffn_activation", gv.str(options.activation ?? "swiglu")],
    ["sparrow.rope_layout", gv.str(options.ropeLayout ?? "interleaved")],
    ...vocabMetadata(options, shape.vocabSize),
  ];
  const scratch = { buf: new ArrayBuffer(0) };
  const tensors: TensorToWrite[] = plan.map((t) => {
    const rng = new Rng(seed, streamOf(t.name));
    const tType = t.norm ? QuantType.F32 : type;
    return {
      name: t.name,
      dims: t.norm ? [t.cols] : [t.cols, t.rows],
      type: tType,
      data: t.norm || generation === "float" ? floatProducer(t, tType, rng) : directProducer(t, tType, rng, scratch),
    };
  });
  const bytes = writeGguf(path, metadata, tensors, {
    onProgress: (done, total, written) => onProgress?.(done, total, written, tensors[done - 1].name),
  });
  return {
    path,
    name,
    shape,
    weightType,
    generation,
    tensors: tensors.length,
    bytes,
    seconds: (performance.now() - t0) / 1000,
  };
}
