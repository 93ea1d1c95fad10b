/**
 * `sparrow pack`: writes a model's FFN neurons as a neuron-bundle file (format in
 * core/bundle_format.ts), hot neurons first, in the order of the calibration sidecar.
 *
 * It streams, layer by layer: a layer's gate and up tensors are read from the model file, its
 * transposed down projection comes from the native core (`sp_transpose_down`: the same bytes the
 * in-memory sparse engine computes with), and bundles are assembled in a chunk buffer of a few
 * megabytes that is written and reused. Memory is about one layer's FFN weights (for a 7B Q4_0
 * model ~130 MB), whatever the model's size. The file is written as `<out>.partial`, flushed to disk
 * and renamed, so a crash or a full disk never leaves a file that looks complete.
 *
 * The work is synchronous between the fingerprints at the start and the rename at the end: the
 * event loop is blocked while packing, and progress is reported from inside it.
 *
 * @module
 */
import { resolve } from "node:path";
import {
  type BundleLayout,
  bundleLayout,
  bundleMetadata,
  bundleTensorName,
  checkBundleAlignment,
  defaultBundleAlignment,
  roundUp,
} from "./bundle_format.ts";
import { SparrowError, unwrap } from "./errors.ts";
import { core, lastError } from "./ffi.ts";
import type { GgufTensorInfo } from "./gguf.ts";
import { ggmlTypeName } from "./gguf_types.ts";
import { type TensorToWrite, writeGguf } from "./gguf_writer.ts";
import type { Model } from "./model.ts";
import { modelFingerprint } from "./model_fingerprint.ts";
import { hotFirstOrder } from "./neuron_order.ts";
import { readSidecar } from "./sidecar.ts";
import { type DownType, downTypeFor } from "./sparse.ts";

/** How far packing is. */
export interface PackProgress {
  /** The layer being written (0-based). */
  layer: number;
  /** Layers in all. */
  layers: number;
  /** Bytes of the output written so far. */
  bytes: number;
  /** Bytes the output will have (approximately: the header is not counted until written). */
  totalBytes: number;
}

/** Options of {@link packBundles}. */
export interface PackOptions {
  /** Pack alignment: a power of two from 512 to 65536. Default 4096. */
  alignment?: number;
  /** Store gate rows apart from up rows and down columns (two regions per layer). Default false. */
  twoPhase?: boolean;
  /** Type of the down columns; default "auto", the in-memory sparse engine's choice. */
  downType?: DownType;
  /** Threads transposing the down projection. Default: the model's thread count. */
  threads?: number;
  /** Called as the output grows (every chunk of a few megabytes). */
  onProgress?: (p: PackProgress) => void;
  /** @internal Bytes assembled per write (default 8 MiB); tests make it small to cross chunk boundaries. */
  chunkBytes?: number;
}

/** What {@link packBundles} wrote. */
export interface PackSummary {
  /** The bundle file. */
  path: string;
  /** Layers packed. */
  layers: number;
  /** Neurons packed, all layers together. */
  neurons: number;
  /** Size of the file. */
  fileBytes: number;
  /** Bytes of the bundle regions (neurons × stored bytes per neuron). */
  bundleBytes: number;
  /** Of those, neuron data. */
  payloadBytes: number;
  /** Of those, zero padding. */
  paddingBytes: number;
  /** Padding over neuron data: how much more the regions hold than the rows themselves (0.37 = 37%). */
  paddingOverhead: number;
  /** Whether the order is hot-first from the sidecar's frequencies, or the model's (none recorded). */
  order: "hot-first" | "model";
  /** The layout every layer uses. */
  layout: BundleLayout;
  /** Wall time, fingerprints and the final flush to disk included. */
  seconds: number;
}

/** Output is assembled and written in chunks of about this many bytes: large writes, little memory. */
const defaultChunkBytes = 8 << 20;

/** Same file, by resolved path (the output must not replace the inputs). */
function samePath(a: string, b: string): boolean {
  return resolve(a) === resolve(b);
}

/** Reads `out.length` bytes at `offset` of the model file. */
function readAt(file: Deno.FsFile, path: string, offset: number, out: Uint8Array, what: string): void {
  try {
    file.seekSync(offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < out.length) {
      const n = file.readSync(out.subarray(got));
      if (n === null || n === 0) {
        throw new SparrowError("io", `${path}: file ended at ${offset + got} while reading ${what}`);
      }
      got += n;
    }
  } catch (e) {
    if (e instanceof SparrowError) throw e;
    throw new SparrowError("io", `${path}: reading ${what} failed: ${(e as Error).message}`, { cause: e });
  }
}

/** The FFN tensor `kind` of every layer, checked to share one type (a bundle file records one). */
function ffnTensors(model: Model, kind: "gate" | "up" | "down"): GgufTensorInfo[] {
  const hp = model.info.hparams;
  const out: GgufTensorInfo[] = [];
  for (let l = 0; l < hp.nLayers; l++) {
    const name = `blk.${l}.ffn_${kind}.weight`;
    const t = model.gguf.tensors.get(name);
    if (!t) throw new SparrowError("bad_model", `${model.info.path}: tensor '${name}' is missing`);
    const want = kind === "down" ? [hp.ffnDim, hp.dim] : [hp.dim, hp.ffnDim];
    if (t.dims.length !== 2 || t.dims[0] !== want[0] || t.dims[1] !== want[1]) {
      throw new SparrowError(
        "bad_model",
        `${model.info.path}: tensor '${name}' has shape [${t.dims.join(", ")}], expected [${want.join(", ")}]`,
      );
    }
    // Down columns are re-encoded in one type whatever the source's, so only gate and up must agree.
    if (kind !== "down" && l > 0 && t.type !== out[0].type) {
      throw new SparrowError(
        "unsupported",
        `${model.info.path}: tensor '${name}' is ${ggmlTypeName(t.type)} but 'blk.0.ffn_${kind}.weight' is ${
          ggmlTypeName(out[0].type)
        }; a bundle file holds one ${kind} type for all layers`,
      );
    }
    out.push(t);
  }
  return out;
}

/**
 * Packs `model`'s FFN neurons into a bundle file, hot-first in the order the sidecar's neuron
 * frequencies give.
 *
 * @param model The loaded model (its weights are read from its file and its native handle).
 * @param sidecarPath The calibration sidecar (`sparrow calibrate`), checked against the model; a
 * PowerInfer predictor file works too, and gives the model's own neuron order (it has no frequencies).
 * @param outPath The bundle file to write (replaced if present; `<outPath>.partial` meanwhile).
 * @param options Alignment, phase, down type, threads, progress.
 * @returns What was written.
 * @throws {SparrowError} `invalid_argument` for bad options or an output that would replace the
 * model or sidecar; `bad_model` for a sidecar made for another model; `unsupported` for gate or up
 * types that differ between layers or a down type the core cannot store; `io` when reading or
 * writing fails (the partial file is removed).
 *
 * @example
 * ```ts ignore
 * import { loadModel } from "./model.ts";
 * import { packBundles } from "./pack.ts";
 * using model = await loadModel("m.gguf", { threads: 2 });
 * const s = await packBundles(model, "m.sparsity.gguf", "m.bundles", { alignment: 4096 });
 * console.log(`${s.fileBytes} bytes, padding ${(s.paddingOverhead * 100).toFixed(1)}%`);
 * ```
 */
export async function packBundles(
  model: Model,
  sidecarPath: string,
  outPath: string,
  options: PackOptions = {},
): Promise<PackSummary> {
  const t0 = performance.now();
  const hp = model.info.hparams;
  const alignment = options.alignment ?? defaultBundleAlignment;
  checkBundleAlignment(alignment);
  const threads = options.threads ?? model.defaults.threads;
  if (!Number.isInteger(threads) || threads < 1 || threads > 256) {
    throw new SparrowError("invalid_argument", `threads = ${threads} is outside [1, 256]`);
  }
  for (const [what, path] of [["model", model.info.path], ["sidecar", sidecarPath]]) {
    if (samePath(outPath, path) || samePath(`${outPath}.partial`, path)) {
      throw new SparrowError("invalid_argument", `output ${outPath} would overwrite the ${what} ${path}`);
    }
  }
  const gates = ffnTensors(model, "gate");
  const ups = ffnTensors(model, "up");
  const downs = ffnTensors(model, "down");
  const layout = bundleLayout({
    dim: hp.dim,
    gateType: gates[0].type,
    upType: ups[0].type,
    downType: downTypeFor(downs[0].type, options.downType),
    alignment,
    twoPhase: options.twoPhase ?? false,
  });

  const fingerprint = await model.fingerprint();
  const sidecar = readSidecar(sidecarPath, hp, fingerprint);
  const sidecarFingerprint = await modelFingerprint(sidecarPath);
  const hotFirst = hotFirstOrder(sidecar, hp);
  const orderOf = (l: number): Uint32Array<ArrayBuffer> =>
    hotFirst.length > 0
      ? hotFirst.slice(l * hp.ffnDim, (l + 1) * hp.ffnDim)
      : Uint32Array.from({ length: hp.ffnDim }, (_, i) => i);

  const ffn = hp.ffnDim;
  const bundleBytes = layout.storedBytes * ffn * hp.nLayers;
  const totalBytes = bundleBytes + roundUp(ffn * 4, alignment) * hp.nLayers;
  // One layer at a time: its order, its gate and up tensors, its transposed down rows. Every layer's
  // tensors have the same type and shape (ffnTensors), so the row buffers are allocated once.
  const current = {
    layer: -1,
    order: new Uint32Array(0),
    gate: new Uint8Array(gates[0].nBytes),
    up: new Uint8Array(ups[0].nBytes),
    down: new Uint8Array(layout.down.bytes * ffn),
  };
  const modelFile = Deno.openSync(model.info.path, { read: true });
  let written = 0;
  const report = (layer: number, n: number) => {
    written += n;
    options.onProgress?.({ layer, layers: hp.nLayers, bytes: written, totalBytes });
  };
  const load = (l: number) => {
    if (current.layer === l) return;
    current.layer = l;
    current.order = orderOf(l);
    readAt(modelFile, model.info.path, gates[l].offset, current.gate, `tensor '${gates[l].name}'`);
    readAt(modelFile, model.info.path, ups[l].offset, current.up, `tensor '${ups[l].name}'`);
    unwrap(
      core().sp_transpose_down(
        model.native.pointer,
        l,
        layout.down.type,
        new Uint8Array(current.order.buffer, current.order.byteOffset, current.order.byteLength),
        BigInt(ffn),
        current.down,
        BigInt(current.down.length),
        threads,
      ),
      () => lastError(null, null),
    );
  };

  const tensors: TensorToWrite[] = [];
  for (let l = 0; l < hp.nLayers; l++) {
    tensors.push({
      name: bundleTensorName(l, "neuron_order"),
      dims: [ffn],
      type: 26, // I32: positions hold neuron indices, all below 2^31
      data: (emit) => {
        load(l);
        emit(new Uint8Array(current.order.buffer));
        report(l, ffn * 4);
      },
    });
    for (const region of layout.regions) {
      tensors.push({
        name: bundleTensorName(l, region.name),
        dims: [region.stride, ffn],
        type: 24, // I8: opaque bytes, `stride` per neuron
        data: (emit) => {
          load(l);
          const perChunk = Math.max(1, Math.floor((options.chunkBytes ?? defaultChunkBytes) / region.stride));
          // Fresh and zero-filled per region; parts are written at the same offsets of every bundle,
          // so the padding after them stays zero as the chunk is reused.
          const chunk = new Uint8Array(perChunk * region.stride);
          for (let k0 = 0; k0 < ffn; k0 += perChunk) {
            const n = Math.min(perChunk, ffn - k0);
            for (let i = 0; i < n; i++) {
              const k = k0 + i;
              const at = i * region.stride;
              for (const part of region.parts) {
                // Gate and up rows are the source's rows of neuron order[k]; down row k of the
                // transposed projection is already in that order.
                const row = part.kind === "down" ? k : current.order[k];
                const src = current[part.kind];
                chunk.set(src.subarray(row * part.bytes, (row + 1) * part.bytes), at + part.offset);
              }
            }
            emit(chunk.subarray(0, n * region.stride));
            report(l, n * region.stride);
          }
        },
      });
    }
  }

  const partial = `${outPath}.partial`;
  let fileBytes: number;
  try {
    try {
      fileBytes = writeGguf(
        partial,
        bundleMetadata({
          modelName: model.info.name,
          modelFingerprint: fingerprint,
          sidecarFingerprint,
          nLayers: hp.nLayers,
          ffnDim: ffn,
        }, layout),
        tensors,
      );
      // Flush before the rename, so the name never points at data still in the page cache only.
      const f = Deno.openSync(partial, { read: true, write: true });
      try {
        f.syncSync();
      } finally {
        f.close();
      }
      Deno.renameSync(partial, outPath);
    } catch (e) {
      if (e instanceof SparrowError) throw e;
      throw new SparrowError("io", `writing ${partial}: ${(e as Error).message}`, { cause: e });
    }
  } catch (e) {
    try {
      Deno.removeSync(partial);
    } catch {
      // Already gone, or never created: nothing to clean up.
    }
    throw e;
  } finally {
    modelFile.close();
  }
  const payloadBytes = layout.payloadBytes * ffn * hp.nLayers;
  return {
    path: outPath,
    layers: hp.nLayers,
    neurons: ffn * hp.nLayers,
    fileBytes,
    bundleBytes,
    payloadBytes,
    paddingBytes: bundleBytes - payloadBytes,
    paddingOverhead: (bundleBytes - payloadBytes) / payloadBytes,
    order: hotFirst.length > 0 ? "hot-first" : "model",
    layout,
    seconds: (performance.now() - t0) / 1000,
  };
}
