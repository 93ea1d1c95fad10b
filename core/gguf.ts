/**
 * GGUF reader (versions 2 and 3): metadata of every value type, tensor infos and the data offset.
 *
 * Only the header is read, in chunks, into the JS heap; tensor data stays on disk for the native
 * core to map. Every count, length, dimension and offset is checked against the file before it is
 * used, and a failure is a {@link SparrowError} (`bad_model`, or `io`) naming the file and the field.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import { ggmlType, type GgmlTypeInfo, ggmlTypeName, GgufValueType, scalarValueBytes } from "./gguf_types.ts";

/**
 * A metadata value. Scalars: numbers (64-bit integers as `bigint`), booleans, strings. Arrays of
 * numbers come back as typed arrays of their element type (e.g. `Float32Array` scores,
 * `Int32Array` token types), arrays of strings as `string[]`, of booleans as `boolean[]`, and arrays
 * of arrays as `GgufValue[]`.
 */
export type GgufValue =
  | number
  | bigint
  | boolean
  | string
  | string[]
  | boolean[]
  | GgufValue[]
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array;

/** One tensor's entry in the GGUF header. */
export interface GgufTensorInfo {
  /** Tensor name, e.g. `blk.0.attn_q.weight`. */
  readonly name: string;
  /** Dimensions, fastest-varying first (GGUF order): a matrix is `[columns, rows]`. */
  readonly dims: readonly number[];
  /** GGML type id. */
  readonly type: number;
  /** GGML type geometry. */
  readonly typeInfo: GgmlTypeInfo;
  /** Absolute offset of the data in the file. */
  readonly offset: number;
  /** Size of the data in bytes. */
  readonly nBytes: number;
  /** Number of elements. */
  readonly nElements: number;
}

/** A parsed GGUF header. */
export interface GgufFile {
  /** Path the file was read from. */
  readonly path: string;
  /** GGUF version (2 or 3). */
  readonly version: number;
  /** "GGUF", or "PWRI" for a PowerInfer predictor file (same format otherwise). */
  readonly magic: "GGUF" | "PWRI";
  /** Size of the whole file in bytes. */
  readonly fileSize: number;
  /** `general.alignment`, or 32 when absent. */
  readonly alignment: number;
  /** Metadata key/value pairs, in file order. */
  readonly metadata: ReadonlyMap<string, GgufValue>;
  /** Tensor infos by name, in file order. */
  readonly tensors: ReadonlyMap<string, GgufTensorInfo>;
  /** Absolute offset of the tensor data section. */
  readonly dataOffset: number;
}

/** Limits that catch corrupt headers before they turn into absurd allocations. */
const limits = {
  maxDims: 4, // GGML_MAX_DIMS
  maxStringBytes: 1 << 26, // a chat template or token is far smaller; 64 MiB allows huge vocab blobs
  maxArrayDepth: 4,
  maxNameBytes: 256,
};

const defaultAlignment = 32;
const chunkBytes = 1 << 20;
const decoder = new TextDecoder("utf-8", { fatal: false });

/** Buffered, bounds-checked little-endian reads over a file. */
class HeaderReader {
  #file: Deno.FsFile;
  #buf = new Uint8Array(0);
  #view = new DataView(this.#buf.buffer);
  #bufStart = 0;
  pos = 0;

  constructor(file: Deno.FsFile, readonly path: string, readonly fileSize: number) {
    this.#file = file;
  }

  fail(what: string): never {
    throw new SparrowError("bad_model", `${this.path}: ${what}`);
  }

  remaining(): number {
    return this.fileSize - this.pos;
  }

  /** Makes bytes [pos, pos + n) available in the buffer; `what` names the field for errors. */
  #need(n: number, what: string): number {
    if (n > this.remaining()) {
      this.fail(`file is truncated: ${what} needs ${n} bytes at offset ${this.pos}, only ${this.remaining()} remain`);
    }
    const rel = this.pos - this.#bufStart;
    if (rel >= 0 && rel + n <= this.#buf.length) return rel;
    const size = Math.min(Math.max(n, chunkBytes), this.remaining());
    const buf = new Uint8Array(size);
    let got = 0;
    try {
      this.#file.seekSync(this.pos, Deno.SeekMode.Start);
      while (got < size) {
        const r = this.#file.readSync(buf.subarray(got));
        if (r === null || r === 0) break;
        got += r;
      }
    } catch (e) {
      throw new SparrowError("io", `${this.path}: read failed at offset ${this.pos}: ${(e as Error).message}`, {
        cause: e,
      });
    }
    if (got < size) this.fail(`file shrank while reading: expected ${size} bytes at offset ${this.pos}, read ${got}`);
    this.#buf = buf;
    this.#view = new DataView(buf.buffer);
    this.#bufStart = this.pos;
    return 0;
  }

  u32(what: string): number {
    const at = this.#need(4, what);
    this.pos += 4;
    return this.#view.getUint32(at, true);
  }

  u64(what: string): bigint {
    const at = this.#need(8, what);
    this.pos += 8;
    return this.#view.getBigUint64(at, true);
  }

  /** A u64 that must fit in a JS number (counts, sizes, offsets). */
  size(what: string): number {
    const v = this.u64(what);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`${what} = ${v} is absurd (over 2^53)`);
    return Number(v);
  }

  bytes(n: number, what: string): Uint8Array {
    const at = this.#need(n, what);
    this.pos += n;
    return this.#buf.subarray(at, at + n);
  }

  string(what: string, maxBytes = limits.maxStringBytes): string {
    const n = this.size(`length of ${what}`);
    if (n > maxBytes) this.fail(`${what} has length ${n}, over the limit of ${maxBytes} bytes`);
    return decoder.decode(this.bytes(n, what));
  }

  scalar(type: number, what: string): number | bigint | boolean {
    const n = scalarValueBytes[type];
    const at = this.#need(n, what);
    this.pos += n;
    const v = this.#view;
    switch (type) {
      case GgufValueType.UINT8:
        return v.getUint8(at);
      case GgufValueType.INT8:
        return v.getInt8(at);
      case GgufValueType.UINT16:
        return v.getUint16(at, true);
      case GgufValueType.INT16:
        return v.getInt16(at, true);
      case GgufValueType.UINT32:
        return v.getUint32(at, true);
      case GgufValueType.INT32:
        return v.getInt32(at, true);
      case GgufValueType.FLOAT32:
        return v.getFloat32(at, true);
      case GgufValueType.BOOL: {
        const b = v.getUint8(at);
        if (b > 1) this.fail(`${what} is a bool stored as ${b}`);
        return b === 1;
      }
      case GgufValueType.UINT64:
        return v.getBigUint64(at, true);
      case GgufValueType.INT64:
        return v.getBigInt64(at, true);
      case GgufValueType.FLOAT64:
        return v.getFloat64(at, true);
    }
    return this.fail(`${what} has unknown value type ${type}`);
  }
}

const typedArrayOf: Readonly<Record<number, { new (buf: ArrayBuffer): GgufValue }>> = {
  [GgufValueType.UINT8]: Uint8Array,
  [GgufValueType.INT8]: Int8Array,
  [GgufValueType.UINT16]: Uint16Array,
  [GgufValueType.INT16]: Int16Array,
  [GgufValueType.UINT32]: Uint32Array,
  [GgufValueType.INT32]: Int32Array,
  [GgufValueType.FLOAT32]: Float32Array,
  [GgufValueType.FLOAT64]: Float64Array,
  [GgufValueType.UINT64]: BigUint64Array,
  [GgufValueType.INT64]: BigInt64Array,
};

function readValue(r: HeaderReader, type: number, key: string, depth: number): GgufValue {
  if (type === GgufValueType.STRING) return r.string(`value of '${key}'`);
  if (type === GgufValueType.ARRAY) {
    if (depth >= limits.maxArrayDepth) r.fail(`'${key}' nests arrays deeper than ${limits.maxArrayDepth}`);
    const elemType = r.u32(`element type of '${key}'`);
    const count = r.size(`element count of '${key}'`);
    const elemBytes = scalarValueBytes[elemType];
    // Every element takes at least this many bytes, so a count the file cannot hold is caught
    // before anything is allocated for it.
    const minBytes = elemBytes ?? 8;
    if (elemBytes === undefined && elemType !== GgufValueType.STRING && elemType !== GgufValueType.ARRAY) {
      r.fail(`'${key}' is an array of unknown value type ${elemType}`);
    }
    if (count > r.remaining() / minBytes) {
      r.fail(`'${key}' claims ${count} elements, more than the ${r.remaining()} remaining bytes can hold`);
    }
    const typed = typedArrayOf[elemType];
    if (typed) {
      const raw = r.bytes(count * elemBytes, `elements of '${key}'`);
      // Copy into a fresh, aligned buffer: the file offset need not be aligned for the element size.
      return new typed(raw.slice().buffer);
    }
    if (elemType === GgufValueType.BOOL) {
      const raw = r.bytes(count, `elements of '${key}'`);
      const bad = raw.findIndex((b) => b > 1);
      if (bad >= 0) r.fail(`element ${bad} of '${key}' is a bool stored as ${raw[bad]}`);
      return Array.from(raw, (b) => b === 1);
    }
    if (elemType === GgufValueType.STRING) {
      const out: string[] = new Array(count);
      for (let i = 0; i < count; i++) out[i] = r.string(`element ${i} of '${key}'`);
      return out;
    }
    const out: GgufValue[] = new Array(count);
    for (let i = 0; i < count; i++) out[i] = readValue(r, GgufValueType.ARRAY, `${key}[${i}]`, depth + 1);
    return out;
  }
  if (scalarValueBytes[type] === undefined) r.fail(`metadata key '${key}' has unknown value type ${type}`);
  return r.scalar(type, `value of '${key}'`);
}

/**
 * Reads and validates the header of a GGUF file.
 *
 * @param path Path of the `.gguf` file.
 * @returns The metadata, the tensor infos (with absolute, bounds-checked offsets) and file facts.
 * @throws {SparrowError} `io` if the file cannot be read; `bad_model` for a wrong magic, an
 * unsupported version, a truncated header, absurd counts or dimensions, unknown tensor types, or
 * tensors past the end of the file.
 *
 * @example
 * ```ts ignore
 * import { readGguf } from "./gguf.ts";
 * const gguf = readGguf("model.gguf");
 * console.log(gguf.metadata.get("general.architecture"), gguf.tensors.size);
 * ```
 */
export function readGguf(path: string): GgufFile {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (e) {
    const code = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new SparrowError("io", `cannot open model file '${path}': ${code}`, { cause: e });
  }
  try {
    const fileSize = file.statSync().size;
    return parse(new HeaderReader(file, path, fileSize));
  } finally {
    file.close();
  }
}

function parse(r: HeaderReader): GgufFile {
  const magic = r.fileSize >= 4
    ? r.bytes(4, "magic")
    : r.fail(`file is ${r.fileSize} bytes, too short for a GGUF header`);
  const magicText = String.fromCharCode(...magic);
  // PowerInfer writes its predictor files as GGUF with the magic "PWRI" instead of "GGUF".
  if (magicText !== "GGUF" && magicText !== "PWRI") {
    const shown = Array.from(magic, (b) => b.toString(16).padStart(2, "0")).join(" ");
    r.fail(`not a GGUF file: magic is [${shown}], expected "GGUF" (or PowerInfer's "PWRI")`);
  }
  const version = r.u32("version");
  if (version !== 2 && version !== 3) {
    r.fail(`GGUF version ${version} is not supported (only versions 2 and 3)`);
  }
  const nTensors = r.size("tensor count");
  const nKv = r.size("metadata count");
  // Smallest possible entries: a key/value is 8 (key length) + 4 (type) + 1 bytes, a tensor info
  // 8 (name length) + 4 + 8 + 4 + 8 bytes.
  if (nKv > r.remaining() / 13) r.fail(`metadata count ${nKv} is more than the file can hold`);
  if (nTensors > r.remaining() / 32) r.fail(`tensor count ${nTensors} is more than the file can hold`);

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < nKv; i++) {
    const key = r.string(`metadata key ${i}`, limits.maxNameBytes * 4);
    if (metadata.has(key)) r.fail(`metadata key '${key}' appears twice`);
    const type = r.u32(`value type of '${key}'`);
    metadata.set(key, readValue(r, type, key, 0));
  }

  let alignment = defaultAlignment;
  const alignRaw = metadata.get("general.alignment");
  if (alignRaw !== undefined) {
    // The spec says u32, but writers also use other integer types; accept any integer that fits.
    const alignValue = typeof alignRaw === "bigint" && alignRaw <= BigInt(1 << 30) ? Number(alignRaw) : alignRaw;
    if (typeof alignValue !== "number" || !Number.isInteger(alignValue)) {
      r.fail(`general.alignment = ${String(alignRaw)} is not an integer`);
    }
    if (alignValue <= 0 || alignValue > 1 << 30 || (alignValue & (alignValue - 1)) !== 0) {
      r.fail(`general.alignment = ${alignValue} is not a power of two`);
    }
    alignment = alignValue;
  }

  interface RawInfo {
    name: string;
    dims: number[];
    type: number;
    relOffset: number;
  }
  const raw: RawInfo[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = r.string(`name of tensor ${i}`, limits.maxNameBytes);
    if (seen.has(name)) r.fail(`tensor '${name}' appears twice`);
    seen.add(name);
    const nDims = r.u32(`dimension count of tensor '${name}'`);
    if (nDims < 1 || nDims > limits.maxDims) {
      r.fail(`tensor '${name}' has ${nDims} dimensions (allowed 1 to ${limits.maxDims})`);
    }
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const n = r.size(`dimension ${d} of tensor '${name}'`);
      if (n === 0) r.fail(`tensor '${name}' has dimension ${d} = 0`);
      dims.push(n);
    }
    const type = r.u32(`type of tensor '${name}'`);
    const relOffset = r.size(`offset of tensor '${name}'`);
    raw.push({ name, dims, type, relOffset });
  }

  const dataOffset = Math.ceil(r.pos / alignment) * alignment;
  const tensors = new Map<string, GgufTensorInfo>();
  for (const t of raw) {
    const info = ggmlType(t.type);
    if (!info) r.fail(`tensor '${t.name}' has unknown type id ${t.type}`);
    let nElements = 1;
    for (const d of t.dims) {
      nElements *= d;
      if (nElements > Number.MAX_SAFE_INTEGER) {
        r.fail(`tensor '${t.name}' dimensions [${t.dims.join(", ")}] are absurd`);
      }
    }
    if (t.dims[0] % info.blockElems !== 0) {
      r.fail(
        `tensor '${t.name}' rows of ${
          t.dims[0]
        } elements are not a whole number of ${info.name} blocks of ${info.blockElems}`,
      );
    }
    const nBytes = (nElements / info.blockElems) * info.blockBytes;
    if (t.relOffset % alignment !== 0) {
      r.fail(`tensor '${t.name}' offset ${t.relOffset} is not a multiple of the alignment ${alignment}`);
    }
    const offset = dataOffset + t.relOffset;
    if (offset > r.fileSize || nBytes > r.fileSize - offset) {
      r.fail(
        `tensor '${t.name}' (${ggmlTypeName(t.type)} [${t.dims.join(", ")}]) spans bytes ${offset}..${
          offset + nBytes
        }, past the end of the file (${r.fileSize} bytes)`,
      );
    }
    tensors.set(t.name, { name: t.name, dims: t.dims, type: t.type, typeInfo: info, offset, nBytes, nElements });
  }
  return {
    path: r.path,
    version,
    magic: magicText as "GGUF" | "PWRI",
    fileSize: r.fileSize,
    alignment,
    metadata,
    tensors,
    dataOffset,
  };
}
