/**
 * Reader for llama2.c's tokenizer file (`tokenizer.bin`, `tok512.bin`): a little-endian int32
 * max_token_length, then per token a float32 score, an int32 byte length and the bytes. The file
 * does not store the token count; tokens are read until the end of the file.
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";

/** A llama2.c tokenizer file's contents. */
export interface Llama2cTokenizer {
  /** The header's max_token_length (bytes). */
  readonly maxTokenLength: number;
  /** Score per token. */
  readonly scores: Float32Array;
  /** Raw bytes per token (spaces as ' ', byte tokens as the text "<0xXX>"). */
  readonly pieces: Uint8Array[];
}

/**
 * Parses a llama2.c tokenizer from bytes.
 *
 * @param data The file contents.
 * @param source Name for error messages.
 * @param vocabSize Expected token count (the model's vocab_size); checked when given.
 * @returns The scores and pieces.
 * @throws SparrowError `bad_model` when the data is truncated or inconsistent.
 * @example
 * ```ts
 * import { parseLlama2cTokenizer } from "./llama2c_tokenizer.ts";
 * const tok = parseLlama2cTokenizer(Deno.readFileSync("tok512.bin"), "tok512.bin", 512);
 * tok.pieces.length; // 512
 * ```
 */
export function parseLlama2cTokenizer(data: Uint8Array, source: string, vocabSize?: number): Llama2cTokenizer {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (data.length < 4) throw new SparrowError("bad_model", `${source}: too short for a llama2.c tokenizer header`);
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength <= 0) throw new SparrowError("bad_model", `${source}: max_token_length is ${maxTokenLength}`);
  const scores: number[] = [];
  const pieces: Uint8Array[] = [];
  let at = 4;
  while (at < data.length && (vocabSize === undefined || pieces.length < vocabSize)) {
    const i = pieces.length;
    if (at + 8 > data.length) throw new SparrowError("bad_model", `${source}: token ${i} header is truncated`);
    const score = view.getFloat32(at, true);
    const len = view.getInt32(at + 4, true);
    at += 8;
    if (len < 0 || at + len > data.length) {
      throw new SparrowError("bad_model", `${source}: token ${i} has length ${len}, past the end of the file`);
    }
    scores.push(score);
    pieces.push(data.slice(at, at + len));
    at += len;
  }
  if (vocabSize !== undefined && pieces.length !== vocabSize) {
    throw new SparrowError("bad_model", `${source}: has ${pieces.length} tokens, expected ${vocabSize}`);
  }
  return { maxTokenLength, scores: Float32Array.from(scores), pieces };
}

/**
 * Reads a llama2.c tokenizer file.
 *
 * @param path File path.
 * @param vocabSize Expected token count; checked when given.
 * @returns The scores and pieces.
 * @throws SparrowError `io` when the file cannot be read, `bad_model` when it is malformed.
 * @example
 * ```ts
 * import { readLlama2cTokenizer } from "./llama2c_tokenizer.ts";
 * const { scores, pieces } = readLlama2cTokenizer("../shared/models/stories260K/tok512.bin");
 * ```
 */
export function readLlama2cTokenizer(path: string, vocabSize?: number): Llama2cTokenizer {
  let data: Uint8Array;
  try {
    data = Deno.readFileSync(path);
  } catch (e) {
    throw new SparrowError("io", `${path}: cannot read llama2.c tokenizer (${(e as Error).message})`, { cause: e });
  }
  return parseLlama2cTokenizer(data, path, vocabSize);
}

/**
 * The GGUF `tokenizer.ggml.*` metadata for a llama2.c tokenizer, as a Llama-2 SentencePiece
 * vocabulary: spaces in pieces become "▁", id 0 is unknown, 1 BOS and 2 EOS (control), "<0xXX>"
 * pieces are byte tokens, BOS is added and a dummy-prefix space is used (both as llama2.c does).
 *
 * @param tok The parsed tokenizer.
 * @param source Name for error messages.
 * @returns Metadata entries, ready for `tokenizerFromGguf` or a GGUF writer.
 * @throws SparrowError `bad_model` when a piece is not valid UTF-8.
 * @example
 * ```ts
 * import { llama2cTokenizerMetadata, readLlama2cTokenizer } from "./llama2c_tokenizer.ts";
 * import { tokenizerFromGguf } from "../core/tokenizer.ts";
 * const md = llama2cTokenizerMetadata(readLlama2cTokenizer("tok512.bin"), "tok512.bin");
 * const tok = tokenizerFromGguf(md, "tok512.bin");
 * ```
 */
export function llama2cTokenizerMetadata(tok: Llama2cTokenizer, source: string): Map<string, unknown> {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const tokens = tok.pieces.map((p, i) => {
    try {
      return decoder.decode(p).replaceAll(" ", "\u2581");
    } catch {
      throw new SparrowError("bad_model", `${source}: token ${i} is not valid UTF-8`);
    }
  });
  const types = Int32Array.from(
    tokens,
    (t, i) => i === 0 ? 2 : i === 1 || i === 2 ? 3 : /^<0x[0-9A-Fa-f]{2}>$/.test(t) ? 6 : 1,
  );
  return new Map<string, unknown>([
    ["tokenizer.ggml.model", "llama"],
    ["tokenizer.ggml.tokens", tokens],
    ["tokenizer.ggml.scores", tok.scores],
    ["tokenizer.ggml.token_type", types],
    ["tokenizer.ggml.bos_token_id", 1],
    ["tokenizer.ggml.eos_token_id", 2],
    ["tokenizer.ggml.unknown_token_id", 0],
    ["tokenizer.ggml.add_bos_token", true],
    ["tokenizer.ggml.add_space_prefix", true],
  ]);
}
