import assert from "node:assert/strict";
import { join } from "node:path";
import { SparrowError } from "../core/errors.ts";
import { readGguf } from "../core/gguf.ts";
import { loadModel } from "../core/model.ts";
import { preloadNativeLibraries, skip } from "../tests/_models.ts";
import { dequantize, QuantType } from "./ggml_quants.ts";
import {
  defaultLlama2TokenizerPath,
  generatedVocab,
  synthesizeModel,
  synthPresets,
  type SynthShape,
  synthTensorType,
  type SynthWeightType,
  synthWeightTypes,
} from "./synth.ts";

preloadNativeLibraries();

const small: SynthShape = {
  dim: 64,
  ffnDim: 128,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  vocabSize: 300,
  contextLength: 64,
};
/** The K-quants need rows of whole 256-element super-blocks. */
const smallK: SynthShape = { ...small, dim: 256, ffnDim: 256 };
const isK = (t: SynthWeightType) => /_k/.test(t);

async function withDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sparrow_synth_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Logits of a short prompt; asserts every value is finite and returns their rms. */
async function logitsRms(path: string): Promise<number> {
  using model = await loadModel(path, { threads: 1, contextLength: 32 });
  using session = model.createSession({ allLogits: true, batchSize: 8 });
  const rows = await session.evaluate([1, 5, 200, 17, 42, 299]);
  let ss = 0;
  let n = 0;
  for (const row of rows) {
    for (const v of row) {
      assert.ok(Number.isFinite(v), `non-finite logit ${v}`);
      ss += v * v;
      n++;
    }
  }
  return Math.sqrt(ss / n);
}

Deno.test("synth: the tiny preset is a labelled Llama GGUF that loads, tokenizes and runs", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "tiny.gguf");
    const done: string[] = [];
    const r = synthesizeModel(path, { shape: "tiny" }, (i, total, _bytes, name) => {
      assert.equal(i, done.length + 1);
      assert.ok(i <= total);
      done.push(name);
    });
    assert.equal(r.name, "synthetic tiny f32 (seed 1)");
    assert.equal(r.generation, "float");
    assert.equal(done.length, r.tensors);
    assert.deepEqual([done[0], done[1], done.at(-1)], ["token_embd.weight", "blk.0.attn_norm.weight", "output.weight"]);
    const gguf = readGguf(path);
    assert.equal(gguf.fileSize, r.bytes);
    assert.equal(gguf.metadata.get("sparrow.synthetic"), true);
    assert.equal(gguf.metadata.get("general.name"), r.name);
    assert.equal(gguf.metadata.get("llama.attention.head_count_kv"), 2);
    assert.equal(gguf.metadata.get("llama.context_length"), 256);
    assert.deepEqual(gguf.tensors.get("blk.1.ffn_down.weight")?.dims, [192, 64]);
    const rms = await logitsRms(path);
    assert.ok(rms > 0.1 && rms < 10, `logits rms ${rms}: weights are not scaled to keep activations O(1)`);
    using model = await loadModel(path, { threads: 1 });
    assert.equal(model.detokenize(model.tokenize("hello world, 42!")), "hello world, 42!");
  });
});

Deno.test("synth: every weight type, drawn as floats or as direct codes, loads and gives finite logits", async () => {
  await withDir(async (dir) => {
    for (const weightType of Object.keys(synthWeightTypes) as (keyof typeof synthWeightTypes)[]) {
      for (const generation of ["float", "direct"] as const) {
        const path = join(dir, `${weightType}_${generation}.gguf`);
        const r = synthesizeModel(path, {
          shape: isK(weightType) ? smallK : small,
          weightType,
          generation,
          tiedEmbeddings: generation === "direct",
        });
        assert.equal(r.generation, generation);
        const gguf = readGguf(path);
        assert.equal(gguf.tensors.get("blk.0.attn_q.weight")?.type, synthWeightTypes[weightType]);
        assert.equal(gguf.tensors.get("blk.0.ffn_norm.weight")?.type, QuantType.F32);
        assert.equal(gguf.tensors.has("output.weight"), generation === "float");
        const rms = await logitsRms(path);
        // Tied classifiers multiply by N(0, 1) embeddings: logits ~ sqrt(dim) = 8 rather than ~1.
        assert.ok(rms > 0.1 && rms < 40, `${weightType} ${generation}: logits rms ${rms}`);
      }
    }
  });
});

Deno.test("synth: direct codes have the intended spread and Q8_0 never uses -128", async () => {
  await withDir(async (dir) => {
    const types = ["q4_0", "q4_1", "q8_0", "f16", "bf16", "f32", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"] as const;
    for (const weightType of types) {
      const path = join(dir, `${weightType}.gguf`);
      const shape = isK(weightType) ? { ...smallK, ffnDim: 1024 } : { ...small, ffnDim: 256 };
      synthesizeModel(path, { shape, weightType, generation: "direct" });
      const gguf = readGguf(path);
      const t = gguf.tensors.get("blk.0.ffn_gate.weight")!; // fan-in dim: sigma 1/sqrt(dim)
      const sigma = 1 / Math.sqrt(shape.dim);
      const bytes = new Uint8Array(t.nBytes);
      using file = await Deno.open(path);
      await file.seek(t.offset, Deno.SeekMode.Start);
      assert.equal(await file.read(bytes), t.nBytes);
      if (weightType === "q8_0") {
        for (let b = 0; b < bytes.length; b += 34) {
          for (let j = b + 2; j < b + 34; j++) assert.notEqual(bytes[j], 0x80, `byte ${j} is -128`);
        }
      }
      const x = dequantize(t.type, bytes, t.nElements, new Float64Array(t.nElements));
      let mean = 0;
      let ss = 0;
      for (const v of x) mean += v / x.length;
      for (const v of x) ss += (v - mean) ** 2;
      const std = Math.sqrt(ss / x.length);
      assert.ok(Math.abs(std - sigma) < 0.2 * sigma, `${weightType}: element std ${std}, want ~${sigma}`);
      assert.ok(Math.abs(mean) < 0.1 * sigma, `${weightType}: element mean ${mean}, want ~0`);
    }
  });
});

Deno.test("synth: Q4_K_M and Q5_K_M give Q6_K to llama.cpp's layers, output and tied embedding", async () => {
  // llama.cpp's use_more_bits for 32 layers: the first and last 4, and 6, 9, ..., 27 between.
  const more = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
  for (const [mix, base] of [["q4_k_m", QuantType.Q4_K], ["q5_k_m", QuantType.Q5_K]] as const) {
    for (let l = 0; l < 32; l++) {
      const want = more.includes(l) ? QuantType.Q6_K : base;
      assert.equal(synthTensorType(mix, `blk.${l}.attn_v.weight`, 32), want, `${mix} layer ${l} attn_v`);
      assert.equal(synthTensorType(mix, `blk.${l}.ffn_down.weight`, 32), want, `${mix} layer ${l} ffn_down`);
      assert.equal(synthTensorType(mix, `blk.${l}.attn_k.weight`, 32), base);
      assert.equal(synthTensorType(mix, `blk.${l}.ffn_up.weight`, 32), base);
    }
    assert.equal(synthTensorType(mix, "output.weight", 32), QuantType.Q6_K);
    assert.equal(synthTensorType(mix, "token_embd.weight", 32), base);
    assert.equal(synthTensorType(mix, "token_embd.weight", 32, true), QuantType.Q6_K);
  }
  assert.equal(synthTensorType("q4_k", "output.weight", 32), QuantType.Q4_K);
  await withDir((dir) => {
    const path = join(dir, "m.gguf");
    const shape = { ...smallK, nLayers: 3 };
    synthesizeModel(path, { shape, weightType: "q4_k_m", generation: "direct" });
    const gguf = readGguf(path);
    assert.equal(gguf.metadata.get("general.file_type"), 15); // LLAMA_FTYPE_MOSTLY_Q4_K_M
    for (const t of gguf.tensors.values()) {
      const want = t.dims.length === 1 ? QuantType.F32 : synthTensorType("q4_k_m", t.name, 3);
      assert.equal(t.type, want, t.name);
    }
    // 3 layers: eighth = 0, so only layers >= floor(21 / 8) = 2 (and (l - 0) % 3 == 2: layer 2) get Q6_K.
    assert.equal(gguf.tensors.get("blk.2.ffn_down.weight")?.type, QuantType.Q6_K);
    assert.equal(gguf.tensors.get("blk.1.ffn_down.weight")?.type, QuantType.Q4_K);
  });
});

Deno.test("synth: tensorTypes overrides single tensors, per layer or for all layers", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "o.gguf");
    synthesizeModel(path, {
      shape: smallK,
      weightType: "q4_0",
      tensorTypes: { output: "q6_k", attn_v: "q8_0", "blk.1.attn_v": "f16", token_embd: "f32" },
    });
    const gguf = readGguf(path);
    const type = (name: string) => gguf.tensors.get(name)?.type;
    assert.equal(type("output.weight"), QuantType.Q6_K);
    assert.equal(type("token_embd.weight"), QuantType.F32);
    assert.equal(type("blk.0.attn_v.weight"), QuantType.Q8_0);
    assert.equal(type("blk.1.attn_v.weight"), QuantType.F16);
    assert.equal(type("blk.1.attn_q.weight"), QuantType.Q4_0);
    const rms = await logitsRms(path);
    assert.ok(rms > 0.1 && rms < 10, `logits rms ${rms}`);
  });
});

Deno.test({
  name: "synth: a 7B Q4_K_M model is written in seconds and gives finite logits (SPARROW_SYNTH_7B=1: ~4 GB on disk)",
  ignore: !Deno.env.get("SPARROW_SYNTH_7B"),
  fn: async () => {
    await withDir(async (dir) => {
      const path = join(dir, "7b_q4_k_m.gguf");
      const r = synthesizeModel(path, { shape: "llama2-7b", weightType: "q4_k_m" });
      console.log(
        `    ${r.name}: ${(r.bytes / 2 ** 30).toFixed(2)} GiB in ${r.seconds.toFixed(1)} s (${r.generation})`,
      );
      assert.equal(r.generation, "direct");
      // Direct generation is bound by the disk: measured 6.8 to 15.8 s here, of which 2.9 s is compute (written
      // to /dev/null). Float generation (Gaussians through the quantizer) would take minutes.
      assert.ok(r.seconds < 120, `${r.seconds} s`);
      using model = await loadModel(path, { threads: 2, contextLength: 16 });
      using session = model.createSession({ allLogits: true, batchSize: 2 });
      const rows = await session.evaluate([1, 450]);
      let ss = 0;
      for (const row of rows) {
        for (const v of row) {
          assert.ok(Number.isFinite(v), `non-finite logit ${v}`);
          ss += v * v;
        }
      }
      const rms = Math.sqrt(ss / (2 * 32000));
      assert.ok(rms > 0.1 && rms < 10, `logits rms ${rms}`);
    });
  },
});

Deno.test("synth: the same seed gives the same file, another seed another", async () => {
  await withDir((dir) => {
    const a = join(dir, "a.gguf");
    const b = join(dir, "b.gguf");
    const c = join(dir, "c.gguf");
    synthesizeModel(a, { shape: small, weightType: "q4_0", seed: 5 });
    synthesizeModel(b, { shape: small, weightType: "q4_0", seed: 5 });
    synthesizeModel(c, { shape: small, weightType: "q4_0", seed: 6 });
    const [ba, bb, bc] = [a, b, c].map((p) => Deno.readFileSync(p));
    assert.deepEqual(ba, bb);
    assert.notDeepEqual(ba.subarray(ba.length - 4096), bc.subarray(bc.length - 4096));
  });
});

Deno.test("synth: head and rope dimensions, variants and rope base land in the metadata", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "m.gguf");
    synthesizeModel(path, {
      shape: { ...small, dim: 96, headDim: 32, ropeDim: 16 },
      activation: "drelu",
      ropeLayout: "neox",
      ropeTheta: 500000,
    });
    const md = readGguf(path).metadata;
    assert.equal(md.get("llama.attention.key_length"), 32);
    assert.equal(md.get("llama.rope.dimension_count"), 16);
    assert.equal(md.get("llama.rope.freq_base"), 500000);
    assert.equal(md.get("sparrow.ffn_activation"), "drelu");
    assert.equal(md.get("sparrow.rope_layout"), "neox");
    using model = await loadModel(path, { threads: 1, contextLength: 16 });
    assert.equal(model.info.hparams.headDim, 32);
    assert.equal(model.info.hparams.ropeDim, 16);
  });
});

Deno.test("synth: the generated vocabulary is SentencePiece-shaped and reachable by merges", () => {
  const v = generatedVocab(32000);
  assert.equal(v.tokens.length, 32000);
  assert.deepEqual(v.tokens.slice(0, 4), ["<unk>", "<s>", "</s>", "<0x00>"]);
  assert.equal(v.tokens[258], "<0xFF>");
  assert.deepEqual(Array.from(v.types.subarray(0, 4)), [2, 3, 3, 6]);
  assert.equal(v.types[259], 1);
  assert.equal(new Set(v.tokens).size, v.tokens.length);
  const known = new Set(v.tokens);
  for (const t of v.tokens.slice(259)) {
    const chars = [...t];
    if (chars.length > 1) assert.ok(known.has(chars.slice(0, -1).join("")), `no prefix piece for '${t}'`);
  }
  assert.ok(v.scores[259] > v.scores[31999]);
  assert.throws(() => generatedVocab(100), /259 ids are reserved/);
});

Deno.test("synth: the real Llama-2 vocabulary when asked for", async () => {
  try {
    Deno.statSync(defaultLlama2TokenizerPath);
  } catch {
    skip(`${defaultLlama2TokenizerPath} not found`);
    return;
  }
  await withDir(async (dir) => {
    const path = join(dir, "l2.gguf");
    synthesizeModel(path, { shape: { ...small, nLayers: 1, vocabSize: 32000 }, vocab: "llama2" });
    using model = await loadModel(path, { threads: 1, contextLength: 16 });
    assert.equal(model.tokenizer.vocabSize, 32000);
    assert.equal(model.tokenizer.tokenText(29871), "\u2581");
    const ids = model.tokenize("Hello world");
    assert.deepEqual(ids, [1, 15043, 3186]); // as Llama-2's SentencePiece model encodes it
  });
});

Deno.test("synth: impossible shapes and options are refused, naming the value", () => {
  const refuses = (fn: () => unknown, re: RegExp) =>
    assert.throws(fn, (e: unknown) => e instanceof SparrowError && e.code === "invalid_argument" && re.test(e.message));
  const out = "/nonexistent/never-written.gguf";
  refuses(() => synthesizeModel(out, { shape: "huge" as "tiny" }), /unknown synthetic shape 'huge'/);
  refuses(() => synthesizeModel(out, { shape: { ...small, dim: 48, nHeads: 4 }, weightType: "q4_0" }), /rows of 48/);
  refuses(() => synthesizeModel(out, { shape: small, weightType: "q4_k" }), /rows of 64, .* 256-element Q4_K/);
  refuses(
    () => synthesizeModel(out, { shape: { ...smallK, ffnDim: 320 }, weightType: "q5_k_m" }),
    /'blk.0.ffn_down.weight' has rows of 320, .* 256-element Q5_K/,
  );
  refuses(() => synthesizeModel(out, { shape: small, tensorTypes: { attn_x: "f16" } }), /names no tensor .*attn_x/);
  refuses(
    () => synthesizeModel(out, { shape: small, tensorTypes: { output: "q4_k_m" as "q4_k" } }),
    /'q4_k_m' is not a single tensor type/,
  );
  refuses(() => synthesizeModel(out, { shape: { ...small, nKvHeads: 3 } }), /nHeads 4 is not a multiple of nKvHeads 3/);
  refuses(() => synthesizeModel(out, { shape: { ...small, ropeDim: 40 } }), /ropeDim 40/);
  refuses(() => synthesizeModel(out, { shape: small, vocab: "llama2" }), /32000 tokens but .* 300/);
  refuses(() => synthesizeModel(out, { shape: small, seed: -1 }), /seed -1/);
});

Deno.test("synth: presets have the shapes of the models they are named after", () => {
  assert.deepEqual(synthPresets["llama2-7b"], {
    dim: 4096,
    ffnDim: 11008,
    nLayers: 32,
    nHeads: 32,
    nKvHeads: 32,
    vocabSize: 32000,
    contextLength: 4096,
  });
  assert.equal(synthPresets["mistral-7b"].ffnDim, 14336);
  assert.equal(synthPresets["mistral-7b"].nKvHeads, 8);
  assert.equal(synthPresets.small.dim, 256);
});
