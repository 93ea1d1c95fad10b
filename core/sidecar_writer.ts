/**
 * Writes a sparsity sidecar (see core/sidecar.ts for the format) from what calibration measured.
 *
 * @module
 */
import { gv, type TensorToWrite, type TypedValue, writeGguf } from "./gguf_writer.ts";
import { sidecarArchitecture, sidecarKeys, sidecarVersion } from "./sidecar.ts";
import { quantize, QuantType } from "../models/ggml_quants.ts";

/** One layer's calibration results. */
export interface LayerCalibration {
  /** (rank, dim) row-major. */
  fc1: Float32Array;
  /** (ffn, rank) row-major. */
  fc2: Float32Array;
  /** (ffn) */
  bias: Float32Array;
  rank: number;
  /** (ffn) activation frequency of each neuron. */
  neuronFreq: Float32Array;
  /** Per target. */
  catsThresholds: Float32Array;
  scoreThresholds: Float32Array;
  recall: Float32Array;
  predictedRatio: Float32Array;
}

/** What the sidecar describes. */
export interface SidecarContents {
  modelName: string;
  modelFingerprint: string;
  nLayers: number;
  dim: number;
  ffnDim: number;
  activation: string;
  /** Sparsity of each calibrated operating point. */
  targets: number[];
  calibrationTokens: number;
  layers: LayerCalibration[];
  /** The predictors have no relu between fc1 and fc2 (subspace fit). Default false. */
  linearPredictor?: boolean;
  /** Storage type of the predictor matrices: "F16" (default), "F32", "Q8_0" or "Q4_0" (rank a multiple of 32). */
  predictorType?: PredictorType;
}

/** Storage types of predictor matrices. */
export type PredictorType = "F32" | "F16" | "Q8_0" | "Q4_0";
/** Their ggml type ids. */
export const predictorTypeIds: Record<PredictorType, number> = {
  F32: QuantType.F32,
  F16: QuantType.F16,
  Q8_0: QuantType.Q8_0,
  Q4_0: QuantType.Q4_0,
};

/**
 * Writes the sidecar GGUF.
 *
 * @param path Output path.
 * @param c The calibration results.
 * @returns Bytes written.
 */
export function writeSidecar(path: string, c: SidecarContents): number {
  const nT = c.targets.length;
  const flat = (f: (l: LayerCalibration) => Float32Array) => {
    // Target-major: all layers of target 0, then target 1, ...
    const out = new Float32Array(nT * c.nLayers);
    c.layers.forEach((l, li) => f(l).forEach((v, t) => (out[t * c.nLayers + li] = v)));
    return out;
  };
  const metadata: [string, TypedValue][] = [
    ["general.architecture", gv.str(sidecarArchitecture)],
    ["general.name", gv.str(`sparsity sidecar for ${c.modelName}`)],
    [sidecarKeys.version, gv.u32(sidecarVersion)],
    [sidecarKeys.modelName, gv.str(c.modelName)],
    [sidecarKeys.modelFingerprint, gv.str(c.modelFingerprint)],
    [sidecarKeys.nLayers, gv.u32(c.nLayers)],
    [sidecarKeys.dim, gv.u32(c.dim)],
    [sidecarKeys.ffnDim, gv.u32(c.ffnDim)],
    [sidecarKeys.activation, gv.str(c.activation)],
    [sidecarKeys.calibrationTokens, gv.u32(c.calibrationTokens)],
    [sidecarKeys.targets, gv.f32s(c.targets)],
    [sidecarKeys.catsThresholds, gv.f32s(flat((l) => l.catsThresholds))],
    [sidecarKeys.scoreThresholds, gv.f32s(flat((l) => l.scoreThresholds))],
    [sidecarKeys.recall, gv.f32s(flat((l) => l.recall))],
    [sidecarKeys.predictedRatio, gv.f32s(flat((l) => l.predictedRatio))],
    [sidecarKeys.ranks, { type: 9, elemType: 4, value: c.layers.map((l) => l.rank) }],
    [sidecarKeys.linearPredictor, gv.bool(c.linearPredictor ?? false)],
  ];
  const type = predictorTypeIds[c.predictorType ?? "F16"];
  const bytesOf = (x: Float32Array) => (type === QuantType.F32 ? new Uint8Array(x.buffer.slice(0)) : quantize(type, x));
  const tensors: TensorToWrite[] = [];
  c.layers.forEach((l, i) => {
    tensors.push({ name: `blk.${i}.fc1.weight`, dims: [c.dim, l.rank], type, data: bytesOf(l.fc1) });
    tensors.push({ name: `blk.${i}.fc2.weight`, dims: [l.rank, c.ffnDim], type, data: bytesOf(l.fc2) });
    tensors.push({
      name: `blk.${i}.fc2.bias`,
      dims: [c.ffnDim],
      type: 0,
      data: new Uint8Array(l.bias.buffer.slice(0)),
    });
    tensors.push({
      name: `blk.${i}.neuron_freq`,
      dims: [c.ffnDim],
      type: 0,
      data: new Uint8Array(l.neuronFreq.buffer.slice(0)),
    });
  });
  return writeGguf(path, metadata, tensors);
}
