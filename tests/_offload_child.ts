/**
 * Child process of tests/memory_budget_test.ts: loads a model with offloaded FFNs under a memory
 * budget, generates, and prints its peak resident set (VmHWM) as JSON. A process of its own, so
 * the peak covers exactly one model and one budget.
 *
 *   deno run -A tests/_offload_child.ts MODEL SIDECAR BUNDLES MEMORY_BYTES TOKENS
 *
 * MEMORY_BYTES "+N" means the fixed region plus N bytes, the fixed region measured in this process
 * by a first plan (the runtime's resident set varies by tens of MiB between processes).
 */
import { loadModel } from "../core/model.ts";

const [model, sidecar, bundles, memoryText, tokensText] = Deno.args;
async function fixedRegionBytes(): Promise<number> {
  using probe = await loadModel(model, { threads: 2, contextLength: 256, batchSize: 16 });
  return (await probe.prepareOffload({ sidecar, bundles, memory: 2 ** 34 })).plan.fixed.total;
}
const memory = memoryText.startsWith("+")
  ? Math.ceil((await fixedRegionBytes()) + Number(memoryText.slice(1)))
  : Number(memoryText);
const status = () => Deno.readTextFileSync("/proc/self/status");
const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status())![1]) * 1024;

using m = await loadModel(model, { threads: 2, contextLength: 256, batchSize: 16 });
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
