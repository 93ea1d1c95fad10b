/**
 * The Llama architecture as GGUF describes it: which metadata keys hold the hyperparameters, which
 * tensors a model must have, and the shape each must be. Resolving and checking all of that here, in
 * TypeScript, lets every error name the key or tensor at fault; the core re-checks sizes against
 * the mapped file.
 *
 * Keys beyond llama.cpp's: `sparrow.ffn_activation` ("swiglu" | "relu" | "drelu", default swiglu) and
 * `sparrow.rope_layout` ("interleaved" | "neox", default interleaved: llama.cpp's converter permutes
 * Q/K so that Llama GGUFs rotate interleaved pairs).
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";
import type { GgufFile, GgufTensorInfo, GgufValue } from "../core/gguf.ts";
import { ggmlTypeName } from "../core/gguf_types.ts";
import type { Activation, LlamaHparams, LlamaLayerTensors, LlamaTensors, RopeLayout } from "../core/model_desc.ts";
import { activationIds, ropeLayoutIds } from "../core/model_desc.ts";

/** Architectures read with the Llama layout. */
export const llamaArchitectures: readonly string[] = ["llama"];

/** Overrides a caller may apply on top of the file's metadata. */
export interface LlamaOverrides {
  /** FFN activation, e.g. to run a ReLU-fied model whose file does not say so. */
  activation?: Activation;
  /** RoPE pairing. */
  ropeLayout?: RopeLayout;
}

function fail(gguf: GgufFile, what: string): never {
  throw new SparrowError("bad_model", `${gguf.path}: ${what}`);
}

function getNumber(gguf: GgufFile, key: string, fallback?: number): number {
  const v: GgufValue | undefined = gguf.metadata.get(key);
  if (v === undefined) {
    if (fallback !== undefined) return fallback;
    fail(gguf, `missing metadata key '${key}'`);
  }
  const n = typeof v === "bigint" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isFinite(n)) fail(gguf, `metadata '${key}' = ${String(v)} is not a number`);
  return n;
}

function getCount(gguf: GgufFile, key: string, max: number, fallback?: number): number {
  const n = getNumber(gguf, key, fallback);
  if (!Number.isInteger(n) || n < 1 || n > max) fail(gguf, `metadata '${key}' = ${n} is outside [1, ${max}]`);
  return n;
}

function getChoice<T extends string>(gguf: GgufFile, key: string, choices: Record<T, number>, fallback: T): T {
  const v = gguf.metadata.get(key);
  if (v === undefined) return fallback;
  if (typeof v !== "string" || !(v in choices)) {
    fail(gguf, `metadata '${key}' = ${String(v)} is not one of ${Object.keys(choices).join(", ")}`);
  }
  return v as T;
}

/**
 * Reads a Llama-family model's hyperparameters from GGUF metadata.
 *
 * @param gguf The parsed header.
 * @param overrides Values that replace what the file says.
 * @returns Checked hyperparameters.
 * @throws {SparrowError} `unsupported` for another architecture, `bad_model` for missing or absurd values.
 */
export function llamaHparams(gguf: GgufFile, overrides: LlamaOverrides = {}): LlamaHparams {
  const arch = gguf.metadata.get("general.architecture");
  if (typeof arch !== "string") fail(gguf, "missing metadata key 'general.architecture'");
  if (!llamaArchitectures.includes(arch)) {
    throw new SparrowError(
      "unsupported",
      `${gguf.path}: architecture '${arch}' is not supported (supported: ${llamaArchitectures.join(", ")})`,
    );
  }
  const nLayers = getCount(gguf, `${arch}.block_count`, 1024);
  const dim = getCount(gguf, `${arch}.embedding_length`, 1 << 17);
  const ffnDim = getCount(gguf, `${arch}.feed_forward_length`, 1 << 20);
  const nHeads = getCount(gguf, `${arch}.attention.head_count`, 1024);
  const nKvHeads = getCount(gguf, `${arch}.attention.head_count_kv`, nHeads, nHeads);
  if (nHeads % nKvHeads !== 0) fail(gguf, `head_count ${nHeads} is not a multiple of head_count_kv ${nKvHeads}`);
  if (dim % nHeads !== 0 && !gguf.metadata.has(`${arch}.attention.key_length`)) {
    fail(gguf, `embedding_length ${dim} is not a multiple of head_count ${nHeads}`);
  }
  const headDim = getCount(gguf, `${arch}.attention.key_length`, 1024, dim / nHeads);
  const tokens = gguf.metadata.get("tokenizer.ggml.tokens");
  const vocabFromTokens = Array.isArray(tokens) ? tokens.length : undefined;
  const vocabSize = getCount(
    gguf,
    `${arch}.vocab_size`,
    1 << 22,
    vocabFromTokens ?? gguf.tensors.get("token_embd.weight")?.dims[1],
  );
  const ropeDim = getCount(gguf, `${arch}.rope.dimension_count`, headDim, headDim);
  if (headDim % 2 !== 0 || ropeDim % 2 !== 0) fail(gguf, `head dim ${headDim} and rope dim ${ropeDim} must be even`);
  const ropeTheta = getNumber(gguf, `${arch}.rope.freq_base`, 10000);
  const rmsEps = getNumber(gguf, `${arch}.attention.layer_norm_rms_epsilon`, 1e-5);
  if (!(ropeTheta > 0)) fail(gguf, `rope.freq_base = ${ropeTheta} must be positive`);
  if (!(rmsEps > 0 && rmsEps < 1)) fail(gguf, `layer_norm_rms_epsilon = ${rmsEps} must be in (0, 1)`);
  return {
    nLayers,
    dim,
    ffnDim,
    nHeads,
    nKvHeads,
    headDim,
    vocabSize,
    contextLength: getCount(gguf, `${arch}.context_length`, 1 << 24, 2048),
    ropeDim,
    ropeTheta,
    rmsEps,
    ropeLayout: overrides.ropeLayout ?? getChoice(gguf, "sparrow.rope_layout", ropeLayoutIds, "interleaved"),
    activation: overrides.activation ?? getChoice(gguf, "sparrow.ffn_activation", activationIds, "swiglu"),
  };
}

function tensor(gguf: GgufFile, name: string, shape: number[], why: string): GgufTensorInfo {
  const t = gguf.tensors.get(name);
  if (!t) fail(gguf, `missing tensor '${name}'`);
  const same = t.dims.length === shape.length && t.dims.every((d, i) => d === shape[i]);
  if (!same) {
    fail(
      gguf,
      `tensor '${name}' (${ggmlTypeName(t.type)}) has shape [${t.dims.join(", ")}], expected [${
        shape.join(", ")
      }] (${why})`,
    );
  }
  return t;
}

/**
 * Finds and shape-checks every tensor the Llama forward pass reads.
 *
 * @param gguf The parsed header.
 * @param hp Hyperparameters from {@link llamaHparams}.
 * @returns The tensors; `output` is undefined when the classifier is tied to the token embedding.
 * @throws {SparrowError} `bad_model` naming a missing tensor or one whose shape does not match.
 */
export function llamaTensors(gguf: GgufFile, hp: LlamaHparams): LlamaTensors {
  const qDim = hp.nHeads * hp.headDim;
  const kvDim = hp.nKvHeads * hp.headDim;
  const dimWhy = `dim ${hp.dim}`;
  const layers: LlamaLayerTensors[] = [];
  for (let l = 0; l < hp.nLayers; l++) {
    const n = (s: string) => `blk.${l}.${s}.weight`;
    layers.push({
      attnNorm: tensor(gguf, n("attn_norm"), [hp.dim], dimWhy),
      attnQ: tensor(gguf, n("attn_q"), [hp.dim, qDim], `dim ${hp.dim}, ${hp.nHeads} heads x ${hp.headDim}`),
      attnK: tensor(gguf, n("attn_k"), [hp.dim, kvDim], `dim ${hp.dim}, ${hp.nKvHeads} kv heads x ${hp.headDim}`),
      attnV: tensor(gguf, n("attn_v"), [hp.dim, kvDim], `dim ${hp.dim}, ${hp.nKvHeads} kv heads x ${hp.headDim}`),
      attnOutput: tensor(gguf, n("attn_output"), [qDim, hp.dim], `${hp.nHeads} heads x ${hp.headDim}, dim ${hp.dim}`),
      ffnNorm: tensor(gguf, n("ffn_norm"), [hp.dim], dimWhy),
      ffnGate: tensor(gguf, n("ffn_gate"), [hp.dim, hp.ffnDim], `dim ${hp.dim}, ffn ${hp.ffnDim}`),
      ffnUp: tensor(gguf, n("ffn_up"), [hp.dim, hp.ffnDim], `dim ${hp.dim}, ffn ${hp.ffnDim}`),
      ffnDown: tensor(gguf, n("ffn_down"), [hp.ffnDim, hp.dim], `ffn ${hp.ffnDim}, dim ${hp.dim}`),
    });
  }
  const vocabWhy = `dim ${hp.dim}, vocab ${hp.vocabSize}`;
  return {
    tokenEmbd: tensor(gguf, "token_embd.weight", [hp.dim, hp.vocabSize], vocabWhy),
    outputNorm: tensor(gguf, "output_norm.weight", [hp.dim], dimWhy),
    output: gguf.tensors.has("output.weight")
      ? tensor(gguf, "output.weight", [hp.dim, hp.vocabSize], vocabWhy)
      : undefined,
    layers,
  };
}
