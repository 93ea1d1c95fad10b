/**
 * Synthetic Llama models: a valid GGUF v3 file of any shape and weight type, filled with seeded random
 * weights, for testing and benchmarking without downloading real models. Every file is marked
 * `sparrow.synthetic = true` and named like "synthetic llama2-7b q4_0 (seed 1)" so figures measured
 * on it can be labelled as such.
 *
 * Weights are scaled so activations stay O(1) through every layer: matrices N(0, 1/fan_in), token
 * embeddings N(0, 1), norms N(1, 0.1²). Two ways to make them (models/synth_weights.ts):
 * - "float": draw float32 Gaussians and convert or quantize them (models/ggml_quants.ts), so the
 *   quantized blocks are what a quantizer makes of such weights. Small models.
 * - "direct": write the encoded elements straight from random bits (random codes under block
 *   scales drawn around the value that gives the right element spread; floats drawn from a
 *   per-tensor table of Gaussians), so a 7B model is written at disk speed.
 *
 * Weight types are one type for every matrix, or llama.cpp's Q4_K_M / Q5_K_M mixtures (see
 * {@link synthTensorType}, models/synth_types.ts); `tensorTypes` overrides single tensors.
 *
 * With `sparseFfn` (ReLU and dReLU models), the FFN activations are sparse as in ReLU-fied models,
 * with hot and cold neurons and a low-rank gate: models/synth_sparse.ts.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { SparrowError } from "../core/errors.ts";
import { gv, type TensorToWrite, type TypedValue, writeGguf } from "../core/gguf_writer.ts";
import type { Activation, RopeLayout } from "../core/model_desc.ts";
import { llama2cTokenizerMetadata, readLlama2cTokenizer } from "./llama2c_tokenizer.ts";
import { generatedVocab } from "./synth_vocab.ts";
import {
  synthFileTypes,
  type SynthTensorType,
  synthTensorType,
  type SynthWeightType,
  synthWeightTypes,
  tensorTypesOf,
} from "./synth_types.ts";
import { directProducer, floatProducer, type TensorPlan } from "./synth_weights.ts";
import type { SparseFfnOptions, SparseFfnPlan } from "./synth_sparse.ts";
import { sparseFfnMetadata, sparseFfnProducer, sparseTensorPlan } from "./synth_sparse.ts";
import { buildSparseFfn, type SparseFfnReport } from "./synth_sparse_calibration.ts";
import { Rng } from "../core/rng.ts";

export { generatedVocab, type SynthTensorType, synthTensorType, type SynthWeightType, synthWeightTypes };

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
  /**
   * Per-tensor types over the weight type's: keys are matrix names without ".weight", for every
   * layer ("attn_v", "output", "token_embd") or one ("blk.3.attn_v", which wins over "attn_v").
   */
  tensorTypes?: Readonly<Record<string, SynthTensorType>>;
  /**
   * Build in sparse FFN activations (activation "relu" or "drelu" only): about `sparsity` of the
   * neurons inactive per token, hot and cold neurons, a low-rank gate a predictor can learn. See
   * models/synth_sparse.ts for the construction; it is recorded in `sparrow.synthetic_*` metadata.
   */
  sparseFfn?: SparseFfnOptions;
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
  /** With `sparseFfn`: the construction's resolved options and its calibration (with the proxy's statistics). */
  sparseFfn?: SparseFfnReport;
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
  return writeModel(path, options, onProgress);
}

/** synthesizeModel, or (with `fixedSparse`) a calibration proxy whose sparse construction is given. */
function writeModel(
  path: string,
  options: SynthOptions,
  onProgress?: SynthProgress,
  fixedSparse?: SparseFfnPlan,
): SynthResult {
  const t0 = performance.now();
  const { label, shape } = resolveShape(options.shape ?? "tiny");
  const weightType = options.weightType ?? "f32";
  if (!(weightType in synthWeightTypes)) {
    throw new SparrowError(
      "invalid_argument",
      `weight type '${weightType}' is not one of ${Object.keys(synthWeightTypes).join(", ")}`,
    );
  }
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
  const types = tensorTypesOf(plan, weightType, shape.nLayers, tied, options.tensorTypes ?? {});
  const elements = plan.reduce((a, t) => a + (t.norm ? 0 : t.cols * t.rows), 0);
  const generation = options.generation === "float" || options.generation === "direct"
    ? options.generation
    : elements <= floatPathMaxElements
    ? "float"
    : "direct";
  const activation = options.activation ?? "swiglu";
  const ropeLayout = options.ropeLayout ?? "interleaved";
  let sparse = fixedSparse;
  let sparseReport: SparseFfnReport | undefined;
  if (!sparse && options.sparseFfn) {
    // The proxy: F32 floats of the same construction, with the given calibration.
    const proxy = { weightType: "f32", generation: "float", activation, ropeLayout, ropeTheta, rmsEps, seed } as const;
    ({ plan: sparse, report: sparseReport } = buildSparseFfn(
      options.sparseFfn,
      activation,
      shape,
      { layout: ropeLayout, theta: ropeTheta },
      seed,
      (proxyPath, proxyShape, proxyPlan) =>
        writeModel(proxyPath, { ...proxy, shape: proxyShape }, undefined, proxyPlan),
    ));
  }
  const sparseLabel = sparse ? ` ${activation} sparsity ${sparse.sparsity}` : "";
  const name = options.name ?? `synthetic ${label} ${weightType}${sparseLabel} (seed ${seed})`;
  const kvHeadDims: [string, TypedValue][] = shape.headDim !== shape.dim / shape.nHeads
    ? [["llama.attention.key_length", gv.u32(shape.headDim)], ["llama.attention.value_length", gv.u32(shape.headDim)]]
    : [];
  const metadata: [string, TypedValue][] = [
    ["general.architecture", gv.str("llama")],
    ["general.name", gv.str(name)],
    ["general.file_type", gv.u32(synthFileTypes[weightType])],
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
    ...(sparse ? sparseFfnMetadata(sparse) : []),
    ["sparrow.ffn_activation", gv.str(activation)],
    ["sparrow.rope_layout", gv.str(ropeLayout)],
    ...vocabMetadata(options, shape.vocabSize),
  ];
  const scratch = { buf: new ArrayBuffer(0) };
  const tensors: TensorToWrite[] = plan.map((t0) => {
    const t = sparse ? sparseTensorPlan(sparse, t0) : t0;
    const rng = new Rng(seed, streamOf(t.name));
    const tType = types.get(t.name)!;
    const data = t.norm || generation === "float"
      ? floatProducer(t, tType, rng)
      : directProducer(t, tType, rng, scratch);
    return {
      name: t.name,
      dims: t.norm ? [t.cols] : [t.cols, t.rows],
      type: tType,
      data: sparse ? sparseFfnProducer(sparse, t, tType, rng, data) : data,
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
    ...(sparseReport && { sparseFfn: sparseReport }),
  };
}
