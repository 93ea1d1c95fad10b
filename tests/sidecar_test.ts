/**
 * Sparsity sidecars end to end: calibrating a synthetic model writes a sidecar that loads and drives
 * predictor mode; every way a sidecar can be wrong for a model (another model's, other shape,
 * corrupt, unknown target) is refused with a SparrowError naming the file and what differs; and a
 * PowerInfer predictor file (GGUF with the magic "PWRI") loads and its predictor really chooses the
 * neurons.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel, type Model } from "../core/model.ts";
import { calibrate } from "../core/calibrate.ts";
import { readSidecar } from "../core/sidecar.ts";
import { readGguf } from "../core/gguf.ts";
import { type SidecarContents, writeSidecar } from "../core/sidecar_writer.ts";
import { gv, type TypedValue, writeGguf } from "../core/gguf_writer.ts";
import { SparrowError } from "../core/errors.ts";
import { synthesizeModel } from "../models/synth.ts";
import { quantize, QuantType } from "../models/ggml_quants.ts";
import { Rng } from "../core/rng.ts";
import { maxRelDiff, preloadNativeLibraries, refuses } from "./_models.ts";

preloadNativeLibraries();

const tokens = [1, 17, 200, 42, 99, 5, 250, 8, 150, 77, 3, 64, 128, 31, 280, 9];

/** Loads a fresh synthetic model; self-sampled calibration needs a context over 513 positions. */
async function synthModel(dir: string, name: string, activation: "relu" | "swiglu", seed = 7): Promise<Model> {
  const path = join(dir, `${name}.gguf`);
  synthesizeModel(path, { shape: "tiny", activation, seed });
  return await loadModel(path, { threads: 2, contextLength: 1024, batchSize: 16 });
}

/** Sidecar contents shaped for `model`, with zero predictors; `over` changes fields. */
async function contents(model: Model, over: Partial<SidecarContents> = {}): Promise<SidecarContents> {
  const hp = model.info.hparams;
  const c = { nLayers: hp.nLayers, dim: hp.dim, ffnDim: hp.ffnDim, ...over };
  const rank = 8;
  return {
    modelName: model.info.name,
    modelFingerprint: await model.fingerprint(),
    activation: hp.activation,
    targets: [0.5],
    calibrationTokens: 100,
    layers: Array.from({ length: c.nLayers }, () => ({
      fc1: new Float32Array(rank * c.dim),
      fc2: new Float32Array(c.ffnDim * rank),
      bias: new Float32Array(c.ffnDim),
      rank,
      neuronFreq: new Float32Array(c.ffnDim),
      catsThresholds: Float32Array.of(0),
      scoreThresholds: Float32Array.of(0),
      recall: Float32Array.of(NaN),
      predictedRatio: Float32Array.of(NaN),
    })),
    ...c,
  };
}

/** A PowerInfer-layout predictor file: per layer fc1 [dim, rank], fc2 [rank, ffn] (F16), magic PWRI. */
function writePowerInfer(
  path: string,
  shape: { nLayers: number; dim: number; ffnDim: number },
  threshold: number,
  options: { rank?: number; magic?: string; fc2Rows?: number } = {},
): void {
  const rank = options.rank ?? 16;
  const rng = new Rng(3);
  const gauss = (n: number, scale: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
  const metadata: [string, TypedValue][] = [["powerinfer.sparse_threshold", gv.f32(threshold)]];
  const tensors = [];
  for (let l = 0; l < shape.nLayers; l++) {
    const fc1 = gauss(rank * shape.dim, 1 / Math.sqrt(shape.dim));
    const fc2 = gauss((options.fc2Rows ?? shape.ffnDim) * rank, 1 / Math.sqrt(rank));
    tensors.push({
      name: `blk.${l}.fc1.weight`,
      dims: [shape.dim, rank],
      type: QuantType.F16,
      data: quantize(QuantType.F16, fc1),
    });
    tensors.push({
      name: `blk.${l}.fc2.weight`,
      dims: [rank, options.fc2Rows ?? shape.ffnDim],
      type: QuantType.F16,
      data: quantize(QuantType.F16, fc2),
    });
  }
  writeGguf(path, metadata, tensors);
  const file = Deno.openSync(path, { write: true });
  try {
    file.writeSync(new TextEncoder().encode(options.magic ?? "PWRI"));
  } finally {
    file.close();
  }
}

for (const activation of ["relu", "swiglu"] as const) {
  Deno.test(`calibrating a tiny ${activation} model writes a sidecar that drives predictor mode`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      using model = await synthModel(dir, "m", activation);
      const out = join(dir, "m.sparsity.gguf");
      const targets = [0.3, 0.5];
      const report = await calibrate(model, out, { tokens: 512, epochs: 3, targets });
      const hp = model.info.hparams;
      assert.equal(report.layers.length, hp.nLayers);
      const sidecar = readSidecar(out, hp, await model.fingerprint());
      assert.equal(sidecar.format, "sparrow");
      if (activation === "swiglu") assert.deepEqual(sidecar.targets.map((t) => t.sparsity), targets.map(Math.fround));
      else {
        // ReLU: one operating point, the natural sparsity (random weights: about half the gates < 0).
        assert.equal(sidecar.targets.length, 1);
        assert.ok(
          sidecar.targets[0].sparsity > 0.3 && sidecar.targets[0].sparsity < 0.7,
          `${sidecar.targets[0].sparsity}`,
        );
      }
      assert.ok(sidecar.predictors.every((p) => p !== undefined), "every layer has a predictor");

      const sparsity = activation === "swiglu" ? 0.5 : undefined;
      await model.prepareSparse({ sidecar: out, sparsity });
      using session = model.createSession({
        allLogits: true,
        sparse: { mode: "predictor", sidecar: out, sparsity, verifyEvery: 1, batches: true },
      });
      const rows = await session.evaluate(tokens);
      assert.equal(rows.length, tokens.length);
      assert.ok(rows.every((r) => r.every(Number.isFinite)), "finite logits");
      const stats = session.sparseStats();
      // Thresholds were set for recall 0.95 on held-out calibration tokens; these 16 tokens are
      // others, so allow some slack, but a predictor that learned nothing would be far below.
      assert.ok(stats.recall > 0.85, `recall ${stats.recall}`);
      assert.ok(stats.sparsity > 0.3, `sparsity ${stats.sparsity}`);
      assert.ok(stats.candidatesPerActive >= 1, `candidates/active ${stats.candidatesPerActive}`);
      assert.equal(stats.layers[0].tokens, tokens.length);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

for (const predictorType of ["Q8_0", "Q4_0"] as const) {
  Deno.test(`a ${predictorType} predictor is stored as ${predictorType} and keeps its recall`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      using model = await synthModel(dir, "m", "relu");
      const out = join(dir, "m.sparsity.gguf");
      await calibrate(model, out, { tokens: 512, objective: "subspace", rank: 32, predictorType });
      const g = readGguf(out);
      for (const name of ["blk.0.fc1.weight", "blk.0.fc2.weight"]) {
        assert.equal(g.tensors.get(name)?.type, QuantType[predictorType], name);
      }
      await model.prepareSparse({ sidecar: out });
      using session = model.createSession({
        sparse: { mode: "predictor", sidecar: out, verifyEvery: 1, batches: true },
      });
      await session.evaluate(tokens);
      // Thresholds are chosen on the stored (quantized) values, so the recall aimed for holds.
      const stats = session.sparseStats();
      assert.ok(stats.recall > 0.85, `recall ${stats.recall}`);
      assert.ok(stats.candidatesPerActive >= 1, `candidates/active ${stats.candidatesPerActive}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("a quantized predictor needs a rank that is a multiple of 32", async () => {
  const dir = await Deno.makeTempDir();
  try {
    using model = await synthModel(dir, "m", "relu");
    await assert.rejects(
      () =>
        calibrate(model, join(dir, "x.gguf"), { tokens: 64, objective: "subspace", rank: 24, predictorType: "Q4_0" }),
      (e: unknown) =>
        e instanceof SparrowError && /Q4_0 predictor needs a rank that is a multiple of 32; got 24/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a sidecar is refused for another model, another shape, or a target it lacks", async () => {
  const dir = await Deno.makeTempDir();
  try {
    using a = await synthModel(dir, "a", "swiglu", 1);
    using b = await synthModel(dir, "b", "swiglu", 2); // same shape, other weights
    const sidecar = join(dir, "a.sparsity.gguf");
    await calibrate(a, sidecar, { tokens: 256, epochs: 1, targets: [0.3, 0.5] });

    await refuses(
      () => b.prepareSparse({ sidecar }),
      "bad_model",
      /a\.sparsity\.gguf/,
      /another model file/,
      /fingerprint/,
    );

    const layers = join(dir, "layers.gguf");
    writeSidecar(layers, await contents(a, { nLayers: 3 }));
    await refuses(
      () => a.prepareSparse({ sidecar: layers }),
      "bad_model",
      /layers\.gguf/,
      /block_count = 3, but this model has 2/,
    );

    const dim = join(dir, "dim.gguf");
    writeSidecar(dim, await contents(a, { dim: 96 }));
    await refuses(
      () => a.prepareSparse({ sidecar: dim }),
      "bad_model",
      /dim\.gguf/,
      /embedding_length = 96, but this model has 64/,
    );

    const ffn = join(dir, "ffn.gguf");
    writeSidecar(ffn, await contents(a, { ffnDim: 128 }));
    await refuses(
      () => a.prepareSparse({ sidecar: ffn }),
      "bad_model",
      /feed_forward_length = 128, but this model has 192/,
    );

    // The model file itself is no sidecar.
    await refuses(() => a.prepareSparse({ sidecar: a.info.path }), "bad_model", /general\.architecture is 'llama'/);

    await refuses(
      () => a.prepareSparse({ sidecar, sparsity: 0.8 }),
      "invalid_argument",
      /a\.sparsity\.gguf has no operating point for sparsity 0\.8/,
      /calibrated: 0\.30, 0\.50/,
    );
    // The right model and target load.
    await a.prepareSparse({ sidecar, sparsity: 0.5 });
    // A session with a sidecar that was not prepared is refused with what to do.
    assert.throws(
      () => a.createSession({ sparse: { mode: "predictor", sidecar: layers } }),
      (e: unknown) => e instanceof SparrowError && /prepareSparse/.test(e.message),
    );
    assert.throws(
      () => a.createSession({ sparse: { mode: "predictor" } }),
      (e: unknown) => e instanceof SparrowError && e.code === "invalid_argument" && /needs a sidecar/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("corrupt or mismatched PowerInfer files are refused, naming the problem", async () => {
  const dir = await Deno.makeTempDir();
  try {
    using model = await synthModel(dir, "m", "relu");
    const hp = model.info.hparams;

    const truncated = join(dir, "truncated.pwri");
    writePowerInfer(truncated, hp, 0);
    const size = Deno.statSync(truncated).size;
    await Deno.truncate(truncated, Math.floor(size / 2));
    await refuses(
      () => model.prepareSparse({ sidecar: truncated }),
      "bad_model",
      /truncated\.pwri/,
      /past the end of the file/,
    );

    const magic = join(dir, "magic.pwri");
    writePowerInfer(magic, hp, 0, { magic: "PWRX" });
    await refuses(
      () => model.prepareSparse({ sidecar: magic }),
      "bad_model",
      /magic\.pwri/,
      /not a GGUF file: magic is \[50 57 52 58\]/,
    );

    const rows = join(dir, "rows.pwri");
    writePowerInfer(rows, hp, 0, { fc2Rows: hp.ffnDim + 32 });
    await refuses(
      () => model.prepareSparse({ sidecar: rows }),
      "bad_model",
      /rows\.pwri/,
      new RegExp(`'blk\\.0\\.fc2\\.weight' has shape \\[16, ${hp.ffnDim + 32}\\], expected \\[16, ${hp.ffnDim}\\]`),
    );

    const wide = join(dir, "wide.pwri");
    writePowerInfer(wide, { ...hp, dim: hp.dim * 2 }, 0);
    await refuses(
      () => model.prepareSparse({ sidecar: wide }),
      "bad_model",
      new RegExp(`'blk\\.0\\.fc1\\.weight' has shape \\[${hp.dim * 2}, 16\\], expected \\[${hp.dim}, rank\\]`),
    );

    const deep = join(dir, "deep.pwri");
    writePowerInfer(deep, { ...hp, nLayers: hp.nLayers + 1 }, 0);
    await refuses(
      () => model.prepareSparse({ sidecar: deep }),
      "bad_model",
      new RegExp(`'blk\\.${hp.nLayers}\\.fc1\\.weight' belongs to a layer the model \\(${hp.nLayers} layers\\)`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a PowerInfer predictor file loads and its predictor chooses the neurons", async () => {
  const dir = await Deno.makeTempDir();
  try {
    using model = await synthModel(dir, "m", "relu");
    const hp = model.info.hparams;
    using dense = model.createSession({ allLogits: true });
    const want = await dense.evaluate(tokens);
    const run = async (threshold: number) => {
      const path = join(dir, `t${threshold}.pwri`);
      writePowerInfer(path, hp, threshold);
      await model.prepareSparse({ sidecar: path });
      using s = model.createSession({
        allLogits: true,
        sparse: { mode: "predictor", sidecar: path, verifyEvery: 1, batches: true },
      });
      const got = await s.evaluate(tokens);
      return { worst: Math.max(...got.map((r, p) => maxRelDiff(r, want[p]))), stats: s.sparseStats() };
    };
    // Everything selected: a ReLU model's sparse FFN is its dense FFN (f32 rounding, see
    // tests/sparse_exactness_test.ts for the 1e-4 limit), and recall is 1.
    const all = await run(-1e30);
    assert.ok(all.worst <= 1e-4, `all selected: max relative logit difference ${all.worst}`);
    assert.equal(all.stats.recall, 1);
    assert.equal(all.stats.layers.reduce((a, l) => a + l.candidates, 0), tokens.length * hp.nLayers * hp.ffnDim);
    // Nothing selected: the FFNs contribute nothing, and the logits move.
    const none = await run(1e30);
    assert.equal(none.stats.layers.reduce((a, l) => a + l.candidates, 0), 0);
    assert.ok(none.worst > 1e-2, `nothing selected, yet logits within ${none.worst} of dense`);
    // A random predictor at threshold 0 picks some neurons, not all: it runs, and recall is partial.
    const some = await run(0);
    const cand = some.stats.layers.reduce((a, l) => a + l.candidates, 0) / (tokens.length * hp.nLayers);
    assert.ok(cand > 0 && cand < hp.ffnDim, `candidates per token and layer ${cand}`);
    assert.ok(some.stats.recall > 0 && some.stats.recall < 1, `recall ${some.stats.recall}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
