/**
 * GGUF writer (version 3): metadata with explicit value types, then tensor infos, then aligned tensor
 * data streamed from callbacks, so multi-gigabyte synthetic models are written without holding them
 * in memory. Used by the converters and generators in models/.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import { ggmlType, ggmlTypeName, GgufValueType } from "./gguf_types.ts";

/** A metadata value with the GGUF type it is written as. */
export type TypedValue =
  | { type: 0 | 1 | 2 | 3 | 4 | 5 | 6 | 12; value: number }
  | { type: 10 | 11; value: bigint }
  | { type: 7; value: boolean }
  | { type: 8; value: string }
  | {
    type: 9;
    elemType: number;
    value: ArrayLike<number> | readonly string[] | readonly boolean[] | ArrayLike<bigint>;
  };

/** Shorthands for {@link TypedValue}s. */
export const gv = {
  u32: (value: number): TypedValue => ({ type: GgufValueType.UINT32, value }),
  i32: (value: number): TypedValue => ({ type: GgufValueType.INT32, value }),
  f32: (value: number): TypedValue => ({ type: GgufValueType.FLOAT32, value }),
  bool: (value: boolean): TypedValue => ({ type: GgufValueType.BOOL, value }),
  str: (value: string): TypedValue => ({ type: GgufValueType.STRING, value }),
  u64: (value: bigint): TypedValue => ({ type: GgufValueType.UINT64, value }),
  strings: (value: readonly string[]): TypedValue => ({
    type: GgufValueType.ARRAY,
    elemType: GgufValueType.STRING,
    value,
  }),
  f32s: (value: ArrayLike<number>): TypedValue => ({
    type: GgufValueType.ARRAY,
    elemType: GgufValueType.FLOAT32,
    value,
  }),
  i32s: (value: ArrayLike<number>): TypedValue => ({ type: GgufValueType.ARRAY, elemType: GgufValueType.INT32, value }),
};

/** A tensor to write: its data as bytes, or a function that emits them in chunks, in order. */
export interface TensorToWrite {
  /** Tensor name (at most 63 bytes, as ggml allows). */
  name: string;
  /** Dimensions, fastest-varying first. */
  dims: readonly number[];
  /** GGML type id. */
  type: number;
  /** The data, or a producer called once that must emit exactly the tensor's byte size. */
  data: Uint8Array | ((emit: (chunk: Uint8Array) => void) => void);
}

/** Options for {@link writeGguf}. */
export interface WriteGgufOptions {
  /** Data alignment (default 32); written as `general.alignment` when not 32. */
  alignment?: number;
  /** Called after each tensor with (tensors done, total, bytes written). */
  onProgress?: (done: number, total: number, bytes: number) => void;
}

const encoder = new TextEncoder();

/** Growable little-endian byte buffer for the header. */
class HeaderBuffer {
  #bytes = new Uint8Array(1 << 16);
  #view = new DataView(this.#bytes.buffer);
  length = 0;

  #grow(n: number): void {
    if (this.length + n <= this.#bytes.length) return;
    let cap = this.#bytes.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.#bytes.subarray(0, this.length));
    this.#bytes = next;
    this.#view = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.#grow(1);
    this.#view.setUint8(this.length, v);
    this.length += 1;
  }
  u32(v: number): void {
    this.#grow(4);
    this.#view.setUint32(this.length, v, true);
    this.length += 4;
  }
  u64(v: number | bigint): void {
    this.#grow(8);
    this.#view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  scalar(type: number, v: number | bigint | boolean): void {
    this.#grow(8);
    const at = this.length;
    const view = this.#view;
    switch (type) {
      case GgufValueType.UINT8:
        view.setUint8(at, v as number);
        this.length += 1;
        return;
      case GgufValueType.INT8:
        view.setInt8(at, v as number);
        this.length += 1;
        return;
      case GgufValueType.UINT16:
        view.setUint16(at, v as number, true);
        this.length += 2;
        return;
      case GgufValueType.INT16:
        view.setInt16(at, v as number, true);
        this.length += 2;
        return;
      case GgufValueType.UINT32:
        view.setUint32(at, v as number, true);
        this.length += 4;
        return;
      case GgufValueType.INT32:
        view.setInt32(at, v as number, true);
        this.length += 4;
        return;
      case GgufValueType.FLOAT32:
        view.setFloat32(at, v as number, true);
        this.length += 4;
        return;
      case GgufValueType.BOOL:
        view.setUint8(at, v ? 1 : 0);
        this.length += 1;
        return;
      case GgufValueType.UINT64:
        view.setBigUint64(at, BigInt(v as bigint), true);
        this.length += 8;
        return;
      case GgufValueType.INT64:
        view.setBigInt64(at, BigInt(v as bigint), true);
        this.length += 8;
        return;
      case GgufValueType.FLOAT64:
        view.setFloat64(at, v as number, true);
        this.length += 8;
        return;
    }
    throw new SparrowError("invalid_argument", `cannot write GGUF value type ${type} as a scalar`);
  }
  string(s: string): void {
    const b = encoder.encode(s);
    this.u64(b.length);
    this.#grow(b.length);
    this.#bytes.set(b, this.length);
    this.length += b.length;
  }
  bytes(): Uint8Array {
    return this.#bytes.subarray(0, this.length);
  }
}

function writeValue(h: HeaderBuffer, v: TypedValue): void {
  if (v.type === GgufValueType.STRING) return h.string(v.value);
  if (v.type === GgufValueType.ARRAY) {
    h.u32(v.elemType);
    h.u64(v.value.length);
    for (let i = 0; i < v.value.length; i++) {
      const e = (v.value as ArrayLike<unknown>)[i];
      if (v.elemType === GgufValueType.STRING) h.string(e as string);
      else h.scalar(v.elemType, e as number | bigint | boolean);
    }
    return;
  }
  h.scalar(v.type, v.value);
}

/** Bytes a tensor's data takes. */
export function tensorDataBytes(t: Pick<TensorToWrite, "name" | "dims" | "type">): number {
  const info = ggmlType(t.type);
  if (!info) throw new SparrowError("invalid_argument", `tensor '${t.name}': unknown type id ${t.type}`);
  if (t.dims[0] % info.blockElems !== 0) {
    throw new SparrowError(
      "invalid_argument",
      `tensor '${t.name}': rows of ${t.dims[0]} are not a whole number of ${ggmlTypeName(t.type)} blocks`,
    );
  }
  const n = t.dims.reduce((a, b) => a * b, 1);
  return (n / info.blockElems) * info.blockBytes;
}

/**
 * Writes a GGUF v3 file.
 *
 * @param path Output path (overwritten).
 * @param metadata Key/value pairs, written in this order.
 * @param tensors Tensors, written in this order.
 * @param options Alignment and a progress callback.
 * @returns Total bytes written.
 *
 * @example
 * ```ts ignore
 * import { gv, writeGguf } from "./gguf_writer.ts";
 * writeGguf("tiny.gguf", [["general.architecture", gv.str("llama")]], [
 *   { name: "w", dims: [4], type: 0, data: new Uint8Array(16) },
 * ]);
 * ```
 */
export function writeGguf(
  path: string,
  metadata: ReadonlyArray<readonly [string, TypedValue]>,
  tensors: readonly TensorToWrite[],
  options: WriteGgufOptions = {},
): number {
  // A `general.alignment` in the metadata is what readers will use, so it decides the padding.
  const declared = metadata.find(([k]) => k === "general.alignment")?.[1];
  const declaredValue = declared && "value" in declared && typeof declared.value !== "string"
    ? Number(declared.value)
    : undefined;
  if (declaredValue !== undefined && options.alignment !== undefined && declaredValue !== options.alignment) {
    throw new SparrowError(
      "invalid_argument",
      `general.alignment = ${declaredValue} in the metadata contradicts the alignment option ${options.alignment}`,
    );
  }
  const alignment = declaredValue ?? options.alignment ?? 32;
  if (!Number.isInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0) {
    throw new SparrowError("invalid_argument", `alignment ${alignment} is not a power of two`);
  }
  const h = new HeaderBuffer();
  const kv = alignment === 32 || declared ? metadata : [...metadata, ["general.alignment", gv.u32(alignment)] as const];
  h.u8(0x47), h.u8(0x47), h.u8(0x55), h.u8(0x46); // "GGUF"
  h.u32(3);
  h.u64(tensors.length);
  h.u64(kv.length);
  for (const [key, value] of kv) {
    h.string(key);
    h.u32(value.type);
    writeValue(h, value);
  }
  let rel = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    const n = tensorDataBytes(t);
    sizes.push(n);
    h.string(t.name);
    h.u32(t.dims.length);
    for (const d of t.dims) h.u64(d);
    h.u32(t.type);
    h.u64(rel);
    rel += Math.ceil(n / alignment) * alignment;
  }
  const file = Deno.openSync(path, { write: true, create: true, truncate: true });
  let written = 0;
  const put = (b: Uint8Array) => {
    let off = 0;
    while (off < b.length) off += file.writeSync(b.subarray(off));
    written += b.length;
  };
  const pad = (to: number) => {
    const n = (alignment - (written % to)) % to;
    if (n > 0) put(new Uint8Array(n));
  };
  try {
    put(h.bytes());
    pad(alignment);
    tensors.forEach((t, i) => {
      const start = written;
      if (t.data instanceof Uint8Array) put(t.data);
      else t.data(put);
      if (written - start !== sizes[i]) {
        throw new SparrowError(
          "invalid_argument",
          `tensor '${t.name}': producer wrote ${written - start} bytes, expected ${sizes[i]}`,
        );
      }
      if (i < tensors.length - 1) pad(alignment);
      options.onProgress?.(i + 1, tensors.length, written);
    });
  } finally {
    file.close();
  }
  return written;
}
