/**
 * Calibrates the bias channel of a sparse-FFN synthetic model (models/synth_sparse.ts): each
 * layer's ffn_norm[0], which scales every neuron's bias against the rest of its pre-activation,
 * and attn_norm[0], which sets the strength of attention's preference for recent tokens.
 *
 * Both divide by rms(x), the residual stream's, which grows through the layers by amounts that
 * depend on attention patterns and on how many neurons fire before, so it is measured, not
 * guessed: a proxy model (the same construction and depth, F32, at most 128 wide with the same
 * head size) is run through the float64 oracle (models/reference_forward.ts) on 64 random tokens.
 * For each layer, the recorded gate (and dReLU up) pre-activations give the fraction of neurons
 * active for any rescaling m of the layer's bias, which is solved for the target sparsity; the new
 * scales move the layers behind, so this repeats until every layer of the proxy is within a point
 * of the target before its last rescaling (2-4 passes measured). attn_norm[0] is set
 * once, from the first pass's rms(x). Per-dimension variances are the same at any width (weights
 * are N(0, 1/fan_in)), so the proxy's scales are the model's.
 *
 * @module
 */
import { type GgufFile, readGguf } from "../core/gguf.ts";
import { Rng } from "../core/rng.ts";
import { ActivationRecorder, type ActivationStats, activationStats } from "./activation_stats.ts";
import { referenceForward } from "./reference_forward.ts";
import type { SynthShape } from "./synth.ts";
import type { Activation, RopeLayout } from "../core/model_desc.ts";
import {
  biasChannelValue,
  channelInput,
  firingProbabilities,
  resolveSparseFfn,
  type SparseFfnOptions,
  type SparseFfnPlan,
} from "./synth_sparse.ts";

/** Writes the proxy model (F32, the given shape and plan) to `path`. */
export type ProxyWriter = (path: string, shape: Required<SynthShape>, plan: SparseFfnPlan) => void;

/** What calibration found. */
export interface SparseCalibration {
  /** ffn_norm[0] of each layer of the model. */
  ffnNormBias: Float64Array;
  /** attn_norm[0] of each layer of the model. */
  attnNormBias: Float64Array;
  /** The proxy's shape. */
  proxyShape: Required<SynthShape>;
  /** Passes of the proxy through the oracle. */
  passes: number;
  /** The proxy's fraction of inactive neurons per layer in the last pass, before its final rescaling. */
  proxySparsity: number[];
  /** The proxy's activation statistics in the last pass (random tokens after BOS). */
  proxyStats: ActivationStats;
}

/** Widest proxy. */
const proxyDimMax = 128;
/** Calibration tokens (BOS then random ids). */
const calibrationTokens = 64;
const passesMax = 6;
/**
 * Stop once every layer of the proxy is this close to the target sparsity (its rescaling is still
 * applied). Not a bound on the bias scales: where neurons fire on slowly varying context more than
 * on their bias (dReLU, deep layers) sparsity hardly moves with them.
 */
const tolerance = 0.01;

/**
 * The proxy's shape: the model's when at most ~256 wide, else as many whole heads of the same
 * size as fit in 256 (at least one), the same kv-head ratio where it divides, the same FFN ratio.
 */
export function proxyShapeOf(shape: Required<SynthShape>): Required<SynthShape> {
  const vocabSize = Math.min(shape.vocabSize, 512);
  const contextLength = Math.max(calibrationTokens, 128);
  if (shape.nHeads * shape.headDim <= proxyDimMax && shape.dim <= proxyDimMax) {
    return { ...shape, vocabSize, contextLength };
  }
  const nHeads = Math.max(1, Math.floor(proxyDimMax / shape.headDim));
  const group = shape.nHeads / shape.nKvHeads;
  const nKvHeads = nHeads % group === 0 ? nHeads / group : 1;
  const dim = nHeads * shape.headDim;
  const ffnDim = Math.max(8, Math.round((shape.ffnDim * dim) / shape.dim));
  return { ...shape, dim, ffnDim, nHeads, nKvHeads, vocabSize, contextLength, headDim: shape.headDim };
}

/** The proxy's plan: the model's, at the proxy's width (rank scaled with it). */
function proxyPlan(plan: SparseFfnPlan, shape: Required<SynthShape>): SparseFfnPlan {
  const growth = 0.5 + 0.75 * plan.contextGain ** 2;
  return {
    ...plan,
    dim: shape.dim,
    ffnDim: shape.ffnDim,
    gateRank: Math.max(1, Math.min(Math.ceil(shape.dim / 32), Math.round((plan.gateRank * shape.dim) / plan.dim))),
    firing: shape.ffnDim === plan.ffnDim
      ? plan.firing
      : firingProbabilities(shape.ffnDim, 1 - plan.sparsity, plan.skew, plan.maxFiring),
    // A first guess, from measurements: the residual's per-dimension variance grows by about
    // 0.5 + 0.75 contextGain² per layer.
    ffnNormBias: Float64Array.from(
      { length: plan.nLayers },
      (_, l) => (channelInput * Math.sqrt(1 + growth * (l + 0.5))) / biasChannelValue,
    ),
    attnNormBias: Float64Array.from(
      { length: plan.nLayers },
      (_, l) => (channelInput * Math.sqrt(1 + growth * l)) / biasChannelValue,
    ),
  };
}

/** rms of an embedding row: x[0] = c, the rest N(0, 1). */
function embeddingRms(dim: number): number {
  return Math.sqrt((biasChannelValue ** 2 + dim - 1) / dim);
}

/** Element 0 of every row of an F32 matrix in a GGUF file. */
function firstColumn(path: string, gguf: GgufFile, name: string): Float64Array {
  const t = gguf.tensors.get(name)!;
  const rows = t.dims[1];
  const cols = t.dims[0];
  const out = new Float64Array(rows);
  using file = Deno.openSync(path);
  const word = new Uint8Array(4);
  const view = new DataView(word.buffer);
  for (let r = 0; r < rows; r++) {
    file.seekSync(t.offset + r * cols * 4, Deno.SeekMode.Start);
    file.readSync(word);
    out[r] = view.getFloat32(0, true);
  }
  return out;
}

/**
 * Rewrites element 0 of every layer's ffn_norm and attn_norm in the proxy file (F32 vectors): the
 * only weights that change between passes, so the proxy is written once.
 */
function setNormBiases(path: string, gguf: GgufFile, plan: SparseFfnPlan): void {
  using file = Deno.openSync(path, { write: true });
  const word = new Uint8Array(4);
  const view = new DataView(word.buffer);
  for (let l = 0; l < plan.nLayers; l++) {
    const values = [["ffn_norm", plan.ffnNormBias[l]], [
      "attn_norm",
      plan.contextWindow > 0 ? plan.attnNormBias[l] : 0,
    ]];
    for (const [name, value] of values as [string, number][]) {
      view.setFloat32(0, value, true);
      file.seekSync(gguf.tensors.get(`blk.${l}.${name}.weight`)!.offset, Deno.SeekMode.Start);
      file.writeSync(word);
    }
  }
}

/** Pre-activations of one layer over the calibration tokens. */
interface LayerRecord {
  gate: Float32Array; // (tokens, ffn)
  up: Float32Array; // (tokens, ffn)
  bias: Float32Array; // (tokens): xb[0]
  /** Mean over tokens of rms(x), the residual stream's, at the FFN input. */
  rms: number;
}

/**
 * The bias rescaling m in [1/8, 8] that makes the layer's fraction of inactive neurons `sparsity`,
 * and the fraction before rescaling. Element 0 of gate row i contributes w_i * xb[0]; rescaling
 * adds (m - 1) times that.
 */
function solveLayer(
  rec: LayerRecord,
  wGate: Float64Array,
  wUp: Float64Array | undefined,
  sparsity: number,
): { m: number; inactive: number } {
  const ffn = wGate.length;
  const tokens = rec.bias.length;
  const inactiveAt = (m: number) => {
    let active = 0;
    for (let t = 0; t < tokens; t++) {
      const shift = (m - 1) * rec.bias[t];
      const base = t * ffn;
      for (let i = 0; i < ffn; i++) {
        if (rec.gate[base + i] + shift * wGate[i] > 0 && (!wUp || rec.up[base + i] + shift * wUp[i] > 0)) active++;
      }
    }
    return 1 - active / (tokens * ffn);
  };
  let lo = Math.log(1 / 8);
  let hi = Math.log(8);
  for (let i = 0; i < 30; i++) {
    const mid = (lo + hi) / 2;
    // Stronger (mostly negative) biases silence more neurons.
    if (inactiveAt(Math.exp(mid)) < sparsity) lo = mid;
    else hi = mid;
  }
  return { m: Math.exp((lo + hi) / 2), inactive: inactiveAt(1) };
}

/**
 * Finds each layer's ffn_norm[0] (see the module doc).
 *
 * @param plan The model's construction (its ffnNormBias is not read).
 * @param shape The model's shape.
 * @param writeProxy Writes the proxy model.
 * @returns The calibration.
 */
export function calibrateSparseFfn(
  plan: SparseFfnPlan,
  shape: Required<SynthShape>,
  writeProxy: ProxyWriter,
): SparseCalibration {
  const pShape = proxyShapeOf(shape);
  const pPlan = proxyPlan(plan, pShape);
  const rng = new Rng(plan.seed, 0xca1b);
  const ids = [1];
  while (ids.length < calibrationTokens) ids.push(3 + (rng.nextU32() % (pShape.vocabSize - 3)));
  const path = Deno.makeTempFileSync({ prefix: "sparrow_synth_proxy_", suffix: ".gguf" });
  const ffn = pShape.ffnDim;
  const records: LayerRecord[] = Array.from({ length: plan.nLayers }, () => ({
    gate: new Float32Array(ids.length * ffn),
    up: new Float32Array(ids.length * ffn),
    bias: new Float32Array(ids.length),
    rms: 0,
  }));
  let passes = 0;
  let proxySparsity: number[] = [];
  let recorder: ActivationRecorder | undefined;
  /** rms(x) at each layer's attention input, estimated in the first pass. */
  const attnRms = new Float64Array(plan.nLayers);
  try {
    writeProxy(path, pShape, pPlan);
    const gguf = readGguf(path);
    const w0 = records.map((_, l) => ({
      gate: firstColumn(path, gguf, `blk.${l}.ffn_gate.weight`),
      up: plan.activation === "drelu" ? firstColumn(path, gguf, `blk.${l}.ffn_up.weight`) : undefined,
    }));
    for (; passes < passesMax; passes++) {
      if (passes > 0) setNormBiases(path, gguf, pPlan);
      for (const r of records) r.rms = 0;
      const rec = recorder = new ActivationRecorder(plan.nLayers, ffn, plan.activation);
      referenceForward(path, ids, {
        onFfn: (l, pos, gate, up, input) => {
          rec.observe(l, pos, gate, up);
          records[l].gate.set(gate, pos * ffn);
          records[l].up.set(up, pos * ffn);
          records[l].bias[pos] = input[0];
          // xb[0] = ffn_norm[0] * c / rms(x)
          records[l].rms += (pPlan.ffnNormBias[l] * biasChannelValue) / input[0] / ids.length;
        },
      });
      let worst = 0; // largest |sparsity - target| over layers
      proxySparsity = [];
      for (let l = 0; l < plan.nLayers; l++) {
        const { m, inactive } = solveLayer(records[l], w0[l].gate, w0[l].up, plan.sparsity);
        pPlan.ffnNormBias[l] *= m;
        if (passes === 0) {
          // Attention's input lies between the FFN inputs of the layer before and this one. Set once:
          // attention's own bias feeds back into the residual's size, so updating it every pass slows
          // the biases' convergence, and it only needs to be about right.
          const rmsBefore = l === 0 ? embeddingRms(pShape.dim) : records[l - 1].rms;
          attnRms[l] = Math.sqrt(rmsBefore * records[l].rms);
          pPlan.attnNormBias[l] = (channelInput * attnRms[l]) / biasChannelValue;
        }
        proxySparsity.push(inactive);
        worst = Math.max(worst, Math.abs(inactive - plan.sparsity));
      }
      if (worst < tolerance) {
        passes++;
        break;
      }
    }
  } finally {
    Deno.removeSync(path);
  }
  // rms(x)² is the per-dimension variance plus c²/dim from the bias channel: only that part depends
  // on the width, so scale each layer's norm weights by the model's rms(x) over the proxy's.
  const rmsRatio = (rms: number) =>
    Math.sqrt(Math.max(1e-3, rms ** 2 + biasChannelValue ** 2 * (1 / plan.dim - 1 / pShape.dim))) / rms;
  return {
    ffnNormBias: pPlan.ffnNormBias.map((v, l) => v * rmsRatio(records[l].rms)),
    attnNormBias: pPlan.attnNormBias.map((v, l) => v * rmsRatio(attnRms[l])),
    proxyShape: pShape,
    passes,
    proxySparsity,
    proxyStats: activationStats(recorder!, { skip: 1 }),
  };
}

/** What `synthesizeModel` reports about a sparse-FFN model: the resolved options and the calibration. */
export interface SparseFfnReport extends Required<SparseFfnOptions> {
  calibration: SparseCalibration;
}

/**
 * Resolves a sparse-FFN construction and calibrates it.
 *
 * @param options What the caller asked for.
 * @param activation The model's activation.
 * @param shape The model's shape.
 * @param rope The model's RoPE layout and base.
 * @param seed The model's seed.
 * @param writeProxy Writes the proxy model.
 * @returns The calibrated plan and its report.
 * @throws {SparrowError} `invalid_argument` as resolveSparseFfn does.
 */
export function buildSparseFfn(
  options: SparseFfnOptions,
  activation: Activation,
  shape: Required<SynthShape>,
  rope: { layout: RopeLayout; theta: number },
  seed: number,
  writeProxy: ProxyWriter,
): { plan: SparseFfnPlan; report: SparseFfnReport } {
  const plan = resolveSparseFfn(options, activation, shape, rope.layout, rope.theta, seed);
  const calibration = calibrateSparseFfn(plan, shape, writeProxy);
  plan.ffnNormBias.set(calibration.ffnNormBias);
  plan.attnNormBias.set(calibration.attnNormBias);
  const { sparsity, skew, maxFiring, gateRank, gateNoise, contextWindow, contextGain } = plan;
  return {
    plan,
    report: { sparsity, skew, maxFiring, gateRank, gateNoise, contextWindow, contextGain, calibration },
  };
}
