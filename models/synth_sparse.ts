/**
 * Synthetic ReLU / dReLU Llama models whose FFN activations are sparse the way ReLU-fied models'
 * are (TurboSparse-Mistral: ~90% of neurons inactive per token), for sparse-decode benchmarks: hot
 * and cold neurons, consecutive tokens sharing more of their active sets than distant ones, and a
 * gate a low-rank predictor can learn. Every figure measured on them is synthetic; the construction
 * is recorded in `sparrow.synthetic_*` metadata. Options: {@link SparseFfnOptions}.
 *
 * The construction, per layer:
 * - A bias channel. Residual dimension 0 is a constant: every token embedding has x[0] = 4 (the
 *   largest element of its first block, which the 32-element quantizers keep exactly), and
 *   attn_output and ffn_down have an all-zero row 0, so no layer changes it. The FFN input
 *   xb = rmsnorm(x) ⊙ ffn_norm then has xb[0] = ffn_norm[0] · 4 / rms(x), and a gate row's
 *   element 0 acts as the neuron's bias. output_norm[0] is 0: the classifier does not see it.
 * - Firing probabilities: neuron i fires with probability p_i, a capped power law of its rank
 *   (p ∝ rank^-skew, at most maxFiring, mean 1 - sparsity), ranks shuffled per layer.
 * - Biases: ffn_norm[0] makes xb[0] about 3 ({@link channelInput}), and the gate row's element 0
 *   is Φ⁻¹(q_i) |w_i| / 3, w_i the row's other elements. xb's other elements are about N(0, 1),
 *   so the bias is Φ⁻¹(q_i) standard deviations of the rest of the pre-activation (about Gaussian
 *   over tokens): the gate is positive with probability q_i. ReLU: q_i = p_i (up's element 0 is
 *   0). dReLU fires when gate and up are both positive: up is built like the gate (same B, own A)
 *   and both get q_i = sqrt(p_i). rms(x) grows through the layers by amounts that depend on
 *   everything before, so ffn_norm[0] is measured, not computed: models/synth_sparse_calibration.ts
 *   runs a narrow proxy of the same construction through the float64 oracle and solves each
 *   layer's scale for the target sparsity.
 * - A low-rank gate. Real gates are full rank, but their inputs concentrate in few directions,
 *   which is what lets a small low-rank predictor guess the active set. Here inputs are spread
 *   out, so the gate itself is low-rank plus a small full-rank part: W = A·Bᵀ + N, with A (ffn,
 *   rank) Gaussian, B (dim, rank) one Gaussian entry per input dimension in column k for the k-th
 *   run of 32-element blocks, N with `gateNoise` of each row's variance (models/synth_sparse_weights.ts).
 * - Context. Tokens are independent draws, so what makes consecutive tokens' FFN inputs alike is
 *   attention: q and k get constant parts (attn_norm[0] makes attention's xb[0] about 3 too, and
 *   column 0 of attn_q / attn_k puts it in the rotary pairs that turn by at most 1 / contextWindow
 *   per position), whose RoPE-rotated products favour keys within about contextWindow tokens; v
 *   ignores the channel (column 0 is zero), and attn_output is scaled by contextGain so that the
 *   window's average is a large part of each FFN input.
 *
 * Measured (synthetic; the small preset, 4 layers, 127 tokens of English text through the float64
 * oracle, default options; models/synth_sparse_test.ts): 89.1-90.1% inactive (ReLU/dReLU, F32 and
 * Q4_0); the top 5% of neurons carry 39-45% of activations (at most 50% is possible at 90%
 * sparsity), the top 20% 76-85%; Jaccard of consecutive tokens' active sets 0.48-0.52 against
 * 0.33-0.40 for pairs further apart. 32 layers (the 128-wide calibration proxy of a 7B model, 63
 * random tokens): 90% inactive in every layer, top 5% / 20% carry 46% / 90% (ReLU) and 47% / 96%
 * (dReLU), Jaccard 0.70 against 0.46 (ReLU) and 0.71 against 0.55 (dReLU): context accumulates
 * through the layers, so deep layers fire more locally in time.
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";
import { gv, type TensorToWrite, type TypedValue } from "../core/gguf_writer.ts";
import type { Activation, RopeLayout } from "../core/model_desc.ts";
import type { Rng } from "../core/rng.ts";
import { quantize, quantizedBytes } from "./ggml_quants.ts";
import { firstElementPatch, groupBlock, lowRankProducer, patchRows, recencyColumn } from "./synth_sparse_weights.ts";
import type { TensorPlan } from "./synth_weights.ts";

/** Options of `synthesizeModel`'s `sparseFfn`: the activation statistics to build in. */
export interface SparseFfnOptions {
  /** Target fraction of FFN neurons inactive per token (mean over neurons, tokens and layers). Default 0.9. */
  sparsity?: number;
  /**
   * Power-law exponent of firing probability against rank: p ∝ rank^-skew. 0 gives every neuron the
   * same probability; the default 1.2 puts ~42% of activations on the 5% most active neurons and
   * ~73% on the top 20% at sparsity 0.9 (no more than 5% / (1 - sparsity) is possible).
   */
  skew?: number;
  /** Highest firing probability of any neuron, in (1 - sparsity, 1). Default 0.95. */
  maxFiring?: number;
  /**
   * Rank of the gate's low-rank part, in [1, ceil(dim / 32)]: B's columns are runs of whole 32-element
   * blocks of input dimensions (which is what lets a 7B Q4_0 gate be written in seconds). Default
   * ceil(dim / 32), at most 256: 128 at 7B, 8 at dim 256.
   */
  gateRank?: number;
  /** Share of each gate row's variance in its full-rank part, in [0, 0.99]. Default 0.1. */
  gateNoise?: number;
  /**
   * Tokens over which attention spreads about evenly before falling off (see the module doc), in
   * [0, 1024]: what makes consecutive tokens' FFN inputs, and so their active sets, more alike than
   * distant ones'. 0: attention has no preference for recent tokens. Default 8.
   */
  contextWindow?: number;
  /**
   * Scale of attn_output (times the dense model's), in [0, 8]: how much of the FFN input is carried
   * context (the window's tokens) rather than the token itself. Default 2.
   */
  contextGain?: number;
}

/** The resolved construction of a sparse-FFN model. */
export interface SparseFfnPlan {
  activation: "relu" | "drelu";
  sparsity: number;
  skew: number;
  maxFiring: number;
  gateRank: number;
  gateNoise: number;
  contextWindow: number;
  contextGain: number;
  dim: number;
  headDim: number;
  ropeDim: number;
  ropeLayout: RopeLayout;
  ropeTheta: number;
  ffnDim: number;
  nLayers: number;
  seed: number;
  /** Firing probability by rank, descending (ffn). */
  firing: Float64Array;
  /** ffn_norm[0] of each layer (nLayers); see models/synth_sparse_calibration.ts. */
  ffnNormBias: Float64Array;
  /** attn_norm[0] of each layer (nLayers): makes the attention input's xb[0] about channelInput. */
  attnNormBias: Float64Array;
}

/** x[0], the bias channel: larger than any other element of an embedding's first block, which are clamped below it. */
export const biasChannelValue = 4;
/**
 * xb[0], the bias channel in the normalized inputs of attention and FFN (attn_norm[0] and
 * ffn_norm[0] are calibrated to give it): about the largest element of a 32-element block of
 * N(0, 1) inputs, so the engine's 8-bit activation blocks round its neighbours as finely as any
 * others (at ~sqrt(dim) it made a Q4_0 model's logits twice as sensitive to that rounding). The
 * weights that read it (gate element 0, the constant parts of q and k) are larger instead, and
 * crush the rest of their first block, 31 of dim inputs.
 */
export const channelInput = 3;
/**
 * How much higher, in attention-logit units, a key at distance 0 scores than one far away, from the
 * constant parts of q and k: large enough that the window's tokens stand well above the random
 * part of the scores (standard deviation ~1); chosen by measuring consecutive vs distant overlap.
 */
const recencyScore = 16;
/** Probabilities are kept in [pFloor, 1 - pFloor], so every bias is finite. */
const pFloor = 1e-4;

/** Standard normal CDF by its Taylor series (exact to ~1e-13 for |z| < 4, all this module needs). */
export function normalCdf(z: number): number {
  const x = Math.max(-6, Math.min(6, z)) / Math.SQRT2;
  let term = x;
  let sum = x;
  for (let n = 1; n < 200 && Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
    term *= (-x * x) / n;
    sum += term / (2 * n + 1);
  }
  return 0.5 + sum / Math.sqrt(Math.PI);
}

/** Φ⁻¹(p) by bisection of {@link normalCdf}, for p in [1e-4, 1 - 1e-4]. */
export function normalQuantile(p: number): number {
  let lo = -4;
  let hi = 4;
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (normalCdf(mid) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/**
 * Firing probabilities by rank: p_k = clamp(C k^-skew, 1e-4, maxFiring) for k = 1..n, with C found
 * by bisection so that their mean is `mean`.
 *
 * @param n Neurons.
 * @param mean Mean probability (1 - sparsity).
 * @param skew Power-law exponent.
 * @param maxFiring Cap.
 * @returns n probabilities, descending.
 * @throws {SparrowError} `invalid_argument` when the cap cannot reach the mean.
 */
export function firingProbabilities(n: number, mean: number, skew: number, maxFiring: number): Float64Array {
  if (!(mean < maxFiring)) {
    throw new SparrowError("invalid_argument", `mean firing ${mean} is not below maxFiring ${maxFiring}`);
  }
  const p = new Float64Array(n);
  const fill = (c: number) => {
    let total = 0;
    for (let k = 0; k < n; k++) {
      p[k] = Math.min(maxFiring, Math.max(pFloor, c * (k + 1) ** -skew));
      total += p[k];
    }
    return total / n;
  };
  let lo = 1e-12;
  let hi = 1e12;
  for (let i = 0; i < 200; i++) {
    const mid = Math.sqrt(lo * hi);
    if (fill(mid) < mean) lo = mid;
    else hi = mid;
  }
  fill(Math.sqrt(lo * hi));
  return p;
}

function checkRange(name: string, v: number, lo: number, hi: number, integer = false): void {
  if (!(v >= lo && v <= hi) || (integer && !Number.isInteger(v))) {
    throw new SparrowError(
      "invalid_argument",
      `sparseFfn.${name} = ${v} is not ${integer ? "an integer " : ""}in [${lo}, ${hi}]`,
    );
  }
}

/**
 * Checks the options and fixes every parameter of the construction except the per-layer
 * ffn_norm[0], which calibration fills in.
 *
 * @param options What the caller asked for.
 * @param activation The model's FFN activation: only "relu" and "drelu" have inactive neurons.
 * @param shape dim, ffnDim, nLayers.
 * @param seed The model's seed.
 * @returns The plan, its ffnNormBias zero.
 * @throws {SparrowError} `invalid_argument` for swiglu or an option out of range.
 */
export function resolveSparseFfn(
  options: SparseFfnOptions,
  activation: Activation,
  shape: { dim: number; ffnDim: number; nLayers: number; headDim: number; ropeDim: number },
  ropeLayout: RopeLayout,
  ropeTheta: number,
  seed: number,
): SparseFfnPlan {
  if (activation !== "relu" && activation !== "drelu") {
    throw new SparrowError(
      "invalid_argument",
      `sparseFfn needs activation "relu" or "drelu" (silu never outputs exact zeros), not "${activation}"`,
    );
  }
  if (shape.dim < 3) throw new SparrowError("invalid_argument", `sparseFfn needs dim >= 3, not ${shape.dim}`);
  const sparsity = options.sparsity ?? 0.9;
  const skew = options.skew ?? 1.2;
  const maxFiring = options.maxFiring ?? 0.95;
  const blocks = Math.ceil(shape.dim / groupBlock);
  const gateRank = options.gateRank ?? Math.min(256, blocks);
  const gateNoise = options.gateNoise ?? 0.1;
  const contextWindow = options.contextWindow ?? 8;
  const contextGain = options.contextGain ?? 2;
  checkRange("sparsity", sparsity, 0.01, 0.99);
  checkRange("skew", skew, 0, 4);
  checkRange("maxFiring", maxFiring, 0.02, 1 - pFloor);
  checkRange("gateRank", gateRank, 1, blocks, true);
  checkRange("gateNoise", gateNoise, 0, 0.99);
  checkRange("contextWindow", contextWindow, 0, 1024);
  checkRange("contextGain", contextGain, 0, 8);
  return {
    activation,
    sparsity,
    skew,
    maxFiring,
    gateRank,
    gateNoise,
    contextWindow,
    contextGain,
    dim: shape.dim,
    headDim: shape.headDim,
    ropeDim: shape.ropeDim,
    ropeLayout,
    ropeTheta,
    ffnDim: shape.ffnDim,
    nLayers: shape.nLayers,
    seed,
    firing: firingProbabilities(shape.ffnDim, 1 - sparsity, skew, maxFiring),
    ffnNormBias: new Float64Array(shape.nLayers),
    attnNormBias: new Float64Array(shape.nLayers),
  };
}

/**
 * Metadata recording the construction, beside `sparrow.synthetic`.
 *
 * @param plan The construction.
 * @returns GGUF key/value pairs.
 */
export function sparseFfnMetadata(plan: SparseFfnPlan): [string, TypedValue][] {
  return [
    ["sparrow.synthetic_sparsity_target", gv.f32(plan.sparsity)],
    ["sparrow.synthetic_firing_skew", gv.f32(plan.skew)],
    ["sparrow.synthetic_firing_max", gv.f32(plan.maxFiring)],
    ["sparrow.synthetic_gate_rank", gv.u32(plan.gateRank)],
    ["sparrow.synthetic_gate_noise", gv.f32(plan.gateNoise)],
    ["sparrow.synthetic_context_window", gv.f32(plan.contextWindow)],
    ["sparrow.synthetic_context_gain", gv.f32(plan.contextGain)],
    ["sparrow.synthetic_bias_channel", gv.u32(0)],
    ["sparrow.synthetic_bias_channel_value", gv.f32(biasChannelValue)],
  ];
}

/** The tensor's element spread in a sparse-FFN model. */
export function sparseTensorPlan(plan: SparseFfnPlan, t: TensorPlan): TensorPlan {
  return t.name.endsWith(".attn_output.weight") ? { ...t, sigma: t.sigma * plan.contextGain } : t;
}

/** Φ⁻¹ of each rank's gate (or dReLU up) firing probability, computed once per plan. */
const quantiles = new WeakMap<SparseFfnPlan, Float64Array>();
function rankQuantiles(plan: SparseFfnPlan): Float64Array {
  let z = quantiles.get(plan);
  if (!z) {
    const q = plan.activation === "relu" ? plan.firing : plan.firing.map(Math.sqrt);
    z = q.map((v) => normalQuantile(Math.min(1 - pFloor, Math.max(pFloor, v))));
    quantiles.set(plan, z);
  }
  return z;
}

/**
 * The data of tensor `t` in a sparse-FFN model: the dense model's producer, patched or replaced where
 * the construction needs it (see the module doc).
 *
 * @param plan The construction, calibrated.
 * @param t The tensor.
 * @param type Its GGML type.
 * @param rng The tensor's own random stream (used by the tensors the construction replaces).
 * @param base The producer the dense model would use.
 * @returns The producer to write.
 */
export function sparseFfnProducer(
  plan: SparseFfnPlan,
  t: TensorPlan,
  type: number,
  rng: Rng,
  base: TensorToWrite["data"],
): TensorToWrite["data"] {
  const rowBytes = quantizedBytes(type, t.cols);
  const m = /^blk\.(\d+)\.(\w+)\.weight$/.exec(t.name);
  const layer = m ? Number(m[1]) : -1;
  const patchFirst = (first: (row: number) => number | undefined, clampBelow = false) =>
    patchRows(base, rowBytes, firstElementPatch(type, first, clampBelow));
  switch (m ? m[2] : t.name) {
    case "token_embd.weight":
      return patchFirst(() => biasChannelValue, true);
    case "output_norm.weight":
      return patchFirst(() => 0);
    case "attn_norm":
      return patchFirst(() => (plan.contextWindow > 0 ? plan.attnNormBias[layer] : 0));
    case "ffn_norm":
      return patchFirst(() => plan.ffnNormBias[layer]);
    case "attn_q":
    case "attn_k":
      return patchFirst(recencyColumn(plan, recencyScore));
    case "attn_v":
      return patchFirst(() => 0);
    case "attn_output":
    case "ffn_down": {
      const zeros = quantize(type, new Float32Array(t.cols));
      return patchRows(base, rowBytes, (row, b) => row === 0 && b.set(zeros));
    }
    case "ffn_gate":
      return lowRankProducer(plan, layer, rankQuantiles(plan), t, type, rng);
    case "ffn_up":
      return plan.activation === "drelu"
        ? lowRankProducer(plan, layer, rankQuantiles(plan), t, type, rng)
        : patchFirst(() => 0);
    default:
      return base;
  }
}
