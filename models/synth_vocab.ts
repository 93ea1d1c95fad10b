/**
 * A generated SentencePiece-style vocabulary for synthetic models: valid, distinct pieces of any
 * count, so a synthetic model of any vocabulary size loads with a real tokenizer.
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";

/**
 * A SentencePiece-style vocabulary of `size` tokens: 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3..258 the byte
 * tokens `<0x00>`..`<0xFF>`, then pieces built breadth-first from "▁" and common characters, so every
 * longer piece is a shorter piece plus one character and the SPM merges can reach it.
 *
 * @param size Token count, at least 259.
 * @returns Token texts, scores (higher merges first) and GGUF token types.
 * @throws {SparrowError} `invalid_argument` when `size` is below 259.
 * @example
 * ```ts
 * import { generatedVocab } from "./synth_vocab.ts";
 * const v = generatedVocab(300);
 * v.tokens[3]; // "<0x00>"
 * ```
 */
export function generatedVocab(size: number): { tokens: string[]; scores: Float32Array; types: Int32Array } {
  if (!Number.isInteger(size) || size < 259) {
    throw new SparrowError("invalid_argument", `vocabulary size ${size} is too small: 259 ids are reserved`);
  }
  const tokens = ["<unk>", "<s>", "</s>"];
  for (let b = 0; b < 256; b++) tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  const chars = [..."etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ0123456789.,!?'-"];
  // Breadth-first: a piece's children are queued only while more pieces are still needed.
  const queue = ["\u2581", ...chars];
  for (let i = 0; tokens.length < size; i++) {
    const piece = queue[i];
    tokens.push(piece);
    if (queue.length < size) { for (const c of chars) queue.push(piece + c); }
  }
  const scores = Float32Array.from(tokens, (_, i) => (i < 259 ? 0 : -(i - 259)));
  const types = Int32Array.from(tokens, (_, i) => (i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1));
  return { tokens, scores, types };
}
