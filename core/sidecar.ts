/**
 * Sparsity sidecars: what calibration learned about a model's FFNs, kept beside the model in a GGUF
 * file of its own, and PowerInfer's predictor files (GGUF with the magic "PWRI").
 *
 * A sparrow sidecar (general.architecture = "sparrow-sparsity") holds, for a model identified by its
 * fingerprint: per layer a low-rank predictor (`blk.N.fc1.weight` (dim -> rank), `blk.N.fc2.weight`
 * (rank -> ffn); score = fc2 · relu(fc1 · x)) and each neuron's activation frequency
 * (`blk.N.neuron_freq`, the hot/cold ranking); and per calibrated sparsity target, per layer, the
 * CATS threshold on |silu(gate)| (SwiGLU models; 0 for ReLU) and the predictor score threshold, with
 * the recall and predicted/true ratio measured on held-out calibration tokens.
 *
 * A PowerInfer file holds `blk.N.fc1.weight`, `blk.N.fc2.weight` and `powerinfer.sparse_threshold`.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import { type GgufFile, type GgufTensorInfo, readGguf } from "./gguf.ts";
import type { LlamaHparams } from "./model_desc.ts";

/** The architecture name sparrow sidecars carry. */
export const sidecarArchitecture = "sparrow-sparsity";
/** Version of the sidecar layout this code reads and writes. */
export const sidecarVersion = 1;

/** Metadata keys of a sparrow sidecar. */
export const sidecarKeys = {
  version: "sparrow.sidecar.version",
  modelName: "sparrow.model.name",
  modelFingerprint: "sparrow.model.fingerprint",
  nLayers: "sparrow.model.block_count",
  dim: "sparrow.model.embedding_length",
  ffnDim: "sparrow.model.feed_forward_length",
  activation: "sparrow.model.ffn_activation",
  targets: "sparrow.sparsity.targets",
  catsThresholds: "sparrow.sparsity.cats_thresholds",
  scoreThresholds: "sparrow.sparsity.score_thresholds",
  recall: "sparrow.sparsity.recall",
  predictedRatio: "sparrow.sparsity.predicted_ratio",
  ranks: "sparrow.predictor.ranks",
  linearPredictor: "sparrow.predictor.linear",
  calibrationTokens: "sparrow.calibration.tokens",
} as const;

/** One calibrated operating point. */
export interface SparsityTarget {
  /** Fraction of neurons inactive the thresholds were chosen for (ReLU models: as measured). */
  sparsity: number;
  /** Per layer: |silu(gate)| above this counts as active (0 for ReLU models). */
  catsThresholds: Float32Array;
  /** Per layer: a predictor score at or above this selects the neuron. */
  scoreThresholds: Float32Array;
  /** Per layer: recall of the predictor on held-out tokens (NaN when unknown). */
  recall: Float32Array;
  /** Per layer: predicted / truly active neurons on held-out tokens (NaN when unknown). */
  predictedRatio: Float32Array;
}

/** A validated sidecar. */
export interface Sidecar {
  /** Path of the file. */
  path: string;
  /** Which kind of file it is. */
  format: "sparrow" | "powerinfer";
  /** The parsed GGUF. */
  gguf: GgufFile;
  /** Per layer, the predictor tensors (undefined when a layer has none); bias only in sparrow sidecars. */
  predictors: ({ fc1: GgufTensorInfo; fc2: GgufTensorInfo; bias?: GgufTensorInfo } | undefined)[];
  /** Per layer, the neuron activation frequencies tensor (sparrow sidecars only). */
  neuronFreq: (GgufTensorInfo | undefined)[];
  /** Calibrated operating points (PowerInfer files: one, from sparse_threshold). */
  targets: SparsityTarget[];
  /** The predictors have no relu between fc1 and fc2 (calibration's subspace fit). */
  linearPredictor: boolean;
}

function fail(path: string, what: string): never {
  throw new SparrowError("bad_model", `sparsity sidecar ${path}: ${what}`);
}

function floats(g: GgufFile, key: string, n: number): Float32Array {
  const v = g.metadata.get(key);
  if (!(v instanceof Float32Array)) fail(g.path, `missing or mistyped key '${key}' (expected an f32 array)`);
  if (v.length !== n) fail(g.path, `'${key}' has ${v.length} values, expected ${n}`);
  return v;
}

function count(g: GgufFile, key: string): number {
  const v = g.metadata.get(key);
  if (typeof v !== "number" || !Number.isInteger(v)) fail(g.path, `missing or mistyped key '${key}'`);
  return v;
}

/**
 * Reads a sparsity sidecar or a PowerInfer predictor file and checks it against a model.
 *
 * @param path The file.
 * @param hp The model's hyperparameters.
 * @param fingerprint The model's fingerprint (core/model_fingerprint.ts), checked against a sparrow
 * sidecar's record of the model it was calibrated on.
 * @returns The sidecar.
 * @throws {SparrowError} `io` if unreadable; `bad_model` for a corrupt file or one made for another
 * model (other layer count, dimensions or fingerprint), naming what differs.
 */
export function readSidecar(path: string, hp: LlamaHparams, fingerprint: string): Sidecar {
  const g = readGguf(path);
  const predictors: Sidecar["predictors"] = [];
  const neuronFreq: Sidecar["neuronFreq"] = [];
  const tensor = (name: string, dims: number[]): GgufTensorInfo | undefined => {
    const t = g.tensors.get(name);
    if (!t) return undefined;
    if (t.dims.length !== dims.length || t.dims.some((d, i) => d !== dims[i])) {
      fail(path, `tensor '${name}' has shape [${t.dims.join(", ")}], expected [${dims.join(", ")}] for this model`);
    }
    return t;
  };
  const readPredictors = () => {
    for (let l = 0; l < hp.nLayers; l++) {
      const fc1 = g.tensors.get(`blk.${l}.fc1.weight`);
      if (!fc1) {
        predictors.push(undefined);
        continue;
      }
      const rank = fc1.dims[1];
      if (fc1.dims.length !== 2 || fc1.dims[0] !== hp.dim || !(rank >= 1)) {
        fail(path, `tensor 'blk.${l}.fc1.weight' has shape [${fc1.dims.join(", ")}], expected [${hp.dim}, rank]`);
      }
      const fc2 = tensor(`blk.${l}.fc2.weight`, [rank, hp.ffnDim]);
      if (!fc2) fail(path, `layer ${l} has fc1 but no 'blk.${l}.fc2.weight'`);
      const bias = tensor(`blk.${l}.fc2.bias`, [hp.ffnDim]);
      if (bias && bias.type !== 0) fail(path, `tensor 'blk.${l}.fc2.bias' must be F32`);
      predictors.push({ fc1, fc2, bias });
    }
    const extra = [...g.tensors.keys()].find((n) => /^blk\.(\d+)\./.test(n) && Number(n.split(".")[1]) >= hp.nLayers);
    if (extra) fail(path, `tensor '${extra}' belongs to a layer the model (${hp.nLayers} layers) does not have`);
  };

  if (g.magic === "PWRI") {
    readPredictors();
    const t = g.metadata.get("powerinfer.sparse_threshold");
    const threshold = t === undefined ? 0 : Number(t);
    if (!Number.isFinite(threshold)) fail(path, `powerinfer.sparse_threshold = ${String(t)} is not a number`);
    const n = hp.nLayers;
    return {
      path,
      format: "powerinfer",
      gguf: g,
      predictors,
      neuronFreq: new Array(n).fill(undefined),
      linearPredictor: false,
      targets: [{
        sparsity: NaN,
        catsThresholds: new Float32Array(n),
        scoreThresholds: new Float32Array(n).fill(threshold),
        recall: new Float32Array(n).fill(NaN),
        predictedRatio: new Float32Array(n).fill(NaN),
      }],
    };
  }

  if (g.metadata.get("general.architecture") !== sidecarArchitecture) {
    fail(
      path,
      `general.architecture is '${String(g.metadata.get("general.architecture"))}', not '${sidecarArchitecture}'`,
    );
  }
  const version = count(g, sidecarKeys.version);
  if (version !== sidecarVersion) {
    fail(path, `sidecar version ${version}; this sparrow reads version ${sidecarVersion}`);
  }
  for (
    const [key, want] of [[sidecarKeys.nLayers, hp.nLayers], [sidecarKeys.dim, hp.dim], [
      sidecarKeys.ffnDim,
      hp.ffnDim,
    ]] as const
  ) {
    const got = count(g, key);
    if (got !== want) fail(path, `made for a model with ${key.split(".").pop()} = ${got}, but this model has ${want}`);
  }
  const recorded = g.metadata.get(sidecarKeys.modelFingerprint);
  if (recorded !== fingerprint) {
    fail(
      path,
      `made for another model file (fingerprint ${String(recorded)}, this model's is ${fingerprint}); recalibrate`,
    );
  }
  readPredictors();
  for (let l = 0; l < hp.nLayers; l++) neuronFreq.push(tensor(`blk.${l}.neuron_freq`, [hp.ffnDim]));
  const targetsRaw = g.metadata.get(sidecarKeys.targets);
  if (!(targetsRaw instanceof Float32Array) || targetsRaw.length === 0) {
    fail(path, `missing key '${sidecarKeys.targets}'`);
  }
  const nT = targetsRaw.length;
  const n = hp.nLayers;
  const all = (key: string) => floats(g, key, nT * n);
  const cats = all(sidecarKeys.catsThresholds);
  const scores = all(sidecarKeys.scoreThresholds);
  const recall = all(sidecarKeys.recall);
  const ratio = all(sidecarKeys.predictedRatio);
  const targets = Array.from(targetsRaw, (sparsity, t) => ({
    sparsity,
    catsThresholds: cats.subarray(t * n, (t + 1) * n),
    scoreThresholds: scores.subarray(t * n, (t + 1) * n),
    recall: recall.subarray(t * n, (t + 1) * n),
    predictedRatio: ratio.subarray(t * n, (t + 1) * n),
  }));
  const linear = g.metadata.get(sidecarKeys.linearPredictor) ?? false;
  if (typeof linear !== "boolean") fail(path, `'${sidecarKeys.linearPredictor}' is not a bool`);
  return { path, format: "sparrow", gguf: g, predictors, neuronFreq, targets, linearPredictor: linear };
}

/**
 * The operating point closest to `sparsity` (the first one when undefined).
 *
 * @throws {SparrowError} `invalid_argument` when no target is within 0.01 of the one asked for,
 * listing the calibrated ones.
 */
export function pickTarget(sidecar: Sidecar, sparsity: number | undefined): SparsityTarget {
  if (sparsity === undefined || sidecar.format === "powerinfer") return sidecar.targets[0];
  const best = sidecar.targets.reduce((
    a,
    b,
  ) => (Math.abs(b.sparsity - sparsity) < Math.abs(a.sparsity - sparsity) ? b : a));
  if (Math.abs(best.sparsity - sparsity) > 0.01) {
    throw new SparrowError(
      "invalid_argument",
      `${sidecar.path} has no operating point for sparsity ${sparsity} (calibrated: ${
        sidecar.targets.map((t) => t.sparsity.toFixed(2)).join(", ")
      }); run sparrow calibrate with --targets`,
    );
  }
  return best;
}
