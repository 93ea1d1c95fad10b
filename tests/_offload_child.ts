/**
 * Child process of tests/memory_budget_test.ts: loads a model with offloaded FFNs under a memory
 * budget, generates, and prints its peak resident set (VmHWM) as JSON. A process of its own, so
 * the peak covers exactly one model and one budget.
 *
 *   deno run -A tests/_offload_child.ts MODEL SIDECAR BUNDLES MEMORY_BYTES TOKENS
 *
 * MEMORY_BYTES "+N" means the fixed region plus N bytes, the fixed region measured in this process
 * (the runtime's resident set varies by tens of MiB between processes).
 */
import { headroomBytes, residentBytes } from "../core/memory_budget.ts";
import { loadModel, type Model } from "../core/model.ts";
import { fixedRegion } from "../core/offload.ts";
import { readSidecar } from "../core/sidecar.ts";

const [model, sidecar, bundles, memoryText, tokensText] = Deno.args;

/**
 * The fixed region as buildOffload (core/offload.ts) will count it, the runtime measured now: a
 * probe plan through prepareOffload would allocate a cache whose freed pages stay resident and
 * inflate the runtime of the real plan.
 */
async function fixedRegionBytes(m: Model): Promise<number> {
  const hp = m.info.hparams;
  const predictors = readSidecar(sidecar, hp, await m.fingerprint()).predictors;
  const f = fixedRegion(
    { gguf: m.gguf, hparams: hp, tiedEmbeddings: m.info.tiedEmbeddings, contextLength: 256, batchSize: 16 },
    predictors,
  );
  return (residentBytes() ?? 0) + f.fixedWeightBytes + f.predictorBytes + f.kvBytes + f.scratchBytes +
    headroomBytes(f.predictorBytes);
}
const status = () => Deno.readTextFileSync("/proc/self/status");
const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status())![1]) * 1024;

using m = await loadModel(model, { threads: 2, contextLength: 256, batchSize: 16, weights: "map" });
// 8 MiB: the runtime's resident set grows a little before prepareOffload measures it again.
const memory = memoryText.startsWith("+")
  ? Math.ceil((await fixedRegionBytes(m)) + Number(memoryText.slice(1)) + (8 << 20))
  : Number(memoryText);
const report = await m.prepareOffload({ sidecar, bundles, memory });
using s = m.createSession({ sparse: { mode: "predictor", sidecar, bundles } });
const done = await s.complete("The sparrow", { maxTokens: Number(tokensText), temperature: 0, seed: 1 });
const stats = s.sparseStats();
console.log(JSON.stringify({
  memory,
  peak: kb("VmHWM"),
  rss: kb("VmRSS"),
  tokens: done.tokens.length,
  plan: report.plan.explanation,
  fixed: report.plan.fixed.total,
  offloadedShare: report.plan.offloadedShare,
  hitRate: stats.hitRate,
  readBytesPerToken: stats.readBytesPerToken,
}));
