/**
 * Text tokenizers: the {@link Tokenizer} interface and factories that build one from GGUF metadata
 * (`tokenizer.ggml.*`) or from a Hugging Face `tokenizer.json`.
 *
 * Two families are supported: SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`, see
 * tokenizer_spm.ts) and GPT-2 byte-level BPE (`"gpt2"`, see tokenizer_bpe.ts).
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import { BpeTokenizer } from "./tokenizer_bpe.ts";
import { TokenType } from "./tokenizer_common.ts";
import { SpmTokenizer } from "./tokenizer_spm.ts";

/** Options of {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /** Prepend BOS; defaults to the model's `add_bos_token`. */
  addBos?: boolean;
  /** Turn control-token texts such as `<|im_start|>` into their ids (default false: they are plain text). */
  parseSpecial?: boolean;
}

/** Options of {@link Tokenizer.tokenBytes}. */
export interface TokenBytesOptions {
  /** Render control tokens as their text (default: they produce nothing). */
  special?: boolean;
  /**
   * The token before this one. SentencePiece-style tokenizers drop the dummy-prefix space of the
   * piece that follows BOS; they need to know the previous token to do that in a stream.
   */
  previous?: number;
}

/** Options of {@link Tokenizer.decode}. */
export interface DecodeOptions {
  /** Render control tokens as their text (default: they produce nothing). */
  special?: boolean;
}

/**
 * Turns text into token ids and back.
 *
 * @example
 * ```ts
 * import { tokenizerFromGguf } from "./tokenizer.ts";
 * import { readGguf } from "./gguf.ts";
 * const gguf = readGguf("model.gguf");
 * const tok = tokenizerFromGguf(gguf.metadata, gguf.path);
 * const ids = tok.encode("Hello");
 * tok.decode(ids); // "Hello"
 * ```
 */
export interface Tokenizer {
  /** "spm" (SentencePiece-style, scores) or "bpe" (GPT-2 byte-level, merges). */
  readonly kind: "spm" | "bpe";
  /** Number of tokens. */
  readonly vocabSize: number;
  /** Beginning-of-sequence id, if the model has one. */
  readonly bosId: number | undefined;
  /** End-of-sequence id, if the model has one. */
  readonly eosId: number | undefined;
  /** Ids that end generation: eos plus template end tokens such as <|im_end|> / <|endoftext|> when present. */
  readonly stopIds: ReadonlySet<number>;
  /** Whether `encode` prepends BOS by default. */
  readonly addBos: boolean;
  /** Problems in the metadata that did not stop loading (e.g. an unknown pre-tokenizer). */
  readonly warnings: readonly string[];
  /** Encodes text into ids. */
  encode(text: string, options?: EncodeOptions): number[];
  /**
   * Raw UTF-8 bytes this token contributes to the output (byte tokens → their byte; SPM "▁" →
   * space; GPT-2 byte-level characters → original bytes; control tokens → empty unless `special`).
   */
  tokenBytes(id: number, options?: TokenBytesOptions): Uint8Array;
  /** Decodes ids into text; for SPM the space of the piece after a BOS is dropped. */
  decode(ids: readonly number[], options?: DecodeOptions): string;
  /** The vocabulary string as stored. */
  tokenText(id: number): string;
}

/** Reads typed values out of a metadata map, naming the key and file when one is wrong. */
class MetadataReader {
  constructor(readonly metadata: ReadonlyMap<string, unknown>, readonly source: string) {}

  fail(key: string, why: string): never {
    throw new SparrowError("bad_model", `${this.source}: ${key} ${why}`);
  }

  /** `value`, or a `bad_model` error saying `key` is missing. */
  need<T>(key: string, value: T | undefined): T {
    return value === undefined ? this.fail(key, "is missing") : value;
  }

  string(key: string): string | undefined {
    const v = this.metadata.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== "string") this.fail(key, `should be a string, got ${describe(v)}`);
    return v;
  }

  bool(key: string): boolean | undefined {
    const v = this.metadata.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") this.fail(key, `should be a boolean, got ${describe(v)}`);
    return v;
  }

  strings(key: string): string[] | undefined {
    const v = this.metadata.get(key);
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || !v.every((s) => typeof s === "string")) {
      this.fail(key, `should be an array of strings, got ${describe(v)}`);
    }
    return v;
  }

  numbers(key: string, length: number): ArrayLike<number> | undefined {
    const v = this.metadata.get(key);
    if (v === undefined) return undefined;
    const ok = (ArrayBuffer.isView(v) && !(v instanceof DataView) && !(v instanceof BigInt64Array) &&
      !(v instanceof BigUint64Array)) || (Array.isArray(v) && v.every((x) => typeof x === "number"));
    if (!ok) this.fail(key, `should be a numeric array, got ${describe(v)}`);
    const arr = v as ArrayLike<number>;
    if (arr.length !== length) this.fail(key, `has ${arr.length} entries but there are ${length} tokens`);
    return arr;
  }

  /** A token id: a non-negative integer below `vocabSize`, or undefined when absent. */
  id(key: string, vocabSize: number): number | undefined {
    const v = this.metadata.get(key);
    if (v === undefined) return undefined;
    const n = typeof v === "bigint" ? Number(v) : v;
    if (typeof n !== "number" || !Number.isInteger(n)) this.fail(key, `should be an integer, got ${describe(v)}`);
    // llama.cpp writes -1 (as u32 0xFFFFFFFF) for "none"
    if (n === -1 || n === 0xffffffff) return undefined;
    if (n < 0 || n >= vocabSize) this.fail(key, `is ${n}, outside the vocabulary (0..${vocabSize - 1})`);
    return n;
  }
}

function describe(v: unknown): string {
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name}`;
  if (typeof v === "string") return `the string ${JSON.stringify(v.slice(0, 40))}`;
  return typeof v === "bigint" ? `${v}n` : `${typeof v} ${String(v)}`;
}

/**
 * Builds a tokenizer from GGUF metadata (`tokenizer.ggml.*`).
 *
 * @param metadata The GGUF metadata map (see `readGguf` in gguf.ts).
 * @param source The file the metadata came from, for error messages.
 * @returns The tokenizer.
 * @throws SparrowError `bad_model` for missing or inconsistent keys, `unsupported` for a
 *   tokenizer model other than "llama" or "gpt2".
 * @example
 * ```ts
 * import { tokenizerFromGguf } from "./tokenizer.ts";
 * const tok = tokenizerFromGguf(new Map<string, unknown>([
 *   ["tokenizer.ggml.model", "gpt2"],
 *   ["tokenizer.ggml.tokens", ["a", "b", "ab"]],
 *   ["tokenizer.ggml.merges", ["a b"]],
 * ]), "tiny.gguf");
 * tok.encode("ab"); // [2]
 * ```
 */
export function tokenizerFromGguf(metadata: ReadonlyMap<string, unknown>, source = "GGUF metadata"): Tokenizer {
  const md = new MetadataReader(metadata, source);
  const model = md.need("tokenizer.ggml.model", md.string("tokenizer.ggml.model"));
  const tokens = md.need("tokenizer.ggml.tokens", md.strings("tokenizer.ggml.tokens"));
  if (tokens.length === 0) md.fail("tokenizer.ggml.tokens", "is empty");
  const n = tokens.length;
  const types = md.numbers("tokenizer.ggml.token_type", n);
  const bosId = md.id("tokenizer.ggml.bos_token_id", n);
  const eosId = md.id("tokenizer.ggml.eos_token_id", n);
  const extraStopIds = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
    .map((k) => md.id(k, n))
    .filter((id): id is number => id !== undefined);
  const warnings: string[] = [];
  if (md.bool("tokenizer.ggml.remove_extra_whitespaces")) {
    warnings.push(`${source}: tokenizer.ggml.remove_extra_whitespaces is not implemented; text is kept as is`);
  }
  switch (model) {
    case "llama": {
      const scores = md.need("tokenizer.ggml.scores", md.numbers("tokenizer.ggml.scores", n));
      return new SpmTokenizer({
        tokens,
        scores,
        types,
        bosId,
        eosId,
        unkId: md.id("tokenizer.ggml.unknown_token_id", n),
        addBos: md.bool("tokenizer.ggml.add_bos_token") ?? true,
        addSpacePrefix: md.bool("tokenizer.ggml.add_space_prefix") ?? true,
        extraStopIds,
        source,
        warnings,
      });
    }
    case "gpt2": {
      const merges = md.need("tokenizer.ggml.merges", md.strings("tokenizer.ggml.merges"));
      if (md.bool("tokenizer.ggml.add_space_prefix")) {
        throw new SparrowError(
          "unsupported",
          `${source}: tokenizer.ggml.add_space_prefix = true with a gpt2 tokenizer`,
        );
      }
      return new BpeTokenizer({
        tokens,
        types,
        merges,
        pre: md.string("tokenizer.ggml.pre") ?? "default",
        bosId,
        eosId,
        addBos: md.bool("tokenizer.ggml.add_bos_token") ?? false,
        extraStopIds,
        source,
        warnings,
      });
    }
    default:
      throw new SparrowError(
        "unsupported",
        `${source}: tokenizer.ggml.model ${JSON.stringify(model)} is not supported (only "llama" and "gpt2")`,
      );
  }
}

/** Options of {@link tokenizerFromHfJson}: what tokenizer.json itself does not say. */
export interface HfJsonOptions {
  /** Where the JSON came from, for error messages. */
  source?: string;
  /** Text of the BOS token (tokenizer_config.json `bos_token`). */
  bosToken?: string;
  /** Text of the EOS token (tokenizer_config.json `eos_token`). */
  eosToken?: string;
  /** Prepend BOS by default (default false). */
  addBos?: boolean;
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

/** Maps a tokenizer.json pre_tokenizer to a `tokenizer.ggml.pre` name, or explains why it cannot. */
function hfPreName(pre: unknown, source: string): string {
  const steps = isObject(pre) && pre.type === "Sequence" && Array.isArray(pre.pretokenizers)
    ? pre.pretokenizers
    : [pre];
  const sig = steps.map((s) => {
    if (!isObject(s)) return "?";
    if (s.type === "ByteLevel") {
      return s.add_prefix_space ? "ByteLevel+prefix" : s.use_regex === false ? "ByteLevel-noregex" : "ByteLevel";
    }
    if (s.type === "Digits") return s.individual_digits ? "Digits1" : "Digits";
    return String(s.type);
  }).join(",");
  if (sig === "ByteLevel") return "gpt2";
  if (sig === "Digits1,ByteLevel") return "smollm";
  throw new SparrowError("unsupported", `${source}: pre_tokenizer ${sig} is not supported`);
}

/**
 * Builds a byte-level BPE tokenizer from a Hugging Face tokenizer.json (used as an independent
 * check of the GGUF-embedded vocabulary). Added tokens marked special act as control tokens, the
 * others as user-defined tokens.
 *
 * @param json The parsed tokenizer.json.
 * @param options Source name, BOS/EOS token texts and whether to add BOS.
 * @returns The tokenizer.
 * @throws SparrowError `bad_model` for a malformed file, `unsupported` for models other than a
 *   ByteLevel BPE with a known pre-tokenizer.
 * @example
 * ```ts
 * import { tokenizerFromHfJson } from "./tokenizer.ts";
 * const json = JSON.parse(Deno.readTextFileSync("tokenizer.json"));
 * const tok = tokenizerFromHfJson(json, { source: "tokenizer.json", eosToken: "<|im_end|>" });
 * ```
 */
export function tokenizerFromHfJson(json: unknown, options: HfJsonOptions = {}): Tokenizer {
  const source = options.source ?? "tokenizer.json";
  const fail = (what: string): never => {
    throw new SparrowError("bad_model", `${source}: ${what}`);
  };
  if (!isObject(json) || !isObject(json.model)) return fail("no model object");
  const model = json.model;
  if (model.type !== "BPE") {
    throw new SparrowError("unsupported", `${source}: model.type ${JSON.stringify(model.type)} is not supported`);
  }
  if (json.normalizer !== null && json.normalizer !== undefined) {
    throw new SparrowError("unsupported", `${source}: normalizers are not supported`);
  }
  if (model.byte_fallback || model.continuing_subword_prefix || model.end_of_word_suffix || model.ignore_merges) {
    throw new SparrowError(
      "unsupported",
      `${source}: BPE options other than plain byte-level merges are not supported`,
    );
  }
  const pre = hfPreName(json.pre_tokenizer, source);
  if (!isObject(model.vocab)) return fail("model.vocab is not an object");
  const byId = new Map<number, string>();
  const types = new Map<number, number>();
  for (const [text, id] of Object.entries(model.vocab)) {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
      return fail(`model.vocab[${JSON.stringify(text)}] is ${id}`);
    }
    byId.set(id, text);
  }
  for (const t of Array.isArray(json.added_tokens) ? json.added_tokens : []) {
    if (!isObject(t) || typeof t.content !== "string" || typeof t.id !== "number") {
      return fail("bad added_tokens entry");
    }
    byId.set(t.id, t.content);
    types.set(t.id, t.special ? TokenType.control : TokenType.userDefined);
  }
  const size = Math.max(...byId.keys()) + 1;
  const tokens: string[] = [];
  for (let i = 0; i < size; i++) {
    const t = byId.get(i);
    if (t === undefined) return fail(`token id ${i} is missing from model.vocab`);
    tokens.push(t);
  }
  const merges = model.merges;
  if (!Array.isArray(merges)) return fail("model.merges is not an array");
  const idOf = (text: string | undefined, what: string): number | undefined => {
    if (text === undefined) return undefined;
    const id = tokens.indexOf(text);
    return id >= 0 ? id : fail(`${what} ${JSON.stringify(text)} is not a token`);
  };
  return new BpeTokenizer({
    tokens,
    types: Int32Array.from(tokens, (_, i) => types.get(i) ?? TokenType.normal),
    merges: merges as (string | [string, string])[],
    pre,
    bosId: idOf(options.bosToken, "bosToken"),
    eosId: idOf(options.eosToken, "eosToken"),
    addBos: options.addBos ?? false,
    source,
  });
}
