import assert from "node:assert/strict";
import { SparrowError } from "./errors.ts";
import { tokenizerFromGguf, tokenizerFromHfJson } from "./tokenizer.ts";

const sparrowError = (code: string, re: RegExp = /./) => (e: unknown) =>
  e instanceof SparrowError && e.code === code && re.test(e.message);

function llamaMetadata(): Map<string, unknown> {
  return new Map<string, unknown>([
    ["tokenizer.ggml.model", "llama"],
    ["tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "▁", "a", "▁a", "<0x0A>"]],
    ["tokenizer.ggml.scores", new Float32Array([0, 0, 0, -1, -2, -3, 0])],
    ["tokenizer.ggml.token_type", new Int32Array([2, 3, 3, 1, 1, 1, 6])],
    ["tokenizer.ggml.bos_token_id", 1],
    ["tokenizer.ggml.eos_token_id", 2],
    ["tokenizer.ggml.unknown_token_id", 0],
  ]);
}

function gpt2Metadata(): Map<string, unknown> {
  return new Map<string, unknown>([
    ["tokenizer.ggml.model", "gpt2"],
    ["tokenizer.ggml.pre", "smollm"],
    ["tokenizer.ggml.tokens", ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġab"]],
    ["tokenizer.ggml.token_type", new Int32Array([3, 3, 3, 1, 1, 1, 1, 1])],
    ["tokenizer.ggml.merges", ["a b", "Ġ ab"]],
    ["tokenizer.ggml.bos_token_id", 1],
    ["tokenizer.ggml.eos_token_id", 2],
    ["tokenizer.ggml.add_bos_token", false],
  ]);
}

Deno.test("tokenizerFromGguf: llama metadata gives an SPM tokenizer with llama defaults", () => {
  const tok = tokenizerFromGguf(llamaMetadata(), "tiny.gguf");
  assert.equal(tok.kind, "spm");
  assert.equal(tok.vocabSize, 7);
  assert.equal(tok.bosId, 1);
  assert.equal(tok.eosId, 2);
  assert.equal(tok.addBos, true);
  assert.deepEqual(tok.encode("a a"), [1, 5, 5]);
  assert.deepEqual(tok.encode("a\n", { addBos: false }), [5, 6]);
  assert.equal(tok.decode([1, 5, 5, 6, 2]), "a a\n");
  assert.deepEqual(tok.stopIds, new Set([2]));
  assert.equal(tok.tokenText(5), "▁a");
  const noPrefix = llamaMetadata();
  noPrefix.set("tokenizer.ggml.add_space_prefix", false);
  noPrefix.set("tokenizer.ggml.add_bos_token", false);
  assert.deepEqual(tokenizerFromGguf(noPrefix).encode("a a"), [4, 5]);
});

Deno.test("tokenizerFromGguf: gpt2 metadata gives a BPE tokenizer with ChatML stop ids", () => {
  const tok = tokenizerFromGguf(gpt2Metadata(), "tiny.gguf");
  assert.equal(tok.kind, "bpe");
  assert.equal(tok.addBos, false);
  assert.deepEqual(tok.encode("ab ab"), [5, 7]);
  assert.deepEqual(tok.encode("<|im_start|>ab<|im_end|>", { parseSpecial: true }), [1, 5, 2]);
  assert.deepEqual(tok.stopIds, new Set([2, 0]));
  assert.deepEqual(tok.warnings, []);
  // bytes without a token (here all but a, b and the space) are dropped, as Hugging Face does
  assert.deepEqual(tok.encode("a-b"), [3, 4]);
});

Deno.test("tokenizerFromGguf: eot/eom ids join the stop ids; -1 ids mean none", () => {
  const md = gpt2Metadata();
  md.set("tokenizer.ggml.eot_token_id", 3);
  md.set("tokenizer.ggml.bos_token_id", 0xffffffff);
  const tok = tokenizerFromGguf(md);
  assert.ok(tok.stopIds.has(3));
  assert.equal(tok.bosId, undefined);
});

Deno.test("tokenizerFromGguf: bad metadata names the key and the file", () => {
  const without = (key: string) => {
    const md = gpt2Metadata();
    md.delete(key);
    return md;
  };
  assert.throws(
    () => tokenizerFromGguf(without("tokenizer.ggml.tokens"), "x.gguf"),
    sparrowError("bad_model", /^x\.gguf: tokenizer\.ggml\.tokens is missing/),
  );
  assert.throws(
    () => tokenizerFromGguf(without("tokenizer.ggml.model"), "x.gguf"),
    sparrowError("bad_model", /tokenizer\.ggml\.model is missing/),
  );
  assert.throws(
    () => tokenizerFromGguf(without("tokenizer.ggml.merges"), "x.gguf"),
    sparrowError("bad_model", /tokenizer\.ggml\.merges is missing/),
  );
  const unknownModel = gpt2Metadata();
  unknownModel.set("tokenizer.ggml.model", "bert");
  assert.throws(
    () => tokenizerFromGguf(unknownModel, "x.gguf"),
    sparrowError("unsupported", /x\.gguf: tokenizer\.ggml\.model "bert"/),
  );
  const badMerge = gpt2Metadata();
  badMerge.set("tokenizer.ggml.merges", ["a b", "b zz"]);
  assert.throws(
    () => tokenizerFromGguf(badMerge, "x.gguf"),
    sparrowError("bad_model", /x\.gguf: merge 1 "b zz" references unknown token "zz"/),
  );
  const badId = gpt2Metadata();
  badId.set("tokenizer.ggml.eos_token_id", 99);
  assert.throws(
    () => tokenizerFromGguf(badId, "x.gguf"),
    sparrowError("bad_model", /tokenizer\.ggml\.eos_token_id is 99/),
  );
  const badTypes = gpt2Metadata();
  badTypes.set("tokenizer.ggml.token_type", new Int32Array(3));
  assert.throws(() => tokenizerFromGguf(badTypes, "x.gguf"), sparrowError("bad_model", /token_type has 3 entries/));
  const noScores = llamaMetadata();
  noScores.delete("tokenizer.ggml.scores");
  assert.throws(
    () => tokenizerFromGguf(noScores, "x.gguf"),
    sparrowError("bad_model", /tokenizer\.ggml\.scores is missing/),
  );
  const wrongType = llamaMetadata();
  wrongType.set("tokenizer.ggml.tokens", "abc");
  assert.throws(
    () => tokenizerFromGguf(wrongType, "x.gguf"),
    sparrowError("bad_model", /tokens should be an array of strings/),
  );
  const empty = gpt2Metadata();
  empty.set("tokenizer.ggml.tokens", []);
  assert.throws(() => tokenizerFromGguf(empty, "x.gguf"), sparrowError("bad_model", /tokens is empty/));
});

Deno.test("tokenizerFromGguf: unknown pre-tokenizer warns", () => {
  const md = gpt2Metadata();
  md.set("tokenizer.ggml.pre", "qwen9");
  const tok = tokenizerFromGguf(md, "x.gguf");
  assert.ok(tok.warnings.some((w) => /^x\.gguf: unknown pre-tokenizer "qwen9"/.test(w)), tok.warnings.join("\n"));
});

Deno.test("tokenizerFromHfJson: ByteLevel BPE with added tokens", () => {
  const json = {
    added_tokens: [{ id: 0, content: "<|im_end|>", special: true }, { id: 4, content: "<x>", special: false }],
    normalizer: null,
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [{ type: "Digits", individual_digits: true }, {
        type: "ByteLevel",
        add_prefix_space: false,
        use_regex: true,
      }],
    },
    model: { type: "BPE", vocab: { "<|im_end|>": 0, a: 1, b: 2, ab: 3, "<x>": 4 }, merges: ["a b"] },
  };
  const tok = tokenizerFromHfJson(json, { eosToken: "<|im_end|>" });
  assert.equal(tok.eosId, 0);
  assert.deepEqual(tok.encode("ab<|im_end|><x>", { parseSpecial: true }), [3, 0, 4]);
  assert.deepEqual(tok.encode("ab<x>"), [3, 4]);
  assert.equal(tok.decode([3, 0, 4]), "ab<x>");
  assert.throws(
    () => tokenizerFromHfJson({ ...json, model: { ...json.model, type: "Unigram" } }),
    sparrowError("unsupported", /model\.type "Unigram"/),
  );
  assert.throws(
    () => tokenizerFromHfJson({ ...json, pre_tokenizer: { type: "Metaspace" } }, { source: "t.json" }),
    sparrowError("unsupported", /t\.json: pre_tokenizer Metaspace/),
  );
  assert.throws(
    () => tokenizerFromHfJson({ ...json, model: { ...json.model, merges: ["a q"] } }),
    sparrowError("bad_model", /"q"/),
  );
  assert.throws(() => tokenizerFromHfJson([]), sparrowError("bad_model"));
});
