/**
 * Sparse decode beside dense decode on the same model in the same run, and llama.cpp's dense decode
 * of the same file as the outside peer: tok/s per mode, cluster size and down-projection storage,
 * the weight bytes read per token, and the tok/s bound those bytes imply at the memory bandwidth
 * measured in this run (all weights read per token: attention, classifier, sparse FFN, predictor).
 * Speeds and "vs dense" come from interleaved rounds (one token per mode in turn, the order rotating),
 * so that the machine's slow spells fall on every mode alike; Deno's table times each mode in a block.
 *
 *   deno bench -A bench/sparse_bench.ts                       (synthetic 7B ReLU Q4_0, oracle mode)
 *   SPARROW_SPARSE_MODEL=m.gguf SPARROW_SPARSE_SIDECAR=m.sparsity.gguf deno bench -A bench/sparse_bench.ts
 *
 * Environment: SPARROW_SPARSE_MODEL (default: the synthetic Mistral-7B-shape ReLU Q4_0 model at ~90%
 * sparsity, generated once into the model cache), SPARROW_SPARSE_SIDECAR (adds predictor mode),
 * SPARROW_SPARSE_CLUSTERS (default 8,16,32), SPARROW_SPARSE_DOWN (down storage types, default
 * "auto"; e.g. "auto,q4_0"), SPARROW_SPARSE_SPARSITY (SwiGLU target), SPARROW_BENCH_THREADS
 * (default: every logical CPU), SPARROW_BENCH_NO_LLAMACPP=1 (skip the peer).
 *
 * llama.cpp runs ReLU-FFN files as SwiGLU (it reads no activation key), which costs it the same
 * work: its dense decode speed is the peer, not its text.
 *
 * @module
 */
import { loadModel } from "../core/model.ts";
import type { Session } from "../core/session.ts";
import type { DownType, SparseMode } from "../core/sparse.ts";
import { core } from "../core/ffi.ts";
import { machine, memoryReadRows, table } from "./_report.ts";
import { benchModel } from "./_bench_models.ts";
import { type LlamaCppResult, runLlamaCpp } from "./_llamacpp.ts";

const log = (line: string) => console.error(`bench: ${line}`);
const custom = Deno.env.get("SPARROW_SPARSE_MODEL");
const { path, label } = custom ? { path: custom, label: custom } : await benchModel("mistral-7b-relu-q4_0", log);
const sidecar = Deno.env.get("SPARROW_SPARSE_SIDECAR");
const sparsity = Deno.env.has("SPARROW_SPARSE_SPARSITY") ? Number(Deno.env.get("SPARROW_SPARSE_SPARSITY")) : undefined;
const threads = Number(Deno.env.get("SPARROW_BENCH_THREADS") ?? navigator.hardwareConcurrency);
const clusters = (Deno.env.get("SPARROW_SPARSE_CLUSTERS") ?? "8,16,32").split(",").map(Number);
const downTypes = (Deno.env.get("SPARROW_SPARSE_DOWN") ?? "auto").split(",") as DownType[];
const withPeer = Deno.env.get("SPARROW_BENCH_NO_LLAMACPP") !== "1";
const promptN = 32;

const model = await loadModel(path, { threads, contextLength: 128, batchSize: 32 });
const big = model.info.weightBytes > 1e9;
const llama: LlamaCppResult = withPeer
  ? (log(`llama.cpp (dense) on ${label}, ${threads} threads`), await runLlamaCpp(path, threads, promptN, 16, 1))
  : { ok: false, why: "skipped (SPARROW_BENCH_NO_LLAMACPP=1)" };
for (const downType of downTypes) await model.prepareSparse({ sidecar, sparsity, downType });
const prompt = model.tokenize("The sparrow is a small bird that lives in cities and fields. ".repeat(8)).slice(
  0,
  promptN,
);
const next = prompt[prompt.length - 1];

// Memory bandwidth, this run, same threads: the yardstick for the bytes-per-token bound.
const c = core();
const mem = c.sp_bench_create(0, 0, BigInt(memoryReadRows()), 65536n, 1, threads)!;
let bandwidth = 0;
for (let i = 0; i < 5; i++) {
  bandwidth = Math.max(bandwidth, Number(c.sp_bench_bytes(mem)) / Number(c.sp_bench_run(mem)));
}
c.sp_bench_destroy(mem);

interface Config {
  mode: SparseMode;
  cluster: number;
  downType: DownType;
}
interface Row extends Config {
  /** Milliseconds per token in Deno's timed block. */
  ms: number[];
  /** Milliseconds per token in the interleaved rounds, one per round. */
  paired: number[];
  session: Session;
}
const rows: Row[] = [];
const configs: Config[] = [{ mode: "dense", cluster: 0, downType: "auto" }];
for (const mode of sidecar ? ["oracle", "predictor"] as const : ["oracle"] as const) {
  for (const downType of downTypes) for (const cluster of clusters) configs.push({ mode, cluster, downType });
}

for (const cfg of configs) {
  const session = model.createSession({
    sparse: cfg.mode === "dense"
      ? undefined
      : { mode: cfg.mode, sidecar, sparsity, clusterSize: cfg.cluster, downType: cfg.downType, verifyEvery: 0 },
  });
  await session.evaluate(prompt);
  rows.push({ ...cfg, ms: [], paired: [], session });
}

// Interleaved rounds first: one token per mode in turn, the order rotating every round, so that a
// slow spell of a shared machine falls on every mode alike (run one after the other, dense and
// sparse drifted apart by up to 10% between runs). The "vs dense" column is the median of these
// per-round ratios; Deno's own table below times each mode in a block of its own.
const rounds = big ? 16 : 40;
log(`${rounds} interleaved rounds over ${rows.length} modes`);
for (let round = 0; round < rounds; round++) {
  for (let i = 0; i < rows.length; i++) {
    const row = rows[(round + i) % rows.length];
    const t0 = performance.now();
    await row.session.evaluate([...prompt, next]);
    row.paired.push(performance.now() - t0);
  }
}

for (const row of rows) {
  Deno.bench({
    name: row.mode === "dense"
      ? `dense, ${threads} thread(s)`
      : `${row.mode}, cluster ${row.cluster}, down ${row.downType}, ${threads} thread(s)`,
    group: "decode",
    baseline: row.mode === "dense",
    n: big ? 8 : 40,
    warmup: 2,
    async fn(b) {
      // The prompt is cached: each run evaluates one token at position promptN.
      b.start();
      const t0 = performance.now();
      await row.session.evaluate([...prompt, next]);
      row.ms.push(performance.now() - t0);
      b.end();
    },
  });
}

/**
 * A sparse token's time by phase: the FFN's own counters (mean over every token the session ran,
 * warm-up included), and the rest of the median token (attention, projections, classifier).
 */
function phaseSplit(ms: { select: number; rows: number; down: number }, tokenMs: number): string {
  const rest = tokenMs - ms.select - ms.rows - ms.down;
  return [ms.select, ms.rows, ms.down, rest].map((v) => v.toFixed(1)).join("/");
}

// Bytes every token reads whatever the FFN does: attention matrices and the classifier (the
// embedding table is read one row per token).
const tensors = [...model.gguf.tensors.values()];
const nonFfn = tensors
  .filter((t) =>
    !/ffn_(gate|up|down)|token_embd/.test(t.name) || (t.name === "token_embd.weight" && model.info.tiedEmbeddings)
  )
  .reduce((a, t) => a + t.nBytes, 0);
const denseFfn = tensors.filter((t) => /ffn_(gate|up|down)/.test(t.name)).reduce((a, t) => a + t.nBytes, 0);

table(
  `Sparse decode, ${label} (${machine()}), ${threads} threads, memory bandwidth ${bandwidth.toFixed(1)} GB/s this run`,
  [
    "mode",
    "cluster",
    "down",
    "tok/s (interleaved)",
    "vs dense",
    "vs llama.cpp",
    "tok/s (own block)",
    "sparsity",
    "FFN MB/token",
    "all MB/token",
    "bound tok/s",
    "ms/token: select/rows/down/rest",
  ],
  () => {
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const peer = llama.ok ? llama.decodeTokensPerSecond : NaN;
    const out = rows.map((r) => {
      const tps = 1000 / median(r.paired);
      // Per round: dense's time over this mode's, in the same round.
      const vsDense = median(r.paired.map((ms, i) => rows[0].paired[i] / ms));
      const stats = r.mode === "dense" ? undefined : r.session.sparseStats();
      const ffnBytes = stats ? stats.bytesPerToken : denseFfn;
      const all = nonFfn + ffnBytes;
      return [
        r.mode,
        r.mode === "dense" ? "-" : String(r.cluster),
        r.mode === "dense" ? "-" : r.downType,
        tps.toFixed(2),
        `${vsDense.toFixed(2)}x`,
        llama.ok ? `${(tps / peer).toFixed(2)}x` : "-",
        r.ms.length > 0 ? (1000 / median(r.ms)).toFixed(2) : "-",
        stats ? stats.sparsity.toFixed(3) : "0",
        (ffnBytes / 1e6).toFixed(1),
        (all / 1e6).toFixed(1),
        ((bandwidth * 1e9) / all).toFixed(2),
        stats ? phaseSplit(stats.msPerToken, 1000 / tps) : "-",
      ];
    });
    out.push([
      "llama.cpp dense",
      "-",
      "-",
      llama.ok ? peer.toFixed(2) : `- (${llama.ok ? "" : llama.why})`,
      llama.ok ? `${(peer / (1000 / median(rows[0].paired))).toFixed(2)}x` : "-",
      llama.ok ? "1.00x" : "-",
      "-",
      "0",
      (denseFfn / 1e6).toFixed(1),
      ((nonFfn + denseFfn) / 1e6).toFixed(1),
      ((bandwidth * 1e9) / (nonFfn + denseFfn)).toFixed(2),
      "-",
    ]);
    return out;
  },
);
