/**
 * Decoding past 512 cached positions splits one token's attention over position ranges
 * (engine/forward.zig's attentionRanges) and merges them: the logits must still match the float64
 * oracle, as prompt batches (which never split) do, and must not depend on the thread count.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel } from "../core/model.ts";
import { synthesizeModel } from "../models/synth.ts";
import { referenceForward } from "../models/reference_forward.ts";
import { maxRelDiff, preloadNativeLibraries } from "./_models.ts";

preloadNativeLibraries();

Deno.test("attention split over position ranges matches the float64 oracle, on any thread count", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "m.gguf");
    // 3 kv heads (as SmolLM2-135M), head size 32.
    const shape = { dim: 192, ffnDim: 384, nLayers: 2, nHeads: 6, nKvHeads: 3, vocabSize: 300, contextLength: 2048 };
    synthesizeModel(path, { shape, weightType: "f32", activation: "swiglu", seed: 9 });
    const n = 1100; // decoded positions 1024-1099 take 3 ranges; 512-1023, 2
    const ids = Array.from({ length: n }, (_, i) => 3 + ((i * 7919 + 13) % 290));
    const oracle = referenceForward(path, ids);
    const decoded: Float32Array[][] = [];
    for (const threads of [1, 2]) {
      using model = await loadModel(path, { threads, contextLength: n, batchSize: 64, kvType: "f32" });
      using session = model.createSession();
      // A prompt batch up to position 500, then one token at a time.
      await session.evaluate(ids.slice(0, 500));
      const rows: Float32Array[] = [];
      for (let p = 500; p < n; p++) rows.push((await session.evaluate(ids.slice(0, p + 1)))[0]);
      decoded.push(rows);
    }
    let worst = 0;
    for (let p = 500; p < n; p++) worst = Math.max(worst, maxRelDiff(decoded[1][p - 500], oracle[p]));
    console.log(
      `    positions 500-${n - 1} decoded one at a time: largest difference from the oracle ${
        worst.toExponential(2)
      } of the logits' rms`,
    );
    assert.ok(worst < 1e-4, `largest difference from the oracle: ${worst}`);
    for (let p = 0; p < n - 500; p++) {
      assert.deepEqual(
        new Uint32Array(decoded[0][p].buffer),
        new Uint32Array(decoded[1][p].buffer),
        `position ${p + 500}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
