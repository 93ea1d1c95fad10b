/**
 * The flash-offload benchmark's peer: llama.cpp (node-llama-cpp 3.22.1) decoding a 7B-shape model
 * (a) with every weight in memory and no limit, and (b) reading its weights through mmap in a memory
 * cgroup limited to less than the model, with the page cache dropped first, so what does not fit is
 * read from disk and every page read is charged to the limit (bench/_cgroup.ts).
 *
 *   deno bench -A bench/offload_peer_bench.ts      (or deno run -A: the same)
 *
 * On x86-64 with AVX2 the llama.cpp bundled with node-llama-cpp 3.22.1 repacks Q4_0, Q4_K, IQ4_NL
 * and MXFP4 matrices (Q2_K too with AVX-512) into an interleaved layout at load: the CPU_REPACK
 * buffer, anonymous memory, filled by reading the mapping (ggml-cpu/repack.cpp,
 * ggml_repack_get_optimal_repack_type; llama-model.cpp maps a file only for the default CPU buffer
 * type). node-llama-cpp exposes no switch for it (llama_model_params.use_extra_bufts, llama.cpp's
 * --no-repack, stays at its default, true). So under a limit smaller than the model a Q4_0 model
 * does not stream at all: it must fit in anonymous memory or be OOM-killed. Run (b) is therefore
 * repeated on a model of a type llama.cpp maps as it is (Q4_1 here: same shape, 5 bits per weight
 * instead of 4.5), which is the peer that actually streams.
 *
 * Environment:
 * - SPARROW_OFFLOAD_MODEL: the GGUF (default: the synthetic Mistral-7B-shape ReLU Q4_0 model in the
 *   repository's .cache, else generated into the model cache).
 * - SPARROW_OFFLOAD_LIMIT: the limit of (b), bytes or with a K/M/G suffix (binary). Default, per
 *   model: (non-FFN bytes + 50% of FFN bytes) × 1.1, from its GGUF header.
 * - SPARROW_OFFLOAD_DIRECT_MODEL: the model of a directly mapped type for the second (b) run
 *   (default: the default model's Q4_1 twin, generated once beside it; none for other models, unless
 *   their own type is not repacked, when (b) already is that run). "none" skips it.
 * - SPARROW_OFFLOAD_DEADLINE_S: wall-clock budget per run (default 300): decoding stops there, and
 *   the process is killed a minute later if loading or a token has not finished.
 * - SPARROW_OFFLOAD_TOKENS: tokens to decode at most (default 32); the prompt is 8 tokens.
 * - SPARROW_BENCH_THREADS: llama.cpp's threads (default: every logical CPU).
 *
 * Needs root (or a delegated memory cgroup) and a writable /proc/sys/vm/drop_caches; each (b) run
 * drops the page cache of the whole machine. Every figure is printed with the machine, model,
 * threads, limit, and how much of the model was still in the page cache when the run started.
 *
 * @module
 */
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { readGguf } from "../core/gguf.ts";
import { ggmlTypeName } from "../core/gguf_types.ts";
import { synthesizeModel } from "../models/synth.ts";
import { benchModel } from "./_bench_models.ts";
import { memoryCgroupAvailable } from "./_cgroup.ts";
import { type LlamaCppLimitedResult, runLlamaCppInMemoryLimit } from "./_llamacpp.ts";
import { machine, table } from "./_report.ts";

const log = (line: string) => console.error(`bench: ${line}`);
const root = fileURLToPath(new URL("..", import.meta.url));
const mib = 1 << 20;

/** Types the bundled llama.cpp repacks on x86-64 with AVX2 (ggml_repack_get_optimal_repack_type). */
const repackedOnAvx2 = new Set(["Q4_0", "Q4_K", "IQ4_NL", "MXFP4"]);

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** "2.5G", "700M", "123456" → bytes (binary suffixes). */
function parseBytes(text: string): number {
  const m = text.trim().match(/^(\d+(?:\.\d+)?)\s*([KMG]?)i?B?$/i);
  if (!m) throw new Error(`SPARROW_OFFLOAD_LIMIT '${text}' is not bytes or a number with K/M/G`);
  const scale = { "": 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 }[m[2].toUpperCase() as "" | "K" | "M" | "G"];
  return Math.round(Number(m[1]) * scale);
}

/** What the limit formula needs from a GGUF: FFN and other tensor bytes, and the matrix types. */
function modelSummary(path: string) {
  const g = readGguf(path);
  let ffn = 0;
  let other = 0;
  const types = new Map<string, number>();
  for (const t of g.tensors.values()) {
    // FFN matrices are what a flash-offload engine streams; their norms stay with the rest.
    if (/^blk\.\d+\.ffn_/.test(t.name) && !t.name.includes("norm")) ffn += t.nBytes;
    else other += t.nBytes;
    if (t.dims.length === 2) types.set(ggmlTypeName(t.type), (types.get(ggmlTypeName(t.type)) ?? 0) + t.nBytes);
  }
  const main = [...types].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "?";
  return { ffn, other, types, main, fileSize: g.fileSize, name: String(g.metadata.get("general.name") ?? "") };
}

function defaultLimit(s: ReturnType<typeof modelSummary>): number {
  return Math.round((s.other + 0.5 * s.ffn) * 1.1);
}

const threads = Number(Deno.env.get("SPARROW_BENCH_THREADS") ?? navigator.hardwareConcurrency);
const deadlineMs = Number(Deno.env.get("SPARROW_OFFLOAD_DEADLINE_S") ?? 300) * 1000;
const decodeTokens = Number(Deno.env.get("SPARROW_OFFLOAD_TOKENS") ?? 32);
const promptTokens = 8;
const limitEnv = Deno.env.get("SPARROW_OFFLOAD_LIMIT");
const limitOverride = limitEnv ? parseBytes(limitEnv) : undefined;

const repoDefault = join(root, ".cache", "models", "synthetic", "mistral-7b-relu-q4_0.gguf");
const custom = Deno.env.get("SPARROW_OFFLOAD_MODEL");
const modelPath = custom ?? (exists(repoDefault) ? repoDefault : (await benchModel("mistral-7b-relu-q4_0", log)).path);
const isDefault = custom === undefined;

/**
 * The default model's Q4_1 twin: the same synthetic construction (bench/_bench_models.ts's
 * "mistral-7b-relu-q4_0") with Q4_1 matrices, which llama.cpp maps without repacking.
 */
function q4_1Twin(): string {
  const path = join(dirname(modelPath), basename(modelPath).replace(/q4_0\.gguf$/, "q4_1.gguf"));
  if (path === modelPath) throw new Error(`cannot name a Q4_1 twin of ${modelPath}`);
  if (!exists(path)) {
    log(`generating the Q4_1 twin of the default model into ${path} (once)`);
    const tmp = `${path}.partial`;
    synthesizeModel(tmp, {
      shape: "mistral-7b",
      weightType: "q4_1",
      activation: "relu",
      sparseFfn: { sparsity: 0.9 },
      seed: 1,
      vocab: "llama2",
    });
    Deno.renameSync(tmp, path);
  }
  return path;
}

const summary = modelSummary(modelPath);
const directEnv = Deno.env.get("SPARROW_OFFLOAD_DIRECT_MODEL");
const directPath = directEnv === "none"
  ? undefined
  : directEnv ?? (isDefault && repackedOnAvx2.has(summary.main) ? q4_1Twin() : undefined);

interface Run {
  label: string;
  path: string;
  summary: ReturnType<typeof modelSummary>;
  limitBytes?: number;
  mmap: boolean;
  dropCache: boolean;
  result?: Awaited<ReturnType<typeof runLlamaCppInMemoryLimit>>;
}
const runs: Run[] = [
  { label: "(a) in memory, no limit", path: modelPath, summary, mmap: false, dropCache: false },
  {
    label: "(b) mmap, limited, cache dropped",
    path: modelPath,
    summary,
    limitBytes: limitOverride ?? defaultLimit(summary),
    mmap: true,
    dropCache: true,
  },
];
if (directPath) {
  const s = modelSummary(directPath);
  runs.push({
    label: "(b) mmap, limited, cache dropped",
    path: directPath,
    summary: s,
    limitBytes: limitOverride ?? defaultLimit(s),
    mmap: true,
    dropCache: true,
  });
}

const mb = (n: number | undefined) => n === undefined ? "-" : (n / mib).toFixed(0);
const s1 = (ms: number | undefined) => ms === undefined ? "-" : (ms / 1000).toFixed(1);

const cgroup = memoryCgroupAvailable();
const loadAtStart = Deno.loadavg();

// The runs happen when the file is loaded, one after another: each is a single process of minutes
// whose outcome (tokens, an OOM kill, a timeout) is the figure, not something deno bench could
// repeat and time. deno bench's own table stays empty; the table below is printed at the end.
if (!cgroup.ok) log(`no memory cgroup, nothing to measure: ${cgroup.why}`);
else {
  for (const run of runs) {
    log(
      `llama.cpp ${run.label} on ${run.path} (${run.summary.main})` +
        (run.limitBytes ? `, limit ${(run.limitBytes / mib).toFixed(0)} MiB` : ""),
    );
    run.result = await runLlamaCppInMemoryLimit(run.path, {
      threads,
      promptTokens,
      decodeTokens,
      limitBytes: run.limitBytes,
      mmap: run.mmap,
      deadlineMs,
      dropCache: run.dropCache,
    });
    log(JSON.stringify(run.result));
    const resident = run.result.ok ? run.result.residentBeforeBytes : undefined;
    if (run.dropCache && typeof resident === "number" && resident > 0.05 * run.summary.fileSize) {
      log(
        `warning: ${mb(resident)} MiB of ${run.path} stayed in the page cache after the drop (another ` +
          `process keeps it mapped?): those pages were neither read from disk nor charged to the limit`,
      );
    }
  }
}

/** The model buffer sizes llama.cpp reported, e.g. "CPU_Mapped 3815, CPU_REPACK 3814". */
function buffers(r: LlamaCppLimitedResult): string {
  const parts = r.buffers.filter((l) => /model buffer size/.test(l)).map((l) => {
    const m = l.match(/(CPU\S*)\s+model buffer size\s*=\s*([\d.]+)\s*MiB/);
    return m ? `${m[1]} ${Number(m[2]).toFixed(0)}` : l;
  });
  return parts.join(", ") || "(not logged)";
}

function outcome(r: LlamaCppLimitedResult): string {
  switch (r.outcome) {
    case "done":
      return "done";
    case "deadline":
      return `deadline (${s1(r.ms)} s)`;
    case "oom_killed":
      return `OOM-killed while ${r.phase === "loading" ? "loading" : r.phase} after ${s1(r.ms)} s`;
    case "timed_out":
      return `killed at ${s1(r.ms)} s while ${r.phase}`;
    case "failed":
      return `failed (code ${r.code}): ${r.error?.split("\n").pop()}`;
  }
}

table(
  `llama.cpp (node-llama-cpp 3.22.1) as the flash-offload peer — ${machine()}, ${threads} thread(s), ` +
    `prompt ${promptTokens} tokens, up to ${decodeTokens} decoded, deadline ${deadlineMs / 1000} s per run, ` +
    `load average at start ${loadAtStart.map((x) => x.toFixed(2)).join(" ")}`,
  [
    "run",
    "model",
    "weights MiB (FFN)",
    "limit MiB",
    "cache before run MiB",
    "outcome",
    "load s",
    "tokens",
    "tok/s",
    "1st token s",
    "peak MiB",
    "anon / cache MiB",
    "llama.cpp buffers MiB",
  ],
  () =>
    runs.map((run) => {
      const head = [
        run.label,
        `${basename(run.path)} (${run.summary.main}${
          repackedOnAvx2.has(run.summary.main) ? ", repacked" : ", mapped"
        })`,
        `${mb(run.summary.ffn + run.summary.other)} (${mb(run.summary.ffn)})`,
        run.limitBytes ? mb(run.limitBytes) : "none",
      ];
      const r = run.result;
      if (!r) return [...head, "-", cgroup.ok ? "not run" : `not run: ${cgroup.why}`];
      if (!r.ok) return [...head, "-", `could not run: ${r.why}`];
      const resident = typeof r.residentBeforeBytes === "number"
        ? mb(r.residentBeforeBytes)
        : r.residentBeforeBytes.why;
      const dropped = r.cacheDropped === "not asked" ? "" : r.cacheDropped.ok ? " (dropped)" : " (drop failed)";
      return [
        ...head,
        resident + dropped,
        outcome(r),
        s1(r.loadMs),
        String(r.tokens),
        r.decodeTokensPerSecond === undefined ? "-" : r.decodeTokensPerSecond.toFixed(3),
        s1(r.firstTokenMs),
        mb(r.peakBytes),
        `${mb(r.sampledPeakAnonBytes)} / ${mb(r.sampledPeakCacheBytes)}`,
        buffers(r),
      ];
    }),
);
