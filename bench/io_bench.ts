/**
 * The I/O ring: random reads of 4, 8 and 12 KiB (neuron-bundle sizes) at queue depth 1, 4, 16
 * and 64, by io_uring, the pread pool and mmap, beside the sequential read bandwidth of the same
 * file measured in the same run; GB/s and reads per second.
 *
 *   deno bench -A bench/io_bench.ts
 *
 * The file (1 GiB of random bytes, SPARROW_IO_BENCH_MIB to change) is written once into the model
 * cache (core/default_model.ts modelCacheDir, SPARROW_CACHE_DIR) and reused. Every run is cold: the
 * page cache is dropped first (/proc/sys/vm/drop_caches, root only; the table says when it could
 * not be, since mmap then reads memory, not disk). io_uring and the pread pool read with O_DIRECT.
 * The pread pool gets one thread per queue slot (up to 64), so queue depth means reads in flight for
 * both; mmap copies one page fault at a time whatever the depth (MADV_RANDOM, no read-ahead).
 * Each run makes SPARROW_IO_BENCH_READS reads (default 2000) at random block-aligned offsets.
 *
 * @module
 */
import { join } from "node:path";
import { modelCacheDir } from "../core/default_model.ts";
import { ioBench, type IoBenchResult, type IoMethod, IoRing } from "../core/io_ring.ts";
import { machine, table } from "./_report.ts";

const mib = Number(Deno.env.get("SPARROW_IO_BENCH_MIB") ?? 1024);
const readsPerRun = Number(Deno.env.get("SPARROW_IO_BENCH_READS") ?? 2000);
const blocks = [4096, 8192, 12288];
const depths = [1, 4, 16, 64];
const sequentialBlock = 1 << 20;
const sequentialDepth = 8;

const path = join(modelCacheDir(), `io_bench_${mib}MiB.bin`);

/** Writes the file unless it is there at the right size: random bytes, so nothing compresses. */
function ensureFile(): void {
  const bytes = mib * (1 << 20);
  try {
    if (Deno.statSync(path).size === bytes) return;
  } catch {
    // not there yet
  }
  Deno.mkdirSync(modelCacheDir(), { recursive: true });
  console.error(`bench: writing ${mib} MiB of random bytes to ${path} (once)`);
  const tmp = `${path}.partial`;
  using file = Deno.openSync(tmp, { write: true, create: true, truncate: true });
  const chunk = new Uint8Array(8 << 20);
  for (let written = 0; written < bytes; written += chunk.length) {
    for (let at = 0; at < chunk.length; at += 65536) crypto.getRandomValues(chunk.subarray(at, at + 65536));
    let off = 0;
    const n = Math.min(chunk.length, bytes - written);
    while (off < n) off += file.writeSync(chunk.subarray(off, n));
  }
  file.syncSync(); // dirty pages cannot be dropped: write them out now
  Deno.renameSync(tmp, path);
}

/** Empties the page cache; null when done, else why not. */
function dropCaches(): string | null {
  try {
    Deno.writeTextFileSync("/proc/sys/vm/drop_caches", "1");
    return null;
  } catch (e) {
    return `/proc/sys/vm/drop_caches is not writable here (${(e as Error).name})`;
  }
}

ensureFile();
const dropProblem = dropCaches();
const methods: IoMethod[] = (() => {
  using ring = IoRing.open(path);
  if (ring.method !== "io_uring") console.error(`bench: io_uring skipped: ${ring.note}`);
  return ring.method === "io_uring" ? ["io_uring", "pread_pool", "mmap"] : ["pread_pool", "mmap"];
})();

/** Every run of a configuration (Deno's warm-up run included: each is cold). */
const runs = new Map<string, IoBenchResult[]>();
function record(key: string, r: IoBenchResult): void {
  const list = runs.get(key) ?? [];
  list.push(r);
  runs.set(key, list);
}
function median(key: string): IoBenchResult | undefined {
  const list = [...(runs.get(key) ?? [])].sort((a, b) => a.elapsedNs - b.elapsedNs);
  return list[Math.floor(list.length / 2)];
}
const gbps = (r: IoBenchResult) => r.bytes / r.elapsedNs;
const iops = (r: IoBenchResult) => r.reads / (r.elapsedNs / 1e9);

Deno.bench({
  name: `sequential ${sequentialBlock >> 20} MiB reads, queue depth ${sequentialDepth}`,
  group: "sequential",
  n: 1,
  warmup: 0,
  fn(b) {
    dropCaches();
    b.start();
    const r = ioBench(path, {
      queueDepth: sequentialDepth,
      blockBytes: sequentialBlock,
      reads: (mib << 20) / sequentialBlock,
      sequential: true,
    });
    b.end();
    record("sequential", r);
  },
});

for (const method of methods) {
  for (const block of blocks) {
    for (const depth of depths) {
      const key = `${method} ${block} ${depth}`;
      Deno.bench({
        name: `${method}, ${block / 1024} KiB random reads, queue depth ${depth}`,
        group: `${method} ${block / 1024} KiB`,
        baseline: depth === 1,
        n: 1,
        warmup: 0,
        fn(b) {
          dropCaches();
          b.start();
          const r = ioBench(path, { method, queueDepth: depth, blockBytes: block, reads: readsPerRun, seed: depth });
          b.end();
          record(key, r);
        },
      });
    }
  }
}

const cold = dropProblem === null ? "page cache dropped before each run" : `page cache NOT dropped: ${dropProblem}`;
table(
  `I/O ring, ${mib} MiB file in ${modelCacheDir()} (${machine()}); ${cold}; ` +
    `${readsPerRun} random reads per run, median run; GB/s and thousands of reads/s`,
  ["method", "block", ...depths.map((d) => `QD ${d}`)],
  () => {
    const rows: string[][] = [];
    const seq = median("sequential");
    if (seq) {
      const how = `${seq.method}${seq.direct ? ", O_DIRECT" : ""}, QD ${sequentialDepth}`;
      rows.push([
        "sequential",
        `${sequentialBlock >> 20} MiB`,
        `${gbps(seq).toFixed(2)} GB/s (${how})`,
        ...depths.slice(1).map(() => ""),
      ]);
    }
    for (const method of methods) {
      for (const block of blocks) {
        const cells = depths.map((d) => {
          const r = median(`${method} ${block} ${d}`);
          return r ? `${gbps(r).toFixed(3)} GB/s ${(iops(r) / 1e3).toFixed(1)}k` : "-";
        });
        const r1 = median(`${method} ${block} 1`);
        const label = r1 ? `${method}${r1.direct ? " (O_DIRECT)" : ""}` : method;
        rows.push([label, `${block / 1024} KiB`, ...cells]);
      }
    }
    return rows;
  },
);
