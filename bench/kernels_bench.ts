/**
 * Kernel throughput: memory read bandwidth, and GB/s of weights streamed by the matrix-vector
 * (decode) kernel of every weight type, at 1 and 2 threads (or SPARROW_BENCH_THREADS), measured in
 * the same run and printed side by side; the matrix-matrix (prefill) kernel per token; and the sparse
 * FFN kernels as the engine runs them (the rows in huge pages): dot products of gathered gate/up
 * rows in clusters of 32 selected rows per work item, and the row axpy of the transposed down
 * projection, all selected rows into one output with a column range per thread, over all rows and
 * over a random eighth in ascending order (a 7B ReLU model computes ~10-13% of its neurons,
 * scattered: a regular stride would let the hardware prefetcher guess them). Beside them, the same
 * eighth of rows of the same size only read: scattered rows read slower than a stream, and that
 * read, not the streamed bandwidth, is what the sparse kernels can reach. And one layer's decode
 * attention over 8192 cached positions, GB/s of keys and values read.
 * SPARROW_BENCH_TYPES narrows the matrix-vector types only.
 *
 *   deno bench -A bench/kernels_bench.ts
 *
 * Matrices are 256 MB of weights, 4096 columns, or twice the last-level cache where that is larger
 * (a KVM guest on a Xeon reported 480 MiB of L3, and 256 MB matrices then read at 107% of the
 * bandwidth measured over 512 MiB): decode streams weights from memory, not from the cache.
 *
 * @module
 */
import { core } from "../core/ffi.ts";
import { ggmlTypeByName } from "../core/gguf_types.ts";
import { lastLevelCacheBytes, machine, memoryReadRows, table } from "./_report.ts";

const c = core();
const threadCounts = (Deno.env.get("SPARROW_BENCH_THREADS") ?? `1,${navigator.hardwareConcurrency}`)
  .split(",").map(Number).filter((n, i, a) => n > 0 && a.indexOf(n) === i);
const types = (Deno.env.get("SPARROW_BENCH_TYPES") ?? "f32,f16,bf16,q8_0,q4_0,q4_1,q5_0,q5_1,q4_k,q5_k,q6_k").split(
  ",",
);
const cols = 4096;
const llc = lastLevelCacheBytes();
const weightBytes = Math.max(256e6, 2 * llc);
const readRows = memoryReadRows();

type Handle = Deno.PointerObject;
const kinds = {
  memRead: 0,
  matvec: 1,
  matmul: 2,
  gathered: 3,
  axpy: 4,
  memGathered: 5,
  attention: 6,
  matvecRowPairs: 7,
} as const;

function create(kind: number, dtype: number, rows: number, tokens: number, threads: number, width: number): Handle {
  const h = c.sp_bench_create(kind, dtype, BigInt(rows), BigInt(width), tokens, threads);
  if (h === null) throw new Error(`cannot create benchmark kind ${kind} dtype ${dtype}`);
  return h;
}

/** The native benchmark that holds its matrix now (at most one does). */
let live: { handle: Handle } | null = null;

/**
 * A native benchmark, created on its first run and destroyed when another one is created: Deno runs
 * the benches one after another, and every matrix at once (about 25 GB over two thread counts) does
 * not fit in memory. Each call runs the operation once: the bytes it read and its time in ns.
 */
function lazyBench(
  kind: number,
  dtype: number,
  rows: number,
  tokens: number,
  threads: number,
  width = cols,
): () => { bytes: number; ns: number } {
  let own: { handle: Handle } | null = null;
  return () => {
    if (own === null || live !== own) {
      if (live !== null) c.sp_bench_destroy(live.handle);
      live = null;
      own = live = { handle: create(kind, dtype, rows, tokens, threads, width) };
    }
    const ns = Number(c.sp_bench_run(own.handle));
    return { bytes: Number(c.sp_bench_bytes(own.handle)), ns };
  };
}

/** Best-of-run GB/s, recorded per benchmark name, for the summary tables. */
const best = new Map<string, number>();
function record(name: string, run: { bytes: number; ns: number }): void {
  best.set(name, Math.max(best.get(name) ?? 0, run.bytes / run.ns));
}

for (const t of threadCounts) {
  const run = lazyBench(kinds.memRead, 0, readRows, 1, t, 65536);
  Deno.bench({
    name: `memory read ${(readRows * 65536) / 2 ** 20} MiB, ${t} thread(s)`,
    group: `memory ${t}T`,
    baseline: true,
    fn: () => record(`mem ${t}`, run()),
  });
}

for (const name of types) {
  const info = ggmlTypeByName(name)!;
  const rows = Math.round(weightBytes / ((cols / info.blockElems) * info.blockBytes));
  for (const t of threadCounts) {
    const run = lazyBench(kinds.matvec, info.id, rows, 1, t);
    const bytes = rows * (cols / info.blockElems) * info.blockBytes;
    Deno.bench({
      name: `matvec ${name} ${rows}x${cols} (${(bytes / 1e6).toFixed(0)} MB), ${t} thread(s)`,
      group: `memory ${t}T`,
      fn: () => record(`${name} ${t}`, run()),
    });
  }
}

// The same matrices stored as row pairs, as weights copied at load are (Q4_0 and Q8_0: the 7B-shape
// synthetic model's types).
const rowPairTypes = types.filter((name) => name === "q4_0" || name === "q8_0");
for (const name of rowPairTypes) {
  const info = ggmlTypeByName(name)!;
  const rows = Math.round(weightBytes / ((cols / info.blockElems) * info.blockBytes) / 2) * 2;
  for (const t of threadCounts) {
    const run = lazyBench(kinds.matvecRowPairs, info.id, rows, 1, t);
    Deno.bench({
      name: `matvec ${name} ${rows}x${cols}, row pairs, ${t} thread(s)`,
      group: `memory ${t}T`,
      fn: () => record(`${name} pairs ${t}`, run()),
    });
  }
}

// A rank-128 predictor's fc2 (sparse FFNs): rows of 128 columns, Q8_0, as many as fill
// `weightBytes` (a 7B model's 32 layers hold 62 MB, which the last-level cache would partly keep).
const predictorRows = Math.round(weightBytes / 136);
for (const t of threadCounts) {
  const run = lazyBench(kinds.matvec, ggmlTypeByName("q8_0")!.id, predictorRows, 1, t, 128);
  Deno.bench({
    name: `matvec q8_0 ${predictorRows}x128 (predictor fc2, ${
      ((predictorRows * 136) / 1e6).toFixed(0)
    } MB), ${t} thread(s)`,
    group: `memory ${t}T`,
    fn: () => record(`predictor ${t}`, run()),
  });
}

// Rows under 1 KiB that still hold whole batches of 8 blocks: SmolLM2-135M's 576 columns, Q4_1 (360 B
// a row), as many as fill `weightBytes`. They take matvecRows' short-row path, two rows at a time.
const smolRowBytes = (576 / 32) * 20;
const smolRows = Math.round(weightBytes / smolRowBytes);
for (const t of threadCounts) {
  const run = lazyBench(kinds.matvec, ggmlTypeByName("q4_1")!.id, smolRows, 1, t, 576);
  Deno.bench({
    name: `matvec q4_1 ${smolRows}x576 (SmolLM2-135M rows, ${
      ((smolRows * smolRowBytes) / 1e6).toFixed(0)
    } MB), ${t} thread(s)`,
    group: `memory ${t}T`,
    fn: () => record(`smol ${t}`, run()),
  });
}

// One layer's decode attention over a long context (kernels/attention.zig): 8 kv heads of 8192
// cached positions, f32 or f16 keys and values (67 or 34 MB at head size 128), each read once per
// token. GB/s counts the cache's bytes, so f16 reads half as many for the same work.
const attentionPositions = 8192;
const attentionCases = [
  { headDim: 128, group: 4, kv: "f32", label: "head 128, 4 query heads per kv head (Mistral-7B)" },
  { headDim: 128, group: 4, kv: "f16", label: "head 128, 4 query heads per kv head (Mistral-7B)" },
  { headDim: 64, group: 3, kv: "f32", label: "head 64, 3 query heads per kv head (SmolLM2)" },
  { headDim: 64, group: 3, kv: "f16", label: "head 64, 3 query heads per kv head (SmolLM2)" },
];
for (const ac of attentionCases) {
  const kvType = ggmlTypeByName(ac.kv)!;
  for (const t of threadCounts) {
    const run = lazyBench(kinds.attention, kvType.id, attentionPositions, ac.group, t, ac.headDim);
    Deno.bench({
      name: `attention ${ac.label}, ${ac.kv} cache, 8 kv heads x ${attentionPositions} positions (${
        ((2 * 8 * attentionPositions * ac.headDim * kvType.blockBytes) / 1e6).toFixed(0)
      } MB), ${t} thread(s)`,
      group: `memory ${t}T`,
      fn: () => record(`attention ${ac.headDim} ${ac.kv} ${t}`, run()),
    });
  }
}

const prefillTimes = new Map<string, number>();
for (const name of types.filter((n) => n.startsWith("q"))) {
  const info = ggmlTypeByName(name)!;
  for (const t of threadCounts) {
    for (const [kind, tokens] of [[kinds.matvec, 1], [kinds.matmul, 64]] as const) {
      const run = lazyBench(kind, info.id, 4096, tokens, t);
      const key = `${name} ${t} ${kind}`;
      Deno.bench({
        name: `${kind === kinds.matvec ? "matvec" : "matmul x64"} ${name} 4096x4096, ${t} thread(s)`,
        group: `prefill ${name}`,
        baseline: kind === kinds.matvec && t === threadCounts[0],
        fn: () => {
          const us = run().ns / 1e3 / tokens;
          prefillTimes.set(key, Math.min(prefillTimes.get(key) ?? Infinity, us));
        },
      });
    }
  }
}

// Sparse FFN kernels on 16 layers' worth of a 7B-shape FFN matrix (16 x 14336 rows of 4096): gate/up
// row types for the gathered dot products, transposed-down types for the axpy; `tokens` = keep each
// row with probability 1/N. An eighth of it (66-125 MB) fits in a large last-level cache, and each
// run reads the same selection: every timed run follows an untimed read of twice the last-level
// cache, so that the rows come from memory, as a decoded token's do. (Without it, on a Xeon KVM guest
// whose L3 held ~100 MB, 1-in-8 rows "read" at 165% of the memory bandwidth.) Deno's own time per
// iteration includes that read; the tables use the kernel's time alone.
const sparseRows = 16 * 14336;
let evictHandle: Handle | null = null;
function evictCache(): void {
  evictHandle ??= create(kinds.memRead, 0, readRows, 1, Math.max(...threadCounts), 65536);
  c.sp_bench_run(evictHandle);
}
const sparseCases = [
  ...["q4_0", "q4_1", "q8_0"].map((type) => ({ kind: kinds.gathered, label: "gathered dot", type })),
  ...["q8_0", "q4_0"].map((type) => ({ kind: kinds.axpy, label: "row axpy", type })),
];
const selections = [1, 8];
const rowBytesOf = (type: string) => {
  const info = ggmlTypeByName(type)!;
  return (cols / info.blockElems) * info.blockBytes;
};
// The ceiling of the sparse kernels' reads: the same selection of rows of the same size, read
// with the same prefetching and nothing computed (scattered rows read slower than a stream).
const scatteredSizes = [...new Set(sparseCases.map((sc) => rowBytesOf(sc.type)))];
for (const size of scatteredSizes) {
  for (const t of threadCounts) {
    const run = lazyBench(kinds.memGathered, 0, sparseRows, 8, t, size);
    Deno.bench({
      name: `memory read, 1 in 8 rows of ${size} B (~${((sparseRows / 8) * size / 1e6).toFixed(0)} MB), ${t} thread(s)`,
      group: `memory ${t}T`,
      fn: () => {
        evictCache();
        record(`scattered ${size} ${t}`, run());
      },
    });
  }
}
for (const sc of sparseCases) {
  const info = ggmlTypeByName(sc.type)!;
  for (const every of selections) {
    for (const t of threadCounts) {
      const run = lazyBench(sc.kind, info.id, sparseRows, every, t);
      Deno.bench({
        name: `${sc.label} ${sc.type}, 1 in ${every} of ${sparseRows}x${cols} rows (~${
          ((sparseRows / every) * rowBytesOf(sc.type) / 1e6).toFixed(0)
        } MB), ${t} thread(s)`,
        group: `memory ${t}T`,
        fn: () => {
          evictCache();
          record(`${sc.label} ${sc.type} ${every} ${t}`, run());
        },
      });
    }
  }
}

table(`Memory bandwidth and decode kernels (${machine()}); best GB/s of the run`, [
  "kernel",
  ...threadCounts.map((t) => `${t} thread${t > 1 ? "s" : ""}`),
  ...threadCounts.map((t) => `% of bandwidth (${t}T)`),
], () => {
  const mem = threadCounts.map((t) => best.get(`mem ${t}`) ?? NaN);
  const rows = [["memory read", ...mem.map((g) => g.toFixed(1)), ...threadCounts.map(() => "100%")]];
  for (const name of types) {
    const g = threadCounts.map((t) => best.get(`${name} ${t}`) ?? NaN);
    rows.push([
      `matvec ${name}`,
      ...g.map((v) => v.toFixed(1)),
      ...g.map((v, i) => `${((v / mem[i]) * 100).toFixed(0)}%`),
    ]);
  }
  for (const name of rowPairTypes) {
    const g = threadCounts.map((t) => best.get(`${name} pairs ${t}`) ?? NaN);
    rows.push([
      `matvec ${name}, row pairs`,
      ...g.map((v) => v.toFixed(1)),
      ...g.map((v, i) => `${((v / mem[i]) * 100).toFixed(0)}%`),
    ]);
  }
  const p = threadCounts.map((t) => best.get(`predictor ${t}`) ?? NaN);
  rows.push([
    "matvec q8_0, 128 columns (predictor fc2)",
    ...p.map((v) => v.toFixed(1)),
    ...p.map((v, i) => `${((v / mem[i]) * 100).toFixed(0)}%`),
  ]);
  const sm = threadCounts.map((t) => best.get(`smol ${t}`) ?? NaN);
  rows.push([
    "matvec q4_1, 576 columns (SmolLM2-135M)",
    ...sm.map((v) => v.toFixed(1)),
    ...sm.map((v, i) => `${((v / mem[i]) * 100).toFixed(0)}%`),
  ]);
  for (const ac of attentionCases) {
    const a = threadCounts.map((t) => best.get(`attention ${ac.headDim} ${ac.kv} ${t}`) ?? NaN);
    rows.push([
      `attention, ${ac.label}, ${ac.kv} cache, ${attentionPositions} positions`,
      ...a.map((v) => v.toFixed(1)),
      ...a.map((v, i) => `${((v / mem[i]) * 100).toFixed(0)}%`),
    ]);
  }
  return rows;
});

table("Prefill kernel (64 tokens) vs decode kernel, 4096x4096, best us per token", [
  "type",
  ...threadCounts.map((t) => `matvec (${t}T)`),
  ...threadCounts.map((t) => `matmul x64 (${t}T)`),
], () =>
  types.filter((n) => n.startsWith("q")).map((name) => [
    name,
    ...threadCounts.map((t) => (prefillTimes.get(`${name} ${t} ${kinds.matvec}`) ?? NaN).toFixed(0)),
    ...threadCounts.map((t) => (prefillTimes.get(`${name} ${t} ${kinds.matmul}`) ?? NaN).toFixed(0)),
  ]));

table(
  `Sparse FFN kernels, ${sparseRows}x${cols} matrices, gathered rows in clusters of 32, axpy by column ranges; best GB/s of rows read`,
  [
    "kernel",
    "rows",
    ...threadCounts.map((t) => `${t} thread${t > 1 ? "s" : ""}`),
    ...threadCounts.map((t) => `% of bandwidth (${t}T)`),
    ...threadCounts.map((t) => `% of the same rows' read (${t}T)`),
  ],
  () => {
    const mem = threadCounts.map((t) => best.get(`mem ${t}`) ?? NaN);
    const pct = (v: number, of: number) => `${((v / of) * 100).toFixed(0)}%`;
    const reads = scatteredSizes.map((size) => {
      const g = threadCounts.map((t) => best.get(`scattered ${size} ${t}`) ?? NaN);
      return [
        `memory read, rows of ${size} B`,
        "1 in 8",
        ...g.map((v) => v.toFixed(1)),
        ...g.map((v, i) => pct(v, mem[i])),
        ...g.map(() => "100%"),
      ];
    });
    return [
      ...reads,
      ...sparseCases.flatMap((sc) =>
        selections.map((every) => {
          const g = threadCounts.map((t) => best.get(`${sc.label} ${sc.type} ${every} ${t}`) ?? NaN);
          const read = threadCounts.map((t) => best.get(`scattered ${rowBytesOf(sc.type)} ${t}`) ?? NaN);
          return [
            `${sc.label} ${sc.type}`,
            every === 1 ? "all" : `1 in ${every}`,
            ...g.map((v) => v.toFixed(1)),
            ...g.map((v, i) => pct(v, mem[i])),
            ...g.map((v, i) => every === 1 ? "-" : pct(v, read[i])),
          ];
        })
      ),
    ];
  },
);
