/**
 * Sparse-FFN synthetic models (models/synth_sparse.ts): their activation statistics, measured
 * through the float64 oracle on English text, and that they are still valid models the engine runs
 * as the oracle does.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { SparrowError } from "../core/errors.ts";
import { readGguf } from "../core/gguf.ts";
import { loadModel } from "../core/model.ts";
import { preloadNativeLibraries } from "../tests/_models.ts";
import { ActivationRecorder, type ActivationStats, activationStats } from "./activation_stats.ts";
import { dequantize } from "./ggml_quants.ts";
import { referenceForward } from "./reference_forward.ts";
import { synthesizeModel, type SynthOptions, synthPresets, type SynthResult } from "./synth.ts";
import { normalCdf, normalQuantile } from "./synth_sparse.ts";

preloadNativeLibraries();

const text = "The old lighthouse keeper climbed the spiral stairs every evening, counting each step as his " +
  "father had taught him. At the top he wiped the salt from the glass, trimmed the wick, and watched the ships " +
  "pass far out beyond the reef. Some nights the fog rolled in so thick that he could not see his own hands, " +
  "and then he rang the bell until dawn. The villagers said he never slept, but the truth was simpler: he " +
  "loved the sea too much to close his eyes on it.";
/** Tokens of the text measured (BOS, then 127 text tokens). */
const streamTokens = 128;

/**
 * Tolerances. Measured on the small preset (seed 1, the cases below): inactive 0.891-0.901 (target
 * 0.9; ±3 points is the requirement: the calibration proxy is half as wide and sees random tokens,
 * and per layer the text lands 0.87-0.92); top 5% share 0.39-0.45, where 0.05 is the fair share
 * (skew 0 measures 0.17: sampling 127 correlated tokens); Jaccard consecutive minus random
 * 0.11-0.15 (0.01 with attention's context off); engine against oracle: float 4.5e-6 to 4.7e-6,
 * Q4_0 0.065-0.068 (dense models 0.033-0.072), held to tests/reference_forward_test.ts's float and
 * 32-element-quant thresholds.
 */
const tolerance = { sparsity: 0.03, topShare5: 0.25, jaccardGap: 0.05, engineFloat: 1e-4, engineQuant: 0.15 } as const;

async function withDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sparrow_sparse_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The text's tokens as the model's tokenizer encodes them (with BOS). */
async function textTokens(path: string): Promise<number[]> {
  using model = await loadModel(path, { threads: 1 });
  const ids = model.tokenize(text).slice(0, streamTokens);
  assert.equal(ids.length, streamTokens, "the text is long enough");
  return ids;
}

/** Activation statistics of `ids` through the oracle (BOS left out). */
function measure(path: string, r: SynthResult, ids: number[], activation: string): ActivationStats {
  const rec = new ActivationRecorder(r.shape.nLayers, r.shape.ffnDim, activation);
  referenceForward(path, ids, { onFfn: rec.observe });
  return activationStats(rec, { skip: 1 });
}

/** Largest over positions of max |engine - oracle| / rms(oracle), as tests/reference_forward_test.ts. */
async function engineError(path: string, ids: number[]): Promise<number> {
  const oracle = referenceForward(path, ids);
  // An f32 KV cache, as the float64 oracle keeps (f16 rounding is tested in tests/kv_cache_test.ts).
  using model = await loadModel(path, { threads: 2, contextLength: 64, kvType: "f32" });
  using session = model.createSession({ allLogits: true, batchSize: 5 });
  const rows = await session.evaluate(ids);
  let worst = 0;
  for (const [p, want] of oracle.entries()) {
    let ss = 0;
    let diff = 0;
    for (let i = 0; i < want.length; i++) {
      ss += want[i] * want[i];
      const d = Math.abs(rows[p][i] - want[i]);
      diff = Number.isNaN(d) ? Infinity : Math.max(diff, d);
    }
    worst = Math.max(worst, diff / Math.sqrt(ss / want.length));
  }
  return worst;
}

function describe(s: ActivationStats): string {
  const layers = s.layers.map((l) => l.inactive.toFixed(3)).join(" ");
  return `inactive ${s.inactive.toFixed(3)} (layers ${layers}), top 5% ${s.topShare[0].toFixed(3)}, ` +
    `top 20% ${s.topShare[1].toFixed(3)}, Jaccard consecutive ${s.jaccardConsecutive.toFixed(3)} ` +
    `random ${s.jaccardRandom.toFixed(3)}`;
}

Deno.test("sparse synth: ~90% inactive, hot neurons, local overlap; the engine agrees with the oracle", async (t) => {
  await withDir(async (dir) => {
    for (const activation of ["relu", "drelu"] as const) {
      for (const weightType of ["f32", "q4_0"] as const) {
        await t.step(`${activation} ${weightType}`, async () => {
          const path = join(dir, `${activation}_${weightType}.gguf`);
          const r = synthesizeModel(path, { shape: "small", weightType, activation, sparseFfn: {} });
          const ids = await textTokens(path);
          const s = measure(path, r, ids, activation);
          const err = await engineError(path, ids.slice(0, 12));
          const proxy = r.sparseFfn!.calibration.proxyStats;
          console.log(
            `    ${r.name}: ${describe(s)}; written in ${r.seconds.toFixed(1)} s; engine error ${err.toExponential(2)}`,
          );
          console.log(`      calibration proxy (random tokens): ${describe(proxy)}`);
          assert.ok(Math.abs(s.inactive - 0.9) <= tolerance.sparsity, `inactive ${s.inactive}`);
          assert.ok(s.topShare[0] >= tolerance.topShare5, `top 5% carry ${s.topShare[0]}`);
          assert.ok(
            s.jaccardConsecutive >= s.jaccardRandom + tolerance.jaccardGap,
            `Jaccard consecutive ${s.jaccardConsecutive} vs random ${s.jaccardRandom}`,
          );
          const limit = weightType === "f32" ? tolerance.engineFloat : tolerance.engineQuant;
          assert.ok(err <= limit, `engine vs oracle ${err} exceeds ${limit}`);
        });
      }
    }
  });
});

Deno.test("sparse synth: sparsity, skew and context are adjustable", async () => {
  await withDir(async (dir) => {
    const run = async (sparseFfn: SynthOptions["sparseFfn"]) => {
      const path = join(dir, "m.gguf");
      const r = synthesizeModel(path, { shape: "small", activation: "relu", sparseFfn });
      const s = measure(path, r, await textTokens(path), "relu");
      console.log(`    ${JSON.stringify(sparseFfn)}: ${describe(s)}`);
      return s;
    };
    const s80 = await run({ sparsity: 0.8 });
    assert.ok(Math.abs(s80.inactive - 0.8) <= tolerance.sparsity, `inactive ${s80.inactive}, target 0.8`);
    // Every neuron equally likely: no longer the hot neurons the default has (measured top 5% share
    // 0.17, above 5% from sampling 127 correlated tokens).
    const flat = await run({ skew: 0 });
    assert.ok(Math.abs(flat.inactive - 0.9) <= tolerance.sparsity, `inactive ${flat.inactive}`);
    assert.ok(flat.topShare[0] < tolerance.topShare5, `skew 0: top 5% carry ${flat.topShare[0]}`);
    // No context: consecutive tokens overlap no more than any others.
    const none = await run({ contextWindow: 0, contextGain: 1 });
    assert.ok(none.jaccardConsecutive - none.jaccardRandom < 0.04, `context off: ${describe(none)}`);
  });
});

/** Matrix (rows, cols) of a tensor, dequantized. */
function matrix(path: string, name: string): { w: Float64Array; rows: number; cols: number } {
  const t = readGguf(path).tensors.get(name)!;
  using file = Deno.openSync(path);
  const bytes = new Uint8Array(t.nBytes);
  file.seekSync(t.offset, Deno.SeekMode.Start);
  for (let got = 0; got < bytes.length;) got += file.readSync(bytes.subarray(got))!;
  return { w: dequantize(t.type, bytes, t.nElements, new Float64Array(t.nElements)), rows: t.dims[1], cols: t.dims[0] };
}

/**
 * Share of the energy of columns [from, to) (bias column excluded) in their top singular direction,
 * by power iteration on the (to - from) square Gram matrix.
 */
function topDirectionShare(m: { w: Float64Array; rows: number; cols: number }, from: number, to: number): number {
  const n = to - from;
  const gram = new Float64Array(n * n);
  let total = 0;
  for (let r = 0; r < m.rows; r++) {
    for (let i = 0; i < n; i++) {
      const a = m.w[r * m.cols + from + i];
      total += a * a;
      for (let j = 0; j < n; j++) gram[i * n + j] += a * m.w[r * m.cols + from + j];
    }
  }
  let v = new Float64Array(n).fill(1);
  let lambda = 0;
  for (let it = 0; it < 200; it++) {
    const next = new Float64Array(n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) next[i] += gram[i * n + j] * v[j];
    lambda = Math.hypot(...next);
    v = next.map((x) => x / lambda);
  }
  return lambda / total;
}

Deno.test("sparse synth: the gate is low-rank plus gateNoise of full rank, and Q4_0 writes the same gate", async () => {
  await withDir((dir) => {
    const shape = synthPresets.small; // dim 256: 8 blocks of 32, default rank 8 (one block per column of B)
    for (const gateNoise of [0, 0.1]) {
      const path = join(dir, `noise${gateNoise}.gguf`);
      synthesizeModel(path, { shape, activation: "relu", sparseFfn: { gateNoise } });
      const gate = matrix(path, "blk.1.ffn_gate.weight");
      for (let b = 0; b < shape.dim / 32; b++) {
        const share = topDirectionShare(gate, Math.max(1, 32 * b), 32 * (b + 1));
        // Expected about 1 - gateNoise; per block |w_b|² (chi-squared, 32 degrees) against the noise's
        // spreads it: measured 0.872-0.921 for gateNoise 0.1.
        assert.ok(share >= 1 - gateNoise - 0.06, `gateNoise ${gateNoise}, block ${b}: top direction ${share}`);
        if (gateNoise === 0) assert.ok(share > 1 - 1e-6, `block ${b}: rank 1 exactly, got ${share}`);
        else assert.ok(share < 0.97, `block ${b}: some full-rank noise, got ${share}`);
      }
    }
    // Q4_0 gates are written from precomputed blocks; they must be the F32 gate, quantized.
    const f32 = join(dir, "f32.gguf");
    const q40 = join(dir, "q4_0.gguf");
    synthesizeModel(f32, { shape, activation: "drelu", sparseFfn: {} });
    synthesizeModel(q40, { shape, activation: "drelu", weightType: "q4_0", sparseFfn: {} });
    for (const name of ["blk.2.ffn_gate.weight", "blk.2.ffn_up.weight"]) {
      const a = matrix(f32, name);
      const b = matrix(q40, name);
      let ss = 0;
      let diff = 0;
      for (let i = 0; i < a.w.length; i++) ss += a.w[i] ** 2, diff += (a.w[i] - b.w[i]) ** 2;
      // Q4_0's rounding error: uniform in ±d/2 with d = max/8 of a block (~2.5 sigma / 8): ~0.09 sigma
      // rms (measured 0.094); a block under the wrong scale or variant would be off by ~1.
      const rel = Math.sqrt(diff / ss);
      assert.ok(rel < 0.15, `${name}: Q4_0 differs from F32 by ${rel} rms`);
    }
  });
});

Deno.test("sparse synth: the construction is in the metadata; bad options are refused", async () => {
  await withDir((dir) => {
    const path = join(dir, "m.gguf");
    const r = synthesizeModel(path, { shape: "tiny", activation: "drelu", sparseFfn: { sparsity: 0.85, gateRank: 2 } });
    assert.equal(r.name, "synthetic tiny f32 drelu sparsity 0.85 (seed 1)");
    const md = readGguf(path).metadata;
    assert.equal(md.get("sparrow.synthetic"), true);
    assert.ok(Math.abs((md.get("sparrow.synthetic_sparsity_target") as number) - 0.85) < 1e-6);
    assert.equal(md.get("sparrow.synthetic_gate_rank"), 2);
    assert.equal(md.get("sparrow.synthetic_bias_channel"), 0);
    assert.deepEqual(
      { rank: r.sparseFfn!.gateRank, noise: r.sparseFfn!.gateNoise, window: r.sparseFfn!.contextWindow },
      { rank: 2, noise: 0.1, window: 8 },
    );
    const refuses = (options: SynthOptions, re: RegExp) =>
      assert.throws(
        () => synthesizeModel(join(dir, "never.gguf"), { shape: "tiny", activation: "relu", ...options }),
        (e: unknown) => e instanceof SparrowError && e.code === "invalid_argument" && re.test(e.message),
      );
    refuses({ activation: "swiglu", sparseFfn: {} }, /relu" or "drelu/);
    refuses({ sparseFfn: { sparsity: 1.5 } }, /sparsity = 1.5/);
    refuses({ sparseFfn: { gateRank: 3 } }, /gateRank = 3 is not an integer in \[1, 2\]/);
    refuses({ sparseFfn: { sparsity: 0.02, maxFiring: 0.5 } }, /mean firing 0.98 is not below maxFiring 0.5/);
  });
});

Deno.test("sparse synth: the normal quantile inverts the CDF", () => {
  for (const p of [1e-4, 0.01, 0.1, 0.5, 0.9, 0.9999]) {
    assert.ok(Math.abs(normalCdf(normalQuantile(p)) - p) < 1e-9 * Math.max(1, 1 / p), `p ${p}`);
  }
  assert.ok(Math.abs(normalQuantile(0.975) - 1.959964) < 1e-5);
});

Deno.test({
  name: "sparse synth: a 7B Q4_0 ReLU model is written in under a minute and generates (SPARROW_SYNTH_7B=1: ~4 GB)",
  ignore: !Deno.env.get("SPARROW_SYNTH_7B"),
  fn: async () => {
    await withDir(async (dir) => {
      const path = join(dir, "7b.gguf");
      const r = synthesizeModel(path, { shape: "mistral-7b", weightType: "q4_0", activation: "relu", sparseFfn: {} });
      const c = r.sparseFfn!.calibration;
      console.log(
        `    ${r.name}: ${(r.bytes / 2 ** 30).toFixed(2)} GiB in ${r.seconds.toFixed(1)} s (${c.passes} passes)`,
      );
      console.log(`      calibration proxy ${c.proxyShape.dim}x${c.proxyShape.ffnDim}: ${describe(c.proxyStats)}`);
      // Measured 27 s on 2 busy cores (calibration 9 s, gates 7 s, the rest as the dense model).
      assert.ok(r.seconds < 60, `${r.seconds} s`);
      using model = await loadModel(path, { threads: 2, contextLength: 32 });
      using session = model.createSession();
      const out = await session.complete([1, 450, 4996], { maxTokens: 4, temperature: 0 });
      assert.equal(out.tokens.length, 4);
    });
  },
});
