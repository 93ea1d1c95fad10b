/**
 * GPT-2 style byte-level BPE tokenizer (GGUF `tokenizer.ggml.model = "gpt2"`, or a Hugging Face
 * tokenizer.json with a ByteLevel BPE model).
 *
 * Encoding: special tokens are split out first, the rest is cut into words by the pre-tokenizer
 * named by `tokenizer.ggml.pre`, each word's UTF-8 bytes are mapped to GPT-2's printable byte
 * alphabet, and adjacent pairs merge by rank (lowest first, leftmost on ties), as Hugging Face
 * `tokenizers` does. Results are cached per word.
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

/** Everything a {@link BpeTokenizer} needs. */
export interface BpeSpec {
  /** Vocabulary strings in GPT-2's byte alphabet (e.g. "Ġthe"); special tokens as plain text. */
  readonly tokens: readonly string[];
  /** GGUF token types per token ({@link TokenType}); all normal when absent. */
  readonly types?: ArrayLike<number>;
  /** Merges in rank order, each "left right" or a [left, right] pair. */
  readonly merges: readonly (string | readonly [string, string])[];
  /** Pre-tokenizer name (`tokenizer.ggml.pre`): "smollm", "gpt2"/"default", "llama3"/"llama-bpe". */
  readonly pre: string;
  /** Beginning-of-sequence id. */
  readonly bosId?: number;
  /** End-of-sequence id. */
  readonly eosId?: number;
  /** Whether `encode` prepends BOS by default. */
  readonly addBos: boolean;
  /** More ids that end generation. */
  readonly extraStopIds?: readonly number[];
  /** Where the vocabulary came from, for error messages. */
  readonly source: string;
  /** Warnings gathered while reading the metadata. */
  readonly warnings?: readonly string[];
}

/**
 * GPT-2's byte → printable character table: printable Latin-1 bytes map to themselves, the other
 * 68 bytes to U+0100 onward, in byte order.
 */
function byteAlphabet(): { toChar: string[]; toByte: Map<string, number> } {
  const toChar: string[] = new Array(256);
  const toByte = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    const ch = String.fromCodePoint(printable ? b : 0x100 + extra++);
    toChar[b] = ch;
    toByte.set(ch, b);
  }
  return { toChar, toByte };
}

const alphabet = byteAlphabet();

// Hugging Face's regexes use Oniguruma, whose \s is Unicode White_Space (JS \s differs: it has
// U+FEFF and lacks U+0085), so whitespace is spelled out as \p{White_Space}.
const ws = String.raw`\p{White_Space}`;
const notWs = String.raw`\P{White_Space}`;
const gpt2Pattern = String
  .raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^${ws}\p{L}\p{N}]+|${ws}+(?!${notWs})|${ws}+`;
const llama3Pattern = String
  .raw`'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^${ws}\p{L}\p{N}]+[\r\n]*|${ws}*[\r\n]+|${ws}+(?!${notWs})|${ws}+`;

/** A pre-tokenizer: text → words. */
export type PreTokenizer = (text: string) => string[];

function regexSplitter(pattern: string): PreTokenizer {
  const re = new RegExp(pattern, "gu");
  // Every character matches some alternative of these patterns, so no text is skipped.
  return (text) => text.match(re) ?? [];
}

/**
 * The pre-tokenizer for a `tokenizer.ggml.pre` name, and a warning when the name is unknown.
 *
 * @param pre The name: "smollm", "gpt2"/"default", "llama3"/"llama-bpe"; others fall back to GPT-2.
 * @returns The splitter (text → words) and an optional warning.
 * @example
 * ```ts
 * import { preTokenizerFor } from "./tokenizer_bpe.ts";
 * preTokenizerFor("smollm").split("I'm 42"); // ["I", "'m", " ", "4", "2"]
 * ```
 */
export function preTokenizerFor(pre: string): { split: PreTokenizer; warning?: string } {
  switch (pre) {
    case "smollm": {
      // Hugging Face: Digits(individual_digits) isolates every numeric character, then the GPT-2
      // regex runs on each piece.
      const gpt2 = regexSplitter(gpt2Pattern);
      const digits = /\p{N}/gu;
      return {
        split: (text) => {
          const words: string[] = [];
          let start = 0;
          for (const m of text.matchAll(digits)) {
            if (m.index > start) words.push(...gpt2(text.slice(start, m.index)));
            words.push(m[0]);
            start = m.index + m[0].length;
          }
          if (start < text.length) words.push(...gpt2(text.slice(start)));
          return words;
        },
      };
    }
    case "gpt2":
    case "default":
      return { split: regexSplitter(gpt2Pattern) };
    case "llama3":
    case "llama-bpe":
      return { split: regexSplitter(llama3Pattern) };
    default:
      return {
        split: regexSplitter(gpt2Pattern),
        warning: `unknown pre-tokenizer ${JSON.stringify(pre)}: using the GPT-2 regex, tokens may differ`,
      };
  }
}

/** Most words cached per tokenizer; the cache is cleared when full (cheap, and rare in practice). */
const wordCacheLimit = 65536;

/**
 * Byte-level BPE tokenizer.
 *
 * @example
 * ```ts
 * import { BpeTokenizer } from "./tokenizer_bpe.ts";
 * const tok = new BpeTokenizer({
 *   tokens: ["<|end|>", "h", "i", "Ġ", "hi", "Ġhi"],
 *   types: [3, 1, 1, 1, 1, 1],
 *   merges: ["h i", "Ġ hi"],
 *   pre: "gpt2", addBos: false, eosId: 0, source: "example",
 * });
 * tok.encode("hi hi"); // [4, 5]
 * tok.decode([4, 5]); // "hi hi"
 * ```
 */
export class BpeTokenizer implements Tokenizer {
  /** Always "bpe". */
  readonly kind = "bpe" as const;
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
  /** Problems found in the metadata that did not stop loading (e.g. an unknown pre-tokenizer). */
  readonly warnings: string[];

  private readonly tokens: readonly string[];
  private readonly types: Int32Array;
  private readonly ids = new Map<string, number>();
  /** (left id, right id) packed as left * vocabSize + right → rank. */
  private readonly ranks = new Map<number, number>();
  /** Merged id per rank. */
  private readonly mergedIds: Int32Array;
  /** Id of each byte's single-character token, or -1. */
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly preTokenize: PreTokenizer;
  private readonly specialAlways: SpecialSplitter;
  private readonly specialParsed: SpecialSplitter;
  private readonly wordCache = new Map<string, number[]>();
  private readonly pieceCache: (Uint8Array | undefined)[];

  /**
   * Builds the lookup tables and checks every merge.
   *
   * @param spec Vocabulary, merges, types and special ids.
   */
  constructor(spec: BpeSpec) {
    const n = spec.tokens.length;
    this.vocabSize = n;
    this.tokens = spec.tokens;
    this.bosId = spec.bosId;
    this.eosId = spec.eosId;
    this.addBos = spec.addBos;
    this.warnings = [...(spec.warnings ?? [])];
    this.types = new Int32Array(n).fill(TokenType.normal);
    if (spec.types) {
      if (spec.types.length !== n) {
        throw new SparrowError(
          "bad_model",
          `${spec.source}: token_type has ${spec.types.length} entries for ${n} tokens`,
        );
      }
      for (let i = 0; i < n; i++) this.types[i] = spec.types[i];
    }
    this.pieceCache = new Array(n);
    const always: [string, number][] = [];
    const parsed: [string, number][] = [];
    for (let i = 0; i < n; i++) {
      if (!this.ids.has(spec.tokens[i])) this.ids.set(spec.tokens[i], i);
      if (this.types[i] === TokenType.control) parsed.push([spec.tokens[i], i]);
      else if (this.types[i] === TokenType.userDefined) {
        always.push([spec.tokens[i], i]);
        parsed.push([spec.tokens[i], i]);
      }
    }
    this.specialAlways = new SpecialSplitter(always);
    this.specialParsed = new SpecialSplitter(parsed);
    // Real vocabularies lack a few byte characters (SmolLM2 has no token for 0x04, 0xF1, 0xFF, ...);
    // such bytes are dropped when encoding, as Hugging Face tokenizers and llama.cpp do.
    for (let b = 0; b < 256; b++) this.byteIds[b] = this.ids.get(alphabet.toChar[b]) ?? -1;

    this.mergedIds = new Int32Array(spec.merges.length);
    spec.merges.forEach((merge, rank) => {
      let left: string, right: string;
      if (typeof merge === "string") {
        const at = merge.indexOf(" ", 1); // a token never contains a space, but may start with one in odd vocabs
        if (at < 0) {
          throw new SparrowError("bad_model", `${spec.source}: merge ${rank} ${JSON.stringify(merge)} has no space`);
        }
        left = merge.slice(0, at);
        right = merge.slice(at + 1);
      } else [left, right] = merge;
      const l = this.ids.get(left), r = this.ids.get(right), m = this.ids.get(left + right);
      if (l === undefined || r === undefined || m === undefined) {
        const which = l === undefined ? left : r === undefined ? right : left + right;
        throw new SparrowError(
          "bad_model",
          `${spec.source}: merge ${rank} ${JSON.stringify(merge)} references unknown token ${JSON.stringify(which)}`,
        );
      }
      this.mergedIds[rank] = m;
      const key = l * n + r;
      if (!this.ranks.has(key)) this.ranks.set(key, rank);
    });

    const pre = preTokenizerFor(spec.pre);
    this.preTokenize = pre.split;
    if (pre.warning) this.warnings.push(`${spec.source}: ${pre.warning}`);

    const stops = new Set<number>(spec.extraStopIds ?? []);
    if (spec.eosId !== undefined) stops.add(spec.eosId);
    for (const t of endOfTurnTexts) {
      const id = this.ids.get(t);
      if (id !== undefined && (this.types[id] === TokenType.control || this.types[id] === TokenType.userDefined)) {
        stops.add(id);
      }
    }
    this.stopIds = stops;
  }

  /**
   * Encodes text. User-defined tokens are always matched as single tokens; control tokens
   * (e.g. `<|im_start|>`) only with `parseSpecial`.
   *
   * @param text Text to encode.
   * @param options `addBos` (default: the model's setting), `parseSpecial` (default false).
   * @returns Token ids.
   * @example
   * ```ts
   * // tok from the class example
   * // tok.encode("hi<|end|>", { parseSpecial: true }) → [4, 0]
   * ```
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const out: number[] = [];
    if ((options.addBos ?? this.addBos) && this.bosId !== undefined) out.push(this.bosId);
    const splitter = options.parseSpecial ? this.specialParsed : this.specialAlways;
    for (const part of splitter.split(text)) {
      if (typeof part === "number") {
        out.push(part);
        continue;
      }
      for (const word of this.preTokenize(part)) {
        for (const id of this.encodeWord(word)) out.push(id);
      }
    }
    return out;
  }

  /** BPE of one pre-tokenized word, through the word cache. */
  private encodeWord(word: string): readonly number[] {
    const cached = this.wordCache.get(word);
    if (cached) return cached;
    const symbols: number[] = [];
    for (const b of utf8Encoder.encode(word)) {
      const id = this.byteIds[b];
      if (id >= 0) symbols.push(id);
    }
    const n = this.vocabSize;
    const merged = mergeAdjacent(symbols, (l, r, out: PairMerge) => {
      const rank = this.ranks.get(l * n + r);
      if (rank === undefined) return false;
      out.id = this.mergedIds[rank];
      out.priority = rank;
      return true;
    });
    if (this.wordCache.size >= wordCacheLimit) this.wordCache.clear();
    this.wordCache.set(word, merged);
    return merged;
  }

  /**
   * UTF-8 bytes a token adds to the output: byte-level characters map back to their bytes,
   * user-defined tokens give their text, control tokens nothing unless `special`.
   *
   * @param id Token id.
   * @param options `special`: render control tokens as their text. (`previous` is accepted for
   *   interface compatibility; byte-level BPE has no context-dependent rule.)
   * @returns The bytes (do not modify: they may be shared).
   * @example
   * ```ts
   * // tok from the class example: "Ġhi" → " hi"
   * // tok.tokenBytes(5) → [0x20, 0x68, 0x69]
   * ```
   */
  tokenBytes(id: number, options: TokenBytesOptions = {}): Uint8Array {
    this.checkId(id);
    const type = this.types[id];
    if (type === TokenType.control || type === TokenType.unknown || type === TokenType.unused) {
      return options.special ? utf8Encoder.encode(this.tokens[id]) : noBytes;
    }
    let bytes = this.pieceCache[id];
    if (bytes) return bytes;
    if (type === TokenType.userDefined) bytes = utf8Encoder.encode(this.tokens[id]);
    else {
      const out: number[] = [];
      for (const ch of this.tokens[id]) {
        const b = alphabet.toByte.get(ch);
        if (b !== undefined) out.push(b);
        else out.push(...utf8Encoder.encode(ch)); // not in the byte alphabet: keep the character
      }
      bytes = Uint8Array.from(out);
    }
    this.pieceCache[id] = bytes;
    return bytes;
  }

  /**
   * Decodes ids to text.
   *
   * @param ids Token ids.
   * @param options `special`: include control tokens' text.
   * @returns The text (invalid UTF-8 becomes U+FFFD).
   * @example
   * ```ts
   * // tok from the class example
   * // tok.decode([0, 4], { special: true }) → "<|end|>hi"
   * ```
   */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    return new TextDecoder().decode(concatBytes(ids.map((id) => this.tokenBytes(id, options))));
  }

  /**
   * The vocabulary entry of a token.
   *
   * @param id Token id.
   * @returns The vocabulary string as stored (byte-level alphabet, e.g. "Ġhi").
   * @example
   * ```ts
   * // tok.tokenText(5) → "Ġhi"
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
