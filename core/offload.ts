/**
 * Offloaded sparse FFNs: a model whose FFN neurons are read from a bundle file (`sparrow pack`)
 * into a cache sized by a memory budget, instead of being mapped whole. This module checks the three
 * files against each other (model, sidecar, bundles: fingerprints and shapes), splits the budget
 * (core/memory_budget.ts), builds the native cache and I/O ring, and reads the hot region with
 * progress.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import { kvElementBytes, type KvType, type NativeModel } from "./engine.ts";
import type { GgufFile } from "./gguf.ts";
import type { LlamaHparams } from "./model_desc.ts";
import { readSidecar } from "./sidecar.ts";
import { readBundleFile } from "./bundle_format.ts";
import { modelFingerprint } from "./model_fingerprint.ts";
import { type MemoryPlan, planMemory, residentBytes } from "./memory_budget.ts";
import { SparseFfn } from "./sparse.ts";
import type { IoMethod } from "./io_ring.ts";

/** I/O methods of the ring. */
const ioMethodIds: Record<IoMethod | "auto", number> = { auto: 0xffffffff, io_uring: 0, pread_pool: 1, mmap: 2 };

/** Settings of offloaded FFNs. */
export interface OffloadOptions {
  /** The calibration sidecar the bundle file was packed with. */
  sidecar: string;
  /** The bundle file (`sparrow pack`). */
  bundles: string;
  /** SwiGLU models: the calibrated sparsity target. */
  sparsity?: number;
  /** Memory budget of the whole process, bytes. */
  memory: number;
  /**
   * Bytes the plan counts for the runtime (Deno, the model's header, the caller's own data);
   * default the process's resident set when the plan is made. Give a figure when the process
   * will hold more than it holds now, or to make the plan independent of that measurement.
   */
  runtimeBytes?: number;
  /** Reads in flight at once; default 32. */
  queueDepth?: number;
  /** How bundles are read; default "auto" (io_uring, else a pread thread pool). */
  ioMethod?: IoMethod | "auto";
  /** O_DIRECT reads (no page cache); default true. */
  direct?: boolean;
  /** Share of the neuron cache pinned as hot neurons; default 0.75. */
  hotShare?: number;
  /** Context length of the session(s) the budget must hold; default the model's. */
  contextLength?: number;
  /** Batch size of the session(s) the budget must hold; default the model's. */
  batchSize?: number;
  /** Called as the hot region is read: layers done, layers in all. */
  onProgress?: (done: number, total: number) => void;
}

/** What preparing offloaded FFNs decided and measured. */
export interface OffloadReport {
  /** The budget's split. */
  plan: MemoryPlan;
  /** The ring's method, and why it was chosen. */
  io: { method: string; note: string };
  /** Bytes of the neuron cache allocated. */
  cacheBytes: number;
  /** Seconds spent reading the hot region. */
  loadSeconds: number;
}

/** What the model hands over: its native handle and description. */
export interface OffloadModel {
  native: NativeModel;
  path: string;
  gguf: GgufFile;
  hparams: Readonly<LlamaHparams>;
  tiedEmbeddings: boolean;
  fingerprint: string;
  contextLength: number;
  batchSize: number;
  kvType: KvType;
}

/** The fixed region but the runtime: weights, predictors, KV cache and scratch, in bytes. */
export interface FixedRegion {
  fixedWeightBytes: number;
  predictorBytes: number;
  kvBytes: number;
  scratchBytes: number;
}

/**
 * What every token needs resident whatever fires (the runtime aside): the non-FFN weights (the
 * token embedding table only when the classifier shares it: otherwise a token reads one row), the
 * predictors, the KV cache (in the sessions' element type) and the session scratch.
 */
export function fixedRegion(
  m: Pick<OffloadModel, "gguf" | "hparams" | "tiedEmbeddings" | "contextLength" | "batchSize" | "kvType">,
  predictors: readonly ({ fc1: { nBytes: number }; fc2: { nBytes: number }; bias?: { nBytes: number } } | undefined)[],
  o: Pick<OffloadOptions, "contextLength" | "batchSize"> = {},
): FixedRegion {
  const hp = m.hparams;
  const fixedWeightBytes = [...m.gguf.tensors.values()]
    .filter((t) => !/ffn_(gate|up|down)/.test(t.name) && (t.name !== "token_embd.weight" || m.tiedEmbeddings))
    .reduce((a, t) => a + t.nBytes, 0);
  const predictorBytes = predictors.reduce(
    (a, p) => a + (p ? p.fc1.nBytes + p.fc2.nBytes + (p.bias?.nBytes ?? 0) : 0),
    0,
  );
  const ctx = o.contextLength ?? m.contextLength;
  const batch = o.batchSize ?? m.batchSize;
  const kvDim = hp.nKvHeads * hp.headDim;
  const qDim = hp.nHeads * hp.headDim;
  const kvBytes = 2 * hp.nLayers * ctx * kvDim * kvElementBytes(m.kvType);
  // Session buffers (per batch row: residual, norms, q/k/v, attention out, gate and up, as f32),
  // attention scores, logits, the sparse path's per-neuron arrays, and allocator/thread slack.
  const scratchBytes = batch * (2 * hp.dim + 2 * qDim + 2 * kvDim + 2 * hp.ffnDim) * 4 +
    hp.nHeads * ctx * 4 + hp.vocabSize * 4 + 24 * hp.ffnDim * 4 + (32 << 20);
  return { fixedWeightBytes, predictorBytes, kvBytes, scratchBytes };
}

/**
 * Builds offloaded sparse FFNs for a model.
 *
 * @throws {SparrowError} `bad_model` when the sidecar or bundle file was made for another model (or
 * the bundles from another sidecar), `invalid_argument` when the budget is too small (naming the
 * minimum), `io` when reads fail.
 */
export async function buildOffload(
  m: OffloadModel,
  o: OffloadOptions,
): Promise<{ store: SparseFfn; report: OffloadReport }> {
  const hp = m.hparams;
  if (!(o.memory > 0)) throw new SparrowError("invalid_argument", `memory budget ${o.memory} is not a positive size`);
  if (o.queueDepth !== undefined && (!Number.isInteger(o.queueDepth) || o.queueDepth < 1 || o.queueDepth > 4096)) {
    throw new SparrowError("invalid_argument", `queue depth ${o.queueDepth} is outside [1, 4096]`);
  }
  if (o.runtimeBytes !== undefined && !(Number.isSafeInteger(o.runtimeBytes) && o.runtimeBytes >= 0)) {
    throw new SparrowError("invalid_argument", `runtime size ${o.runtimeBytes} is not a whole number of bytes >= 0`);
  }
  const method = o.ioMethod ?? "auto";
  if (!(method in ioMethodIds)) {
    throw new SparrowError(
      "invalid_argument",
      `I/O method '${method}' is not one of ${Object.keys(ioMethodIds).join(", ")}`,
    );
  }
  const sidecar = readSidecar(o.sidecar, hp, m.fingerprint);
  const bundles = readBundleFile(o.bundles, hp, { model: m.fingerprint, sidecar: await modelFingerprint(o.sidecar) });
  const queueDepth = o.queueDepth ?? 32;

  const fixed = fixedRegion(m, sidecar.predictors, o);
  const plan = planMemory({
    budget: o.memory,
    runtimeBytes: o.runtimeBytes ?? residentBytes() ?? 0,
    ...fixed,
    stride: bundles.layout.storedBytes,
    nLayers: hp.nLayers,
    ffnDim: hp.ffnDim,
    hotShare: o.hotShare,
    minColdSlots: Math.max(64, 2 * queueDepth),
  });

  const store = SparseFfn.createOffloaded(m.native, hp, sidecar, o.sparsity, bundles, plan, {
    method: ioMethodIds[method],
    queueDepth,
    direct: o.direct ?? true,
  });
  try {
    const t0 = performance.now();
    for (let l = 0; l < hp.nLayers; l++) {
      store.loadHot(l);
      o.onProgress?.(l + 1, hp.nLayers);
      // Let progress output and timers run between layers.
      await new Promise((r) => setTimeout(r, 0));
    }
    const report: OffloadReport = {
      plan,
      io: store.ioMethod()!,
      cacheBytes: store.storeBytes,
      loadSeconds: (performance.now() - t0) / 1000,
    };
    return { store, report };
  } catch (e) {
    store.destroy();
    throw e;
  }
}
