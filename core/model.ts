/**
 * Loading a model: check the options, read and check the GGUF header, resolve the architecture's
 * tensors and their types, build the tokenizer from the file's metadata, and have the core map and
 * validate the weights.
 *
 * @module
 */
import { loadBackend } from "./backend_loader.ts";
import { backends, defaultBackend } from "../backends/registry.ts";
import { type KvType, NativeModel, NativeSession } from "./engine.ts";
import { SparrowError } from "./errors.ts";
import { core } from "./ffi.ts";
import { type GgufFile, readGguf } from "./gguf.ts";
import { ggmlTypeName, ggmlTypes } from "./gguf_types.ts";
import {
  type Activation,
  encodeModelDesc,
  type LlamaHparams,
  type LlamaTensors,
  type RopeLayout,
} from "./model_desc.ts";
import { llamaHparams, llamaTensors } from "../models/llama.ts";
import { type GenerateOptions, type GenerationEvent, Session } from "./session.ts";
import { type Tokenizer, tokenizerFromGguf } from "./tokenizer.ts";
import { encodeSparseConfig, SparseFfn, type SparseOptions } from "./sparse.ts";
import { readSidecar } from "./sidecar.ts";
import { modelFingerprint } from "./model_fingerprint.ts";
import { buildOffload, type OffloadOptions, type OffloadReport } from "./offload.ts";
import { closeAtExit } from "./exit_cleanup.ts";
import { availableMemoryBytes } from "./memory_budget.ts";

/** Which prepared sparse FFNs a set of options means. */
function sparseKey(o: Pick<SparseOptions, "sidecar" | "sparsity" | "downType" | "bundles">): string {
  return `${o.sidecar ?? ""}|${o.sparsity ?? ""}|${o.bundles ? `bundles:${o.bundles}` : (o.downType ?? "auto")}`;
}

/** Options of {@link loadModel}; session defaults can be overridden per session. */
export interface LoadModelOptions {
  /** Threads per session, the calling thread included. Default: every logical CPU. */
  threads?: number;
  /** Backend plugin name (see backends/registry.ts). Default "cpu". */
  backend?: string;
  /** KV cache positions per session. Default: the model's context length, at most 4096. */
  contextLength?: number;
  /** Most prompt tokens evaluated per call. Default 128. */
  batchSize?: number;
  /**
   * Element type of each session's KV cache. Default "f16" (as llama.cpp's): half the memory of
   * "f32", and half the bytes attention reads per token at long contexts.
   */
  kvType?: KvType;
  /** Replace the file's FFN activation (e.g. "relu" for a ReLU-fied model that does not say so). */
  activation?: Activation;
  /** Replace the file's RoPE pairing. */
  ropeLayout?: RopeLayout;
  /**
   * Where decode reads the weights from (see {@link WeightPlacement}). Default "auto": copied when
   * they take at most half of the memory available, mapped otherwise.
   */
  weights?: WeightPlacement;
  /**
   * Called with the bytes about to be copied, before the weights are copied into memory (not when
   * they stay mapped): the copy of a 7B model takes from under a second to several seconds.
   */
  onWeightsCopy?: (bytes: number) => void;
}

/**
 * Where a model's weights live while it runs.
 *
 * - "map": read in place from the file's memory mapping (page cache): loads at once, shares the
 *   pages with other processes, and the kernel may reclaim them under memory pressure;
 * - "copy": copied at load into anonymous memory in huge pages, on the session threads (0.6 s per
 *   4 GB on 2 threads; 5 s on a KVM guest whose memory had sat idle), which decode streams faster:
 *   on that guest (Xeon, 2 vCPUs) the 7B-shape synthetic ReLU Q4_0 model decoded at 6.27 tok/s
 *   dense and 16.46 sparse (predictor) from the copy, against 4.00 and 12.09 from the mapping
 *   (huge-page mapped), in one process, token by token. A model whose FFN neurons are offloaded
 *   ({@link Model.prepareOffload}) needs "map": its budget holds only what it reads;
 * - "auto": "copy" when the weights take at most half of the memory available, else "map".
 */
export type WeightPlacement = "auto" | "copy" | "map";

/** The session defaults of a loaded model. */
export interface ModelDefaults {
  /** Threads per session. */
  threads: number;
  /** Backend plugin name. */
  backend: string;
  /** KV cache positions per session. */
  contextLength: number;
  /** Most prompt tokens evaluated per call. */
  batchSize: number;
  /** Element type of the KV cache. */
  kvType: KvType;
}

/** Options of {@link Model.createSession}. */
export interface SessionOptions {
  /** Threads, the calling thread included. */
  threads?: number;
  /** KV cache positions. */
  contextLength?: number;
  /** Most prompt tokens evaluated per call. */
  batchSize?: number;
  /** Keep logits of every token in a batch (for evaluation); default false. */
  allLogits?: boolean;
  /** Element type of the KV cache; default the model's (see {@link LoadModelOptions.kvType}). */
  kvType?: KvType;
  /** Compute FFNs sparsely (see {@link SparseOptions}); default dense. */
  sparse?: SparseOptions;
}

/** What a loaded model is. */
export interface ModelInfo {
  /** The GGUF file. */
  path: string;
  /** `general.name`, or the file name. */
  name: string;
  /** `general.architecture`. */
  architecture: string;
  /** Hyperparameters the engine runs with. */
  hparams: Readonly<LlamaHparams>;
  /** Tensor count per GGML type name, e.g. `{ Q4_1: 210, F32: 61, Q8_0: 1 }`. */
  tensorTypes: Readonly<Record<string, number>>;
  /** Bytes of tensor data in the file. */
  weightBytes: number;
  /** Size of the file. */
  fileSize: number;
  /** Whether the classifier reuses the token embedding. */
  tiedEmbeddings: boolean;
  /** Where the weights were placed at load ({@link WeightPlacement}, "auto" resolved). */
  weights: "copy" | "map";
  /**
   * Matrices the copy stores as row pairs, read as one stream by the backend's matrix-vector
   * kernel: the attention and output matrices of 32-element block types (Q4_0, Q8_0, ...) whose
   * rows hold whole batches of 8 blocks, where the backend supports it. 0 when the weights are
   * mapped.
   */
  rowPairMatrices: number;
}

function positiveInt(name: string, v: number, max: number): number {
  if (!Number.isInteger(v) || v < 1 || v > max) {
    throw new SparrowError("invalid_argument", `${name} = ${v} is outside [1, ${max}]`);
  }
  return v;
}

/** Checks the options before anything is read or mapped, so bad options leave nothing behind. */
function resolveOptions(options: LoadModelOptions): Omit<ModelDefaults, "contextLength"> & { contextLength?: number } {
  const backend = options.backend ?? defaultBackend;
  if (!backends.has(backend)) {
    throw new SparrowError(
      "invalid_argument",
      `unknown backend '${backend}' (known: ${[...backends.keys()].join(", ")})`,
    );
  }
  return {
    threads: positiveInt("threads", options.threads ?? navigator.hardwareConcurrency ?? 1, 256),
    backend,
    contextLength: options.contextLength === undefined
      ? undefined
      : positiveInt("contextLength", options.contextLength, 1 << 20),
    batchSize: positiveInt("batchSize", options.batchSize ?? 128, 4096),
    kvType: kvTypeOption(options.kvType ?? "f16"),
  };
}

/** Resolves `wanted` for `weightBytes` of weights and copies them (on `threads` threads) when that is the answer. */
function placeWeights(
  native: NativeModel,
  wanted: WeightPlacement,
  weightBytes: number,
  threads: number,
  backend: string,
  onCopy?: (bytes: number) => void,
): "copy" | "map" {
  if (wanted !== "auto" && wanted !== "copy" && wanted !== "map") {
    throw new SparrowError("invalid_argument", `weights '${wanted}' is not auto, copy or map`);
  }
  if (wanted === "map") return "map";
  if (wanted === "auto") {
    const available = availableMemoryBytes();
    if (available === undefined || weightBytes > available / 2) return "map";
  }
  onCopy?.(weightBytes);
  try {
    native.copyWeights(true, threads, loadBackend(backend).table);
  } catch (e) {
    // "auto" guessed wrong about the memory (another process took it meanwhile): keep the mapping.
    if (wanted === "auto" && e instanceof SparrowError && e.code === "out_of_memory") return "map";
    throw e;
  }
  return "copy";
}

function kvTypeOption(v: string): KvType {
  if (v !== "f32" && v !== "f16") throw new SparrowError("invalid_argument", `kvType '${v}' is not f32 or f16`);
  return v;
}

/**
 * Refuses tensors the engine cannot compute with, naming the file, the tensor and its type: matrices
 * must be of a type the core has kernels for, norms must be F32.
 */
function checkTensorTypes(path: string, tensors: LlamaTensors): void {
  const c = core();
  const matrices = [tensors.tokenEmbd, ...(tensors.output ? [tensors.output] : [])];
  const norms = [tensors.outputNorm];
  for (const l of tensors.layers) {
    matrices.push(l.attnQ, l.attnK, l.attnV, l.attnOutput, l.ffnGate, l.ffnUp, l.ffnDown);
    norms.push(l.attnNorm, l.ffnNorm);
  }
  for (const t of matrices) {
    if (!c.sp_weight_type_supported(t.type)) {
      const supported = ggmlTypes.filter((g) => c.sp_weight_type_supported(g.id)).map((g) => g.name);
      throw new SparrowError(
        "unsupported",
        `${path}: tensor '${t.name}' has type ${ggmlTypeName(t.type)}, which sparrow cannot compute with (supported: ${
          supported.join(", ")
        })`,
      );
    }
  }
  for (const t of norms) {
    if (t.type !== 0) {
      throw new SparrowError(
        "unsupported",
        `${path}: norm tensor '${t.name}' has type ${ggmlTypeName(t.type)}; norms must be F32`,
      );
    }
  }
}

/**
 * A loaded model: weights mapped by the core, tokenizer, and defaults for its sessions.
 * Create with {@link loadModel}; close when done (or `using`).
 */
export class Model {
  /** What the model is. */
  readonly info: ModelInfo;
  /** Its tokenizer, from the GGUF metadata. */
  readonly tokenizer: Tokenizer;
  /** The GGUF header. */
  readonly gguf: GgufFile;
  /** The defaults sessions of this model are created with. */
  readonly defaults: Readonly<ModelDefaults>;
  readonly #native: NativeModel;
  readonly #forgetAtExit: () => void;
  /** Sparse FFN stores by sidecar and target, shared by sessions and freed on close. */
  readonly #sparse = new Map<string, SparseFfn>();
  #fingerprint: Promise<string> | undefined;

  /** @internal Use {@link loadModel}. */
  constructor(gguf: GgufFile, info: ModelInfo, tokenizer: Tokenizer, native: NativeModel, defaults: ModelDefaults) {
    this.gguf = gguf;
    this.info = info;
    this.tokenizer = tokenizer;
    this.#native = native;
    this.defaults = defaults;
    this.#forgetAtExit = closeAtExit(this, 1);
  }

  /** @internal The native model, for packing neuron bundles (core/pack.ts reads its transposed down rows). */
  get native(): NativeModel {
    return this.#native;
  }

  /**
   * Opens a session (KV cache, scratch, thread pool) on this model.
   *
   * @param options Overrides of the model's defaults.
   * @returns A session; close it when done.
   */
  createSession(options: SessionOptions = {}): Session {
    const d = this.defaults;
    const settings = {
      contextLength: positiveInt("contextLength", options.contextLength ?? d.contextLength, 1 << 20),
      threads: positiveInt("threads", options.threads ?? d.threads, 256),
      batchSize: positiveInt("batchSize", options.batchSize ?? d.batchSize, 4096),
      allLogits: options.allLogits ?? false,
      kvType: kvTypeOption(options.kvType ?? d.kvType),
    };
    const native = new NativeSession(this.#native, loadBackend(d.backend), settings);
    try {
      if (options.sparse && options.sparse.mode !== "dense") {
        if (options.sparse.mode === "predictor" && !options.sparse.sidecar) {
          throw new SparrowError(
            "invalid_argument",
            "sparse mode 'predictor' needs a sidecar (sparrow calibrate) or a PowerInfer predictor file",
          );
        }
        const store = this.#sparseStore(options.sparse);
        native.setSparse(store.pointer, encodeSparseConfig(options.sparse));
      }
    } catch (e) {
      native.close();
      throw e;
    }
    const shape = { nLayers: this.info.hparams.nLayers, ffnDim: this.info.hparams.ffnDim };
    return new Session(native, this.tokenizer, shape);
  }

  /**
   * The model's fingerprint (core/model_fingerprint.ts), computed once: what calibration sidecars
   * record to be refused for other models.
   */
  fingerprint(): Promise<string> {
    this.#fingerprint ??= modelFingerprint(this.info.path);
    return this.#fingerprint;
  }

  /**
   * Prepares sparse FFNs for `options` ahead of {@link createSession} (which would otherwise do it,
   * synchronously, on first use): reads and checks the sidecar against this model's fingerprint and
   * builds the neuron store.
   *
   * @param options Sparse settings; only `sidecar`, `sparsity` and `downType` matter here.
   * @throws {SparrowError} `bad_model` for a sidecar made for another model or a corrupt one.
   */
  async prepareSparse(options: Pick<SparseOptions, "sidecar" | "sparsity" | "downType">): Promise<void> {
    const fingerprint = options.sidecar ? await this.fingerprint() : "";
    this.#sparseStore(options, fingerprint);
  }

  /**
   * Prepares offloaded sparse FFNs: the FFN neurons are read from a bundle file (`sparrow pack`)
   * into a cache that fits `options.memory` together with everything else (core/memory_budget.ts),
   * through an io_uring ring (or a fallback). Sessions then use them with
   * `sparse: { mode: "predictor", sidecar, bundles }`, one session at a time.
   *
   * @param options Files, budget and I/O settings.
   * @returns The budget's split, the I/O method and the time the hot region took to read.
   * @throws {SparrowError} `bad_model` for files that do not belong together, `invalid_argument` for
   * a budget too small (the message gives the minimum) or a model loaded with its weights copied
   * (load it with `weights: "map"`), `io` for failed reads.
   */
  async prepareOffload(options: OffloadOptions): Promise<OffloadReport> {
    if (this.info.weights === "copy") {
      throw new SparrowError(
        "invalid_argument",
        `${this.info.path} was loaded with its weights copied into memory; load it with weights "map" to offload its FFN neurons from ${options.bundles}`,
      );
    }
    const key = sparseKey({ ...options, downType: undefined });
    const existing = this.#sparse.get(key);
    if (existing) {
      throw new SparrowError("invalid_argument", `offloaded FFNs from ${options.bundles} are already prepared`);
    }
    const { store, report } = await buildOffload({
      native: this.#native,
      path: this.info.path,
      gguf: this.gguf,
      hparams: this.info.hparams,
      tiedEmbeddings: this.info.tiedEmbeddings,
      fingerprint: await this.fingerprint(),
      contextLength: this.defaults.contextLength,
      batchSize: this.defaults.batchSize,
      kvType: this.defaults.kvType,
    }, options);
    this.#sparse.set(key, store);
    return report;
  }

  #sparseStore(
    options: Pick<SparseOptions, "sidecar" | "sparsity" | "downType" | "bundles">,
    fingerprint?: string,
  ): SparseFfn {
    const key = sparseKey(options);
    const cached = this.#sparse.get(key);
    if (cached) return cached;
    if (options.bundles) {
      throw new SparrowError(
        "invalid_argument",
        `call \`await model.prepareOffload({ sidecar, bundles: "${options.bundles}", memory })\` before creating a session with bundles`,
      );
    }
    if (options.sidecar && fingerprint === undefined) {
      throw new SparrowError(
        "invalid_argument",
        "call `await model.prepareSparse({ sidecar })` before creating a session with a sidecar",
      );
    }
    const sidecar = options.sidecar ? readSidecar(options.sidecar, this.info.hparams, fingerprint!) : undefined;
    const downType = this.gguf.tensors.get("blk.0.ffn_down.weight")!.type;
    const store = SparseFfn.create(
      this.#native,
      this.info.hparams,
      downType,
      sidecar,
      options.sparsity,
      this.defaults.threads,
      options.downType,
    );
    this.#sparse.set(key, store);
    return store;
  }

  /**
   * Streams a generation in a fresh session that is closed at the end.
   *
   * @param prompt Text or token ids.
   * @param options Generation options.
   */
  async *generate(prompt: string | readonly number[], options: GenerateOptions = {}): AsyncGenerator<GenerationEvent> {
    using session = this.createSession();
    yield* session.generate(prompt, options);
  }

  /**
   * Text to token ids.
   *
   * @param text Text.
   * @param options `addBos` (default: the tokenizer's) and `parseSpecial` (default false).
   */
  tokenize(text: string, options: { addBos?: boolean; parseSpecial?: boolean } = {}): number[] {
    return this.tokenizer.encode(text, {
      addBos: options.addBos ?? this.tokenizer.addBos,
      parseSpecial: options.parseSpecial ?? false,
    });
  }

  /**
   * Token ids to text.
   *
   * @param ids Token ids.
   */
  detokenize(ids: readonly number[]): string {
    return this.tokenizer.decode(ids);
  }

  /**
   * Unmaps the model. Safe to call twice.
   *
   * @throws {SparrowError} `busy` while sessions on it are open.
   */
  close(): void {
    if (this.#native.closed) return;
    if (this.#native.openSessions > 0) {
      throw new SparrowError(
        "busy",
        `model ${this.info.path} has ${this.#native.openSessions} open session(s); close them first`,
      );
    }
    this.#forgetAtExit();
    // Sparse stores count as users of the model: they go first.
    for (const [key, store] of this.#sparse) {
      store.destroy();
      this.#sparse.delete(key);
    }
    this.#native.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Loads a GGUF model.
 *
 * @param path Path of the `.gguf` file.
 * @param options Threads, backend, context length and overrides.
 * @returns The model; close it when done.
 * @throws {SparrowError} `invalid_argument` for bad options; `io` for an unreadable file;
 * `bad_model` for a corrupt file, a missing tensor or a shape that does not match; `unsupported`
 * for another architecture or a tensor type the engine cannot compute with;
 * `native_library_missing` when the core cannot be found or built.
 *
 * @example
 * ```ts ignore
 * import { loadModel } from "../mod.ts";
 * using model = await loadModel("SmolLM2-135M-Instruct.Q4_1.gguf", { threads: 2 });
 * console.log(model.info.hparams.nLayers);
 * ```
 */
export function loadModel(path: string, options: LoadModelOptions = {}): Promise<Model> {
  // Synchronous work today; a Promise so loading can move off the main thread without an API change.
  return Promise.resolve().then(() => {
    const resolved = resolveOptions(options);
    const gguf = readGguf(path);
    const hparams = llamaHparams(gguf, { activation: options.activation, ropeLayout: options.ropeLayout });
    const tensors = llamaTensors(gguf, hparams);
    checkTensorTypes(path, tensors);
    const tokenizer = tokenizerFromGguf(gguf.metadata, path);
    if (tokenizer.vocabSize !== hparams.vocabSize) {
      throw new SparrowError(
        "bad_model",
        `${path}: the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary is ${hparams.vocabSize}`,
      );
    }
    const tensorTypes: Record<string, number> = {};
    let weightBytes = 0;
    for (const t of gguf.tensors.values()) {
      const name = ggmlTypeName(t.type);
      tensorTypes[name] = (tensorTypes[name] ?? 0) + 1;
      weightBytes += t.nBytes;
    }
    const generalName = gguf.metadata.get("general.name");
    const info: ModelInfo = {
      path,
      name: typeof generalName === "string" ? generalName : path.split("/").pop()!,
      architecture: gguf.metadata.get("general.architecture") as string,
      hparams,
      tensorTypes,
      weightBytes,
      fileSize: gguf.fileSize,
      tiedEmbeddings: tensors.output === undefined,
      weights: "map",
      rowPairMatrices: 0,
    };
    const native = NativeModel.open(path, encodeModelDesc(hparams, tensors));
    try {
      info.weights = placeWeights(
        native,
        options.weights ?? "auto",
        weightBytes,
        resolved.threads,
        resolved.backend,
        options.onWeightsCopy,
      );
      info.rowPairMatrices = native.rowPairMatrices;
    } catch (e) {
      native.close();
      throw e;
    }
    const contextLength = resolved.contextLength ?? Math.min(hparams.contextLength, 4096);
    return new Model(gguf, info, tokenizer, native, { ...resolved, contextLength });
  });
}
