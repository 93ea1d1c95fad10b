import assert from "node:assert/strict";
import { TextStream } from "./text_stream.ts";
import { tokenizerFromGguf } from "./tokenizer.ts";

/** Llama-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then a few pieces. */
function tokenizer() {
  const tokens = ["<unk>", "<s>", "</s>"];
  for (let b = 0; b < 256; b++) tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  tokens.push("▁", "a", "▁a", "é");
  const types = tokens.map((t, i) => i === 0 ? 2 : i < 3 ? 3 : t.startsWith("<0x") ? 6 : 1);
  return tokenizerFromGguf(
    new Map<string, unknown>([
      ["tokenizer.ggml.model", "llama"],
      ["tokenizer.ggml.tokens", tokens],
      ["tokenizer.ggml.scores", new Float32Array(tokens.length).map((_, i) => -i)],
      ["tokenizer.ggml.token_type", new Int32Array(types)],
      ["tokenizer.ggml.bos_token_id", 1],
      ["tokenizer.ggml.eos_token_id", 2],
      ["tokenizer.ggml.unknown_token_id", 0],
    ]),
    "stream-test",
  );
}

const byte = (b: number) => b + 3;

function streamAll(stream: TextStream, ids: number[]): string[] {
  const out = ids.map((id) => stream.push(id));
  out.push(stream.flush());
  return out;
}

Deno.test("TextStream: an emoji split over byte tokens comes out whole, never as U+FFFD", () => {
  const tok = tokenizer();
  const ids = tok.encode("a🐉a", { addBos: false });
  const pieces = streamAll(new TextStream(tok), ids);
  assert.ok(pieces.every((p) => !p.includes("\uFFFD")));
  assert.deepEqual(pieces, [" a", "", "", "", "🐉", "a", ""]);
  assert.equal(pieces.join(""), tok.decode(ids));
});

Deno.test("TextStream: the space after BOS is dropped, as decode does", () => {
  const tok = tokenizer();
  const aId = tok.encode("a", { addBos: false })[0];
  assert.deepEqual(streamAll(new TextStream(tok), [1, aId, aId]), ["", "a", " a", ""]);
  assert.deepEqual(streamAll(new TextStream(tok, { previous: 1 }), [aId, aId]), ["a", " a", ""]);
  assert.deepEqual(streamAll(new TextStream(tok, { previous: aId }), [aId]), [" a", ""]);
});

Deno.test("TextStream: flush turns an unfinished character into U+FFFD; special tokens on request", () => {
  const tok = tokenizer();
  const s = new TextStream(tok);
  assert.equal(s.push(byte(0xc3)), "");
  assert.equal(s.flush(), "\uFFFD");
  assert.equal(s.flush(), "");
  assert.deepEqual(streamAll(new TextStream(tok, { special: true }), [2]), ["</s>", ""]);
  assert.deepEqual(streamAll(new TextStream(tok), [2]), ["", ""]);
});

Deno.test("TextStream: invalid bytes are not held back forever", () => {
  const tok = tokenizer();
  const s = new TextStream(tok);
  assert.equal(s.push(byte(0xff)), "\uFFFD");
  assert.equal(s.push(byte(0x80)), "\uFFFD");
  assert.equal(s.push(byte(0x41)), "A");
});

Deno.test("TextStream: streaming random byte tokens equals decode", () => {
  const tok = tokenizer();
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 1664525 + 1013904223) >>> 0;
    return (seed >>> 8) % n;
  };
  // bytes biased towards UTF-8 lead and continuation bytes, plus pieces and control tokens
  const pool = [
    0x41,
    0x20,
    0xc3,
    0xa9,
    0xe6,
    0x97,
    0xa5,
    0xf0,
    0x9f,
    0x90,
    0x89,
    0x80,
    0xbf,
    0xed,
    0xa0,
    0xf4,
    0xc0,
    0xff,
  ]
    .map(byte)
    .concat([1, 2, 259, 260, 261, 262]);
  for (let round = 0; round < 300; round++) {
    const ids = Array.from({ length: rand(12) }, () => pool[rand(pool.length)]);
    const streamed = streamAll(new TextStream(tok), ids).join("");
    assert.equal(streamed, tok.decode(ids), JSON.stringify(ids));
  }
});
