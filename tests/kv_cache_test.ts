/**
 * The f16 KV cache (the default) against the f32 one on the same model: the logits stay within the
 * rounding of keys and values to 11 significant bits, greedy decoding picks the same tokens, the
 * session's KV memory halves, and a bad `kvType` is a typed error.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel } from "../core/model.ts";
import { SparrowError } from "../core/errors.ts";
import { synthesizeModel } from "../models/synth.ts";
import { maxRelDiff, preloadNativeLibraries } from "./_models.ts";

preloadNativeLibraries();

const shape = { dim: 256, ffnDim: 768, nLayers: 3, nHeads: 8, nKvHeads: 4, vocabSize: 1000, contextLength: 256 };

Deno.test("an f16 KV cache gives the f32 cache's logits within f16 rounding, in half the memory", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "m.gguf");
    synthesizeModel(path, { shape, weightType: "f32", activation: "swiglu", seed: 3 });
    using model = await loadModel(path, { threads: 2, contextLength: 128, batchSize: 16 });
    assert.equal(model.defaults.kvType, "f16");
    using half = model.createSession({ allLogits: true });
    using full = model.createSession({ allLogits: true, kvType: "f32" });
    // 40 positions: prompt chunks of 16, then token-by-token decode over the cached positions.
    const ids = Array.from({ length: 40 }, (_, i) => 3 + ((i * 7919) % 990));
    const a = await half.evaluate(ids);
    const b = await full.evaluate(ids);
    let worst = 0;
    let sameTop = 0;
    for (let t = 0; t < ids.length; t++) {
      worst = Math.max(worst, maxRelDiff(a[t], b[t]));
      if (argmax(a[t]) === argmax(b[t])) sameTop++;
    }
    console.log(
      `    f16 against f32 cache: largest logit difference ${
        worst.toExponential(2)
      } of the logits' rms, top-1 agreed at ${sameTop} of ${ids.length} positions`,
    );
    // f16 keeps 11 bits: each key and value is off by up to 2^-11 of itself; the logits move by a
    // small multiple of that (measured here: see the message), far from f32's 1e-6 yet far under 1%.
    assert.ok(worst < 1e-2, `largest logit difference relative to the logits' scale: ${worst}`);
    assert.ok(worst > 0, "an f16 cache that changes nothing was not used");
    assert.ok(sameTop >= ids.length - 1, `top-1 agreed at ${sameTop} of ${ids.length} positions`);

    const kvF32 = 2 * shape.nLayers * 128 * (shape.dim / shape.nHeads) * shape.nKvHeads * 4;
    assert.equal(full.allocatedBytes - half.allocatedBytes, kvF32 / 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a kvType other than f32 or f16 is a typed error naming it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "m.gguf");
    synthesizeModel(path, { shape, weightType: "f32", activation: "relu", seed: 1 });
    await assert.rejects(
      // deno-lint-ignore no-explicit-any
      () => loadModel(path, { kvType: "q8_0" as any }),
      (e: unknown) => e instanceof SparrowError && e.code === "invalid_argument" && /kvType 'q8_0'/.test(e.message),
    );
    using model = await loadModel(path, { threads: 1, contextLength: 16 });
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => model.createSession({ kvType: "bf16" as any }),
      (e: unknown) => e instanceof SparrowError && /kvType 'bf16'/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}
