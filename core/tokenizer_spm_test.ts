import assert from "node:assert/strict";
import { SparrowError } from "./errors.ts";
import { type SpmSpec, SpmTokenizer } from "./tokenizer_spm.ts";

/** An assert.throws validator for a SparrowError of `code` whose message matches `re`. */
const sparrowError = (code: string, re: RegExp = /./) => (e: unknown) =>
  e instanceof SparrowError && e.code === code && re.test(e.message);

/** A small Llama-style vocabulary: specials, 256 byte tokens, then pieces with scores. */
function makeSpec(pieces: [string, number][], extra: Partial<SpmSpec> = {}): SpmSpec {
  const tokens = ["<unk>", "<s>", "</s>"];
  const scores = [0, 0, 0];
  const types = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    scores.push(0);
    types.push(6);
  }
  for (const [t, s] of pieces) {
    tokens.push(t);
    scores.push(s);
    types.push(1);
  }
  return {
    tokens,
    scores,
    types,
    bosId: 1,
    eosId: 2,
    unkId: 0,
    addBos: true,
    addSpacePrefix: true,
    source: "test",
    ...extra,
  };
}

const basePieces: [string, number][] = [
  ["▁", -1],
  ["a", -2],
  ["b", -3],
  ["c", -4],
  ["é", -5],
  ["▁a", -6],
  ["ab", -7],
  ["▁ab", -8],
  ["bc", -9],
  ["▁▁", -10],
];

function idOf(tok: SpmTokenizer, text: string): number {
  for (let i = 0; i < tok.vocabSize; i++) if (tok.tokenText(i) === text) return i;
  throw new Error(`no token ${text}`);
}

/** llama2.c's encoder written as plainly as possible: the oracle for the heap version. */
function naiveEncode(spec: SpmSpec, text: string): number[] {
  const ids = new Map<string, number>();
  spec.tokens.forEach((t, i) => {
    if (!ids.has(t)) ids.set(t, i);
  });
  const toks: number[] = [];
  for (const ch of (" " + text).replaceAll(" ", "▁")) {
    const id = ids.get(ch);
    if (id !== undefined) toks.push(id);
    else for (const b of new TextEncoder().encode(ch)) toks.push(b + 3);
  }
  for (;;) {
    let best = -1e10, bestId = -1, bestIdx = -1;
    for (let i = 0; i + 1 < toks.length; i++) {
      const id = ids.get(spec.tokens[toks[i]] + spec.tokens[toks[i + 1]]);
      if (id !== undefined && spec.scores[id] > best) {
        best = spec.scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx < 0) return toks;
    toks.splice(bestIdx, 2, bestId);
  }
}

Deno.test("spm: encodes with BOS, dummy prefix and merges by score", () => {
  const tok = new SpmTokenizer(makeSpec(basePieces));
  assert.deepEqual(tok.encode("ab"), [1, idOf(tok, "▁ab")]);
  assert.deepEqual(tok.encode("ab", { addBos: false }), [idOf(tok, "▁ab")]);
  assert.deepEqual(tok.encode("abc", { addBos: false }), [idOf(tok, "▁ab"), idOf(tok, "c")]);
  // "▁a b c ▁ a": both "▁a" (-6) merge first, then "▁a"+"b" = "▁ab" (-8) beats "bc" (-9)
  assert.deepEqual(tok.encode("abc a", { addBos: false }), [idOf(tok, "▁ab"), idOf(tok, "c"), idOf(tok, "▁a")]);
});

Deno.test("spm: empty text and only spaces", () => {
  const tok = new SpmTokenizer(makeSpec(basePieces));
  assert.deepEqual(tok.encode(""), [1]);
  assert.deepEqual(tok.encode("", { addBos: false }), []);
  // dummy prefix + 3 spaces = 4 × "▁", merged pairwise into "▁▁" from the left
  assert.deepEqual(tok.encode("   ", { addBos: false }), [idOf(tok, "▁▁"), idOf(tok, "▁▁")]);
  assert.equal(tok.decode(tok.encode("   ")), "   ");
});

Deno.test("spm: ties merge the leftmost pair", () => {
  const tok = new SpmTokenizer(
    makeSpec([["▁", -1], ["a", -1], ["b", -1], ["ab", -5], ["ba", -5]], { addSpacePrefix: false }),
  );
  // "aba": ab and ba tie; the leftmost (ab) wins, leaving "a"
  assert.deepEqual(tok.encode("aba", { addBos: false }), [idOf(tok, "ab"), idOf(tok, "a")]);
  assert.deepEqual(tok.encode("bab", { addBos: false }), [idOf(tok, "ba"), idOf(tok, "b")]);
});

Deno.test("spm: scores at or below -1e10 never merge (llama2.c's initial best score)", () => {
  const tok = new SpmTokenizer(makeSpec([["a", -1], ["b", -1], ["ab", -1e10], ["▁", 0]], { addSpacePrefix: false }));
  assert.deepEqual(tok.encode("ab", { addBos: false }), [idOf(tok, "a"), idOf(tok, "b")]);
});

Deno.test("spm: unknown code points fall back to byte tokens, and decode back", () => {
  const tok = new SpmTokenizer(makeSpec(basePieces));
  const ids = tok.encode("a🐉", { addBos: false });
  assert.deepEqual(ids, [idOf(tok, "▁a"), 0xf0 + 3, 0x9f + 3, 0x90 + 3, 0x89 + 3]);
  assert.equal(tok.decode(ids), " a🐉");
  assert.equal(tok.decode([1, ...ids]), "a🐉");
  // a known non-ASCII code point is looked up, not split
  assert.deepEqual(tok.encode("é", { addBos: false }), [idOf(tok, "▁"), idOf(tok, "é")]);
});

Deno.test("spm: without byte tokens unknown code points become <unk>, and without <unk> it throws", () => {
  const spec: SpmSpec = {
    tokens: ["<unk>", "<s>", "</s>", "▁", "a"],
    scores: [0, 0, 0, -1, -2],
    bosId: 1,
    eosId: 2,
    unkId: 0,
    addBos: false,
    addSpacePrefix: false,
    source: "tiny",
  };
  assert.deepEqual(new SpmTokenizer(spec).encode("aé"), [4, 0, 0]);
  const noUnk = new SpmTokenizer({ ...spec, unkId: undefined });
  assert.throws(() => noUnk.encode("é"), sparrowError("invalid_argument", /U\+00E9/));
});

Deno.test("spm: control tokens are text unless parseSpecial; the dummy prefix follows special tokens", () => {
  const tok = new SpmTokenizer(makeSpec([...basePieces, ["<", -20], [">", -21], ["s", -22], ["/", -23]]));
  const plain = tok.encode("a</s>", { addBos: false });
  assert.ok(!plain.includes(2));
  assert.deepEqual(tok.encode("a</s>a", { addBos: false, parseSpecial: true }), [idOf(tok, "▁a"), 2, idOf(tok, "▁a")]);
  assert.deepEqual(tok.encode("</s>", { addBos: false, parseSpecial: true }), [2]);
  assert.equal(tok.decode([1, idOf(tok, "▁a"), 2]), "a");
  assert.equal(tok.decode([1, idOf(tok, "▁a"), 2], { special: true }), "<s>a</s>");
});

Deno.test("spm: user-defined tokens are always single tokens", () => {
  const spec = makeSpec([...basePieces, ["<tool>", 0]]);
  const types = Array.from(spec.types!);
  types[types.length - 1] = 4;
  const tok = new SpmTokenizer({ ...spec, types });
  const tool = tok.vocabSize - 1;
  assert.deepEqual(tok.encode("a<tool>", { addBos: false }), [idOf(tok, "▁a"), tool]);
  assert.equal(tok.decode([tool]), "<tool>");
});

Deno.test("spm: the space after BOS is dropped, via decode or tokenBytes' previous", () => {
  const tok = new SpmTokenizer(makeSpec(basePieces));
  const a = idOf(tok, "▁a");
  assert.equal(tok.decode([1, a, a]), "a a");
  assert.equal(tok.decode([a, a]), " a a");
  assert.deepEqual([...tok.tokenBytes(a, { previous: 1 })], [0x61]);
  assert.deepEqual([...tok.tokenBytes(a, { previous: a })], [0x20, 0x61]);
  assert.deepEqual([...tok.tokenBytes(a)], [0x20, 0x61]);
  // byte tokens keep their byte even after BOS (llama2.c only strips a piece's leading ' ')
  assert.deepEqual([...tok.tokenBytes(0x20 + 3, { previous: 1 })], [0x20]);
  const noPrefix = new SpmTokenizer(makeSpec(basePieces, { addSpacePrefix: false }));
  assert.equal(noPrefix.decode([1, a]), " a");
});

Deno.test("spm: round trip", () => {
  const tok = new SpmTokenizer(makeSpec(basePieces));
  for (const text of ["abc", " a  b ", "\n\ttab", "日本 café 🐉", "a".repeat(1000), "   "]) {
    assert.equal(tok.decode(tok.encode(text)), text);
  }
});

Deno.test("spm: bad ids and bad specs", () => {
  const tok = new SpmTokenizer(makeSpec(basePieces));
  assert.throws(() => tok.tokenBytes(-1), sparrowError("invalid_argument"));
  assert.throws(() => tok.tokenText(tok.vocabSize), /outside the vocabulary/);
  assert.throws(
    () => new SpmTokenizer({ ...makeSpec(basePieces), scores: [1, 2] }),
    sparrowError("bad_model", /^test:/),
  );
  const spec = makeSpec(basePieces);
  const types = Array.from(spec.types!);
  types[10] = 6;
  types[3 + 256] = 6; // "▁" claimed as a byte token
  assert.throws(() => new SpmTokenizer({ ...spec, types }), /byte token 259/);
});

Deno.test("spm: heap merge equals the naive llama2.c loop on random text", () => {
  // deterministic xorshift so failures reproduce
  let seed = 0x9e3779b9;
  const rand = (n: number) => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const alphabet = ["a", "b", "c", "▁", "é", "日"];
  for (let round = 0; round < 30; round++) {
    // random vocabulary: single characters plus random multi-character pieces, scores with ties
    const pieces = new Map<string, number>();
    for (const ch of ["a", "b", "c", "▁", "é"]) pieces.set(ch, -rand(5));
    for (let i = 0; i < 40; i++) {
      let s = "";
      const len = 2 + rand(4);
      for (let j = 0; j < len; j++) s += alphabet[rand(5)];
      pieces.set(s, -rand(8));
    }
    const spec = makeSpec([...pieces]);
    const tok = new SpmTokenizer(spec);
    for (let k = 0; k < 20; k++) {
      let text = "";
      const len = rand(40);
      for (let j = 0; j < len; j++) text += alphabet[rand(alphabet.length)].replace("▁", " ");
      assert.deepEqual(
        tok.encode(text, { addBos: false }),
        text === "" ? [] : naiveEncode(spec, text),
        JSON.stringify(text),
      );
    }
  }
});
