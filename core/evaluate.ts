/**
 * How much sparse FFNs cost in quality and gain in speed: a sweep of sparse configurations, each
 * compared with the dense model on the same token stream, teacher-forced.
 *
 * Quality: per scored position the KL divergence KL(dense || sparse) of the next-token
 * distributions (log-softmax in float64), whether the top-1 tokens agree, and each configuration's
 * perplexity on the stream. Speed: a greedy decode of a fixed number of tokens after a short prompt,
 * each configuration in its own session with the same threads. Sparse sessions also report their
 * measured sparsity, predictor recall (verified tokens) and candidates per active neuron.
 *
 * The stream is a text's tokens, or documents the model samples itself (dense, fixed seed) — the
 * same for every configuration. It is evaluated in windows, each from position 0, in chunks: the
 * dense reference and every configuration advance one chunk at a time, so memory stays at one
 * chunk of logits whatever the stream length.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import type { Model } from "./model.ts";
import type { Session } from "./session.ts";
import type { DownType, SparseMode, SparseOptions, SparseStats } from "./sparse.ts";
import { pickTarget, readSidecar } from "./sidecar.ts";

/** One configuration to evaluate. */
export interface SparsityConfig {
  /** "dense" (a second dense session: KL 0 by construction, the speed baseline), "oracle" or "predictor". */
  mode: SparseMode;
  /** Calibrated target of the sidecar (SwiGLU); undefined: the sidecar's first (ReLU: natural). */
  sparsity?: number;
}

/** Options of {@link evaluateSparsity}. */
export interface EvaluateSparsityOptions {
  /** Calibration sidecar or PowerInfer file; needed for predictor mode and for SwiGLU targets. */
  sidecar?: string;
  /**
   * Configurations, in table order. Default: dense, then for each of `targets` (ReLU: the natural
   * sparsity) each of `modes`.
   */
  configs?: SparsityConfig[];
  /** SwiGLU models: the sidecar's targets to sweep when `configs` is not given. Default: all of them. */
  targets?: number[];
  /** Sparse modes to sweep when `configs` is not given. Default: oracle, and predictor with a sidecar. */
  modes?: ("oracle" | "predictor")[];
  /** Text to score; default: text the model samples itself. */
  text?: string;
  /** Scored tokens (predicted positions) in the stream. Default 512. */
  tokens?: number;
  /** Seed of the sampled stream. Default 7919 (calibration samples from seed 1: held-out text). */
  seed?: number;
  /** Temperature of the sampled stream. Default 0.8. */
  temperature?: number;
  /** Positions per window (each evaluated from position 0). Default min(512, the context length). */
  window?: number;
  /** Positions per evaluation step. Default 128. */
  chunk?: number;
  /** Tokens of the timed greedy decode; 0 skips timing. Default 64. */
  decodeTokens?: number;
  /** Timed runs per configuration; the fastest counts. Default 2. */
  decodeRuns?: number;
  /** Verify the true active set every N-th scored token (recall). Default 1. */
  verifyEvery?: number;
  /** Neurons per cluster. Default: the engine's. */
  clusterSize?: number;
  /** Storage of the transposed down projection (see {@link SparseOptions}). Default "auto". */
  downType?: DownType;
  /** Progress: stage, how far along, of how much. */
  onProgress?: (stage: "sample" | "score" | "speed", done: number, total: number) => void;
}

/** One configuration's results. */
export interface SparsityPoint {
  /** The configuration. */
  mode: SparseMode;
  /** Target asked for (undefined: the sidecar's first, the natural one, or dense). */
  target: number | undefined;
  /** Measured fraction of FFN neurons not computed or zero (0 for dense). */
  sparsity: number;
  /** Truly active neurons that were computed, on verified tokens (oracle: 1 by construction; NaN: not measured). */
  recall: number;
  /** Computed neurons per active one (NaN for dense). */
  candidatesPerActive: number;
  /** FFN weight bytes read per token, all layers, verification reads excluded (NaN for dense). */
  bytesPerToken: number;
  /** Mean KL(dense || this) over scored positions, nats. */
  kl: number;
  /** Largest per-position KL, nats. */
  klMax: number;
  /** Fraction of positions whose most likely token is the dense model's. */
  top1: number;
  /** Perplexity on the stream. */
  perplexity: number;
  /** Greedy decode speed, tokens per second (NaN when not timed). */
  tokensPerSecond: number;
  /**
   * Where the timed decode's FFN time went, mean milliseconds per token over all layers and runs:
   * choosing candidates, their gate/up rows (offloaded: the whole read-and-compute pipeline), the
   * down columns, and recall verification (0: timed runs do not verify). NaN for dense or when not
   * timed.
   */
  ffnMsPerToken: { select: number; rows: number; down: number; verify: number };
  /** tokensPerSecond / the dense one. */
  speedup: number;
}

/** What {@link evaluateSparsity} measured. */
export interface SparsityEvaluation {
  /** Model name (`general.name`). */
  model: string;
  /** Model file. */
  path: string;
  /** FFN activation of the model. */
  activation: string;
  /** Sidecar used, if any. */
  sidecar: string | undefined;
  /** Where the stream came from. */
  source: "text" | "sampled";
  /** Scored positions. */
  tokens: number;
  /** Threads of every session. */
  threads: number;
  /** Decode tokens timed per run. */
  decodeTokens: number;
  /** The dense reference's perplexity on the stream. */
  densePerplexity: number;
  /** The dense reference's decode speed. */
  denseTokensPerSecond: number;
  /** Per configuration, in order. */
  points: SparsityPoint[];
  /** Wall time of the whole evaluation. */
  seconds: number;
}

/**
 * FFN weight bytes per token of a sparse session as it runs without verification: on verified
 * tokens a predictor-mode session also reads the whole gate (to know the true active set), and the
 * engine counts those reads; decoding without verification does not make them.
 *
 * @param model The model the session runs.
 * @param stats The session's {@link Session.sparseStats}.
 * @param mode The session's sparse mode.
 * @returns Mean bytes per token over all layers (NaN when no token took the sparse path).
 */
export function ffnBytesPerToken(model: Model, stats: SparseStats, mode: SparseMode): number {
  const tokens = stats.layers[0]?.tokens ?? 0;
  if (tokens === 0) return NaN;
  let bytes = 0;
  stats.layers.forEach((l, i) => {
    const gate = model.gguf.tensors.get(`blk.${i}.ffn_gate.weight`)?.nBytes ?? 0;
    bytes += l.bytes - (mode === "predictor" ? l.verifiedTokens * gate : 0);
  });
  return bytes / tokens;
}

/** Per-position dense reference values: log-probabilities (float64) and the most likely token. */
interface Reference {
  logp: Float64Array;
  argmax: number;
}

function logSumExp(row: Float32Array): { lse: number; argmax: number } {
  let max = -Infinity;
  let argmax = 0;
  for (let i = 0; i < row.length; i++) {
    if (row[i] > max) {
      max = row[i];
      argmax = i;
    }
  }
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  return { lse: max + Math.log(sum), argmax };
}

/** KL(p || q) where p is given by log-probabilities and q by raw logits with their log-sum-exp. */
function klDivergence(logp: Float64Array, logits: Float32Array, lse: number): number {
  let kl = 0;
  for (let i = 0; i < logp.length; i++) {
    const lp = logp[i];
    if (lp > -745) kl += Math.exp(lp) * (lp - (logits[i] - lse));
  }
  return kl;
}

/** Token windows: each is evaluated from position 0; its first token is context, the rest are scored. */
async function buildWindows(model: Model, o: EvaluateSparsityOptions, window: number): Promise<number[][]> {
  const want = o.tokens ?? 512;
  if (!Number.isInteger(want) || want < 1) {
    throw new SparrowError("invalid_argument", `tokens = ${want} is not a count`);
  }
  const bos = model.tokenizer.bosId;
  const windows: number[][] = [];
  let scored = 0;
  if (o.text !== undefined) {
    const ids = model.tokenize(o.text, { addBos: false });
    const prefix = model.tokenizer.addBos && bos !== undefined ? [bos] : [];
    const step = window - prefix.length;
    for (let at = 0; at < ids.length && scored < want; at += step) {
      const w = [...prefix, ...ids.slice(at, at + Math.min(step, want - scored + 1 - prefix.length))];
      if (w.length < 2) break;
      windows.push(w);
      scored += w.length - 1;
    }
    if (scored < Math.min(want, 16)) {
      throw new SparrowError("invalid_argument", `the evaluation text has ${ids.length} tokens; give a few hundred`);
    }
    return windows;
  }
  // Self-sampled documents, as calibration makes them, but from other seeds: held-out text.
  const start = bos !== undefined ? [bos] : model.tokenize(" ");
  using session = model.createSession({ contextLength: window });
  for (let doc = 0; scored < want; doc++) {
    session.reset();
    const room = Math.min(window - start.length, want - scored + 1 - start.length);
    const done = await session.complete(start, {
      temperature: o.temperature ?? 0.8,
      seed: (o.seed ?? 7919) + doc,
      maxTokens: Math.max(1, room),
    });
    const w = [...start, ...done.tokens];
    if (w.length >= 2) {
      windows.push(w);
      scored += w.length - 1;
    }
    if (doc > 10 * want) throw new SparrowError("internal", "the model keeps stopping at once; give a text");
    o.onProgress?.("sample", Math.min(scored, want), want);
  }
  return windows;
}

/** Greedy decode of `n` tokens after `prompt`; returns tokens per second of the decode steps. */
async function timeDecode(session: Session, prompt: number[], n: number): Promise<number> {
  session.reset();
  const ids = [...prompt];
  let row = (await session.evaluate(ids))[0];
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    ids.push(logSumExp(row).argmax);
    row = (await session.evaluate(ids))[0];
  }
  return (n / (performance.now() - t0)) * 1000;
}

/** The sweep of `targets` x `modes` after a dense row. */
function sweep(model: Model, o: EvaluateSparsityOptions, sidecarTargets: number[]): SparsityConfig[] {
  const configs: SparsityConfig[] = [{ mode: "dense" }];
  const swiglu = model.info.hparams.activation === "swiglu";
  const targets = swiglu && o.sidecar ? o.targets ?? sidecarTargets : [undefined];
  const modes = o.modes ?? (o.sidecar ? ["oracle", "predictor"] : ["oracle"]);
  for (const sparsity of targets) for (const mode of modes) configs.push({ mode, sparsity });
  return configs;
}

/**
 * Evaluates sparse configurations of `model` against its dense self: quality (KL, top-1, perplexity)
 * on a token stream, teacher-forced, and greedy decode speed.
 *
 * @param model A loaded model (its default threads are used for every session).
 * @param options Sidecar, configurations, stream and timing settings.
 * @returns One point per configuration, plus the dense reference's perplexity and speed.
 * @throws {SparrowError} `invalid_argument` for a configuration that needs a sidecar without one, a
 * target the sidecar lacks or bad counts; `bad_model` for a sidecar made for another model.
 *
 * @example One curve for a SwiGLU model
 * ```ts ignore
 * import { evaluateSparsity, loadModel } from "../mod.ts";
 * using model = await loadModel("SmolLM2-135M-Instruct.Q4_1.gguf", { threads: 2 });
 * const result = await evaluateSparsity(model, {
 *   sidecar: "SmolLM2-135M-Instruct.Q4_1.sparsity.gguf",
 *   configs: [{ mode: "dense" }, { mode: "predictor", sparsity: 0.5 }, { mode: "oracle", sparsity: 0.5 }],
 * });
 * for (const p of result.points) console.log(p.mode, p.target, p.kl, p.top1, p.speedup);
 * ```
 */
export async function evaluateSparsity(
  model: Model,
  options: EvaluateSparsityOptions = {},
): Promise<SparsityEvaluation> {
  const started = performance.now();
  const o = options;
  const ctx = model.defaults.contextLength;
  const window = o.window ?? Math.min(512, ctx);
  const chunk = o.chunk ?? 128;
  const decodeTokens = o.decodeTokens ?? 64;
  const decodeRuns = o.decodeRuns ?? 2;
  for (const [name, v, min] of [["window", window, 2], ["chunk", chunk, 1], ["decodeRuns", decodeRuns, 1]] as const) {
    if (!Number.isInteger(v) || v < min) throw new SparrowError("invalid_argument", `${name} = ${v} is not a count`);
  }
  if (window > ctx) {
    throw new SparrowError("invalid_argument", `window = ${window} is longer than the context (${ctx} positions)`);
  }
  if (!Number.isInteger(decodeTokens) || decodeTokens < 0) {
    throw new SparrowError("invalid_argument", `decodeTokens = ${decodeTokens} is not a count`);
  }
  const sidecarTargets = o.sidecar
    ? readSidecar(o.sidecar, model.info.hparams, await model.fingerprint()).targets.map((t) => t.sparsity)
    : [];
  const configs = o.configs ?? sweep(model, o, sidecarTargets);
  if (configs.length === 0) throw new SparrowError("invalid_argument", "no configurations to evaluate");
  const sparseOf = (c: SparsityConfig, extra: Partial<SparseOptions>): SparseOptions | undefined =>
    c.mode === "dense" ? undefined : {
      mode: c.mode,
      sidecar: o.sidecar,
      sparsity: c.sparsity,
      clusterSize: o.clusterSize,
      downType: o.downType,
      ...extra,
    };
  // Check every configuration (sidecar, target) before the long part.
  for (const c of configs) {
    if (c.mode === "dense") continue;
    if (!o.sidecar && (c.mode === "predictor" || c.sparsity !== undefined)) {
      throw new SparrowError(
        "invalid_argument",
        `${c.mode} mode${
          c.sparsity !== undefined ? ` at sparsity ${c.sparsity}` : ""
        } needs a sidecar (sparrow calibrate)`,
      );
    }
    if (o.sidecar) {
      pickTarget(readSidecar(o.sidecar, model.info.hparams, await model.fingerprint()), c.sparsity);
      await model.prepareSparse({ sidecar: o.sidecar, sparsity: c.sparsity, downType: o.downType });
    }
  }

  const windows = await buildWindows(model, o, window);
  const scoredTotal = windows.reduce((a, w) => a + w.length - 1, 0);

  // Quality: the dense reference and every configuration, chunk by chunk.
  const sessionOf = (c: SparsityConfig | undefined) =>
    model.createSession({
      contextLength: window,
      batchSize: chunk,
      allLogits: true,
      // Oracle mode computes the true active set by construction: nothing to verify.
      sparse: c ? sparseOf(c, { batches: true, verifyEvery: c.mode === "oracle" ? 0 : o.verifyEvery ?? 1 }) : undefined,
    });
  const reference = sessionOf(undefined);
  const sessions: Session[] = [];
  try {
    for (const c of configs) sessions.push(sessionOf(c));
    const acc = configs.map(() => ({ kl: 0, klMax: 0, agree: 0, nll: 0 }));
    let denseNll = 0;
    let scored = 0;
    for (const w of windows) {
      reference.reset();
      sessions.forEach((s) => s.reset());
      for (let from = 0; from < w.length - 1; from += chunk) {
        // Positions from..end-1 predict tokens from+1..end; the window's last position predicts nothing.
        const end = Math.min(from + chunk, w.length - 1);
        const ids = w.slice(0, end);
        const refRows = await reference.evaluate(ids);
        const refs: Reference[] = refRows.map((row, j) => {
          const { lse, argmax } = logSumExp(row);
          const logp = new Float64Array(row.length);
          for (let i = 0; i < row.length; i++) logp[i] = row[i] - lse;
          denseNll -= logp[w[from + j + 1]];
          return { logp, argmax };
        });
        for (let k = 0; k < sessions.length; k++) {
          const rows = await sessions[k].evaluate(ids);
          const a = acc[k];
          rows.forEach((row, j) => {
            const { lse, argmax } = logSumExp(row);
            const kl = klDivergence(refs[j].logp, row, lse);
            a.kl += kl;
            a.klMax = Math.max(a.klMax, kl);
            if (argmax === refs[j].argmax) a.agree++;
            a.nll += lse - row[w[from + j + 1]];
          });
        }
        scored += end - from;
        o.onProgress?.("score", scored, scoredTotal);
      }
    }
    const stats = sessions.map((s) => s.sparseStats());

    // Speed: each configuration in its own session, prompt dense as in real use. The runs go
    // round-robin over the configurations (dense included) and the fastest run of each counts, so
    // a burst of other load on the machine does not land on one configuration only.
    const prompt = windows[0].slice(0, Math.min(8, windows[0].length));
    const timed = configs.some((c) => c.mode === "dense") ? configs : [...configs, { mode: "dense" as const }];
    const speeds = timed.map(() => (decodeTokens === 0 ? NaN : 0));
    const untimed = { select: NaN, rows: NaN, down: NaN, verify: NaN };
    const phases = timed.map(() => untimed);
    if (decodeTokens > 0) {
      const speedSessions: Session[] = [];
      try {
        for (const c of timed) {
          speedSessions.push(model.createSession({
            contextLength: prompt.length + decodeTokens + 1,
            sparse: sparseOf(c, { verifyEvery: 0 }),
          }));
        }
        for (let r = 0; r < decodeRuns; r++) {
          for (let k = 0; k < timed.length; k++) {
            speeds[k] = Math.max(speeds[k], await timeDecode(speedSessions[k], prompt, decodeTokens));
            o.onProgress?.("speed", r * timed.length + k + 1, decodeRuns * timed.length);
          }
        }
        timed.forEach((c, k) => {
          if (c.mode !== "dense") phases[k] = speedSessions[k].sparseStats().msPerToken;
        });
      } finally {
        for (const s of speedSessions) s.close();
      }
    }
    const denseSpeed = speeds[timed.findIndex((c) => c.mode === "dense")];

    const points = configs.map((c, k): SparsityPoint => {
      const dense = c.mode === "dense";
      const st = stats[k];
      return {
        mode: c.mode,
        target: c.sparsity,
        sparsity: dense ? 0 : st.sparsity,
        recall: dense ? NaN : c.mode === "oracle" ? 1 : st.recall,
        candidatesPerActive: dense ? NaN : st.candidatesPerActive,
        bytesPerToken: dense ? NaN : ffnBytesPerToken(model, st, c.mode),
        kl: acc[k].kl / scored,
        klMax: acc[k].klMax,
        top1: acc[k].agree / scored,
        perplexity: Math.exp(acc[k].nll / scored),
        tokensPerSecond: speeds[k],
        ffnMsPerToken: phases[k],
        speedup: speeds[k] / denseSpeed,
      };
    });
    return {
      model: model.info.name,
      path: model.info.path,
      activation: model.info.hparams.activation,
      sidecar: o.sidecar,
      source: o.text === undefined ? "sampled" : "text",
      tokens: scored,
      threads: model.defaults.threads,
      decodeTokens,
      densePerplexity: Math.exp(denseNll / scored),
      denseTokensPerSecond: denseSpeed,
      points,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    for (const s of sessions) s.close();
    reference.close();
  }
}
