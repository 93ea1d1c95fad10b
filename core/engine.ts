/**
 * Handles on the native engine: a mapped, validated model and the sessions evaluating on it.
 *
 * The core owns all native memory; these classes hold opaque pointers. Token ids go to the
 * session's own native buffer and logits are read from a view of the native logits buffer, so the
 * nonblocking eval call touches no JS-owned memory (Deno does not keep a "buffer" argument alive
 * across a nonblocking call). Closing is refused while work is running, never a crash.
 *
 * @module
 */
import { SparrowError, unwrap } from "./errors.ts";
import { core, lastError, layout } from "./ffi.ts";
import type { LoadedBackend } from "./backend_loader.ts";
import { closeAtExit } from "./exit_cleanup.ts";

const encoder = new TextEncoder();

/** Settings of a native session. */
export interface NativeSessionOptions {
  /** Positions the KV cache holds. */
  contextLength: number;
  /** Threads in all, the calling thread included. */
  threads: number;
  /** Most tokens evaluated per call (prompt chunks). */
  batchSize: number;
  /** Keep logits for every token of a batch (perplexity, evaluation), not only the last. */
  allLogits?: boolean;
  /** Element type of the KV cache; default "f32". */
  kvType?: KvType;
}

/**
 * Element type of the KV cache: "f16" halves its memory and the bytes attention reads per token,
 * rounding each key and value to 11 significant bits; "f32" keeps them as computed.
 */
export type KvType = "f32" | "f16";

/** Bytes per cached key or value element. */
export function kvElementBytes(kvType: KvType): number {
  return kvType === "f16" ? 2 : 4;
}

// Backstops for handles dropped without close(); the normal path is an explicit close().
const modelFinalizer = new FinalizationRegistry<Deno.PointerObject>((ptr) => {
  core().sp_model_close(ptr);
});
const sessionFinalizer = new FinalizationRegistry<{ ptr: Deno.PointerObject; model: NativeModel }>((held) => {
  if (core().sp_session_destroy(held.ptr) === 0) held.model.track(-1);
});

/** A model file mapped and validated by the core. */
export class NativeModel {
  #ptr: Deno.PointerObject | null;
  // A count, not a set of sessions: the model must not keep dropped sessions reachable.
  #openSessions = 0;
  /** The file the model was opened from. */
  readonly path: string;

  private constructor(ptr: Deno.PointerObject, path: string) {
    this.#ptr = ptr;
    this.path = path;
    modelFinalizer.register(this, ptr, this);
  }

  /**
   * Maps `path` and validates the model description against it.
   *
   * @param path The GGUF file.
   * @param desc Bytes from `encodeModelDesc`.
   * @throws {SparrowError} With the core's message when the file or a tensor is bad.
   */
  static open(path: string, desc: Uint8Array<ArrayBuffer>): NativeModel {
    const c = core();
    const pathBytes = encoder.encode(path);
    const out = new BigUint64Array(1);
    unwrap(
      c.sp_model_open(pathBytes, BigInt(pathBytes.length), desc, BigInt(desc.length), new Uint8Array(out.buffer)),
      () => lastError(null, null),
    );
    const ptr = Deno.UnsafePointer.create(out[0]);
    if (ptr === null) throw new SparrowError("internal", `sp_model_open returned no handle for ${path}`);
    return new NativeModel(ptr, path);
  }

  /** The pointer, or an error if closed. */
  get pointer(): Deno.PointerObject {
    if (this.#ptr === null) throw new SparrowError("closed", `model ${this.path} is closed`);
    return this.#ptr;
  }

  /** True once {@link close} has run. */
  get closed(): boolean {
    return this.#ptr === null;
  }

  /**
   * Copies the weights out of the file mapping into anonymous memory (huge pages) and drops the
   * mapping's pages: all of them, or with `withFfn` false those outside the FFNs; on `threads`
   * threads (faulting the fresh memory in is most of the cost). With `backendTable` (the plugin the
   * sessions will use; before any is open), the matrices it computes with as row pairs are stored
   * so.
   *
   * @throws {SparrowError} `out_of_memory` when the copy cannot be allocated.
   */
  copyWeights(withFfn: boolean, threads: number, backendTable: Deno.PointerValue = null): void {
    const ptr = this.pointer;
    unwrap(core().sp_model_copy_weights(ptr, withFfn ? 1 : 0, threads, backendTable), () => lastError(ptr, null));
  }

  /** How many matrices `copyWeights` stored as row pairs. */
  get rowPairMatrices(): number {
    return core().sp_model_row_pairs(this.pointer);
  }

  /** Sessions open on this model. */
  get openSessions(): number {
    return this.#openSessions;
  }

  /** @internal Sessions count themselves in and out so close() can refuse while they are open. */
  track(delta: 1 | -1): void {
    this.#openSessions += delta;
  }

  /**
   * Unmaps the model. Safe to call twice.
   *
   * @throws {SparrowError} `busy` while sessions are open on it.
   */
  close(): void {
    if (this.#ptr === null) return;
    if (this.#openSessions > 0) {
      throw new SparrowError("busy", `model ${this.path} has ${this.#openSessions} open session(s); close them first`);
    }
    const ptr = this.#ptr;
    unwrap(core().sp_model_close(ptr), () => lastError(ptr, null));
    this.#ptr = null;
    modelFinalizer.unregister(this);
  }
}

/** One sequence being evaluated: KV cache, scratch and a thread pool in the core. */
export class NativeSession {
  #ptr: Deno.PointerObject | null;
  #busy = false;
  readonly #model: NativeModel;
  readonly #forgetAtExit: () => void;
  readonly #tokens: Uint32Array;
  readonly #logits: Float32Array;
  /** Vocabulary size (length of one logits row). */
  readonly vocabSize: number;
  /** Positions the KV cache holds. */
  readonly contextLength: number;
  /** Most tokens per eval call. */
  readonly batchSize: number;
  /** Threads in all. */
  readonly threads: number;
  /** Bytes the core allocated for this session (KV cache and scratch). */
  readonly allocatedBytes: number;
  /** Whether logits are kept for every token of a batch. */
  readonly allLogits: boolean;

  /**
   * Creates a session on `model` computing with `backend`.
   *
   * @throws {SparrowError} With the core's message (bad options, unsupported types, out of memory).
   */
  constructor(model: NativeModel, backend: LoadedBackend, options: NativeSessionOptions) {
    const c = core();
    const opts = new Uint32Array(layout.sessionOptions / 4);
    // flags: bit 0 all logits, bit 1 an f16 KV cache (session.zig's SessionOptions)
    const flags = (options.allLogits ? 1 : 0) | (options.kvType === "f16" ? 2 : 0);
    opts.set([options.contextLength, options.threads, options.batchSize, flags]);
    const out = new BigUint64Array(1);
    unwrap(
      c.sp_session_create(model.pointer, backend.table, new Uint8Array(opts.buffer), new Uint8Array(out.buffer)),
      () => lastError(null, null),
    );
    const ptr = Deno.UnsafePointer.create(out[0]);
    if (ptr === null) throw new SparrowError("internal", "sp_session_create returned no handle");
    this.#ptr = ptr;
    this.#model = model;
    const info = new BigUint64Array(6);
    c.sp_session_info(ptr, info);
    this.contextLength = Number(info[0]);
    this.batchSize = Number(info[1]);
    this.vocabSize = Number(info[3]);
    this.allocatedBytes = Number(info[4]);
    this.threads = Number(info[5]);
    const tokensPtr = c.sp_session_tokens(ptr)!;
    this.#tokens = new Uint32Array(Deno.UnsafePointerView.getArrayBuffer(tokensPtr, this.batchSize * 4));
    this.allLogits = options.allLogits ?? false;
    const logitRows = this.allLogits ? this.batchSize : 1;
    const logitsPtr = c.sp_session_logits(ptr)!;
    this.#logits = new Float32Array(Deno.UnsafePointerView.getArrayBuffer(logitsPtr, logitRows * this.vocabSize * 4));
    model.track(1);
    this.#forgetAtExit = closeAtExit(this, 0);
    sessionFinalizer.register(this, { ptr, model }, this);
  }

  #prepare(tokens: ArrayLike<number>, pos0: number): Deno.PointerObject {
    if (this.#ptr === null) throw new SparrowError("closed", "session is closed");
    if (this.#busy) throw new SparrowError("busy", "session is already evaluating");
    if (!Number.isInteger(pos0) || pos0 < 0 || pos0 + tokens.length > this.contextLength) {
      throw new SparrowError(
        "context_full",
        `positions ${pos0}..${pos0 + tokens.length} do not fit the context of ${this.contextLength} tokens`,
      );
    }
    if (tokens.length < 1 || tokens.length > this.batchSize) {
      throw new SparrowError(
        "invalid_argument",
        `batch of ${tokens.length} tokens; this session takes 1 to ${this.batchSize}`,
      );
    }
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) {
        throw new SparrowError("invalid_argument", `token id ${t} is outside the vocabulary of ${this.vocabSize}`);
      }
      this.#tokens[i] = t;
    }
    return this.#ptr;
  }

  /**
   * Evaluates `tokens` at positions pos0.. on a worker thread; logits are then in {@link logits}.
   *
   * @throws {SparrowError} `busy` if an eval is running, `context_full` past the context length.
   */
  async eval(tokens: ArrayLike<number>, pos0: number): Promise<void> {
    const ptr = this.#prepare(tokens, pos0);
    this.#busy = true;
    try {
      const status = await core().sp_eval(ptr, tokens.length, pos0);
      unwrap(status, () => lastError(null, ptr));
    } finally {
      this.#busy = false;
    }
  }

  /** Like {@link eval} but on the calling thread: no thread hop, but blocks the event loop. */
  evalSync(tokens: ArrayLike<number>, pos0: number): void {
    const ptr = this.#prepare(tokens, pos0);
    unwrap(core().sp_eval_sync(ptr, tokens.length, pos0), () => lastError(null, ptr));
  }

  /**
   * Logits of the last evaluated token, or of token `row` of the last batch for a session created
   * with `allLogits`. A live view of native memory: copy it if it must outlive the next eval.
   */
  logits(row = 0): Float32Array {
    return this.#logits.subarray(row * this.vocabSize, (row + 1) * this.vocabSize);
  }

  /**
   * Attaches sparse FFNs with their settings (null detaches).
   *
   * @throws {SparrowError} `busy` while evaluating; `unsupported` when the backend cannot.
   */
  setSparse(sparse: Deno.PointerObject | null, config: Uint8Array<ArrayBuffer>): void {
    if (this.#ptr === null) throw new SparrowError("closed", "session is closed");
    if (this.#busy) throw new SparrowError("busy", "cannot change sparse settings while evaluating");
    const ptr = this.#ptr;
    unwrap(core().sp_session_set_sparse(ptr, sparse, config), () => lastError(null, ptr));
  }

  /** The sparse counters (layers x fields, as u64), optionally zeroing them. */
  sparseCounters(nLayers: number, fields: number, reset: boolean): BigUint64Array {
    if (this.#ptr === null) throw new SparrowError("closed", "session is closed");
    const out = new BigUint64Array(nLayers * fields);
    core().sp_session_sparse_stats(this.#ptr, new Uint8Array(out.buffer), BigInt(out.length), reset);
    return out;
  }

  /** @internal The native pointer, for calibration (core/calibrate.ts). */
  get pointer(): Deno.PointerObject {
    if (this.#ptr === null) throw new SparrowError("closed", "session is closed");
    return this.#ptr;
  }

  /** True while an eval runs. */
  get busy(): boolean {
    return this.#busy;
  }

  /** True once {@link close} has run. */
  get closed(): boolean {
    return this.#ptr === null;
  }

  /**
   * Frees the session's native memory. Safe to call twice.
   *
   * @throws {SparrowError} `busy` while an eval runs.
   */
  close(): void {
    if (this.#ptr === null) return;
    if (this.#busy) {
      throw new SparrowError("busy", "cannot close a session while it is evaluating; await the eval first");
    }
    const ptr = this.#ptr;
    unwrap(core().sp_session_destroy(ptr), () => lastError(null, ptr));
    this.#ptr = null;
    this.#forgetAtExit();
    sessionFinalizer.unregister(this);
    this.#model.track(-1);
  }
}
