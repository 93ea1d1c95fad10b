/**
 * The memory budget holds: a process generating with offloaded FFNs under `--memory` keeps its
 * peak resident set (VmHWM, /proc/self/status) within the budget + 5%, with half of the FFN
 * neurons on disk, on a synthetic ReLU model. Run in a child process so the peak is that of one
 * model under one budget.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadModel } from "../core/model.ts";
import { synthesizeModel } from "../models/synth.ts";
import { calibrate } from "../core/calibrate.ts";
import { packBundles } from "../core/pack.ts";
import { readBundleFile } from "../core/bundle_format.ts";
import { preloadNativeLibraries } from "./_models.ts";

preloadNativeLibraries();

// 32 layers: 320 MiB of bundles, so that the runtime's resident set, which moves by tens of MiB
// with garbage collection between measurements, cannot swing the cache from half to all or none.
const shape = { dim: 1024, ffnDim: 4096, nLayers: 32, nHeads: 8, nKvHeads: 4, vocabSize: 1000, contextLength: 256 };
const text = "The sparrow is a small bird. It lives in cities and fields, and it sings in the morning. ".repeat(40);
const child = fileURLToPath(new URL("./_offload_child.ts", import.meta.url));

Deno.test({
  name: "offloaded FFNs keep the process within its memory budget (+5%), half of the FFN on disk",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const model = join(dir, "m.gguf");
      const sidecar = join(dir, "m.sparsity.gguf");
      const bundles = join(dir, "m.bundles");
      synthesizeModel(model, { shape, weightType: "q4_0", activation: "relu", sparseFfn: { sparsity: 0.9 }, seed: 5 });
      {
        using m = await loadModel(model, { threads: 2, contextLength: 256, batchSize: 32 });
        await calibrate(m, sidecar, { text, tokens: 400, rank: 32, objective: "subspace" });
        await packBundles(m, sidecar, bundles, { alignment: 512 });
      }
      // The budget: what the child needs before any neuron (the runtime, mapped non-FFN weights,
      // KV, scratch, headroom; measured by the child itself) plus a cache for half of the neurons
      // (3/4 of it pinned hot, the rest a cold LRU); the other half stays on disk.
      const run = async (memory: string) => {
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", child, model, sidecar, bundles, memory, "48"],
          stdout: "piped",
          stderr: "piped",
        }).output();
        const err = new TextDecoder().decode(out.stderr);
        assert.ok(out.success, `child failed: ${err}`);
        return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
      };
      const b = readBundleFile(bundles, shape);
      const cache = 0.5 * shape.nLayers * shape.ffnDim * b.layout.storedBytes;
      const r = await run(`+${Math.ceil(cache)}`);
      const memory: number = r.memory;
      console.log(
        `  budget ${(memory / 2 ** 20).toFixed(1)} MiB, peak RSS ${(r.peak / 2 ** 20).toFixed(1)} MiB (${
          ((r.peak / memory) * 100).toFixed(1)
        }%), ${r.tokens} tokens, hit rate ${r.hitRate.toFixed(3)}, ${
          (r.readBytesPerToken / 1024).toFixed(0)
        } KiB read per token; ${r.plan}`,
      );
      assert.ok(r.tokens > 0);
      // 5/8 not pinned, give or take the runtime's resident set moving between the two measurements.
      assert.ok(r.offloadedShare > 0.45 && r.offloadedShare < 0.85, `offloaded share ${r.offloadedShare}`);
      assert.ok(r.readBytesPerToken > 0, "half of the FFN is on disk, so some neurons are read");
      assert.ok(r.peak <= memory * 1.05, `peak resident set ${r.peak} over budget ${memory} + 5%`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
