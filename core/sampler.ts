/**
 * Token sampling from logits: greedy, or temperature with top-k, top-p and min-p filtering, plus a
 * repetition penalty, all driven by a seeded generator so the same seed gives the same text.
 *
 * Order of operations (as Hugging Face's warpers): repetition penalty on the raw logits, then
 * temperature, then top-k, top-p and min-p on the tempered distribution, then a draw.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import { Rng } from "./rng.ts";

export { Rng };

/** Sampling settings. Every field is optional; defaults follow llama.cpp's. */
export interface SamplerOptions {
  /** 0 (or less) picks the most likely token (greedy). Default 0.8. */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 disables. Default 40. */
  topK?: number;
  /** Keep the smallest set of tokens whose probability sums to at least p; 1 disables. Default 0.95. */
  topP?: number;
  /** Drop tokens less likely than minP times the most likely one; 0 disables. Default 0.05. */
  minP?: number;
  /** Divide positive (multiply negative) logits of recently seen tokens by this; 1 disables. Default 1. */
  repeatPenalty?: number;
  /** How many recent tokens the repetition penalty looks at. Default 64. */
  repeatLastN?: number;
  /** Seed of the random generator; default: a random seed (reported by {@link Sampler.seed}). */
  seed?: number;
}

/** NaN or +Infinity logits cannot be sampled from: the model's numbers have broken down. */
function badLogit(token: number, value: number): never {
  throw new SparrowError(
    "bad_model",
    `the model produced a logit of ${value} for token ${token}; its weights may be corrupt or its activations overflowed`,
  );
}

function check(name: string, v: number, lo: number, hi: number): void {
  if (!(v >= lo && v <= hi)) {
    throw new SparrowError("invalid_argument", `sampler option ${name} = ${v} is outside [${lo}, ${hi}]`);
  }
}

/**
 * Picks the next token from a logits vector.
 *
 * @example Greedy and seeded sampling
 * ```ts
 * import { Sampler } from "./sampler.ts";
 * const logits = new Float32Array([0.1, 2.5, -1, 0.3]);
 * const greedy = new Sampler({ temperature: 0 });
 * console.log(greedy.sample(logits, [])); // 1
 * const a = new Sampler({ temperature: 1, seed: 7 });
 * const b = new Sampler({ temperature: 1, seed: 7 });
 * console.log(a.sample(logits, []) === b.sample(logits, [])); // true
 * ```
 */
export class Sampler {
  /** The seed in use: pass it back as `seed` to reproduce a run. */
  readonly seed: number;
  readonly #temperature: number;
  readonly #topK: number;
  readonly #topP: number;
  readonly #minP: number;
  readonly #repeatPenalty: number;
  readonly #repeatLastN: number;
  readonly #rng: Rng;
  // Candidate scratch, grown to the vocabulary size on first use and reused after.
  #ids = new Int32Array(0);
  #vals = new Float64Array(0);

  /**
   * Creates a sampler; options are checked here.
   *
   * @param options Sampling settings (see {@link SamplerOptions}).
   */
  constructor(options: SamplerOptions = {}) {
    this.#temperature = options.temperature ?? 0.8;
    this.#topK = options.topK ?? 40;
    this.#topP = options.topP ?? 0.95;
    this.#minP = options.minP ?? 0.05;
    this.#repeatPenalty = options.repeatPenalty ?? 1;
    this.#repeatLastN = options.repeatLastN ?? 64;
    check("temperature", this.#temperature, -Infinity, 100);
    check("topK", this.#topK, 0, 1 << 24);
    if (!Number.isInteger(this.#topK)) {
      throw new SparrowError("invalid_argument", `sampler option topK = ${this.#topK} is not a whole number`);
    }
    check("topP", this.#topP, 0, 1);
    check("minP", this.#minP, 0, 1);
    check("repeatPenalty", this.#repeatPenalty, 0.01, 100);
    check("repeatLastN", this.#repeatLastN, 0, 1 << 20);
    this.seed = (options.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]) >>> 0;
    this.#rng = new Rng(this.seed);
  }

  /** True when this sampler always picks the most likely token. */
  get greedy(): boolean {
    return this.#temperature <= 0;
  }

  /**
   * Picks a token.
   *
   * @param logits One score per vocabulary entry (not modified).
   * @param history Tokens so far, for the repetition penalty.
   * @returns The chosen token id.
   */
  sample(logits: Float32Array, history: readonly number[]): number {
    if (logits.length === 0) throw new SparrowError("invalid_argument", "no logits to sample from");
    const penalized = this.#penalized(history);
    const score = (i: number) => {
      const p = penalized.get(i);
      return p === undefined ? logits[i] : p(logits[i]);
    };
    if (this.greedy) {
      let best = 0;
      let bestScore = -Infinity;
      for (let i = 0; i < logits.length; i++) {
        const s = penalized.size ? score(i) : logits[i];
        if (!(s < Infinity)) badLogit(i, s);
        if (s > bestScore) {
          bestScore = s;
          best = i;
        }
      }
      return best;
    }
    const n = this.#collect(logits, score, penalized.size > 0);
    return this.#draw(n);
  }

  /** Tokens under the repetition penalty, each with its logit transform. */
  #penalized(history: readonly number[]): Map<number, (x: number) => number> {
    const map = new Map<number, (x: number) => number>();
    if (this.#repeatPenalty === 1 || this.#repeatLastN === 0) return map;
    const r = this.#repeatPenalty;
    const f = (x: number) => (x > 0 ? x / r : x * r);
    for (let i = Math.max(0, history.length - this.#repeatLastN); i < history.length; i++) map.set(history[i], f);
    return map;
  }

  /** Fills the candidate arrays with the tokens that survive top-k, sorted by score, descending. */
  #collect(logits: Float32Array, score: (i: number) => number, anyPenalty: boolean): number {
    const vocab = logits.length;
    if (this.#ids.length < vocab) {
      this.#ids = new Int32Array(vocab);
      this.#vals = new Float64Array(vocab);
    }
    const ids = this.#ids;
    const vals = this.#vals;
    let max = -Infinity;
    for (let i = 0; i < vocab; i++) {
      const s = anyPenalty ? score(i) : logits[i];
      if (!(s < Infinity)) badLogit(i, s);
      if (s > max) max = s;
    }
    // min-p in logit space: p_i >= minP * p_max  <=>  s_i >= s_max + T * ln(minP). Dropping those
    // first keeps the sort below small; top-k/top-p only ever remove more.
    const floor = this.#minP > 0 ? max + this.#temperature * Math.log(this.#minP) : -Infinity;
    let n = 0;
    for (let i = 0; i < vocab; i++) {
      const s = anyPenalty ? score(i) : logits[i];
      if (s >= floor) {
        ids[n] = i;
        vals[n] = s;
        n++;
      }
    }
    const order = Array.from({ length: n }, (_, j) => j).sort((a, b) => vals[b] - vals[a] || ids[a] - ids[b]);
    const k = this.#topK > 0 ? Math.min(this.#topK, n) : n;
    const sortedIds = order.slice(0, k).map((j) => ids[j]);
    const sortedVals = order.slice(0, k).map((j) => vals[j]);
    for (let j = 0; j < k; j++) {
      ids[j] = sortedIds[j];
      vals[j] = sortedVals[j];
    }
    return k;
  }

  /** Softmax with temperature over the n candidates, top-p cut, then a draw. */
  #draw(n: number): number {
    const ids = this.#ids;
    const p = this.#vals;
    const t = this.#temperature;
    const max = p[0];
    let sum = 0;
    for (let j = 0; j < n; j++) {
      p[j] = Math.exp((p[j] - max) / t);
      sum += p[j];
    }
    let keep = n;
    if (this.#topP < 1) {
      let cum = 0;
      for (let j = 0; j < n; j++) {
        cum += p[j] / sum;
        if (cum >= this.#topP) {
          keep = j + 1;
          break;
        }
      }
    }
    let kept = 0;
    for (let j = 0; j < keep; j++) kept += p[j];
    let r = this.#rng.nextFloat() * kept;
    for (let j = 0; j < keep; j++) {
      r -= p[j];
      if (r < 0) return ids[j];
    }
    return ids[keep - 1];
  }
}
