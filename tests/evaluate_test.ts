/**
 * evaluateSparsity (core/evaluate.ts) on tiny synthetic models, where the answers are known: dense
 * against itself and oracle sparsity on a ReLU model change nothing (KL 0, top-1 1), while cutting
 * half of a SwiGLU model's neurons (CATS) does change the distribution.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel, type Model } from "../core/model.ts";
import { calibrate } from "../core/calibrate.ts";
import { evaluateSparsity } from "../core/evaluate.ts";
import { SparrowError } from "../core/errors.ts";
import { synthesizeModel } from "../models/synth.ts";
import { preloadNativeLibraries } from "./_models.ts";

preloadNativeLibraries();

async function synthModel(dir: string, activation: "relu" | "swiglu"): Promise<Model> {
  const path = join(dir, `${activation}.gguf`);
  synthesizeModel(path, { shape: "tiny", activation, seed: 5 });
  // Calibration samples 512 tokens after a start token: the context must hold 513 positions.
  return await loadModel(path, { threads: 2, contextLength: 1024 });
}

Deno.test("evaluateSparsity: dense against itself, and oracle ReLU, change nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    using model = await synthModel(dir, "relu");
    const r = await evaluateSparsity(model, {
      configs: [{ mode: "dense" }, { mode: "oracle" }],
      tokens: 96,
      window: 64,
      chunk: 16,
      decodeTokens: 4,
      decodeRuns: 1,
    });
    assert.equal(r.tokens, 96);
    assert.equal(r.source, "sampled");
    const [dense, oracle] = r.points;
    // The same engine on the same tokens: bit-identical logits, so exactly 0.
    assert.equal(dense.kl, 0);
    assert.equal(dense.top1, 1);
    assert.equal(dense.perplexity, r.densePerplexity);
    assert.equal(dense.speedup, 1);
    // Oracle ReLU skips only neurons whose output is exactly 0; the logits differ by f32 rounding
    // (~1e-6 of their scale, tests/sparse_exactness_test.ts), so the KL is ~1e-12. Limit 1e-8.
    assert.ok(oracle.kl >= -1e-12 && oracle.kl < 1e-8, `oracle KL ${oracle.kl}`);
    assert.equal(oracle.top1, 1);
    assert.ok(Math.abs(oracle.perplexity / r.densePerplexity - 1) < 1e-5, `ppl ${oracle.perplexity}`);
    assert.equal(oracle.recall, 1);
    assert.ok(oracle.sparsity > 0.3 && oracle.sparsity < 0.7, `random ReLU gates: about half fire, ${oracle.sparsity}`);
    assert.equal(oracle.candidatesPerActive, 1);
    for (const p of r.points) assert.ok(p.tokensPerSecond > 0 && Number.isFinite(p.speedup), `${p.mode} timed`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluateSparsity: a SwiGLU CATS cut at 0.5 moves the distribution; text streams", async () => {
  const dir = await Deno.makeTempDir();
  try {
    using model = await synthModel(dir, "swiglu");
    const sidecar = join(dir, "swiglu.sparsity.gguf");
    await calibrate(model, sidecar, { tokens: 512, epochs: 2, targets: [0.5] });
    const r = await evaluateSparsity(model, {
      sidecar,
      tokens: 64,
      window: 48,
      decodeTokens: 0,
      text: "Once upon a time there was a sparrow who lived in a small tree by the river. ".repeat(12),
    });
    assert.equal(r.source, "text");
    assert.equal(r.tokens, 64);
    assert.deepEqual(r.points.map((p) => `${p.mode} ${p.target}`), [
      "dense undefined",
      "oracle 0.5",
      "predictor 0.5",
    ]);
    const [, oracle, predictor] = r.points;
    // Half the neurons are cut, the small ones but not zero: the KL must be clearly positive.
    assert.ok(oracle.kl > 1e-4, `CATS 0.5 KL ${oracle.kl}`);
    assert.ok(Math.abs(oracle.sparsity - 0.5) < 0.15, `measured sparsity ${oracle.sparsity}`);
    assert.ok(predictor.kl > 0 && Number.isFinite(predictor.kl), `predictor KL ${predictor.kl}`);
    assert.ok(predictor.recall > 0.8 && predictor.recall <= 1, `predictor recall ${predictor.recall}`);
    assert.ok(predictor.top1 > 0 && predictor.top1 <= 1);
    assert.ok(Number.isNaN(predictor.tokensPerSecond), "decodeTokens 0: not timed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluateSparsity refuses configurations it cannot run", async () => {
  const dir = await Deno.makeTempDir();
  try {
    using model = await synthModel(dir, "relu");
    await assert.rejects(
      () => evaluateSparsity(model, { configs: [{ mode: "predictor" }], tokens: 8 }),
      (e: unknown) => e instanceof SparrowError && e.code === "invalid_argument" && /needs a sidecar/.test(e.message),
    );
    await assert.rejects(
      () => evaluateSparsity(model, { window: 4096, tokens: 8 }),
      (e: unknown) => e instanceof SparrowError && /window = 4096 is longer than the context/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
