import assert from "node:assert/strict";
import { SparrowError } from "./errors.ts";
import { type BpeSpec, BpeTokenizer, preTokenizerFor } from "./tokenizer_bpe.ts";

const sparrowError = (code: string, re: RegExp = /./) => (e: unknown) =>
  e instanceof SparrowError && e.code === code && re.test(e.message);

/** GPT-2's byte → character table, written independently of the implementation under test. */
function byteChars(): string[] {
  const direct: number[] = [];
  for (let b = 33; b <= 126; b++) direct.push(b);
  for (let b = 161; b <= 172; b++) direct.push(b);
  for (let b = 174; b <= 255; b++) direct.push(b);
  const out: string[] = [];
  let extra = 256;
  for (let b = 0; b < 256; b++) out[b] = String.fromCodePoint(direct.includes(b) ? b : extra++);
  return out;
}
const chars = byteChars();
const G = chars[0x20]; // "Ġ"

/** Ids 0 "<|end|>" (control), 1 "<tool>" (user-defined), 2..257 the byte alphabet, then merge results. */
function makeSpec(merges: string[], extra: Partial<BpeSpec> = {}): BpeSpec {
  const tokens = ["<|end|>", "<tool>", ...chars];
  for (const m of merges) {
    const t = m.replace(" ", "");
    if (!tokens.includes(t)) tokens.push(t);
  }
  const types = tokens.map((_, i) => i === 0 ? 3 : i === 1 ? 4 : 1);
  return { tokens, types, merges, pre: "gpt2", addBos: false, eosId: 0, source: "test", ...extra };
}

const baseMerges = [`${G} t`, "h e", `${G}t he`, "i n", `${G} a`, "a a", "aa a"];

function ids(tok: BpeTokenizer, ...texts: string[]): number[] {
  return texts.map((t) => {
    for (let i = 0; i < tok.vocabSize; i++) if (tok.tokenText(i) === t) return i;
    throw new Error(`no token ${t}`);
  });
}

/** The original GPT-2 loop: merge every occurrence of the lowest-ranked pair, repeat. */
function naiveWord(spec: BpeSpec, word: string): number[] {
  const rank = new Map(spec.merges.map((m, i) => [m as string, i]));
  let syms = [...new TextEncoder().encode(word)].map((b) => chars[b]);
  for (;;) {
    let best = Infinity;
    for (let i = 0; i + 1 < syms.length; i++) best = Math.min(best, rank.get(`${syms[i]} ${syms[i + 1]}`) ?? Infinity);
    if (best === Infinity) break;
    const [l, r] = (spec.merges[best] as string).split(" ");
    const next: string[] = [];
    for (let i = 0; i < syms.length; i++) {
      if (i + 1 < syms.length && syms[i] === l && syms[i + 1] === r) {
        next.push(l + r);
        i++;
      } else next.push(syms[i]);
    }
    syms = next;
  }
  return syms.map((s) => spec.tokens.indexOf(s));
}

Deno.test("bpe: merges by rank within pre-tokenized words", () => {
  const tok = new BpeTokenizer(makeSpec(baseMerges));
  assert.deepEqual(tok.encode(" the"), ids(tok, `${G}the`));
  assert.deepEqual(tok.encode("the the"), ids(tok, "t", "he", `${G}the`));
  // "aaa": "a a" merges the leftmost pair first, then "aa a"
  assert.deepEqual(tok.encode("aaa"), ids(tok, "aaa"));
  // "aaaa": a+a (rank 5) at the left, then the remaining a+a (rank 5) beats aa+a (rank 6)
  assert.deepEqual(tok.encode("aaaa"), ids(tok, "aa", "aa"));
  assert.deepEqual(tok.decode(tok.encode("the aaaa in")), "the aaaa in");
});

Deno.test("bpe: empty text, spaces, BOS", () => {
  const tok = new BpeTokenizer(makeSpec(baseMerges));
  assert.deepEqual(tok.encode(""), []);
  assert.deepEqual(tok.encode("   "), ids(tok, G, G, G));
  const withBos = new BpeTokenizer(makeSpec(baseMerges, { bosId: 0, addBos: true }));
  assert.deepEqual(withBos.encode("a"), [0, ...ids(tok, "a")]);
  assert.deepEqual(withBos.encode("a", { addBos: false }), ids(tok, "a"));
});

Deno.test("bpe: control tokens need parseSpecial, user-defined tokens are always matched", () => {
  const tok = new BpeTokenizer(makeSpec(baseMerges));
  assert.deepEqual(tok.encode("in<|end|>in", { parseSpecial: true }), [...ids(tok, "in"), 0, ...ids(tok, "in")]);
  const plain = tok.encode("in<|end|>");
  assert.ok(!plain.includes(0));
  assert.equal(tok.decode(plain), "in<|end|>");
  assert.deepEqual(tok.encode("a<tool>"), [...ids(tok, "a"), 1]);
  assert.equal(tok.decode([0, 1]), "<tool>");
  assert.equal(tok.decode([0, 1], { special: true }), "<|end|><tool>");
  assert.deepEqual(tok.stopIds, new Set([0]));
});

Deno.test("bpe: bytes of multi-byte characters decode back; tokenBytes gives raw bytes", () => {
  const tok = new BpeTokenizer(makeSpec(baseMerges));
  const emoji = tok.encode("🐉");
  assert.equal(emoji.length, 4);
  assert.deepEqual([...tok.tokenBytes(emoji[0])], [0xf0]);
  assert.equal(tok.decode(emoji), "🐉");
  assert.equal(tok.decode(emoji.slice(0, 2)), "\uFFFD");
  assert.deepEqual([...tok.tokenBytes(ids(tok, `${G}the`)[0])], [0x20, 0x74, 0x68, 0x65]);
  assert.deepEqual([...tok.tokenBytes(0)], []);
  assert.deepEqual([...tok.tokenBytes(0, { special: true })], [...new TextEncoder().encode("<|end|>")]);
});

Deno.test("bpe: round trip", () => {
  const tok = new BpeTokenizer(makeSpec(baseMerges, { pre: "smollm" }));
  for (const text of ["the 123 in", "  a\n\n b\t", "日本 café 🐉 ½", "it's I'LL", "\u0085\ufeff\u00a0"]) {
    assert.equal(tok.decode(tok.encode(text)), text);
  }
});

Deno.test("bpe: pre-tokenizers", () => {
  const gpt2 = preTokenizerFor("gpt2").split;
  assert.deepEqual(gpt2("I'LL don't"), ["I", "'", "LL", " don", "'t"]);
  assert.deepEqual(gpt2("a  \n b"), ["a", "  \n", " b"]);
  assert.deepEqual(gpt2("x 12345 y"), ["x", " 12345", " y"]);
  assert.deepEqual(gpt2("a   "), ["a", "   "]);
  // Unicode White_Space, as Oniguruma's \s in Hugging Face tokenizers: U+0085 yes, U+FEFF no
  assert.deepEqual(gpt2("a \u0085b"), ["a", " ", "\u0085", "b"]);
  assert.deepEqual(gpt2("a \ufeffb"), ["a", " \ufeff", "b"]);
  const smollm = preTokenizerFor("smollm").split;
  assert.deepEqual(smollm("x 12 y3"), ["x", " ", "1", "2", " y", "3"]);
  assert.deepEqual(smollm("² Ⅻ"), ["²", " ", "Ⅻ"]);
  const llama3 = preTokenizerFor("llama3").split;
  assert.deepEqual(llama3("12345 I'LL"), ["123", "45", " I", "'LL"]);
  assert.equal(preTokenizerFor("smollm").warning, undefined);
  assert.match(preTokenizerFor("mystery").warning!, /mystery/);
});

Deno.test("bpe: unknown pre-tokenizer is a warning, not an error", () => {
  const tok = new BpeTokenizer(makeSpec(baseMerges, { pre: "mystery" }));
  assert.equal(tok.warnings.length, 1);
  assert.match(tok.warnings[0], /^test: unknown pre-tokenizer "mystery"/);
  assert.deepEqual(tok.encode(" the"), ids(tok, `${G}the`));
});

Deno.test("bpe: bad merges and ids", () => {
  assert.throws(() => new BpeTokenizer(makeSpec(["q zz"])), sparrowError("bad_model", /^test: merge 0 "q zz".*"zz"/));
  const spec = makeSpec([]);
  assert.throws(() => new BpeTokenizer({ ...spec, merges: ["ab"] }), sparrowError("bad_model", /has no space/));
  assert.throws(() => new BpeTokenizer({ ...spec, types: [1] }), sparrowError("bad_model", /token_type/));
  const tok = new BpeTokenizer(spec);
  assert.throws(() => tok.decode([tok.vocabSize]), sparrowError("invalid_argument", /outside the vocabulary/));
  // merges may also come as pairs (newer tokenizer.json)
  const pairs = new BpeTokenizer({ ...makeSpec(["h e"]), merges: [["h", "e"]] });
  assert.deepEqual(pairs.encode("he"), [pairs.vocabSize - 1]);
});

Deno.test("bpe: heap merge equals the original GPT-2 loop on random words", () => {
  let seed = 12345;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  const letters = ["a", "b", "c", "é"];
  for (let round = 0; round < 20; round++) {
    // random merges built bottom-up so every merge's parts exist
    const known = [..."abc", ...[...new TextEncoder().encode("é")].map((b) => chars[b])];
    const merges: string[] = [];
    for (let i = 0; i < 30; i++) {
      const l = known[rand(known.length)], r = known[rand(known.length)];
      const m = `${l} ${r}`;
      if (merges.includes(m)) continue;
      merges.push(m);
      if (!known.includes(l + r)) known.push(l + r);
    }
    const spec = makeSpec(merges);
    const tok = new BpeTokenizer(spec);
    for (let k = 0; k < 30; k++) {
      let word = "";
      const len = 1 + rand(25);
      for (let j = 0; j < len; j++) word += letters[rand(letters.length)];
      assert.deepEqual(tok.encode(word), naiveWord(spec, word), word);
    }
  }
});
