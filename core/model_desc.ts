/**
 * Writes the model description the native core reads (zig/src/engine/model_desc.zig): the
 * hyperparameters plus, for every tensor the forward pass uses, its name, type, shape and absolute
 * file offset. Layout sizes are checked against the library when it is opened (core/ffi.ts).
 *
 * @module
 */
import { layout, modelDescVersion } from "./ffi.ts";
import type { GgufTensorInfo } from "./gguf.ts";

/** FFN activation of a model: silu(gate)*up, relu(gate)*up or relu(gate)*relu(up). */
export type Activation = "swiglu" | "relu" | "drelu";
/** FFN activation kinds, numbered as the core numbers them. */
export const activationIds: Readonly<Record<Activation, number>> = { swiglu: 0, relu: 1, drelu: 2 };

/** Which elements RoPE pairs: (2i, 2i+1) or (i, i + d/2). */
export type RopeLayout = "interleaved" | "neox";
/** RoPE layouts, numbered as the core numbers them. */
export const ropeLayoutIds: Readonly<Record<RopeLayout, number>> = { interleaved: 0, neox: 1 };

/** Hyperparameters of a Llama-family model. */
export interface LlamaHparams {
  /** Transformer blocks. */
  nLayers: number;
  /** Width of the residual stream. */
  dim: number;
  /** Hidden neurons of each FFN. */
  ffnDim: number;
  /** Query heads. */
  nHeads: number;
  /** Key/value heads (grouped-query attention when fewer than nHeads). */
  nKvHeads: number;
  /** Width of one head. */
  headDim: number;
  /** Tokens in the vocabulary. */
  vocabSize: number;
  /** Context length the model was trained for. */
  contextLength: number;
  /** Dimensions of each head that RoPE rotates (≤ headDim). */
  ropeDim: number;
  /** Which elements RoPE pairs. */
  ropeLayout: RopeLayout;
  /** RoPE base frequency. */
  ropeTheta: number;
  /** RMSNorm epsilon. */
  rmsEps: number;
  /** FFN activation. */
  activation: Activation;
}

/** The tensors of one transformer block. */
export interface LlamaLayerTensors {
  attnNorm: GgufTensorInfo;
  attnQ: GgufTensorInfo;
  attnK: GgufTensorInfo;
  attnV: GgufTensorInfo;
  attnOutput: GgufTensorInfo;
  ffnNorm: GgufTensorInfo;
  ffnGate: GgufTensorInfo;
  ffnUp: GgufTensorInfo;
  ffnDown: GgufTensorInfo;
}

/** The tensors of a whole model; `output` is undefined when the classifier is tied to the embedding. */
export interface LlamaTensors {
  tokenEmbd: GgufTensorInfo;
  outputNorm: GgufTensorInfo;
  output: GgufTensorInfo | undefined;
  layers: LlamaLayerTensors[];
}

const encoder = new TextEncoder();

/** Writes one TensorDesc (see zig/src/engine/model_desc.zig) at `at`; nothing for an absent tensor. */
export function writeTensor(view: DataView, at: number, t: GgufTensorInfo | undefined): void {
  if (!t) return; // zeroed: n_dims = 0 marks an absent tensor
  const name = encoder.encode(t.name).subarray(0, 63);
  new Uint8Array(view.buffer, at, 64).set(name);
  view.setBigUint64(at + 64, BigInt(t.offset), true);
  for (let d = 0; d < 4; d++) view.setBigUint64(at + 72 + 8 * d, BigInt(t.dims[d] ?? 1), true);
  view.setUint32(at + 104, t.dims.length, true);
  view.setUint32(at + 108, t.type, true);
}

/**
 * Serialises hyperparameters and tensor locations into the core's `ModelDesc` + `LayerDesc[]` layout.
 *
 * @param hp Hyperparameters.
 * @param tensors Tensor infos from the GGUF header.
 * @returns The bytes to pass to `sp_model_open`.
 */
export function encodeModelDesc(hp: LlamaHparams, tensors: LlamaTensors): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(layout.modelDesc + hp.nLayers * layout.layerDesc);
  const view = new DataView(bytes.buffer);
  const u32 = [
    modelDescVersion,
    hp.nLayers,
    hp.dim,
    hp.ffnDim,
    hp.nHeads,
    hp.nKvHeads,
    hp.headDim,
    hp.vocabSize,
    hp.contextLength,
    hp.ropeDim,
    ropeLayoutIds[hp.ropeLayout],
    activationIds[hp.activation],
  ];
  u32.forEach((v, i) => view.setUint32(4 * i, v, true));
  view.setFloat32(48, hp.ropeTheta, true);
  view.setFloat32(52, hp.rmsEps, true);
  writeTensor(view, 56, tensors.tokenEmbd);
  writeTensor(view, 56 + layout.tensorDesc, tensors.outputNorm);
  writeTensor(view, 56 + 2 * layout.tensorDesc, tensors.output);
  const order: (keyof LlamaLayerTensors)[] = [
    "attnNorm",
    "attnQ",
    "attnK",
    "attnV",
    "attnOutput",
    "ffnNorm",
    "ffnGate",
    "ffnUp",
    "ffnDown",
  ];
  tensors.layers.forEach((layer, l) => {
    const base = layout.modelDesc + l * layout.layerDesc;
    order.forEach((key, j) => writeTensor(view, base + j * layout.tensorDesc, layer[key]));
  });
  return bytes;
}
