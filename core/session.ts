/**
 * A generation session: a KV cache in the core plus the token history it holds, and the loop that
 * turns a prompt into streamed text: prefill in batches, then sample, detokenize and evaluate one
 * token at a time.
 *
 * A new prompt that starts with tokens already in the cache reuses them (a chat that re-sends the
 * whole conversation each turn only evaluates the new part).
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import type { NativeSession } from "./engine.ts";
import { Sampler, type SamplerOptions } from "./sampler.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { TextStream } from "./text_stream.ts";
import { type SparseStats, sparseStatsFields, summarizeSparseStats } from "./sparse.ts";

/** Options of one generation. Sampling options are those of {@link SamplerOptions}. */
export interface GenerateOptions extends SamplerOptions {
  /** Most tokens to generate. Default: until a stop token or the end of the context. */
  maxTokens?: number;
  /** Stop when the text produces one of these strings (not included in the output). */
  stop?: readonly string[];
  /** Aborts the generation (it ends with reason "aborted"). */
  signal?: AbortSignal;
  /** Prepend BOS to a string prompt. Default: what the model's tokenizer asks for. */
  addBos?: boolean;
  /** Recognise special tokens such as `<|im_start|>` written in a string prompt. Default true. */
  parseSpecial?: boolean;
  /** Called as prompt chunks are evaluated, with (tokens done, tokens in all). */
  onPrefillProgress?: (done: number, total: number) => void;
}

/** Why a generation ended. */
export type StopReason = "stop_token" | "stop_string" | "max_tokens" | "context_full" | "aborted";

/** Timings and counts of one generation. */
export interface GenerationStats {
  /** Tokens in the prompt. */
  promptTokens: number;
  /** Prompt tokens reused from the KV cache (not evaluated again). */
  cachedTokens: number;
  /** Tokens generated. */
  generatedTokens: number;
  /** Time evaluating the prompt. */
  prefillMs: number;
  /** Prompt tokens evaluated per second. */
  prefillTokensPerSecond: number;
  /** Time from the first generated token to the last (sampling, evaluation, detokenization). */
  decodeMs: number;
  /** Generated tokens evaluated per second. */
  decodeTokensPerSecond: number;
  /** The sampler seed: pass it back to reproduce this text. */
  seed: number;
  /** Why generation ended. */
  stopReason: StopReason;
}

/**
 * What {@link Session.generate} yields: a piece of text per token, then one final summary whose
 * `text` holds anything held back until the end (an incomplete character, a partial stop string).
 * Printing `event.text` of every event gives the whole output.
 */
export type GenerationEvent =
  | { type: "token"; token: number; text: string }
  | { type: "done"; text: string; stats: GenerationStats };

/** The whole result of {@link Session.complete}. */
export interface Completion {
  /** The generated text (prompt excluded). */
  text: string;
  /** The generated token ids. */
  tokens: number[];
  /** Timings and counts. */
  stats: GenerationStats;
}

/** Holds back text that might be the start of a stop string, and cuts at the first full match. */
class StopMatcher {
  #pending = "";
  constructor(readonly stops: readonly string[]) {}

  /** Adds text; returns what can be emitted and whether a stop string was completed. */
  push(text: string): { emit: string; stopped: boolean } {
    this.#pending += text;
    let cut = -1;
    for (const s of this.stops) {
      const at = this.#pending.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      const emit = this.#pending.slice(0, cut);
      this.#pending = "";
      return { emit, stopped: true };
    }
    // Keep the longest tail that is a prefix of some stop string.
    let hold = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, this.#pending.length); n > hold; n--) {
        if (this.#pending.endsWith(s.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    const emit = this.#pending.slice(0, this.#pending.length - hold);
    this.#pending = this.#pending.slice(this.#pending.length - hold);
    return { emit, stopped: false };
  }

  flush(): string {
    const rest = this.#pending;
    this.#pending = "";
    return rest;
  }
}

/**
 * One sequence being generated. Create it with `Model.createSession()`.
 *
 * @example Streaming a completion
 * ```ts ignore
 * import { loadModel } from "../mod.ts";
 * using model = await loadModel("model.gguf");
 * using session = model.createSession();
 * for await (const event of session.generate("Once upon a time", { maxTokens: 32, seed: 1 })) {
 *   if (event.type === "token") console.log(event.text);
 * }
 * ```
 */
export class Session {
  readonly #native: NativeSession;
  readonly #tokenizer: Tokenizer;
  /** Tokens whose keys and values are in the cache, at positions 0..n-1. */
  #cached: number[] = [];
  #generating = false;

  readonly #shape: { nLayers: number; ffnDim: number };
  readonly #onClose: () => void;

  /** @internal Use `Model.createSession()`. */
  constructor(
    native: NativeSession,
    tokenizer: Tokenizer,
    shape: { nLayers: number; ffnDim: number },
    onClose = () => {},
  ) {
    this.#native = native;
    this.#tokenizer = tokenizer;
    this.#shape = shape;
    this.#onClose = onClose;
  }

  /**
   * Sparse FFN statistics since the session started (or the last reset): measured sparsity,
   * predictor recall on verified tokens, bytes read per token, per layer.
   *
   * @param reset Zero the counters after reading them.
   */
  sparseStats(reset = false): SparseStats {
    const flat = this.#native.sparseCounters(this.#shape.nLayers, sparseStatsFields, reset);
    return summarizeSparseStats(flat, this.#shape.nLayers, this.#shape.ffnDim);
  }

  /** @internal The native session, for calibration (core/calibrate.ts). */
  get native(): NativeSession {
    return this.#native;
  }

  /** Positions the session's KV cache holds. */
  get contextLength(): number {
    return this.#native.contextLength;
  }

  /** Tokens currently in the KV cache. */
  get cachedTokens(): readonly number[] {
    return this.#cached;
  }

  /** Bytes the core allocated for this session (KV cache and scratch). */
  get allocatedBytes(): number {
    return this.#native.allocatedBytes;
  }

  /** Forgets the cached tokens; the next prompt is evaluated from position 0. */
  reset(): void {
    this.#cached = [];
  }

  /**
   * Encodes `prompt` (a string or token ids) as this session would.
   *
   * @param prompt Text or ids.
   * @param options BOS and special-token handling.
   * @returns Token ids.
   */
  promptTokens(
    prompt: string | readonly number[],
    options: Pick<GenerateOptions, "addBos" | "parseSpecial"> = {},
  ): number[] {
    if (typeof prompt !== "string") return [...prompt];
    return this.#tokenizer.encode(prompt, {
      addBos: options.addBos ?? this.#tokenizer.addBos,
      parseSpecial: options.parseSpecial ?? true,
    });
  }

  /**
   * Evaluates a prompt and streams the generated text, one event per token, then a summary.
   *
   * @param prompt The whole sequence so far, as text or token ids; a prefix already in the cache is
   * reused.
   * @param options Sampling, stopping and progress options.
   * @returns Token events, then one `done` event with stats.
   * @throws {SparrowError} `busy` if this session is already generating, `context_full` if the
   * prompt does not fit, `invalid_argument` for bad options.
   */
  async *generate(prompt: string | readonly number[], options: GenerateOptions = {}): AsyncGenerator<GenerationEvent> {
    if (this.#generating) {
      throw new SparrowError("busy", "this session is already generating; await it or use another session");
    }
    this.#generating = true;
    try {
      yield* this.#run(prompt, options);
    } finally {
      this.#generating = false;
    }
  }

  /**
   * Evaluates a token sequence and returns logits: of the last token, or of every token when the
   * session was created with `allLogits`. A cached prefix is reused (its logits are not recomputed,
   * so with `allLogits` call {@link reset} first to get every position).
   *
   * @param ids Token ids, from position 0.
   * @returns Copies of the logits rows, one per evaluated position (only the last without
   * `allLogits`).
   */
  async evaluate(ids: readonly number[]): Promise<Float32Array[]> {
    if (this.#generating) throw new SparrowError("busy", "this session is generating; await it or use another session");
    if (ids.length === 0) throw new SparrowError("invalid_argument", "nothing to evaluate: no token ids");
    this.#generating = true;
    try {
      const rows: Float32Array[] = [];
      const reuse = this.#reusablePrefix(ids);
      const batch = this.#native.batchSize;
      for (let at = reuse; at < ids.length; at += batch) {
        const chunk = ids.slice(at, Math.min(at + batch, ids.length));
        await this.#native.eval(chunk, at);
        this.#cached.push(...chunk);
        if (this.#native.allLogits) chunk.forEach((_, j) => rows.push(this.#native.logits(j).slice()));
      }
      if (!this.#native.allLogits) rows.push(this.#native.logits().slice());
      return rows;
    } finally {
      this.#generating = false;
    }
  }

  /** Keeps the longest cached prefix of `ids` that leaves at least one token to evaluate. */
  #reusablePrefix(ids: readonly number[]): number {
    let reuse = 0;
    while (reuse < this.#cached.length && reuse < ids.length - 1 && this.#cached[reuse] === ids[reuse]) reuse++;
    this.#cached.length = reuse;
    return reuse;
  }

  /**
   * Runs {@link generate} to the end and returns the text, tokens and stats.
   *
   * @param prompt Text or token ids.
   * @param options Generation options.
   */
  async complete(prompt: string | readonly number[], options: GenerateOptions = {}): Promise<Completion> {
    let text = "";
    const tokens: number[] = [];
    for await (const event of this.generate(prompt, options)) {
      text += event.text;
      if (event.type === "token") tokens.push(event.token);
      else return { text, tokens, stats: event.stats };
    }
    throw new SparrowError("internal", "generation ended without a summary");
  }

  async *#run(prompt: string | readonly number[], options: GenerateOptions): AsyncGenerator<GenerationEvent> {
    const ids = this.promptTokens(prompt, options);
    if (ids.length === 0) {
      throw new SparrowError("invalid_argument", "the prompt is empty (no tokens); give text or enable BOS");
    }
    const ctx = this.#native.contextLength;
    if (ids.length >= ctx) {
      throw new SparrowError(
        "context_full",
        `the prompt has ${ids.length} tokens; the context holds ${ctx} (raise contextLength)`,
      );
    }
    const maxTokens = options.maxTokens ?? ctx;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) {
      throw new SparrowError("invalid_argument", `maxTokens = ${maxTokens} is not a count`);
    }
    const sampler = new Sampler(options);

    // Reuse the cached prefix, but always evaluate at least the last prompt token: its logits
    // choose the first generated token.
    const reuse = this.#reusablePrefix(ids);

    const t0 = performance.now();
    const batch = this.#native.batchSize;
    for (let at = reuse; at < ids.length; at += batch) {
      const chunk = ids.slice(at, Math.min(at + batch, ids.length));
      await this.#native.eval(chunk, at);
      this.#cached.push(...chunk);
      options.onPrefillProgress?.(at + chunk.length - reuse, ids.length - reuse);
      if (options.signal?.aborted) break;
    }
    const prefillMs = performance.now() - t0;

    const stream = new TextStream(this.#tokenizer, { previous: ids[ids.length - 1] });
    const stops = new StopMatcher(options.stop ?? []);
    const history = [...ids];
    let generated = 0;
    let stopReason: StopReason = "max_tokens";
    const t1 = performance.now();
    while (true) {
      if (options.signal?.aborted) {
        stopReason = "aborted";
        break;
      }
      if (generated >= maxTokens) {
        stopReason = "max_tokens";
        break;
      }
      const next = sampler.sample(this.#native.logits(), history);
      if (this.#tokenizer.stopIds.has(next)) {
        stopReason = "stop_token";
        break;
      }
      history.push(next);
      generated++;
      const { emit, stopped } = stops.push(stream.push(next));
      if (emit || !stopped) yield { type: "token", token: next, text: emit };
      if (stopped) {
        stopReason = "stop_string";
        break;
      }
      if (this.#cached.length >= ctx) {
        stopReason = "context_full";
        break;
      }
      if (generated >= maxTokens) {
        stopReason = "max_tokens";
        break;
      }
      await this.#native.eval([next], this.#cached.length);
      this.#cached.push(next);
    }
    const tail = stopReason === "stop_string" ? "" : stops.push(stream.flush()).emit + stops.flush();
    const decodeMs = performance.now() - t1;
    const evaluated = ids.length - reuse;
    yield {
      type: "done",
      text: tail,
      stats: {
        promptTokens: ids.length,
        cachedTokens: reuse,
        generatedTokens: generated,
        prefillMs,
        prefillTokensPerSecond: prefillMs > 0 ? (evaluated / prefillMs) * 1000 : 0,
        decodeMs,
        decodeTokensPerSecond: decodeMs > 0 ? (generated / decodeMs) * 1000 : 0,
        seed: sampler.seed,
        stopReason,
      },
    };
  }

  /**
   * Frees the session. Safe to call twice.
   *
   * @throws {SparrowError} `busy` while a generation is running.
   */
  close(): void {
    if (this.#generating) throw new SparrowError("busy", "cannot close a session while it is generating");
    if (this.#native.closed) return;
    this.#native.close();
    this.#onClose();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
