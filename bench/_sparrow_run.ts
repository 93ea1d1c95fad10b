/**
 * One sparrow decode run in a process of its own, so bench/offload_bench.ts can put it in a memory
 * cgroup and drop the page cache before it: load, prepare (dense, sparse in memory, or offloaded
 * under a budget), prefill a short prompt, decode greedily, print one JSON line of figures. Mode
 * "probe" only loads the model and prints how much is resident then ({@link SparrowProbeResult}):
 * the runtime the offload planner will measure, which the benchmark's default limit must leave room
 * for. A failure ends with one line `sparrow-run failed: <message>` on stderr and exit code 1.
 *
 *   deno run -A bench/_sparrow_run.ts '{"model": "...", "mode": "offload", ...}'
 *
 * @module
 */
import { loadModel } from "../core/model.ts";
import { residentBytes } from "../core/memory_budget.ts";
import type { OffloadReport } from "../core/offload.ts";
import type { SparseOptions } from "../core/sparse.ts";

/** KV cache positions, batch size and KV type of the run's session: the offload budget must hold them. */
export const runContextLength = 256;
export const runBatchSize = 32;
export const runKvType = "f16";

/** What a run is told. */
export interface SparrowRunSpec {
  model: string;
  mode: "dense" | "sparse" | "offload" | "probe";
  sidecar?: string;
  bundles?: string;
  /** Offload: the budget, bytes. */
  memory?: number;
  /** Offload: the hot region's share of the neuron cache (the planner's default when absent). */
  hotShare?: number;
  threads: number;
  promptTokens: number;
  decodeTokens: number;
  /**
   * Stop decoding once this long has passed since the process started, after at least one token
   * (as llama.cpp's runner does; the figures cover the tokens done).
   */
  deadlineMs: number;
}

/** What mode "probe" prints. */
export interface SparrowProbeResult {
  /** VmRSS right after loading and fingerprinting the model (what core/offload.ts counts as the runtime). */
  runtimeBytes: number;
}

/** What a run prints. */
export interface SparrowRunResult {
  loadMs: number;
  prepareMs: number;
  prefillMs: number;
  tokens: number;
  decodeMs: number;
  decodeTokensPerSecond: number;
  sparsity?: number;
  hitRate?: number;
  hotHitRate?: number;
  readBytesPerToken?: number;
  ioStallMsPerToken?: number;
  ffnBytesPerToken?: number;
  plan?: string;
  offloadedShare?: number;
  io?: OffloadReport["io"];
  peakRssBytes: number;
}

function kb(key: string): number {
  const m = new RegExp(`${key}:\\s+(\\d+) kB`).exec(Deno.readTextFileSync("/proc/self/status"));
  return m ? Number(m[1]) * 1024 : NaN;
}

async function main(spec: SparrowRunSpec): Promise<SparrowRunResult | SparrowProbeResult> {
  const t0 = performance.now();
  using model = await loadModel(spec.model, {
    threads: spec.threads,
    contextLength: runContextLength,
    batchSize: runBatchSize,
    kvType: runKvType,
    // Offloaded FFNs (and the probe that plans them) need the weights mapped; the others copy them
    // when they fit, as the CLI does.
    weights: spec.mode === "offload" || spec.mode === "probe" ? "map" : "auto",
  });
  if (spec.mode === "probe") {
    // prepareOffload fingerprints the model (17 MiB of it read into memory) before it measures.
    await model.fingerprint();
    return { runtimeBytes: residentBytes() ?? NaN };
  }
  const t1 = performance.now();
  let report: OffloadReport | undefined;
  let sparse: SparseOptions | undefined;
  if (spec.mode === "sparse") {
    await model.prepareSparse({ sidecar: spec.sidecar });
    sparse = { mode: "predictor", sidecar: spec.sidecar };
  } else if (spec.mode === "offload") {
    report = await model.prepareOffload({
      sidecar: spec.sidecar!,
      bundles: spec.bundles!,
      memory: spec.memory!,
      hotShare: spec.hotShare,
    });
    sparse = { mode: "predictor", sidecar: spec.sidecar, bundles: spec.bundles };
  }
  const t2 = performance.now();
  using session = model.createSession({ sparse });
  const ids = model.tokenize("The sparrow is a small bird that lives in cities and fields. ".repeat(4))
    .slice(0, spec.promptTokens);
  let logits = (await session.evaluate(ids))[0];
  const t3 = performance.now();
  session.sparseStats(true); // count decode tokens only
  let tokens = 0;
  // performance.now() counts from the process's start: the deadline covers loading too.
  while (tokens < spec.decodeTokens && (tokens === 0 || performance.now() < spec.deadlineMs)) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    ids.push(best);
    logits = (await session.evaluate(ids))[0];
    tokens++;
  }
  const t4 = performance.now();
  const st = spec.mode === "dense" ? undefined : session.sparseStats();
  return {
    loadMs: t1 - t0,
    prepareMs: t2 - t1,
    prefillMs: t3 - t2,
    tokens,
    decodeMs: t4 - t3,
    decodeTokensPerSecond: (tokens * 1000) / (t4 - t3),
    sparsity: st?.sparsity,
    hitRate: st?.hitRate,
    hotHitRate: st?.hotHitRate,
    readBytesPerToken: st?.readBytesPerToken,
    ioStallMsPerToken: st?.ioStallMsPerToken,
    ffnBytesPerToken: st?.bytesPerToken,
    plan: report?.plan.explanation,
    offloadedShare: report?.plan.offloadedShare,
    io: report?.io,
    peakRssBytes: kb("VmHWM"),
  };
}

if (import.meta.main) {
  try {
    console.log(JSON.stringify(await main(JSON.parse(Deno.args[0]))));
  } catch (e) {
    // One line the benchmark can show in its table, whatever the stack below it.
    console.error((e as Error).stack ?? String(e));
    console.error(`sparrow-run failed: ${(e as Error).message?.replaceAll("\n", " ") ?? String(e)}`);
    Deno.exit(1);
  }
}
