/**
 * Calibration for sparse FFNs: run the model over calibration text (the user's, or text the model
 * samples itself), record every layer's FFN inputs and gate pre-activations, and from them, per
 * layer: the CATS thresholds for each target sparsity (SwiGLU models), each neuron's activation
 * frequency (the hot/cold ranking), a low-rank predictor trained to tell which neurons fire, and the
 * predictor score thresholds that keep recall at the goal on held-out tokens. The result is written
 * as a sidecar GGUF (core/sidecar.ts).
 *
 * The native steps run synchronously, one layer per call, so the event loop is blocked for a
 * layer's training at a time (seconds); progress is reported between layers.
 *
 * @module
 */
import { SparrowError, unwrap } from "./errors.ts";
import { core, lastError } from "./ffi.ts";
import type { Model } from "./model.ts";
import { type LayerCalibration, type PredictorType, predictorTypeIds, writeSidecar } from "./sidecar_writer.ts";
import { dequantize, quantize } from "../models/ggml_quants.ts";
import { ActivationRecorder, type ActivationStats, activationStats } from "../models/activation_stats.ts";
import type { Session } from "./session.ts";
import type { LlamaHparams } from "./model_desc.ts";

/**
 * Activation statistics of the first `n` recorded tokens of a ReLU/dReLU model, from the active
 * sets the engine recorded (not from how the model was made).
 */
function measureActivations(session: Session, hp: LlamaHparams, n: number): ActivationStats | undefined {
  const c = core();
  const count = Math.min(n, Number(c.sp_capture_count(session.native.pointer)));
  if (count < 4) return undefined;
  const rec = new ActivationRecorder(hp.nLayers, hp.ffnDim, hp.activation);
  const words = Math.ceil(hp.ffnDim / 32);
  const masks = new Uint32Array(count * words);
  for (let l = 0; l < hp.nLayers; l++) {
    unwrap(
      c.sp_calib_masks(session.native.pointer, l, 0, 0n, BigInt(count), masks),
      () => lastError(null, session.native.pointer),
    );
    for (let t = 0; t < count; t++) rec.observeMask(l, t, masks.subarray(t * words, (t + 1) * words));
  }
  return activationStats(rec, { skip: 1 });
}

/** Replaces `x` by its values after storage as ggml type `type`. */
function roundTrip(type: number, x: Float32Array): void {
  if (type !== 0) dequantize(type, quantize(type, x), x.length, x);
}

/** Options of {@link calibrate}. */
export interface CalibrateOptions {
  /** Calibration text; when absent the model samples its own (temperature 0.9). */
  text?: string;
  /** Tokens to record. Default 4096 (2048 for models with dim >= 2048, to bound memory). */
  tokens?: number;
  /** SwiGLU models: target sparsities to calibrate (default 0.3, 0.5, 0.7, 0.9). ReLU models: ignored. */
  targets?: number[];
  /** Predictor rank. Default: dim / 8, at least 16, at most 512. */
  rank?: number;
  /** Training epochs. Default 10. */
  epochs?: number;
  /** Minibatch size. Default 256. */
  batch?: number;
  /** Adam learning rate. Default 2e-3. */
  learningRate?: number;
  /** Loss weight of "fires" examples (recall over precision), objective "classify" only. Default 4. */
  posWeight?: number;
  /**
   * How the predictor is made: "regress" learns the gate value itself (default; one predictor ranks
   * neurons for every target), "classify" learns fires / does not fire at the loosest target, and
   * "subspace" trains nothing: the score is the gate's best rank-r reconstruction from the
   * calibration activations (PCA of the captured gate vectors; a linear predictor).
   */
  objective?: "regress" | "classify" | "subspace";
  /** Share of recorded tokens held out to choose thresholds and report recall. Default 0.2. */
  valFraction?: number;
  /** Recall the score thresholds aim for. Default 0.95. */
  recall?: number;
  /**
   * Storage type of the predictor matrices in the sidecar: "F16" (default), "F32", "Q8_0" (about
   * half the bytes of F16 read per token) or "Q4_0" (about half of Q8_0's); the quantized types need
   * a rank that is a multiple of 32. Thresholds and recall are computed from the stored values, so
   * they hold for what the engine reads.
   */
  predictorType?: PredictorType;
  /** Seed of sampling and training. Default 1. */
  seed?: number;
  /** ReLU and dReLU models: tokens the activation statistics are measured on. Default 256. */
  statsTokens?: number;
  /** Progress: stage and how far along it is. */
  onProgress?: (stage: "record" | "train", done: number, total: number, note: string) => void;
}

/** What calibration measured, per layer and target. */
export interface CalibrationReport {
  /** Path of the sidecar written. */
  path: string;
  /** Tokens recorded. */
  tokens: number;
  /** Sparsity of each operating point (ReLU models: the measured natural sparsity). */
  targets: number[];
  /** Per layer: rank, per-target recall and predicted/active ratio on held-out tokens, losses. */
  layers: { rank: number; recall: number[]; predictedRatio: number[]; trainLoss: number; valLoss: number }[];
  /**
   * ReLU and dReLU models: activation statistics of the first `statsTokens` recorded tokens, as the
   * engine computed them (sparsity, hot/cold skew, overlap between consecutive tokens).
   */
  activationStats?: ActivationStats;
  /** Seconds spent recording and training. */
  recordSeconds: number;
  trainSeconds: number;
}

const trainParamsBytes = 40;
const objectiveIds = { classify: 0, regress: 1, subspace: 2 } as const;

/**
 * Calibrates sparse FFNs for `model` and writes the sidecar to `out`.
 *
 * @param model A loaded model.
 * @param out Path of the sidecar to write.
 * @param options Text, targets and training settings.
 * @returns What was measured.
 *
 * @example
 * ```ts ignore
 * import { calibrate } from "./calibrate.ts";
 * const report = await calibrate(model, "model.sparsity.gguf", { targets: [0.5, 0.7] });
 * console.log(report.layers.map((l) => l.recall[0]));
 * ```
 */
export async function calibrate(model: Model, out: string, options: CalibrateOptions = {}): Promise<CalibrationReport> {
  const hp = model.info.hparams;
  const swiglu = hp.activation === "swiglu";
  const nTokens = options.tokens ?? (hp.dim >= 2048 ? 2048 : 4096);
  const targets = swiglu ? [...(options.targets ?? [0.3, 0.5, 0.7, 0.9])].sort((a, b) => a - b) : [NaN];
  if (swiglu && targets.some((t) => !(t > 0 && t < 1))) {
    throw new SparrowError("invalid_argument", `target sparsities must be in (0, 1): ${targets.join(", ")}`);
  }
  const rank = options.rank ?? Math.min(512, Math.max(16, Math.round(hp.dim / 8 / 16) * 16));
  const predictorType = options.predictorType ?? "F16";
  if (!((options.objective ?? "regress") in objectiveIds)) {
    throw new SparrowError(
      "invalid_argument",
      `objective '${options.objective}' is not one of regress, classify, subspace`,
    );
  }
  const linear = options.objective === "subspace";
  if (!(predictorType in predictorTypeIds)) {
    throw new SparrowError(
      "invalid_argument",
      `predictor type '${predictorType}' is not one of ${Object.keys(predictorTypeIds).join(", ")}`,
    );
  }
  if ((predictorType === "Q8_0" || predictorType === "Q4_0") && rank % 32 !== 0) {
    throw new SparrowError(
      "invalid_argument",
      `a ${predictorType} predictor needs a rank that is a multiple of 32; got ${rank}`,
    );
  }
  const valFraction = options.valFraction ?? 0.2;
  const recallGoal = options.recall ?? 0.95;
  if (!(recallGoal > 0 && recallGoal <= 1)) {
    throw new SparrowError("invalid_argument", `recall ${recallGoal} is outside (0, 1]`);
  }
  const fingerprint = await model.fingerprint();

  // 1. Record.
  const t0 = performance.now();
  using session = model.createSession({ batchSize: Math.min(256, model.defaults.contextLength) });
  const native = session.native;
  const c = core();
  unwrap(
    c.sp_capture_start(native.pointer, BigInt(nTokens), hp.activation === "drelu"),
    () => lastError(null, native.pointer),
  );
  try {
    const recorded = () => Number(c.sp_capture_count(native.pointer));
    const chunk = Math.min(session.contextLength, 1024);
    if (options.text !== undefined) {
      const ids = model.tokenize(options.text, { addBos: false });
      if (ids.length < 16) {
        throw new SparrowError(
          "invalid_argument",
          `the calibration text has ${ids.length} tokens; give at least a few hundred`,
        );
      }
      const bos = model.tokenizer.bosId;
      for (let at = 0; at < ids.length && recorded() < nTokens; at += chunk - 1) {
        session.reset();
        const piece = ids.slice(at, at + chunk - 1);
        await session.evaluate(bos === undefined ? piece : [bos, ...piece]);
        options.onProgress?.("record", recorded(), nTokens, "calibration text");
      }
    } else {
      // Self-sampled text: the model writes it, so it is text it finds likely.
      let seed = options.seed ?? 1;
      while (recorded() < nTokens) {
        const bos = model.tokenizer.bosId;
        const ids: number[] = bos === undefined ? model.tokenize(" ") : [bos];
        const done = await session.complete(ids, {
          temperature: 0.9,
          topP: 0.95,
          maxTokens: Math.min(chunk, 512),
          seed: seed++,
        });
        // Record the sampled text in one batch: prompt-processing speed instead of decode speed.
        session.reset();
        await session.evaluate([...ids, ...done.tokens]);
        options.onProgress?.("record", recorded(), nTokens, "self-sampled text");
      }
    }
    const tokens = recorded();
    const recordSeconds = (performance.now() - t0) / 1000;
    const stats = swiglu ? undefined : measureActivations(session, hp, options.statsTokens ?? 256);

    // 2. Per layer.
    const t1 = performance.now();
    const params = new DataView(new ArrayBuffer(trainParamsBytes));
    const layers: LayerCalibration[] = [];
    const reportLayers: CalibrationReport["layers"] = [];
    const measuredSparsity: number[] = [];
    for (let l = 0; l < hp.nLayers; l++) {
      const cats = new Float32Array(targets.length);
      if (swiglu) {
        unwrap(
          c.sp_calib_cats(native.pointer, l, Float32Array.from(targets), BigInt(targets.length), cats),
          () => lastError(null, native.pointer),
        );
      }
      const labelThreshold = cats[0]; // the loosest target: most "fires" labels
      const freq = new Float32Array(hp.ffnDim);
      unwrap(c.sp_calib_frequency(native.pointer, l, labelThreshold, freq), () => lastError(null, native.pointer));
      measuredSparsity.push(1 - freq.reduce((a, b) => a + b, 0) / hp.ffnDim);

      [rank, options.epochs ?? 10, options.batch ?? 256, (options.seed ?? 1) + l].forEach((v, i) =>
        params.setUint32(4 * i, v, true)
      );
      params.setFloat32(16, options.learningRate ?? 2e-3, true);
      params.setFloat32(20, options.posWeight ?? 4, true);
      params.setFloat32(24, valFraction, true);
      params.setFloat32(28, labelThreshold, true);
      params.setUint32(32, objectiveIds[options.objective ?? "regress"], true);
      const fc1 = new Float32Array(rank * hp.dim);
      const fc2 = new Float32Array(hp.ffnDim * rank);
      const bias = new Float32Array(hp.ffnDim);
      const report = new Float32Array(4);
      unwrap(
        c.sp_calib_train(
          native.pointer,
          l,
          new Uint8Array(params.buffer),
          fc1,
          fc2,
          bias,
          new Uint8Array(report.buffer),
        ),
        () => lastError(null, native.pointer),
      );
      // What the engine will read: the matrices after rounding to their storage type.
      roundTrip(predictorTypeIds[predictorType], fc1);
      roundTrip(predictorTypeIds[predictorType], fc2);
      const score = new Float32Array(targets.length);
      const recall = new Float32Array(targets.length);
      const ratio = new Float32Array(targets.length);
      unwrap(
        c.sp_calib_thresholds(
          native.pointer,
          l,
          fc1,
          fc2,
          bias,
          rank,
          linear,
          valFraction,
          cats,
          BigInt(targets.length),
          recallGoal,
          score,
          recall,
          ratio,
        ),
        () => lastError(null, native.pointer),
      );
      layers.push({
        fc1,
        fc2,
        bias,
        rank,
        neuronFreq: freq,
        catsThresholds: cats,
        scoreThresholds: score,
        recall,
        predictedRatio: ratio,
      });
      reportLayers.push({
        rank,
        recall: Array.from(recall),
        predictedRatio: Array.from(ratio),
        trainLoss: report[0],
        valLoss: report[1],
      });
      options.onProgress?.(
        "train",
        l + 1,
        hp.nLayers,
        `layer ${l}: recall ${Array.from(recall, (r) => r.toFixed(3)).join("/")}`,
      );
    }
    const trainSeconds = (performance.now() - t1) / 1000;
    // ReLU models have one operating point: their natural sparsity, as measured.
    const finalTargets = swiglu ? targets : [measuredSparsity.reduce((a, b) => a + b, 0) / hp.nLayers];
    writeSidecar(out, {
      modelName: model.info.name,
      modelFingerprint: fingerprint,
      nLayers: hp.nLayers,
      dim: hp.dim,
      ffnDim: hp.ffnDim,
      activation: hp.activation,
      targets: finalTargets,
      calibrationTokens: tokens,
      layers,
      predictorType,
      linearPredictor: linear,
    });
    return {
      path: out,
      tokens,
      targets: finalTargets,
      layers: reportLayers,
      activationStats: stats,
      recordSeconds,
      trainSeconds,
    };
  } finally {
    c.sp_capture_stop(native.pointer);
  }
}
