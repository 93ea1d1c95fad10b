/**
 * Tokenizers against references: llama2.c's run.c on stories260K (tests/fixtures/stories260k_llama2c.json)
 * and Hugging Face `tokenizers` on SmolLM2 (tests/fixtures/smollm2_token_ids.json), plus the GGUF-embedded
 * SmolLM2 vocabulary against tokenizer.json. Tests needing ../shared or the GGUF skip when absent.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { formatChat } from "../core/chat_template.ts";
import { readGguf } from "../core/gguf.ts";
import { TextStream } from "../core/text_stream.ts";
import { type Tokenizer, tokenizerFromGguf, tokenizerFromHfJson } from "../core/tokenizer.ts";
import { llama2cTokenizerMetadata, readLlama2cTokenizer } from "../models/llama2c_tokenizer.ts";
import { sharedModelsDir, skip, smollm2Path } from "./_models.ts";

interface Llama2cCase {
  prompt: string;
  steps: number;
  prompt_ids: number[];
  ids: number[];
  stdout: string;
}
interface SmolCase {
  text: string;
  ids: number[];
}

const fixture = <T>(name: string): T =>
  JSON.parse(Deno.readTextFileSync(new URL(`./fixtures/${name}`, import.meta.url)));
const llama2c = fixture<{
  cases: Llama2cCase[];
  logits: { prompt: string; input_ids: number[]; positions: number; vocab_size: number; values: number[][] };
}>("stories260k_llama2c.json");
const smol = fixture<{ cases: SmolCase[] }>("smollm2_token_ids.json");

function stories260kTokenizer(): Tokenizer | undefined {
  const dir = sharedModelsDir();
  if (!dir) return undefined;
  const path = join(dir, "stories260K", "tok512.bin");
  return tokenizerFromGguf(llama2cTokenizerMetadata(readLlama2cTokenizer(path, 512), path), path);
}

/**
 * What run.c prints for a run: each piece after the one before it (the space after BOS dropped),
 * control tokens as their text, byte tokens only when printable or whitespace in the C locale,
 * stopping at a sampled BOS, then a newline.
 */
function llama2cStdout(tok: Tokenizer, ids: readonly number[]): string {
  const bytes: number[] = [];
  let prev = 1;
  for (const id of ids) {
    if (id === 1) break;
    const piece = tok.tokenBytes(id, { special: true, previous: prev });
    const isByteToken = /^<0x[0-9A-F]{2}>$/.test(tok.tokenText(id));
    const b = piece[0];
    const printable = (b >= 0x20 && b <= 0x7e) || (b >= 0x09 && b <= 0x0d);
    if (!isByteToken || printable) bytes.push(...piece);
    prev = id;
  }
  return new TextDecoder().decode(Uint8Array.from(bytes)) + "\n";
}

Deno.test("stories260K: prompts encode exactly as llama2.c's run.c", () => {
  const tok = stories260kTokenizer();
  if (!tok && skip("../shared/models is absent")) return;
  assert.ok(llama2c.cases.length >= 10);
  for (const c of llama2c.cases) {
    assert.deepEqual(tok!.encode(c.prompt, { addBos: false }), c.prompt_ids, JSON.stringify(c.prompt));
    assert.deepEqual(tok!.encode(c.prompt), [1, ...c.prompt_ids]);
    assert.deepEqual(c.ids.slice(0, c.prompt_ids.length), c.prompt_ids);
  }
});

Deno.test("stories260K: decoding the reference runs reproduces run.c's stdout", () => {
  const tok = stories260kTokenizer();
  if (!tok && skip("../shared/models is absent")) return;
  for (const c of llama2c.cases) {
    assert.equal(llama2cStdout(tok!, c.ids), c.stdout, JSON.stringify(c.prompt));
  }
  const first = llama2c.cases[0];
  assert.equal(first.prompt, "Once upon a time");
  assert.equal(
    first.stdout,
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a " +
      "big, red ball. She wanted to play with it, but it was too high.\nLily\n",
  );
});

Deno.test("stories260K fixture: the logits agree with the greedy continuation", () => {
  const { logits, cases } = llama2c;
  const run = cases.find((c) => c.prompt === logits.prompt && c.steps === 64)!;
  assert.deepEqual(logits.input_ids, [1, ...run.ids.slice(0, logits.positions - 1)]);
  assert.equal(logits.values.length, logits.positions);
  logits.values.forEach((row, pos) => {
    assert.equal(row.length, logits.vocab_size);
    // past the prompt, run.c fed the argmax (first index on ties) of the previous position's logits
    if (pos >= run.prompt_ids.length) assert.equal(row.indexOf(Math.max(...row)), run.ids[pos]);
  });
});

Deno.test("stories260K: round trip and streaming (leading space dropped after BOS)", () => {
  const tok = stories260kTokenizer();
  if (!tok && skip("../shared/models is absent")) return;
  for (const c of llama2c.cases) {
    const ids = tok!.encode(c.prompt);
    assert.equal(tok!.decode(ids), c.prompt);
    assert.equal(tok!.decode(ids.slice(1)), " " + c.prompt); // without BOS the dummy prefix stays
    const stream = new TextStream(tok!);
    let text = "";
    for (const id of [1, ...c.ids]) {
      const piece = stream.push(id);
      assert.ok(!piece.includes("\uFFFD"), JSON.stringify(c.prompt));
      text += piece;
    }
    text += stream.flush();
    assert.equal(text, tok!.decode([1, ...c.ids]));
  }
});

Deno.test("llama2 32k tokenizer.bin loads and round-trips", () => {
  const dir = sharedModelsDir();
  if (!dir && skip("../shared/models is absent")) return;
  const path = join(dir!, "llama2-tokenizer", "tokenizer.bin");
  const tok = tokenizerFromGguf(llama2cTokenizerMetadata(readLlama2cTokenizer(path, 32000), path), path);
  for (const text of smol.cases.map((c) => c.text)) {
    const ids = tok.encode(text); // every byte has a <0xXX> token here, so nothing is lost
    assert.equal(tok.decode(ids), text);
  }
  assert.deepEqual(tok.encode("Hello world", { addBos: false }), [15043, 3186]);
});

function smollm2FromJson(): Tokenizer | undefined {
  const dir = sharedModelsDir();
  if (!dir) return undefined;
  const path = join(dir, "smollm2-135m-tokenizer", "tokenizer.json");
  return tokenizerFromHfJson(JSON.parse(Deno.readTextFileSync(path)), {
    source: path,
    bosToken: "<|im_start|>",
    eosToken: "<|im_end|>",
  });
}

function smollm2FromGguf(): { tok: Tokenizer; template: string } | undefined {
  const path = smollm2Path();
  if (!path) return undefined;
  const gguf = readGguf(path);
  return {
    tok: tokenizerFromGguf(gguf.metadata, path),
    template: gguf.metadata.get("tokenizer.chat_template") as string,
  };
}

/**
 * Texts with bytes SmolLM2 has no token for (control characters 0x04 0x06 0x13 0x14 0x16 0x1D and the
 * lead bytes 0xF1/0xF2 of U+40000..U+BFFFF): Hugging Face drops those bytes, so they do not round-trip.
 */
// deno-lint-ignore no-control-regex -- the control characters are the point
const lossy = (text: string) => /[\x04\x06\x13\x14\x16\x1d\u{40000}-\u{BFFFF}]/u.test(text);

/** A varied text: prose, unicode, code with tabs, numbers, whitespace runs, contractions, special tokens. */
const variedText = smol.cases.map((c) => c.text).filter((t) => !lossy(t)).join("\n") +
  "\n\tdef f(x):\n\t\treturn x  *  3.14159  # 1234567\n\n\n   \t \n" +
  "Ça va? Ünïcödé ñ ß — “quotes” ‘single’ … 😀😃😄 中文 日本語 한국어 ℕ ∑ ∫ \u200d\u200b" +
  "<|im_start|>assistant\nDon't! I'LL, WE'D, they'RE <|im_end|><|endoftext|>";

Deno.test("SmolLM2 tokenizer.json matches Hugging Face tokenizers", () => {
  const tok = smollm2FromJson();
  if (!tok && skip("../shared/models is absent")) return;
  for (const c of smol.cases) {
    assert.deepEqual(tok!.encode(c.text, { parseSpecial: true }), c.ids, JSON.stringify(c.text));
    if (!lossy(c.text)) assert.equal(tok!.decode(c.ids, { special: true }), c.text);
  }
});

Deno.test("SmolLM2 GGUF tokenizer matches Hugging Face tokenizers and tokenizer.json", () => {
  const gguf = smollm2FromGguf();
  if (!gguf && skip("SmolLM2 GGUF not downloaded (.cache/models)")) return;
  const { tok } = gguf!;
  assert.equal(tok.kind, "bpe");
  assert.equal(tok.vocabSize, 49152);
  assert.equal(tok.bosId, 1);
  assert.equal(tok.eosId, 2);
  assert.equal(tok.addBos, false);
  assert.deepEqual([...tok.stopIds].sort(), [0, 2]);
  assert.deepEqual(tok.warnings, []);
  for (const c of smol.cases) {
    assert.deepEqual(tok.encode(c.text, { parseSpecial: true }), c.ids, JSON.stringify(c.text));
  }
  const json = smollm2FromJson();
  if (!json && skip("../shared/models is absent: GGUF vs tokenizer.json not compared")) return;
  for (const parseSpecial of [true, false]) {
    const ids = tok.encode(variedText, { parseSpecial });
    assert.deepEqual(json!.encode(variedText, { parseSpecial }), ids);
    assert.equal(tok.decode(ids, { special: true }), variedText);
  }
  for (let id = 0; id < tok.vocabSize; id++) {
    assert.equal(tok.tokenText(id), json!.tokenText(id));
  }
});

Deno.test("SmolLM2 chat prompt encodes to ChatML control tokens", () => {
  const gguf = smollm2FromGguf();
  if (!gguf && skip("SmolLM2 GGUF not downloaded (.cache/models)")) return;
  const prompt = formatChat([{ role: "user", content: "What is 2+2?" }], { template: gguf!.template });
  assert.ok(
    prompt.startsWith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"),
  );
  const ids = gguf!.tok.encode(prompt, { parseSpecial: true });
  assert.equal(ids[0], 1);
  assert.equal(ids.filter((id) => id === 1).length, 3);
  assert.equal(ids.filter((id) => id === 2).length, 2);
  const fromFixture = smol.cases.find((c) => c.text.startsWith("<|im_start|>user\nWhat is 2+2?"))!;
  const userPart = prompt.slice(prompt.indexOf("<|im_start|>user"));
  assert.deepEqual(gguf!.tok.encode(userPart, { parseSpecial: true }), fromFixture.ids);
});

Deno.test("encoding time grows linearly with the text (no quadratic merge loop)", () => {
  const dir = sharedModelsDir();
  if (!dir && skip("../shared/models is absent")) return;
  // vary the words so the per-word cache does not hide the merge cost
  const textOf = (chars: number) => {
    let text = "";
    for (let i = 0; text.length < chars; i++) text += `${variedText.slice(i % 500)} w${i}x${i * 7919} `;
    return text;
  };
  const small = textOf(12_500);
  const large = textOf(100_000);
  const spm = stories260kTokenizer()!;
  const bpe = smollm2FromJson()!;
  // A ratio of times, best of three each, so a slow machine is slow for both sizes; throughput is
  // bench/tokenizer_bench.ts's. Linear is 8x; quadratic would be 64x.
  for (const tok of [spm, bpe]) {
    const best = (text: string) => {
      let ms = Infinity;
      for (let r = 0; r < 3; r++) {
        const t0 = performance.now();
        assert.ok(tok.encode(text, { addBos: false }).length > text.length / 10);
        ms = Math.min(ms, performance.now() - t0);
      }
      return ms;
    };
    best(small); // warm up the JIT
    const ratio = best(large) / Math.max(best(small), 1);
    assert.ok(ratio < 24, `${tok.kind}: 8x the text took ${ratio.toFixed(1)}x the time`);
  }
});
