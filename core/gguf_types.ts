/**
 * GGUF value types and GGML tensor types: ids, names and block geometry, as the file format fixes
 * them. The Zig kernels keep their own table of the types they compute with; a test checks both agree.
 *
 * @module
 */

/** GGUF metadata value types. */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

/** A GGUF metadata value type id. */
export type GgufValueType = typeof GgufValueType[keyof typeof GgufValueType];

/** Bytes of each fixed-size scalar value type (strings and arrays are variable). */
export const scalarValueBytes: Readonly<Record<number, number>> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  10: 8,
  11: 8,
  12: 8,
};

/** Geometry of one GGML tensor type. */
export interface GgmlTypeInfo {
  /** Type id as stored in GGUF. */
  readonly id: number;
  /** Name as llama.cpp prints it, e.g. `Q4_0`. */
  readonly name: string;
  /** Elements per block. */
  readonly blockElems: number;
  /** Bytes per block. */
  readonly blockBytes: number;
}

const table: GgmlTypeInfo[] = [
  { id: 0, name: "F32", blockElems: 1, blockBytes: 4 },
  { id: 1, name: "F16", blockElems: 1, blockBytes: 2 },
  { id: 2, name: "Q4_0", blockElems: 32, blockBytes: 18 },
  { id: 3, name: "Q4_1", blockElems: 32, blockBytes: 20 },
  { id: 6, name: "Q5_0", blockElems: 32, blockBytes: 22 },
  { id: 7, name: "Q5_1", blockElems: 32, blockBytes: 24 },
  { id: 8, name: "Q8_0", blockElems: 32, blockBytes: 34 },
  { id: 9, name: "Q8_1", blockElems: 32, blockBytes: 36 },
  { id: 10, name: "Q2_K", blockElems: 256, blockBytes: 84 },
  { id: 11, name: "Q3_K", blockElems: 256, blockBytes: 110 },
  { id: 12, name: "Q4_K", blockElems: 256, blockBytes: 144 },
  { id: 13, name: "Q5_K", blockElems: 256, blockBytes: 176 },
  { id: 14, name: "Q6_K", blockElems: 256, blockBytes: 210 },
  { id: 15, name: "Q8_K", blockElems: 256, blockBytes: 292 },
  { id: 16, name: "IQ2_XXS", blockElems: 256, blockBytes: 66 },
  { id: 17, name: "IQ2_XS", blockElems: 256, blockBytes: 74 },
  { id: 18, name: "IQ3_XXS", blockElems: 256, blockBytes: 98 },
  { id: 19, name: "IQ1_S", blockElems: 256, blockBytes: 50 },
  { id: 20, name: "IQ4_NL", blockElems: 32, blockBytes: 18 },
  { id: 21, name: "IQ3_S", blockElems: 256, blockBytes: 110 },
  { id: 22, name: "IQ2_S", blockElems: 256, blockBytes: 82 },
  { id: 23, name: "IQ4_XS", blockElems: 256, blockBytes: 136 },
  { id: 24, name: "I8", blockElems: 1, blockBytes: 1 },
  { id: 25, name: "I16", blockElems: 1, blockBytes: 2 },
  { id: 26, name: "I32", blockElems: 1, blockBytes: 4 },
  { id: 27, name: "I64", blockElems: 1, blockBytes: 8 },
  { id: 28, name: "F64", blockElems: 1, blockBytes: 8 },
  { id: 29, name: "IQ1_M", blockElems: 256, blockBytes: 56 },
  { id: 30, name: "BF16", blockElems: 1, blockBytes: 2 },
  { id: 34, name: "TQ1_0", blockElems: 256, blockBytes: 54 },
  { id: 35, name: "TQ2_0", blockElems: 256, blockBytes: 66 },
  { id: 39, name: "MXFP4", blockElems: 32, blockBytes: 17 },
];

const byId = new Map(table.map((t) => [t.id, t]));
const byName = new Map(table.map((t) => [t.name, t]));

/** Every GGML type this table knows. */
export const ggmlTypes: readonly GgmlTypeInfo[] = table;

/**
 * Looks up a GGML type by id.
 *
 * @param id Type id as stored in a GGUF tensor info.
 * @returns The type's geometry, or undefined for an id no known GGML version uses.
 */
export function ggmlType(id: number): GgmlTypeInfo | undefined {
  return byId.get(id);
}

/**
 * Looks up a GGML type by its name (case-insensitive), e.g. "q4_0".
 *
 * @param name Type name.
 * @returns The type's geometry, or undefined.
 */
export function ggmlTypeByName(name: string): GgmlTypeInfo | undefined {
  return byName.get(name.toUpperCase());
}

/** Human name of a type id, also for unknown ids (`type 77`). */
export function ggmlTypeName(id: number): string {
  return byId.get(id)?.name ?? `type ${id}`;
}

/**
 * Bytes a tensor of `elems` elements of type `info` takes, when `rowElems` (its first dimension) is
 * a whole number of blocks; otherwise undefined.
 */
export function tensorBytes(info: GgmlTypeInfo, rowElems: number, elems: number): number | undefined {
  if (rowElems % info.blockElems !== 0) return undefined;
  return (elems / info.blockElems) * info.blockBytes;
}
