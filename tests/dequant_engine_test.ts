/**
 * The TypeScript dequantizers (models/ggml_quants.ts) against the engine's, on random blocks of every
 * quantized type. The engine exposes no raw dequantization, so the probe is a model: one F32 layer
 * between a token embedding and a classifier of the type under test, both overwritten with random
 * blocks (every code, fifth bit, 6-bit scale and min, and int8 scale, -128 included, drawn from all
 * its values; only the f16 scales are kept finite and moderate). The engine dequantizes an
 * embedding row with its scalar reference and multiplies the classifier with its SIMD kernels, so a
 * layout difference on either path changes the logits, while the float64 oracle, rounding the
 * classifier's input to 8 bits as the engine does, otherwise agrees to float32 precision.
 *
 * The synthetic models' "direct" weights cannot serve here: their K-quant scales are drawn from the
 * top of the 6-bit range (models/synth_weights.ts), so the top bits of every scale and min are set
 * and a misplaced top bit would go unseen.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { readGguf } from "../core/gguf.ts";
import { loadModel } from "../core/model.ts";
import { Rng } from "../core/rng.ts";
import { f32ToF16Bits, QuantType } from "../models/ggml_quants.ts";
import { referenceForward } from "../models/reference_forward.ts";
import { synthesizeModel, type SynthTensorType } from "../models/synth.ts";
import { preloadNativeLibraries } from "./_models.ts";

preloadNativeLibraries();

const types: [SynthTensorType, number][] = [
  ["q8_0", QuantType.Q8_0],
  ["q4_0", QuantType.Q4_0],
  ["q4_1", QuantType.Q4_1],
  ["q5_0", QuantType.Q5_0],
  ["q5_1", QuantType.Q5_1],
  ["q4_k", QuantType.Q4_K],
  ["q5_k", QuantType.Q5_K],
  ["q6_k", QuantType.Q6_K],
];

/** Block bytes and where the f16 scale fields of a block are: [offset, kind] (d signed, d positive, min). */
const scaleFields: Record<number, { bytes: number; fields: [number, "signed" | "positive" | "min"][] }> = {
  [QuantType.Q8_0]: { bytes: 34, fields: [[0, "signed"]] },
  [QuantType.Q4_0]: { bytes: 18, fields: [[0, "signed"]] },
  [QuantType.Q4_1]: { bytes: 20, fields: [[0, "signed"], [2, "min"]] },
  [QuantType.Q5_0]: { bytes: 22, fields: [[0, "signed"]] },
  [QuantType.Q5_1]: { bytes: 24, fields: [[0, "signed"], [2, "min"]] },
  [QuantType.Q4_K]: { bytes: 144, fields: [[0, "positive"], [2, "positive"]] },
  [QuantType.Q5_K]: { bytes: 176, fields: [[0, "positive"], [2, "positive"]] },
  [QuantType.Q6_K]: { bytes: 210, fields: [[208, "positive"]] },
};

/** Random blocks of `type` filling `bytes`: random bits, then finite f16 scales in [2^-9, 2^-7). */
function randomBlocks(type: number, bytes: Uint8Array, rng: Rng): void {
  const words = new Uint32Array(Math.ceil(bytes.length / 4));
  rng.fill(words);
  bytes.set(new Uint8Array(words.buffer, 0, bytes.length));
  const { bytes: bb, fields } = scaleFields[type];
  for (let at = 0; at < bytes.length; at += bb) {
    for (const [off, kind] of fields) {
      const mag = 2 ** -9 * (1 + 3 * rng.nextFloat());
      const v = kind === "positive" ? mag : kind === "min" ? -16 * mag : rng.nextFloat() < 0.5 ? -mag : mag;
      const h = f32ToF16Bits(v);
      bytes[at + off] = h & 255, bytes[at + off + 1] = h >> 8;
    }
    // Q8_0: ggml never writes -128 and the kernels may assume so (see synth_weights.ts).
    if (type === QuantType.Q8_0) { for (let i = at + 2; i < at + bb; i++) if (bytes[i] === 0x80) bytes[i] = 0x81; }
  }
}

/** Per position: max |a - b| / rms(b). */
function positionErrors(engine: Float32Array[], oracle: Float64Array[]): number[] {
  return oracle.map((want, p) => {
    let ss = 0;
    let maxDiff = 0;
    for (let i = 0; i < want.length; i++) {
      ss += want[i] * want[i];
      const d = Math.abs(engine[p][i] - want[i]);
      maxDiff = Number.isNaN(d) ? Infinity : Math.max(maxDiff, d);
    }
    return maxDiff / Math.sqrt(ss / want.length);
  });
}

/**
 * Limits. Agreement: float32 precision as in tests/reference_forward_test.ts (measured 3e-7 to
 * 1.5e-6; 1e-4 leaves the same 100x). A position may still differ by one 8-bit rounding flip of the
 * classifier input (f32 rounding putting x/d on the other side of k + 1/2, ~1e-5 per element): one
 * input off by d = max|x|/127 moves a logit by ~|w| d, about 1e-2 of the logits' rms at most, so a
 * flip is allowed in at most 2 of 12 positions and within `flip`. Measured: 2.8e-7 to 1.4e-6, no
 * flips. A wrong layout in the TS dequantizer (so the engine disagrees) gives errors of order 1,
 * measured: Q4_K/Q5_K mins' top bits taken from the scales' byte 1.07 / 0.43, Q6_K adjacent groups'
 * scales swapped 7.6, Q5_K fifth bit of the partner sub-block 1.2, Q5_0/Q5_1 high-nibble fifth bits
 * one place off 5.6 / 2.1.
 */
const limit = { agree: 1e-4, flip: 3e-2, flipsMax: 2 } as const;

Deno.test("TS dequantization agrees with the engine's on random blocks of every quantized type", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sparrow_dequant_" });
  try {
    for (const [name, type] of types) {
      await t.step(name, async () => {
        const path = join(dir, `${name}.gguf`);
        synthesizeModel(path, {
          shape: { dim: 256, ffnDim: 256, nLayers: 1, nHeads: 4, nKvHeads: 2, vocabSize: 320, contextLength: 32 },
          tensorTypes: { token_embd: name, output: name },
          seed: 40 + type,
        });
        const gguf = readGguf(path);
        const rng = new Rng(7, type);
        using file = Deno.openSync(path, { write: true });
        for (const tensor of ["token_embd.weight", "output.weight"]) {
          const info = gguf.tensors.get(tensor)!;
          assert.equal(info.type, type);
          const bytes = new Uint8Array(info.nBytes);
          randomBlocks(type, bytes, rng);
          file.seekSync(info.offset, Deno.SeekMode.Start);
          assert.equal(file.writeSync(bytes), bytes.length);
        }
        const ids = [1, 3, 300, 77, 5, 319, 128, 42, 9, 250, 64, 200];
        const oracle = referenceForward(path, ids, { emulateActivationQuantization: true });
        // An f32 KV cache, as the reference keeps (f16 rounding is tested in kv_cache_test.ts).
        using model = await loadModel(path, { threads: 2, contextLength: 32, kvType: "f32" });
        // Batches of 5 go through the matrix-matrix tiles (4 tokens per tile, then a tail of 1); batches of
        // 1 through the row dot products.
        for (const batchSize of [5, 1]) {
          using session = model.createSession({ allLogits: true, batchSize });
          const errors = positionErrors(await session.evaluate(ids), oracle);
          const flips = errors.filter((e) => e > limit.agree).length;
          const max = Math.max(...errors);
          console.log(
            `    ${name}, batch ${batchSize}: max |Δ|/rms ${max.toExponential(2)}, ${flips} of 12 above ${limit.agree}`,
          );
          assert.ok(flips <= limit.flipsMax, `${name}: ${flips} positions differ by more than ${limit.agree}`);
          assert.ok(max <= limit.flip, `${name}, batch ${batchSize}: max |Δ|/rms ${max} > ${limit.flip}`);
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
