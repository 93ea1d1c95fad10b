/**
 * The neuron-bundle file (format v1): every FFN neuron of a model laid out on disk so that a sparse
 * engine reads one neuron's weights with one aligned read, and the hot neurons of a layer sit
 * together at its start. `sparrow pack` (core/pack.ts) writes it; {@link readBundleFile} checks it
 * and describes where everything is. The native engine's neuron cache and I/O ring read the same
 * layout, so what follows is a contract: change it only with a new version number.
 *
 * What is in it, and what is not. A bundle file holds only the FFN neurons: per neuron its gate
 * row, its up row and its down column. Attention, embeddings, norms and the predictors are not
 * copied; they stay in the source GGUF and the calibration sidecar, which the engine maps as its
 * fixed in-memory region. The three files are tied together by fingerprints
 * (core/model_fingerprint.ts) recorded here, so a bundle file is refused next to another model or
 * sidecar than the ones it was packed from.
 *
 * Container: GGUF v3 (core/gguf.ts reads it), `general.alignment` = the pack alignment A (a power
 * of two, 512 to 65536; default 4096, the page and O_DIRECT block size), so every tensor's data
 * starts at a file offset that is a multiple of A.
 *
 * Metadata (all present; u32 unless said otherwise):
 * - `general.architecture` (str) = "sparrow-bundles"
 * - `sparrow.bundles.version` = 1
 * - `sparrow.bundles.model_name` (str), `sparrow.bundles.model_fingerprint` (str, of the source
 *   GGUF), `sparrow.bundles.sidecar_fingerprint` (str, of the sidecar file the order came from)
 * - `sparrow.bundles.n_layers`, `.dim`, `.ffn_dim`: the model's shape
 * - `sparrow.bundles.alignment` = A (equal to `general.alignment`)
 * - `sparrow.bundles.two_phase` (bool)
 * - `sparrow.bundles.gate_type`, `.up_type`, `.down_type`: ggml type ids. Gate and up rows keep the
 *   source tensors' type; the down column is the model's W_down transposed (one row of `dim`
 *   elements per neuron) in `down_type`, by default the type the in-memory sparse engine uses
 *   (`downTypeFor` in core/sparse.ts: exact for F32/F16, F32 for BF16, Q8_0 for quantized models).
 * - `sparrow.bundles.gate_bytes`, `.up_bytes`, `.down_bytes`: bytes of one neuron's gate row, up
 *   row, down column (`dim` elements of the type)
 * - single-phase: `sparrow.bundles.stride` = roundUp(gate_bytes + up_bytes + down_bytes, A)
 * - two-phase: `sparrow.bundles.gate_stride` = roundUp(gate_bytes, A) and
 *   `sparrow.bundles.updown_stride` = roundUp(up_bytes + down_bytes, A)
 *
 * Tensors, per layer l in order 0..n_layers-1 (ffn = ffn_dim):
 * - `blk.l.neuron_order` (I32, [ffn]): position k -> neuron index; hot-first (core/neuron_order.ts,
 *   from the sidecar's activation frequencies), or 0..ffn-1 when the sidecar has none. A
 *   permutation of 0..ffn-1.
 * - single-phase: `blk.l.bundles` (I8, dims [stride, ffn], i.e. ffn bundles of `stride` bytes):
 *   bundle k = [gate row of neuron order[k] | its up row | its down column | zeros up to stride].
 * - two-phase: `blk.l.gate_bundles` (I8, [gate_stride, ffn]): bundle k = [gate row | zeros], and
 *   `blk.l.updown_bundles` (I8, [updown_stride, ffn]): bundle k = [up row | down column | zeros].
 *   The engine reads gate bundles to decide which neurons fire, then only those neurons' up/down.
 *
 * Bundle k of a region starts at (region offset + k * stride): aligned to A, so a run of
 * consecutive positions is one aligned read. The padding is what alignment costs; `sparrow pack`
 * reports it.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import { type GgufFile, type GgufTensorInfo, readGguf } from "./gguf.ts";
import { ggmlType, ggmlTypeName } from "./gguf_types.ts";
import { gv, type TypedValue } from "./gguf_writer.ts";
import type { LlamaHparams } from "./model_desc.ts";

/** `general.architecture` of a bundle file. */
export const bundleArchitecture = "sparrow-bundles";
/** The format version this code writes and reads. */
export const bundleVersion = 1;
/** Default pack alignment: the page size, and the block size O_DIRECT reads need on common disks. */
export const defaultBundleAlignment = 4096;
/** Smallest alignment allowed: the smallest logical block an O_DIRECT read can use. */
export const minBundleAlignment = 512;
/** Largest alignment allowed: beyond it padding costs more than any disk gains. */
export const maxBundleAlignment = 65536;

/** Metadata keys of a bundle file. */
export const bundleKeys = {
  version: "sparrow.bundles.version",
  modelName: "sparrow.bundles.model_name",
  modelFingerprint: "sparrow.bundles.model_fingerprint",
  sidecarFingerprint: "sparrow.bundles.sidecar_fingerprint",
  nLayers: "sparrow.bundles.n_layers",
  dim: "sparrow.bundles.dim",
  ffnDim: "sparrow.bundles.ffn_dim",
  alignment: "sparrow.bundles.alignment",
  twoPhase: "sparrow.bundles.two_phase",
  gateType: "sparrow.bundles.gate_type",
  upType: "sparrow.bundles.up_type",
  downType: "sparrow.bundles.down_type",
  gateBytes: "sparrow.bundles.gate_bytes",
  upBytes: "sparrow.bundles.up_bytes",
  downBytes: "sparrow.bundles.down_bytes",
  stride: "sparrow.bundles.stride",
  gateStride: "sparrow.bundles.gate_stride",
  updownStride: "sparrow.bundles.updown_stride",
} as const;

/** GGML ids of the container's tensor types. */
const typeI8 = 24;
const typeI32 = 26;

/** Which rows a bundle region holds: single-phase "bundles"; two-phase "gate_bundles" + "updown_bundles". */
export type BundleRegionName = "bundles" | "gate_bundles" | "updown_bundles";

/** One neuron's row of one kind inside a bundle. */
export interface BundlePart {
  /** Which row: the gate row, the up row, or the down column (a transposed W_down row). */
  kind: "gate" | "up" | "down";
  /** Its ggml type id. */
  type: number;
  /** Its bytes (`dim` elements of `type`). */
  bytes: number;
  /** Where it starts inside the bundle. */
  offset: number;
}

/** The bundles of one region, as every layer lays them out. */
export interface BundleRegionLayout {
  /** Tensor name suffix: the tensor of layer l is `blk.l.<name>`. */
  name: BundleRegionName;
  /** Bytes from one bundle's start to the next's: a multiple of the alignment. */
  stride: number;
  /** What a bundle holds, in order from its start; the bytes after the last part are zero. */
  parts: BundlePart[];
  /** Bytes of the parts; `stride - payload` is padding. */
  payload: number;
}

/** How one neuron is stored, the same for every layer. */
export interface BundleLayout {
  /** The pack alignment. */
  alignment: number;
  /** Whether gate rows are stored apart from up rows and down columns. */
  twoPhase: boolean;
  /** Elements per row. */
  dim: number;
  /** Gate row: ggml type and bytes (its offset is in `regions`). */
  gate: { type: number; bytes: number };
  /** Up row: ggml type and bytes. */
  up: { type: number; bytes: number };
  /** Down column (a row of the transposed W_down): ggml type and bytes. */
  down: { type: number; bytes: number };
  /** Single-phase: one region ("bundles"); two-phase: "gate_bundles", then "updown_bundles". */
  regions: BundleRegionLayout[];
  /** Bytes of one neuron's rows. */
  payloadBytes: number;
  /** Bytes one neuron takes in the file (the sum of the strides). */
  storedBytes: number;
}

/** What a layout is computed from. */
export interface BundleLayoutSpec {
  /** Elements per row (the model's dim). */
  dim: number;
  /** ggml type id of the gate rows. */
  gateType: number;
  /** ggml type id of the up rows. */
  upType: number;
  /** ggml type id of the down columns. */
  downType: number;
  /** Pack alignment; default {@link defaultBundleAlignment}. */
  alignment?: number;
  /** Store gate rows apart; default false. */
  twoPhase?: boolean;
}

/**
 * Checks a pack alignment.
 *
 * @param alignment The value asked for.
 * @throws {SparrowError} `invalid_argument` unless it is a power of two in
 * [{@link minBundleAlignment}, {@link maxBundleAlignment}].
 */
export function checkBundleAlignment(alignment: number): void {
  const ok = Number.isInteger(alignment) && alignment >= minBundleAlignment && alignment <= maxBundleAlignment &&
    (alignment & (alignment - 1)) === 0;
  if (!ok) {
    throw new SparrowError(
      "invalid_argument",
      `bundle alignment ${alignment} is not a power of two from ${minBundleAlignment} to ${maxBundleAlignment}`,
    );
  }
}

/** Rounds `n` up to a multiple of `alignment`. */
export function roundUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

/** Bytes of one row of `dim` elements of ggml type `type`. */
function rowBytes(what: string, type: number, dim: number): number {
  const info = ggmlType(type);
  if (!info) throw new SparrowError("invalid_argument", `${what}: unknown ggml type id ${type}`);
  if (dim % info.blockElems !== 0) {
    throw new SparrowError(
      "invalid_argument",
      `${what}: a row of ${dim} elements is not a whole number of ${info.name} blocks of ${info.blockElems}`,
    );
  }
  return (dim / info.blockElems) * info.blockBytes;
}

/**
 * Computes how one neuron is stored.
 *
 * @param spec Row length, types, alignment and phase.
 * @returns The layout: part sizes, offsets within a bundle, strides.
 * @throws {SparrowError} `invalid_argument` for a bad alignment, an unknown type, or rows that are
 * not whole blocks of their type.
 *
 * @example
 * ```ts
 * import { bundleLayout } from "./bundle_format.ts";
 * // Q4_0 gate/up rows and Q8_0 down columns of a 4096-wide model: 2304 + 2304 + 4352 bytes.
 * const layout = bundleLayout({ dim: 4096, gateType: 2, upType: 2, downType: 8 });
 * console.log(layout.regions[0].stride); // 12288
 * ```
 */
export function bundleLayout(spec: BundleLayoutSpec): BundleLayout {
  const alignment = spec.alignment ?? defaultBundleAlignment;
  checkBundleAlignment(alignment);
  const twoPhase = spec.twoPhase ?? false;
  const gate = { type: spec.gateType, bytes: rowBytes("gate rows", spec.gateType, spec.dim) };
  const up = { type: spec.upType, bytes: rowBytes("up rows", spec.upType, spec.dim) };
  const down = { type: spec.downType, bytes: rowBytes("down columns", spec.downType, spec.dim) };
  const region = (name: BundleRegionName, rows: [BundlePart["kind"], { type: number; bytes: number }][]) => {
    let offset = 0;
    const parts = rows.map(([kind, r]) => {
      const part = { kind, type: r.type, bytes: r.bytes, offset };
      offset += r.bytes;
      return part;
    });
    return { name, stride: roundUp(offset, alignment), parts, payload: offset };
  };
  const regions = twoPhase
    ? [region("gate_bundles", [["gate", gate]]), region("updown_bundles", [["up", up], ["down", down]])]
    : [region("bundles", [["gate", gate], ["up", up], ["down", down]])];
  return {
    alignment,
    twoPhase,
    dim: spec.dim,
    gate,
    up,
    down,
    regions,
    payloadBytes: gate.bytes + up.bytes + down.bytes,
    storedBytes: regions.reduce((a, r) => a + r.stride, 0),
  };
}

/** Tensor names of layer `layer`: its order and its region `name`. */
export function bundleTensorName(layer: number, name: BundleRegionName | "neuron_order"): string {
  return `blk.${layer}.${name}`;
}

/** What a bundle file records about where it came from. */
export interface BundleProvenance {
  /** The model's name. */
  modelName: string;
  /** Fingerprint of the source GGUF. */
  modelFingerprint: string;
  /** Fingerprint of the sidecar the neuron order came from. */
  sidecarFingerprint: string;
  /** The model's layer count. */
  nLayers: number;
  /** The model's FFN width (neurons per layer). */
  ffnDim: number;
}

/**
 * The metadata of a bundle file, in the order it is written.
 *
 * @param p Model name, fingerprints and shape.
 * @param layout The layout (its `dim` is the model's).
 * @returns Key/value pairs for core/gguf_writer.ts, `general.alignment` included.
 */
export function bundleMetadata(p: BundleProvenance, layout: BundleLayout): [string, TypedValue][] {
  const k = bundleKeys;
  const strides: [string, TypedValue][] = layout.twoPhase
    ? [[k.gateStride, gv.u32(layout.regions[0].stride)], [k.updownStride, gv.u32(layout.regions[1].stride)]]
    : [[k.stride, gv.u32(layout.regions[0].stride)]];
  return [
    ["general.architecture", gv.str(bundleArchitecture)],
    ["general.name", gv.str(`neuron bundles for ${p.modelName}`)],
    ["general.alignment", gv.u32(layout.alignment)],
    [k.version, gv.u32(bundleVersion)],
    [k.modelName, gv.str(p.modelName)],
    [k.modelFingerprint, gv.str(p.modelFingerprint)],
    [k.sidecarFingerprint, gv.str(p.sidecarFingerprint)],
    [k.nLayers, gv.u32(p.nLayers)],
    [k.dim, gv.u32(layout.dim)],
    [k.ffnDim, gv.u32(p.ffnDim)],
    [k.alignment, gv.u32(layout.alignment)],
    [k.twoPhase, gv.bool(layout.twoPhase)],
    [k.gateType, gv.u32(layout.gate.type)],
    [k.upType, gv.u32(layout.up.type)],
    [k.downType, gv.u32(layout.down.type)],
    [k.gateBytes, gv.u32(layout.gate.bytes)],
    [k.upBytes, gv.u32(layout.up.bytes)],
    [k.downBytes, gv.u32(layout.down.bytes)],
    ...strides,
  ];
}

/** One region of one layer in a bundle file. */
export interface BundleRegion extends BundleRegionLayout {
  /** Its tensor's name, e.g. `blk.3.bundles`. */
  tensor: string;
  /** File offset of bundle 0 (a multiple of the alignment); bundle k is at offset + k * stride. */
  offset: number;
  /** Bytes of the region: stride * ffn. */
  bytes: number;
}

/** One layer of a bundle file. */
export interface BundleFileLayer {
  /** Name of its `blk.l.neuron_order` tensor. */
  orderTensor: string;
  /** File offset of that tensor's data: ffn I32 values. */
  orderOffset: number;
  /** Position k -> neuron index (checked to be a permutation). */
  order: Uint32Array;
  /** Its regions, in the order of the layout's. */
  regions: BundleRegion[];
}

/** A checked bundle file. */
export interface BundleFile {
  /** Where it was read from. */
  path: string;
  /** Its size in bytes. */
  fileSize: number;
  /** Format version (always {@link bundleVersion}: others are refused). */
  version: number;
  /** Name of the model it was packed from. */
  modelName: string;
  /** Fingerprint of the model file it was packed from. */
  modelFingerprint: string;
  /** Fingerprint of the sidecar its neuron order came from. */
  sidecarFingerprint: string;
  /** The model's layer count. */
  nLayers: number;
  /** The model's embedding width (elements per row). */
  dim: number;
  /** The model's FFN width (neurons per layer). */
  ffnDim: number;
  /** How neurons are stored. */
  layout: BundleLayout;
  /** Per layer: the order and where its regions are. */
  layers: BundleFileLayer[];
}

/** Fingerprints a bundle file must have been packed from. */
export interface ExpectedFingerprints {
  /** The model's (`model.fingerprint()`). */
  model?: string;
  /** The sidecar's (`modelFingerprint(sidecarPath)`). */
  sidecar?: string;
}

/** Typed reads of a bundle file's metadata; failures name the file and the key. */
class MetadataReader {
  constructor(readonly g: GgufFile) {}

  fail(what: string): never {
    throw new SparrowError("bad_model", `bundle file ${this.g.path}: ${what}`);
  }

  u32(key: string): number {
    const v = this.g.metadata.get(key);
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
      this.fail(`missing or mistyped key '${key}' (expected a u32, found ${v === undefined ? "nothing" : String(v)})`);
    }
    return v;
  }

  str(key: string): string {
    const v = this.g.metadata.get(key);
    if (typeof v !== "string") this.fail(`missing or mistyped key '${key}' (expected a string)`);
    return v;
  }

  bool(key: string): boolean {
    const v = this.g.metadata.get(key);
    if (typeof v !== "boolean") this.fail(`missing or mistyped key '${key}' (expected a bool)`);
    return v;
  }
}

/** Reads `out.length` bytes at `offset`. */
function readAt(file: Deno.FsFile, path: string, offset: number, out: Uint8Array): void {
  try {
    file.seekSync(offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < out.length) {
      const n = file.readSync(out.subarray(got));
      if (n === null || n === 0) {
        throw new SparrowError("bad_model", `${path}: file ended at ${offset + got} while reading ${out.length} bytes`);
      }
      got += n;
    }
  } catch (e) {
    if (e instanceof SparrowError) throw e;
    throw new SparrowError("io", `${path}: read of ${out.length} bytes at ${offset} failed: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

/**
 * Reads a bundle file's header and checks it against a model (and, when given, the fingerprints of
 * the model and sidecar it must have been packed from). Bundle data is not read, only the neuron
 * orders (4 bytes per neuron).
 *
 * @param path The bundle file.
 * @param hp The model's hyperparameters (layers, dim and ffn_dim are checked).
 * @param expected Fingerprints to check the recorded ones against.
 * @returns Where every layer's order and bundles are, and how a bundle is laid out.
 * @throws {SparrowError} `io` when unreadable; `bad_model` for a file that is not a bundle file, of
 * another format version, for another model shape, packed from another model or sidecar, with a
 * region past the end of the file (truncated) or off the alignment, metadata that contradicts
 * itself, or a neuron order that is not a permutation, naming the tensor or key and the values.
 *
 * @example
 * ```ts ignore
 * import { readBundleFile } from "./bundle_format.ts";
 * const b = readBundleFile("model.bundles", model.info.hparams, { model: await model.fingerprint() });
 * const r = b.layers[0].regions[0];
 * console.log(`bundle 0 of layer 0 at ${r.offset}, ${r.stride} bytes each`);
 * ```
 */
export function readBundleFile(
  path: string,
  hp: Pick<LlamaHparams, "nLayers" | "dim" | "ffnDim">,
  expected: ExpectedFingerprints = {},
): BundleFile {
  const g = readGguf(path);
  // Annotated so TypeScript sees that m.fail() never returns.
  const m: MetadataReader = new MetadataReader(g);
  const arch = g.metadata.get("general.architecture");
  if (arch !== bundleArchitecture) {
    m.fail(`not a neuron bundle file: general.architecture is '${String(arch)}', not '${bundleArchitecture}'`);
  }
  const version = m.u32(bundleKeys.version);
  if (version !== bundleVersion) {
    m.fail(`bundle format version ${version}; this sparrow reads version ${bundleVersion} (repack with sparrow pack)`);
  }
  const shape = { nLayers: m.u32(bundleKeys.nLayers), dim: m.u32(bundleKeys.dim), ffnDim: m.u32(bundleKeys.ffnDim) };
  for (const key of ["nLayers", "dim", "ffnDim"] as const) {
    if (shape[key] !== hp[key]) {
      m.fail(`packed for a model with ${key} = ${shape[key]}, but this model has ${hp[key]}`);
    }
  }
  const modelFingerprint = m.str(bundleKeys.modelFingerprint);
  const sidecarFingerprint = m.str(bundleKeys.sidecarFingerprint);
  if (expected.model !== undefined && expected.model !== modelFingerprint) {
    m.fail(
      `packed from another model file (fingerprint ${modelFingerprint}, this model's is ${expected.model}); repack`,
    );
  }
  if (expected.sidecar !== undefined && expected.sidecar !== sidecarFingerprint) {
    m.fail(
      `packed with another sidecar (fingerprint ${sidecarFingerprint}, this sidecar's is ${expected.sidecar}); repack`,
    );
  }

  const alignment = m.u32(bundleKeys.alignment);
  try {
    checkBundleAlignment(alignment);
  } catch (e) {
    m.fail(`${bundleKeys.alignment}: ${(e as Error).message}`);
  }
  if (g.alignment !== alignment) {
    m.fail(`general.alignment is ${g.alignment} but ${bundleKeys.alignment} is ${alignment}`);
  }
  let layout: BundleLayout;
  try {
    layout = bundleLayout({
      dim: shape.dim,
      gateType: m.u32(bundleKeys.gateType),
      upType: m.u32(bundleKeys.upType),
      downType: m.u32(bundleKeys.downType),
      alignment,
      twoPhase: m.bool(bundleKeys.twoPhase),
    });
  } catch (e) {
    if (!(e instanceof SparrowError) || e.code !== "invalid_argument") throw e;
    m.fail(e.message);
  }
  // The sizes and strides are recorded so a reader need not know ggml's block sizes; they must
  // agree with the types, or one of the two is wrong.
  const strides: [string, number][] = layout.twoPhase
    ? [[bundleKeys.gateStride, layout.regions[0].stride], [bundleKeys.updownStride, layout.regions[1].stride]]
    : [[bundleKeys.stride, layout.regions[0].stride]];
  const recorded: [string, number][] = [
    [bundleKeys.gateBytes, layout.gate.bytes],
    [bundleKeys.upBytes, layout.up.bytes],
    [bundleKeys.downBytes, layout.down.bytes],
    ...strides,
  ];
  for (const [key, want] of recorded) {
    const got = m.u32(key);
    if (got !== want) {
      m.fail(
        `${key} = ${got}, but the types (gate ${ggmlTypeName(layout.gate.type)}, up ${
          ggmlTypeName(layout.up.type)
        }, down ${ggmlTypeName(layout.down.type)}), dim ${shape.dim} and alignment ${alignment} make it ${want}`,
      );
    }
  }

  const known = new Set<string>();
  const tensor = (name: string, type: number, dims: number[]): GgufTensorInfo => {
    known.add(name);
    const t = g.tensors.get(name);
    if (!t) m.fail(`tensor '${name}' is missing`);
    if (t.type !== type || t.dims.length !== dims.length || t.dims.some((d, i) => d !== dims[i])) {
      m.fail(
        `tensor '${name}' is ${ggmlTypeName(t.type)} [${t.dims.join(", ")}], expected ${ggmlTypeName(type)} [${
          dims.join(", ")
        }]`,
      );
    }
    if (t.offset % alignment !== 0) {
      m.fail(`tensor '${name}' starts at offset ${t.offset}, not a multiple of the alignment ${alignment}`);
    }
    if (t.offset + t.nBytes > g.fileSize) {
      m.fail(
        `tensor '${name}' spans bytes ${t.offset}..${
          t.offset + t.nBytes
        }, past the end of the file (${g.fileSize} bytes)`,
      );
    }
    return t;
  };

  const layers: BundleFileLayer[] = [];
  const file = Deno.openSync(path, { read: true });
  try {
    for (let l = 0; l < shape.nLayers; l++) {
      const orderTensor = bundleTensorName(l, "neuron_order");
      const orderInfo = tensor(orderTensor, typeI32, [shape.ffnDim]);
      const regions = layout.regions.map((r) => {
        const name = bundleTensorName(l, r.name);
        const t = tensor(name, typeI8, [r.stride, shape.ffnDim]);
        return { ...r, tensor: name, offset: t.offset, bytes: t.nBytes };
      });
      const order = new Uint32Array(shape.ffnDim);
      readAt(file, path, orderInfo.offset, new Uint8Array(order.buffer));
      const seen = new Uint8Array(shape.ffnDim);
      for (let k = 0; k < order.length; k++) {
        // A negative I32 reads as a huge u32, so one bound catches both.
        if (order[k] >= shape.ffnDim || seen[order[k]]) {
          m.fail(
            `tensor '${orderTensor}' is not a permutation of 0..${shape.ffnDim - 1}: position ${k} holds ${
              order[k] | 0
            }${order[k] < shape.ffnDim ? ", which appears earlier" : ""}`,
          );
        }
        seen[order[k]] = 1;
      }
      layers.push({ orderTensor, orderOffset: orderInfo.offset, order, regions });
    }
  } finally {
    file.close();
  }
  const extra = [...g.tensors.keys()].find((n) => !known.has(n));
  if (extra !== undefined) m.fail(`tensor '${extra}' is not part of bundle format v${bundleVersion}`);

  return {
    path,
    fileSize: g.fileSize,
    version,
    modelName: m.str(bundleKeys.modelName),
    modelFingerprint,
    sidecarFingerprint,
    ...shape,
    layout,
    layers,
  };
}
