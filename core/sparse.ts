/**
 * Sparse FFNs on the native side: the neuron store (hot-first order: gate/up rows copied into it,
 * the down projection transposed into it) and the predictors, built from a model and, optionally,
 * a calibration sidecar or PowerInfer predictor file; plus the statistics sessions collect while
 * computing sparsely.
 *
 * @module
 */
import { SparrowError, unwrap } from "./errors.ts";
import { core, lastError } from "./ffi.ts";
import type { NativeModel } from "./engine.ts";
import { writeTensor } from "./model_desc.ts";
import type { LlamaHparams } from "./model_desc.ts";
import { pickTarget, type Sidecar } from "./sidecar.ts";
import { hotFirstOrder } from "./neuron_order.ts";
import type { BundleFile } from "./bundle_format.ts";

/** Layout of the structs below; checked against the library (`sp_sparse_layout`). */
const layout = { version: 2, desc: 16, layerDesc: 352, config: 16, statsFields: 17 } as const;
/** Layout of the offload description (zig/src/offload/offload_desc.zig). */
const offloadLayout = { version: 2, desc: 56, layerDesc: 24 } as const;

let layoutChecked = false;
function checkLayout(): void {
  if (layoutChecked) return;
  const got = new BigUint64Array(5);
  core().sp_sparse_layout(got);
  const want = [layout.version, layout.desc, layout.layerDesc, layout.config, layout.statsFields];
  if (want.some((w, i) => BigInt(w) !== got[i])) {
    throw new SparrowError(
      "abi_mismatch",
      `the native library's sparse layout is [${[...got].join(", ")}], expected [${want.join(", ")}]; rebuild it`,
    );
  }
  layoutChecked = true;
}

/** How a session picks the neurons it computes. */
export type SparseMode = "dense" | "oracle" | "predictor";
const modeIds: Record<SparseMode, number> = { dense: 0, oracle: 1, predictor: 2 };

/** Sparse FFN settings of a session. */
export interface SparseOptions {
  /**
   * "oracle": compute the whole gate and skip the neurons that do not fire (exact for ReLU models;
   * SwiGLU models apply the sidecar's CATS thresholds). "predictor": the sidecar's (or PowerInfer's)
   * low-rank predictors choose the neurons, so most of the gate is never read. "dense": off.
   */
  mode: SparseMode;
  /** Calibration sidecar (`sparrow calibrate`) or PowerInfer predictor file (magic "PWRI"). */
  sidecar?: string;
  /** SwiGLU models: which calibrated sparsity target to use (e.g. 0.5). Default: the sidecar's first. */
  sparsity?: number;
  /** Neurons per cluster, the unit of work per thread. Default 16. */
  clusterSize?: number;
  /** Compute the true active set every N-th token to measure predictor recall; 0 = never (default). */
  verifyEvery?: number;
  /** Also compute prompt batches sparsely, token by token (evaluation); default false (dense prefill). */
  batches?: boolean;
  /**
   * Offloaded FFNs: the bundle file (`sparrow pack`) prepared with `model.prepareOffload`. Prompts
   * then take the sparse path too, and only predictor mode runs.
   */
  bundles?: string;
  /**
   * Storage of the transposed down projection that active neurons read: "auto" (default: exact for
   * f32/f16/bf16 models, Q8_0 for quantized ones), "f16", "q8_0", or "q4_0" (half the bytes of Q8_0
   * per active neuron, at the price of a second 4-bit rounding of W_down).
   */
  downType?: DownType;
}

/** Storage types of the transposed down projection. */
export type DownType = "auto" | "f32" | "f16" | "q8_0" | "q4_0";
const downTypeIds: Record<Exclude<DownType, "auto">, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 8 };

/**
 * The default cluster size: selected neurons per unit of work. Measured on Zen 3 (2 threads) with
 * bench/sparse_bench.ts on the 7B-shape synthetic ReLU model: predictor mode at 32 was faster than
 * at 16 in four runs of five (e.g. 10.83 vs 9.99 tok/s), and 64 no better than 32.
 */
export const defaultClusterSize = 32;

/** Encodes a session's sparse settings for `sp_session_set_sparse`. */
export function encodeSparseConfig(o: SparseOptions): Uint8Array<ArrayBuffer> {
  const cluster = o.clusterSize ?? defaultClusterSize;
  const verify = o.verifyEvery ?? 0;
  if (!Number.isInteger(cluster) || cluster < 1) {
    throw new SparrowError("invalid_argument", `cluster size ${cluster} is not a positive integer`);
  }
  if (!Number.isInteger(verify) || verify < 0) {
    throw new SparrowError("invalid_argument", `verifyEvery ${verify} is not a count`);
  }
  return new Uint8Array(Uint32Array.from([modeIds[o.mode], cluster, verify, o.batches ? 1 : 0]).buffer);
}

/**
 * ggml type of the transposed down projection for a model whose ffn_down has type `t`: the type the
 * in-memory neuron store keeps, and the type `sparrow pack` writes into bundles (core/pack.ts).
 *
 * @param t ggml type id of the model's `ffn_down` tensors.
 * @param wanted The storage asked for; "auto" picks exact for float models, Q8_0 for quantized ones.
 * @returns The ggml type id of the transposed rows.
 * @throws {SparrowError} `invalid_argument` for a `wanted` type that is not a {@link DownType}.
 */
export function downTypeFor(t: number, wanted: DownType = "auto"): number {
  if (wanted !== "auto") {
    const id = downTypeIds[wanted];
    if (id === undefined) {
      throw new SparrowError(
        "invalid_argument",
        `down projection type '${wanted}' is not one of auto, ${Object.keys(downTypeIds).join(", ")}`,
      );
    }
    return id;
  }
  if (t === 0 || t === 1) return t; // f32, f16: transposed exactly
  if (t === 30) return 0; // bf16: exactly representable in f32
  return 8; // quantized: q8_0, far finer than the 4/5/6-bit source
}

/** Bytes of one transposed down row of `dim` elements of ggml type `t`. */
function downRowBytes(t: number, dim: number): number {
  return t === 0 ? dim * 4 : t === 1 ? dim * 2 : t === 2 ? (dim / 32) * 18 : (dim / 32) * 34;
}

/** The native description of sparse FFNs (zig/src/sparse/sparse_desc.zig). */
function encodeSparseDesc(
  hp: LlamaHparams,
  downType: number,
  sidecar: Sidecar | undefined,
  sparsity: number | undefined,
): Uint8Array<ArrayBuffer> {
  const desc = new Uint8Array(layout.desc + hp.nLayers * layout.layerDesc);
  const view = new DataView(desc.buffer);
  view.setUint32(0, layout.version, true);
  view.setUint32(4, hp.nLayers, true);
  view.setUint32(8, downType, true);
  const target = sidecar ? pickTarget(sidecar, sparsity) : undefined;
  for (let l = 0; l < hp.nLayers; l++) {
    const at = layout.desc + l * layout.layerDesc;
    const p = sidecar?.predictors[l];
    writeTensor(view, at, p?.fc1);
    writeTensor(view, at + 112, p?.fc2);
    writeTensor(view, at + 224, p?.bias);
    view.setFloat32(at + 336, target?.scoreThresholds[l] ?? 0, true);
    view.setFloat32(at + 340, target?.catsThresholds[l] ?? 0, true);
    view.setUint32(at + 344, sidecar?.linearPredictor ? 1 : 0, true);
  }
  return desc;
}

/** Native sparse FFNs for one model (and sidecar operating point), shared by its sessions. */
export class SparseFfn {
  #ptr: Deno.PointerObject | null;
  /** The sidecar it was built from, if any. */
  readonly sidecar: Sidecar | undefined;
  /** Bytes it holds: gate/up rows in hot-first order and the transposed down projections. */
  readonly storeBytes: number;

  private constructor(ptr: Deno.PointerObject, sidecar: Sidecar | undefined, storeBytes: number) {
    this.#ptr = ptr;
    this.sidecar = sidecar;
    this.storeBytes = storeBytes;
  }

  /**
   * Builds sparse FFNs for `model`.
   *
   * @param model The native model.
   * @param hp Its hyperparameters.
   * @param ffnDownType ggml type of its ffn_down tensors.
   * @param sidecar Calibration sidecar or PowerInfer file (undefined: oracle mode only, model order).
   * @param sparsity Which calibrated target to use.
   * @param threads Threads used to build the store.
   * @param downType Storage of the transposed down projection.
   */
  static create(
    model: NativeModel,
    hp: LlamaHparams,
    ffnDownType: number,
    sidecar: Sidecar | undefined,
    sparsity: number | undefined,
    threads: number,
    wantedDownType: DownType = "auto",
  ): SparseFfn {
    checkLayout();
    const downType = downTypeFor(ffnDownType, wantedDownType);
    const desc = encodeSparseDesc(hp, downType, sidecar, sparsity);
    const perms = sidecar ? hotFirstOrder(sidecar, hp) : new Uint32Array(0);
    const path = new TextEncoder().encode(sidecar?.path ?? "");
    const out = new BigUint64Array(1);
    const c = core();
    unwrap(
      c.sp_sparse_create(
        model.pointer,
        path,
        BigInt(path.length),
        desc,
        BigInt(desc.length),
        new Uint8Array(perms.buffer),
        BigInt(perms.length),
        threads,
        new Uint8Array(out.buffer),
      ),
      () => lastError(null, null),
    );
    const ptr = Deno.UnsafePointer.create(out[0]);
    if (ptr === null) throw new SparrowError("internal", "sp_sparse_create returned no handle");
    return new SparseFfn(ptr, sidecar, downRowBytes(downType, hp.dim) * hp.ffnDim * hp.nLayers);
  }

  /**
   * Builds offloaded sparse FFNs: the neurons come from a bundle file (`sparrow pack`) through the
   * I/O ring into a cache of `plan.hotPerLayer` pinned top-ranked neurons per layer and
   * `plan.coldSlots` LRU slots. The hot region is empty until {@link loadHot} fills it.
   *
   * @param model The native model.
   * @param hp Its hyperparameters.
   * @param sidecar The calibration sidecar the bundle file was packed with (its predictors choose).
   * @param sparsity Which calibrated target to use.
   * @param bundles The checked bundle file.
   * @param plan The cache's split (core/memory_budget.ts).
   * @param io Ring settings: method id (0xffffffff = best available), reads in flight, O_DIRECT.
   */
  static createOffloaded(
    model: NativeModel,
    hp: LlamaHparams,
    sidecar: Sidecar,
    sparsity: number | undefined,
    bundles: BundleFile,
    plan: { hotPerLayer: number; coldSlots: number },
    io: { method: number; queueDepth: number; direct: boolean },
  ): SparseFfn {
    checkLayout();
    const lay = bundles.layout;
    // The engine expects gate, up, down in that order: single-phase [gate | up | down], two-phase
    // [gate] and [up | down].
    const want = lay.twoPhase
      ? [[["gate", 0]], [["up", 0], ["down", lay.up.bytes]]]
      : [[["gate", 0], ["up", lay.gate.bytes], ["down", lay.gate.bytes + lay.up.bytes]]];
    const got = lay.regions.map((r) => r.parts.map((p) => [p.kind, p.offset]));
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      throw new SparrowError("bad_model", `${bundles.path}: bundle parts are not laid out as gate, up, down`);
    }
    const desc = encodeSparseDesc(hp, lay.down.type, sidecar, sparsity);
    const od = new Uint8Array(offloadLayout.desc + hp.nLayers * offloadLayout.layerDesc);
    const v = new DataView(od.buffer);
    [
      offloadLayout.version,
      hp.nLayers,
      lay.gate.type,
      lay.up.type,
      lay.down.type,
      lay.gate.bytes,
      lay.up.bytes,
      lay.down.bytes,
      lay.regions[0].stride,
      lay.twoPhase ? lay.regions[1].stride : 0,
      plan.coldSlots,
      io.method,
      io.queueDepth,
      io.direct ? 1 : 0,
    ].forEach((x, i) => v.setUint32(4 * i, x, true));
    const perms = new Uint32Array(hp.nLayers * hp.ffnDim);
    bundles.layers.forEach((layer, l) => {
      const at = offloadLayout.desc + l * offloadLayout.layerDesc;
      v.setBigUint64(at, BigInt(layer.regions[0].offset), true);
      v.setBigUint64(at + 8, BigInt(lay.twoPhase ? layer.regions[1].offset : 0), true);
      v.setUint32(at + 16, plan.hotPerLayer, true);
      perms.set(layer.order, l * hp.ffnDim);
    });
    const sidecarPath = new TextEncoder().encode(sidecar.path);
    const bundlesPath = new TextEncoder().encode(bundles.path);
    const out = new BigUint64Array(1);
    unwrap(
      core().sp_sparse_create_offloaded(
        model.pointer,
        sidecarPath,
        BigInt(sidecarPath.length),
        desc,
        BigInt(desc.length),
        new Uint8Array(perms.buffer),
        BigInt(perms.length),
        bundlesPath,
        BigInt(bundlesPath.length),
        od,
        BigInt(od.length),
        new Uint8Array(out.buffer),
      ),
      () => lastError(null, null),
    );
    const ptr = Deno.UnsafePointer.create(out[0]);
    if (ptr === null) throw new SparrowError("internal", "sp_sparse_create_offloaded returned no handle");
    return new SparseFfn(ptr, sidecar, Number(core().sp_sparse_cache_bytes(ptr)));
  }

  /** Offloaded: reads layer `layer`'s hot neurons into the cache. */
  loadHot(layer: number): void {
    unwrap(core().sp_sparse_load_hot(this.pointer, layer), () => lastError(null, null));
  }

  /** Offloaded: the I/O method the ring uses and why (undefined when in memory). */
  ioMethod(): { method: "io_uring" | "pread_pool" | "mmap"; note: string } | undefined {
    const buf = new Uint8Array(512);
    const method = new Uint32Array(1);
    const n = Number(core().sp_sparse_io_method(this.pointer, buf, BigInt(buf.length), new Uint8Array(method.buffer)));
    if (n < 0) return undefined;
    const names = ["io_uring", "pread_pool", "mmap"] as const;
    return { method: names[method[0]], note: new TextDecoder().decode(buf.subarray(0, Math.min(n, buf.length))) };
  }

  /** The native pointer, or an error once destroyed. */
  get pointer(): Deno.PointerObject {
    if (this.#ptr === null) throw new SparrowError("closed", "sparse FFNs were destroyed");
    return this.#ptr;
  }

  /**
   * Frees the native store. Safe to call twice.
   *
   * @throws {SparrowError} `busy` while sessions use it.
   */
  destroy(): void {
    if (this.#ptr === null) return;
    const ptr = this.#ptr;
    unwrap(core().sp_sparse_destroy(ptr), () => lastError(null, null));
    this.#ptr = null;
  }
}

/** Sparse FFN counters of one layer over the tokens computed since the last reset. */
export interface LayerSparseStats {
  /** Tokens that took the sparse path. */
  tokens: number;
  /** Neurons the predictor (or the gate) selected: their gate rows were computed, and their up rows where the gate fired. */
  candidates: number;
  /** Neurons whose output was not zero. */
  active: number;
  /** Clusters: groups of up to the cluster size of candidates, the unit of work per thread. */
  clusters: number;
  /** Weight bytes read by the FFN (predictor included). */
  bytes: number;
  /** Tokens on which the true active set was computed. */
  verifiedTokens: number;
  /** On those tokens: truly active neurons. */
  trueActive: number;
  /** On those tokens: truly active neurons that were candidates (recall = truePositive / trueActive). */
  truePositive: number;
  /** Offloaded FFNs: candidates found in the hot (pinned) region. */
  hotHits: number;
  /** Offloaded FFNs: candidates found in the cold (LRU) region. */
  coldHits: number;
  /** Offloaded FFNs: candidates read from the bundle file. */
  misses: number;
  /** Offloaded FFNs: bytes read from the bundle file. */
  readBytes: number;
  /** Offloaded FFNs: nanoseconds spent waiting on reads while no thread computed. */
  ioStallNs: number;
  /** Nanoseconds choosing the candidates: predictor (or whole gate in oracle mode) and selection. */
  selectNs: number;
  /**
   * Nanoseconds computing the candidates' gate and up rows; offloaded FFNs: the whole pipeline of
   * reads and compute, down columns included.
   */
  rowsNs: number;
  /** Nanoseconds summing the active neurons' down columns (in memory; 0 when offloaded). */
  downNs: number;
  /** Nanoseconds of verified tokens' extra work: the whole gate and its scan, for recall. */
  verifyNs: number;
}

/** Summary over layers. */
export interface SparseStats {
  /** Per layer. */
  layers: LayerSparseStats[];
  /** Fraction of FFN neurons whose output was zero or never computed. */
  sparsity: number;
  /** Truly active neurons that were computed, on verified tokens (NaN without verification). */
  recall: number;
  /** Candidates / active neurons (how many computed neurons turned out zero). */
  candidatesPerActive: number;
  /** Mean FFN weight bytes read per token, all layers. */
  bytesPerToken: number;
  /** Offloaded FFNs: share of candidates served from memory (hot or cold region); NaN otherwise. */
  hitRate: number;
  /** Offloaded FFNs: hot-region hits / all candidates. */
  hotHitRate: number;
  /** Offloaded FFNs: mean bytes read from disk per token. */
  readBytesPerToken: number;
  /** Offloaded FFNs: mean milliseconds per token spent waiting on reads with no thread computing. */
  ioStallMsPerToken: number;
  /**
   * Mean milliseconds per token, all layers, of the FFN's phases (see {@link LayerSparseStats});
   * `verify` is what measuring recall added, outside the other three.
   */
  msPerToken: { select: number; rows: number; down: number; verify: number };
}

/** Decodes the flat counters of `sp_session_sparse_stats`. */
export function summarizeSparseStats(flat: BigUint64Array, nLayers: number, ffnDim: number): SparseStats {
  const layers: LayerSparseStats[] = [];
  for (let l = 0; l < nLayers; l++) {
    const v = Array.from(flat.subarray(l * layout.statsFields, (l + 1) * layout.statsFields), Number);
    layers.push({
      tokens: v[0],
      candidates: v[1],
      active: v[2],
      clusters: v[3],
      bytes: v[4],
      verifiedTokens: v[5],
      trueActive: v[6],
      truePositive: v[7],
      hotHits: v[8],
      coldHits: v[9],
      misses: v[10],
      readBytes: v[11],
      ioStallNs: v[12],
      selectNs: v[13],
      rowsNs: v[14],
      downNs: v[15],
      verifyNs: v[16],
    });
  }
  const sum = (f: (s: LayerSparseStats) => number) => layers.reduce((a, s) => a + f(s), 0);
  const neuronTokens = sum((s) => s.tokens) * ffnDim;
  const tokens = layers[0]?.tokens ?? 0;
  const lookups = sum((s) => s.hotHits + s.coldHits + s.misses);
  return {
    layers,
    sparsity: neuronTokens ? 1 - sum((s) => s.active) / neuronTokens : NaN,
    recall: sum((s) => s.trueActive) ? sum((s) => s.truePositive) / sum((s) => s.trueActive) : NaN,
    candidatesPerActive: sum((s) => s.active) ? sum((s) => s.candidates) / sum((s) => s.active) : NaN,
    bytesPerToken: tokens ? sum((s) => s.bytes) / tokens : NaN,
    hitRate: lookups ? (sum((s) => s.hotHits) + sum((s) => s.coldHits)) / lookups : NaN,
    hotHitRate: lookups ? sum((s) => s.hotHits) / lookups : NaN,
    readBytesPerToken: tokens ? sum((s) => s.readBytes) / tokens : NaN,
    ioStallMsPerToken: tokens ? sum((s) => s.ioStallNs) / 1e6 / tokens : NaN,
    msPerToken: {
      select: tokens ? sum((s) => s.selectNs) / 1e6 / tokens : NaN,
      rows: tokens ? sum((s) => s.rowsNs) / 1e6 / tokens : NaN,
      down: tokens ? sum((s) => s.downNs) / 1e6 / tokens : NaN,
      verify: tokens ? sum((s) => s.verifyNs) / 1e6 / tokens : NaN,
    },
  };
}

/** Number of u64 counters per layer in the native stats. */
export const sparseStatsFields: number = layout.statsFields;
