/**
 * Pieces shared by the SentencePiece-style and byte-level BPE tokenizers: token type codes, the
 * priority-queue merge loop, the special-token splitter and small byte helpers.
 *
 * @module
 */

/**
 * GGUF `tokenizer.ggml.token_type` codes (the values llama.cpp writes).
 *
 * @example
 * ```ts
 * import { TokenType } from "./tokenizer_common.ts";
 * const isByte = (t: number) => t === TokenType.byte;
 * ```
 */
export const TokenType = {
  normal: 1,
  unknown: 2,
  control: 3,
  userDefined: 4,
  unused: 5,
  byte: 6,
} as const;

/** What a pair lookup reports for two adjacent symbols that may merge. */
export interface PairMerge {
  /** Id of the merged symbol. */
  id: number;
  /** Lower merges first; equal priorities merge leftmost first. */
  priority: number;
}

/**
 * Says whether two adjacent symbols merge. Writes into `out` (reused, so the hot loop allocates
 * nothing) and returns true when they do.
 */
export type PairLookup = (left: number, right: number, out: PairMerge) => boolean;

interface HeapEntry {
  priority: number;
  left: number;
  right: number;
  id: number;
  leftVersion: number;
  rightVersion: number;
}

/** Min-heap on (priority, left position): the order both merge rules need. */
class PairHeap {
  private readonly items: HeapEntry[] = [];

  get size(): number {
    return this.items.length;
  }

  private static before(a: HeapEntry, b: HeapEntry): boolean {
    return a.priority < b.priority || (a.priority === b.priority && a.left < b.left);
  }

  push(e: HeapEntry): void {
    const items = this.items;
    let i = items.length;
    items.push(e);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!PairHeap.before(e, items[parent])) break;
      items[i] = items[parent];
      i = parent;
    }
    items[i] = e;
  }

  pop(): HeapEntry {
    const items = this.items;
    const top = items[0];
    const last = items.pop()!;
    const n = items.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        const c = r < n && PairHeap.before(items[r], items[l]) ? r : l;
        if (!PairHeap.before(items[c], last)) break;
        items[i] = items[c];
        i = c;
      }
      items[i] = last;
    }
    return top;
  }
}

/**
 * Repeatedly merges the adjacent pair with the lowest priority (the leftmost one on ties) until no
 * adjacent pair merges. This is the classic "scan all pairs, merge the best" loop done in
 * O(n log n) with a heap over a linked list: stale heap entries are recognised by version stamps
 * that change whenever a symbol is merged into or removed.
 *
 * @param ids Initial symbol ids.
 * @param lookup Says whether (and into what, at which priority) two adjacent symbols merge.
 * @returns The symbol ids after all merges.
 * @example
 * ```ts
 * import { mergeAdjacent } from "./tokenizer_common.ts";
 * // 0 "a", 1 "b", 2 "ab": merge a+b into ab
 * const out = mergeAdjacent([0, 1, 0], (l, r, o) => {
 *   if (l !== 0 || r !== 1) return false;
 *   o.id = 2;
 *   o.priority = 0;
 *   return true;
 * }); // [2, 0]
 * ```
 */
export function mergeAdjacent(ids: readonly number[], lookup: PairLookup): number[] {
  const n = ids.length;
  if (n < 2) return ids.slice();
  const sym = Int32Array.from(ids);
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  const version = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = i + 1; // n means "no next"
    prev[i] = i - 1;
  }
  const heap = new PairHeap();
  const out: PairMerge = { id: 0, priority: 0 };
  const consider = (left: number): void => {
    const right = next[left];
    if (right >= n || !lookup(sym[left], sym[right], out)) return;
    heap.push({
      priority: out.priority,
      left,
      right,
      id: out.id,
      leftVersion: version[left],
      rightVersion: version[right],
    });
  };
  for (let i = 0; i + 1 < n; i++) consider(i);
  while (heap.size > 0) {
    const e = heap.pop();
    if (
      version[e.left] !== e.leftVersion || version[e.right] !== e.rightVersion || next[e.left] !== e.right
    ) continue;
    sym[e.left] = e.id;
    version[e.left]++;
    version[e.right]++;
    const after = next[e.right];
    next[e.left] = after;
    if (after < n) prev[after] = e.left;
    next[e.right] = -1; // removed: never reached by the walk below
    if (prev[e.left] >= 0) consider(prev[e.left]);
    consider(e.left);
  }
  const result: number[] = [];
  // Symbol 0 is never removed (only right-hand symbols are), so the walk starts there.
  for (let i = 0; i < n; i = next[i]) result.push(sym[i]);
  return result;
}

/**
 * Splits text around special tokens (leftmost match, longest token first at a position), so they
 * become single ids instead of being tokenized as text.
 *
 * @example
 * ```ts
 * import { SpecialSplitter } from "./tokenizer_common.ts";
 * const s = new SpecialSplitter([["<|im_end|>", 2]]);
 * s.split("hi<|im_end|>"); // ["hi", 2]
 * ```
 */
export class SpecialSplitter {
  /** Candidate tokens by their first UTF-16 code unit, longest first. */
  private readonly byFirst = new Map<number, { text: string; id: number }[]>();

  /**
   * Indexes the special tokens by their first character.
   *
   * @param entries Special token texts and their ids; empty texts are ignored.
   */
  constructor(entries: Iterable<readonly [string, number]>) {
    for (const [text, id] of entries) {
      if (text.length === 0) continue;
      const key = text.charCodeAt(0);
      let list = this.byFirst.get(key);
      if (!list) this.byFirst.set(key, list = []);
      list.push({ text, id });
    }
    for (const list of this.byFirst.values()) list.sort((a, b) => b.text.length - a.text.length);
  }

  /** True when there are no special tokens to look for. */
  get empty(): boolean {
    return this.byFirst.size === 0;
  }

  /**
   * Cuts text into plain fragments and special token ids.
   *
   * @param text Text that may contain special tokens.
   * @returns Text fragments (non-empty strings) and special token ids, in order.
   * @example
   * ```ts
   * import { SpecialSplitter } from "./tokenizer_common.ts";
   * new SpecialSplitter([["<s>", 1]]).split("<s>a"); // [1, "a"]
   * ```
   */
  split(text: string): (string | number)[] {
    if (this.byFirst.size === 0) return text.length > 0 ? [text] : [];
    const out: (string | number)[] = [];
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const list = this.byFirst.get(text.charCodeAt(i));
      if (!list) continue;
      const hit = list.find((c) => text.startsWith(c.text, i));
      if (!hit) continue;
      if (i > start) out.push(text.slice(start, i));
      out.push(hit.id);
      i += hit.text.length - 1;
      start = i + 1;
    }
    if (start < text.length) out.push(text.slice(start));
    return out;
  }
}

/**
 * Shared UTF-8 encoder.
 *
 * @example
 * ```ts
 * import { utf8Encoder } from "./tokenizer_common.ts";
 * utf8Encoder.encode("é"); // Uint8Array [0xc3, 0xa9]
 * ```
 */
export const utf8Encoder: TextEncoder = new TextEncoder();

/**
 * An empty byte array, shared because it is never written.
 *
 * @example
 * ```ts
 * import { noBytes } from "./tokenizer_common.ts";
 * noBytes.length; // 0
 * ```
 */
export const noBytes: Uint8Array = new Uint8Array(0);

/**
 * Joins byte arrays.
 *
 * @param parts The arrays, in order.
 * @returns One array holding all bytes.
 * @example
 * ```ts
 * import { concatBytes } from "./tokenizer_common.ts";
 * concatBytes([new Uint8Array([1]), new Uint8Array([2, 3])]); // Uint8Array [1, 2, 3]
 * ```
 */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Texts of the tokens that usually end a chat turn; tokenizers look them up to fill `stopIds`.
 * Only control (and, for BPE, user-defined) tokens count, so ordinary text never stops generation.
 *
 * @example
 * ```ts
 * import { endOfTurnTexts } from "./tokenizer_common.ts";
 * endOfTurnTexts.includes("<|im_end|>"); // true
 * ```
 */
export const endOfTurnTexts: readonly string[] = [
  "<|im_end|>",
  "<|endoftext|>",
  "<|eot_id|>",
  "<|end_of_text|>",
  "<|eom_id|>",
  "<end_of_turn>",
  "<|end|>",
];
