/**
 * Incremental detokenization: turns token ids, one at a time, into the text that is complete so
 * far, without ever emitting half of a multi-byte character.
 *
 * @module
 */
import type { Tokenizer } from "./tokenizer.ts";
import { concatBytes } from "./tokenizer_common.ts";

/** Options of {@link TextStream}. */
export interface TextStreamOptions {
  /** Render control tokens as their text (default false). */
  special?: boolean;
  /**
   * The token before the first one pushed (e.g. the last prompt token). When it is BOS, an SPM
   * tokenizer drops the dummy-prefix space of the first piece, exactly as `decode` does.
   */
  previous?: number;
}

/**
 * Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence. Invalid
 * bytes count as complete (the decoder turns them into U+FFFD); only a valid lead byte followed by
 * too few continuation bytes at the very end is held back.
 */
function completeLength(bytes: Uint8Array): number {
  const n = bytes.length;
  // A sequence is at most 4 bytes, so only the last 3 bytes can start an unfinished one.
  for (let back = 1; back <= Math.min(3, n); back++) {
    const b = bytes[n - back];
    if ((b & 0xc0) === 0x80) continue; // continuation byte: keep looking for the lead
    // expected length from a valid lead byte; ASCII and invalid leads (C0, C1, F5..FF) stand alone
    const need = b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 1;
    return need > back ? n - back : n;
  }
  return n;
}

/**
 * Streams decoded text: `push` each generated id, print what it returns, `flush` at the end. The
 * concatenation of all returned strings equals `tokenizer.decode` of the same ids (with the
 * `previous` token in front).
 *
 * @example
 * ```ts
 * import { TextStream } from "./text_stream.ts";
 * import type { Tokenizer } from "./tokenizer.ts";
 * declare const tok: Tokenizer;
 * declare const generated: number[];
 * const stream = new TextStream(tok, { previous: tok.bosId });
 * let text = "";
 * for (const id of generated) text += stream.push(id);
 * text += stream.flush();
 * ```
 */
export class TextStream {
  private pending: Uint8Array = new Uint8Array(0);
  private previous: number | undefined;
  private readonly decoder = new TextDecoder();

  /**
   * Starts an empty stream.
   *
   * @param tokenizer The tokenizer whose ids are pushed.
   * @param options `special` and the `previous` token.
   */
  constructor(private readonly tokenizer: Tokenizer, private readonly options: TextStreamOptions = {}) {
    this.previous = options.previous;
  }

  /**
   * Adds one token.
   *
   * @param id Token id.
   * @returns Text that is now complete (possibly empty).
   * @example
   * ```ts
   * // with a byte-fallback tokenizer, "é" split into <0xC3><0xA9>:
   * // stream.push(0xC3 byte token) → "", stream.push(0xA9 byte token) → "é"
   * ```
   */
  push(id: number): string {
    const bytes = this.tokenizer.tokenBytes(id, { special: this.options.special, previous: this.previous });
    this.previous = id;
    if (bytes.length === 0) return "";
    const all = this.pending.length > 0 ? concatBytes([this.pending, bytes]) : bytes;
    const done = completeLength(all);
    // copy: tokenBytes may return a shared array
    this.pending = all.slice(done);
    return done > 0 ? this.decoder.decode(all.subarray(0, done)) : "";
  }

  /**
   * Ends the stream: bytes of an unfinished character come out as U+FFFD.
   *
   * @returns The remaining text.
   * @example
   * ```ts
   * // after pushing only the first byte of "é": stream.flush() → "\uFFFD"
   * ```
   */
  flush(): string {
    const rest = this.pending;
    this.pending = new Uint8Array(0);
    return rest.length > 0 ? this.decoder.decode(rest) : "";
  }
}
