/**
 * SentencePiece-style BPE tokenizer (GGUF `tokenizer.ggml.model = "llama"`), matching llama2.c's
 * encoder token for token.
 *
 * Encoding: spaces become "▁" (U+2581); a dummy-prefix space is added to non-empty text when
 * `addSpacePrefix` is set (again after every special token, as llama.cpp does); each code point is
 * looked up in the vocabulary, unknown ones fall back to their UTF-8 bytes as `<0xXX>` tokens; then
 * the adjacent pair whose concatenation is a token with the highest score is merged (leftmost on
 * ties, and only scores above -1e10 count, as in llama2.c) until no pair merges.
 *
 * Decoding: byte tokens give their byte, "▁" gives a space, control, unknown and unused tokens give
 * nothing unless `special` is set (then their text). **Leading-space rule**: the piece right after BOS loses one leading space
 * (it is the dummy prefix) when `addSpacePrefix` is set. `tokenBytes` applies it when told the
 * previous token (`{ previous }`), `decode` applies it inside the sequence it is given.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import type { DecodeOptions, EncodeOptions, TokenBytesOptions, Tokenizer } from "./tokenizer.ts";
import {
  concatBytes,
  endOfTurnTexts,
  mergeAdjacent,
  noBytes,
  type PairMerge,
  SpecialSplitter,
  TokenType,
  utf8Encoder,
} from "./tokenizer_common.ts";

/** Everything a {@link SpmTokenizer} needs; the factory in tokenizer.ts builds it from GGUF metadata. */
export interface SpmSpec {
  /** Vocabulary strings as stored (spaces as "▁", bytes as "<0xXX>"). */
  readonly tokens: readonly string[];
  /** Merge score per token; higher merges first. */
  readonly scores: ArrayLike<number>;
  /** GGUF token types per token ({@link TokenType}); derived from the texts when absent. */
  readonly types?: ArrayLike<number>;
  /** Beginning-of-sequence id. */
  readonly bosId?: number;
  /** End-of-sequence id. */
  readonly eosId?: number;
  /** Unknown-token id, used when a byte has no `<0xXX>` token. */
  readonly unkId?: number;
  /** Whether `encode` prepends BOS by default. */
  readonly addBos: boolean;
  /** Whether to add the dummy-prefix space (SentencePiece `add_dummy_prefix`). */
  readonly addSpacePrefix: boolean;
  /** More ids that end generation (e.g. an end-of-turn token). */
  readonly extraStopIds?: readonly number[];
  /** Where the vocabulary came from, for error messages. */
  readonly source: string;
  /** Warnings gathered while reading the metadata. */
  readonly warnings?: readonly string[];
}

const spaceMark = "\u2581";
const bytePiece = /^<0x([0-9A-Fa-f]{2})>$/;

/**
 * Token type per id: the given types, or (without them) byte pieces as bytes, unk as unknown,
 * BOS/EOS as control and everything else as normal.
 */
function resolveTypes(spec: SpmSpec): Int32Array {
  const n = spec.tokens.length;
  const types = new Int32Array(n);
  if (spec.types) {
    if (spec.types.length !== n) {
      throw new SparrowError(
        "bad_model",
        `${spec.source}: token_type has ${spec.types.length} entries but there are ${n} tokens`,
      );
    }
    for (let i = 0; i < n; i++) types[i] = spec.types[i];
    return types;
  }
  for (let i = 0; i < n; i++) types[i] = bytePiece.test(spec.tokens[i]) ? TokenType.byte : TokenType.normal;
  if (spec.unkId !== undefined) types[spec.unkId] = TokenType.unknown;
  if (spec.bosId !== undefined) types[spec.bosId] = TokenType.control;
  if (spec.eosId !== undefined) types[spec.eosId] = TokenType.control;
  return types;
}

/**
 * SentencePiece-style BPE tokenizer that reproduces llama2.c's `bpe_encode` exactly.
 *
 * @example
 * ```ts
 * import { SpmTokenizer } from "./tokenizer_spm.ts";
 * const tok = new SpmTokenizer({
 *   tokens: ["<unk>", "<s>", "</s>", "▁", "a", "▁a"],
 *   scores: [0, 0, 0, -1, -2, -3],
 *   bosId: 1, eosId: 2, unkId: 0, addBos: true, addSpacePrefix: true, source: "example",
 * });
 * tok.encode("a"); // [1, 5]
 * tok.decode([1, 5]); // "a"
 * ```
 */
export class SpmTokenizer implements Tokenizer {
  /** Always "spm". */
  readonly kind = "spm" as const;
  /** Number of tokens. */
  readonly vocabSize: number;
  /** Beginning-of-sequence id. */
  readonly bosId: number | undefined;
  /** End-of-sequence id. */
  readonly eosId: number | undefined;
  /** Ids that end generation. */
  readonly stopIds: ReadonlySet<number>;
  /** Whether `encode` prepends BOS by default. */
  readonly addBos: boolean;
  /** Whether a dummy-prefix space is added (and stripped again after BOS when decoding). */
  readonly addSpacePrefix: boolean;
  /** Problems found in the metadata that did not stop loading. */
  readonly warnings: string[];

  private readonly tokens: readonly string[];
  private readonly scores: Float64Array;
  private readonly types: Int32Array;
  private readonly unkId: number | undefined;
  private readonly source: string;
  /** Vocabulary string → id; the lowest id wins for duplicates. */
  private readonly ids = new Map<string, number>();
  /** Byte value → id of its `<0xXX>` token, or -1. */
  private readonly byteIds = new Int32Array(256).fill(-1);
  /** Byte value per id for byte tokens, else -1. */
  private readonly byteOf: Int16Array;
  private readonly specialAlways: SpecialSplitter;
  private readonly specialParsed: SpecialSplitter;
  private readonly pieceCache: (Uint8Array | undefined)[];

  /**
   * Builds the lookup tables.
   *
   * @param spec Vocabulary, scores, types and special ids.
   */
  constructor(spec: SpmSpec) {
    const n = spec.tokens.length;
    if (spec.scores.length !== n) {
      throw new SparrowError("bad_model", `${spec.source}: ${spec.scores.length} scores for ${n} tokens`);
    }
    this.vocabSize = n;
    this.tokens = spec.tokens;
    this.scores = Float64Array.from(spec.scores);
    this.bosId = spec.bosId;
    this.eosId = spec.eosId;
    this.unkId = spec.unkId;
    this.addBos = spec.addBos;
    this.addSpacePrefix = spec.addSpacePrefix;
    this.source = spec.source;
    this.warnings = [...(spec.warnings ?? [])];
    this.types = resolveTypes(spec);
    this.byteOf = new Int16Array(n).fill(-1);
    this.pieceCache = new Array(n);
    const always: [string, number][] = [];
    const parsed: [string, number][] = [];
    for (let i = 0; i < n; i++) {
      const text = spec.tokens[i];
      if (!this.ids.has(text)) this.ids.set(text, i);
      const type = this.types[i];
      if (type === TokenType.byte) {
        const m = bytePiece.exec(text);
        if (!m) throw new SparrowError("bad_model", `${spec.source}: byte token ${i} has text ${JSON.stringify(text)}`);
        const b = parseInt(m[1], 16);
        this.byteOf[i] = b;
        if (this.byteIds[b] < 0) this.byteIds[b] = i;
      } else if (type === TokenType.control) {
        parsed.push([text, i]);
      } else if (type === TokenType.userDefined) {
        always.push([text, i]);
        parsed.push([text, i]);
      }
    }
    this.specialAlways = new SpecialSplitter(always);
    this.specialParsed = new SpecialSplitter(parsed);
    const stops = new Set<number>(spec.extraStopIds ?? []);
    if (spec.eosId !== undefined) stops.add(spec.eosId);
    for (const t of endOfTurnTexts) {
      const id = this.ids.get(t);
      if (id !== undefined && this.types[id] === TokenType.control) stops.add(id);
    }
    this.stopIds = stops;
  }

  /**
   * Encodes text. User-defined tokens are always matched as single tokens; control tokens
   * (e.g. `<s>`) only with `parseSpecial`.
   *
   * @param text Text to encode.
   * @param options `addBos` (default: the model's setting), `parseSpecial` (default false).
   * @returns Token ids.
   * @example
   * ```ts
   * // tok from the class example
   * // tok.encode("a a", { addBos: false }) → [5, 5]
   * ```
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const out: number[] = [];
    if ((options.addBos ?? this.addBos) && this.bosId !== undefined) out.push(this.bosId);
    const splitter = options.parseSpecial ? this.specialParsed : this.specialAlways;
    let afterSpecial = true; // the text start counts as "after a special token" for the prefix
    for (const part of splitter.split(text)) {
      if (typeof part === "number") {
        out.push(part);
        afterSpecial = true;
        continue;
      }
      const withPrefix = this.addSpacePrefix && afterSpecial ? " " + part : part;
      for (const id of this.encodeFragment(withPrefix)) out.push(id);
      afterSpecial = false;
    }
    return out;
  }

  /** Code-point lookup with byte fallback, then llama2.c's merge-by-score. */
  private encodeFragment(text: string): number[] {
    const symbols: number[] = [];
    for (const ch of text.replaceAll(" ", spaceMark)) {
      const id = this.ids.get(ch);
      if (id !== undefined) {
        symbols.push(id);
        continue;
      }
      for (const b of utf8Encoder.encode(ch)) {
        const byteId = this.byteIds[b];
        if (byteId >= 0) symbols.push(byteId);
        else if (this.unkId !== undefined) symbols.push(this.unkId);
        else {
          throw new SparrowError(
            "invalid_argument",
            `${this.source}: cannot encode U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}: no <0x${
              b.toString(16).toUpperCase().padStart(2, "0")
            }> token and no unknown token`,
          );
        }
      }
    }
    return mergeAdjacent(symbols, (l, r, out: PairMerge) => {
      const id = this.ids.get(this.tokens[l] + this.tokens[r]);
      if (id === undefined) return false;
      const score = this.scores[id];
      // llama2.c starts its search at best = -1e10 and needs a strictly greater score.
      if (!(score > -1e10)) return false;
      out.id = id;
      out.priority = -score;
      return true;
    });
  }

  /**
   * UTF-8 bytes a token adds to the output.
   *
   * @param id Token id.
   * @param options `special`: also render control/unknown tokens as their text; `previous`: the
   *   token before this one, so the space after BOS can be dropped.
   * @returns The bytes (do not modify: they may be shared).
   * @example
   * ```ts
   * // tok from the class example: "▁a" after BOS is "a", elsewhere " a"
   * // tok.tokenBytes(5, { previous: 1 }) → [0x61]; tok.tokenBytes(5) → [0x20, 0x61]
   * ```
   */
  tokenBytes(id: number, options: TokenBytesOptions = {}): Uint8Array {
    this.checkId(id);
    const type = this.types[id];
    if (type === TokenType.byte) return Uint8Array.of(this.byteOf[id]);
    if (type === TokenType.control || type === TokenType.unknown || type === TokenType.unused) {
      return options.special ? utf8Encoder.encode(this.tokens[id]) : noBytes;
    }
    let bytes = this.pieceCache[id];
    if (!bytes) this.pieceCache[id] = bytes = utf8Encoder.encode(this.tokens[id].replaceAll(spaceMark, " "));
    if (
      this.addSpacePrefix && options.previous !== undefined && options.previous === this.bosId &&
      bytes[0] === 0x20
    ) return bytes.subarray(1);
    return bytes;
  }

  /**
   * Decodes ids to text, dropping the dummy-prefix space of the piece right after a BOS.
   *
   * @param ids Token ids.
   * @param options `special`: include control tokens' text.
   * @returns The text (invalid UTF-8 becomes U+FFFD).
   * @example
   * ```ts
   * // tok from the class example
   * // tok.decode([1, 5, 5]) → "a a"
   * ```
   */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const parts: Uint8Array[] = [];
    for (let i = 0; i < ids.length; i++) {
      parts.push(this.tokenBytes(ids[i], { special: options.special, previous: i > 0 ? ids[i - 1] : undefined }));
    }
    return new TextDecoder().decode(concatBytes(parts));
  }

  /**
   * The vocabulary entry of a token.
   *
   * @param id Token id.
   * @returns The vocabulary string as stored (with "▁").
   * @example
   * ```ts
   * // tok.tokenText(5) → "▁a"
   * ```
   */
  tokenText(id: number): string {
    this.checkId(id);
    return this.tokens[id];
  }

  /** Throws `invalid_argument` for an id outside the vocabulary. */
  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new SparrowError("invalid_argument", `token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    }
  }
}
