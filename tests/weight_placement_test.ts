/**
 * Where a model's weights live (LoadModelOptions.weights): copied into anonymous memory or read in
 * place from the file's mapping. Both must compute the same bits, dense and sparse; "auto" must
 * resolve to one of them; a model whose weights were copied must refuse to offload its FFNs (the
 * copy would sit outside the offload budget); bad values are refused. And the memory "auto" judges
 * by is the room under the process's memory cgroup limit, not the host's memory.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel } from "../core/model.ts";
import { availableMemoryBytes } from "../core/memory_budget.ts";
import { synthesizeModel } from "../models/synth.ts";
import { memoryCgroupAvailable, runInMemoryLimit } from "../bench/_cgroup.ts";
import { preloadNativeLibraries, refuses, skip } from "./_models.ts";

preloadNativeLibraries();

// dim 256 and ffn 512: rows of whole 8-block batches, so a copy stores every matrix but the token
// embeddings as row pairs. The comparison with the mapping covers them in prefill and decode, and
// (sparse) the neuron store built from them.
const shape = { dim: 256, ffnDim: 512, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 300, contextLength: 64 };
const tokens = [1, 5, 200, 17, 42, 299, 3, 88];

/** Logits of every prompt token (prefill), then of one more token (decode). */
async function logits(path: string, weights: "copy" | "map", sparse: boolean): Promise<Float32Array[]> {
  using model = await loadModel(path, { threads: 2, contextLength: 32, weights });
  assert.equal(model.info.weights, weights);
  // Per layer q, k, v, output projection, gate, up, down; and the classifier.
  assert.equal(model.info.rowPairMatrices, weights === "copy" ? 2 * 7 + 1 : 0);
  if (sparse) await model.prepareSparse({});
  using s = model.createSession({ allLogits: true, sparse: sparse ? { mode: "oracle", batches: true } : undefined });
  const prefill = await s.evaluate(tokens);
  const decode = await s.evaluate([...tokens, 7]);
  return [...prefill, decode[decode.length - 1]];
}

Deno.test("weights: copied and mapped weights give the same logits, dense and sparse", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparrow_weights_" });
  try {
    const path = join(dir, "m.gguf");
    synthesizeModel(path, { shape, weightType: "q4_0", activation: "relu", sparseFfn: { sparsity: 0.8 }, seed: 7 });
    for (const sparse of [false, true]) {
      const mapped = await logits(path, "map", sparse);
      const copied = await logits(path, "copy", sparse);
      assert.equal(copied.length, mapped.length);
      for (let i = 0; i < mapped.length; i++) {
        assert.deepEqual(
          new Uint32Array(copied[i].buffer, copied[i].byteOffset, copied[i].length),
          new Uint32Array(mapped[i].buffer, mapped[i].byteOffset, mapped[i].length),
          `${sparse ? "sparse" : "dense"} logits of token ${i} differ`,
        );
      }
    }

    // "auto" copies a model this small wherever the available memory can be read.
    using auto = await loadModel(path, { threads: 1, contextLength: 16 });
    assert.equal(auto.info.weights, availableMemoryBytes() === undefined ? "map" : "copy");

    // The copy is announced with its size; a mapping is not.
    const announced: number[] = [];
    using announcedCopy = await loadModel(path, {
      threads: 1,
      weights: "copy",
      onWeightsCopy: (b) => announced.push(b),
    });
    using notAnnounced = await loadModel(path, { threads: 1, weights: "map", onWeightsCopy: (b) => announced.push(b) });
    assert.deepEqual(announced, [announcedCopy.info.weightBytes]);
    assert.equal(notAnnounced.info.weights, "map");

    await refuses(
      () => loadModel(path, { threads: 1, weights: "disk" as "map" }),
      "invalid_argument",
      /weights 'disk' is not auto, copy or map/,
    );

    // Checked before any file is opened: the bundle file need not exist.
    using copied = await loadModel(path, { threads: 1, contextLength: 16, weights: "copy" });
    await refuses(
      () =>
        copied.prepareOffload({
          sidecar: join(dir, "m.sparsity.gguf"),
          bundles: join(dir, "m.bundles"),
          memory: 1 << 30,
        }),
      "invalid_argument",
      /loaded with its weights copied/,
      /weights "map"/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("weights: the available memory is the room under the memory cgroup's limit", async () => {
  const cgroups = memoryCgroupAvailable();
  if (!cgroups.ok) return void skip(`memory cgroup unavailable: ${cgroups.why}`);
  const limitBytes = 512 * 2 ** 20;
  const code = `import { availableMemoryBytes } from "${new URL("../core/memory_budget.ts", import.meta.url).href}"; ` +
    `console.log("available", availableMemoryBytes());`;
  const r = await runInMemoryLimit(Deno.execPath(), ["eval", "--quiet", code], { limitBytes, timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  const m = /available (\d+)/.exec(r.stdout);
  assert.ok(m, `no figure in ${r.stdout}`);
  const available = Number(m[1]);
  // Under the limit by what the child already uses (the Deno runtime: tens of MiB), and above 0.
  assert.ok(available <= limitBytes, `${available} bytes available under a ${limitBytes}-byte limit`);
  assert.ok(available > limitBytes / 4, `${available} bytes: the runtime cannot have taken that much`);
});
