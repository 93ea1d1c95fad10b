/**
 * Options shared by the commands that run a model (generate, chat, ...): which model, threads,
 * context, sampling, sparse FFNs; and loading the model with progress and timing on stderr.
 *
 * @module
 */
import { choice, int, num, type OptionSpec, type Parsed, str, UsageError } from "./args.ts";
import { defaultModel, ensureDefaultModel } from "../core/default_model.ts";
import { loadModel, type Model } from "../core/model.ts";
import type { SamplerOptions } from "../core/sampler.ts";
import { Progress } from "./progress.ts";
import type { DownType, SparseMode, SparseOptions, SparseStats } from "../core/sparse.ts";
import type { IoMethod } from "../core/io_ring.ts";
import { availableMemoryBytes, parseBytes } from "../core/memory_budget.ts";

/** Options every model-running command takes. */
export const modelOptions: OptionSpec = {
  model: { type: "string", short: "m" },
  threads: { type: "string", short: "t" },
  ctx: { type: "string", short: "c" },
  batch: { type: "string" },
  "kv-type": { type: "string" },
  backend: { type: "string" },
  activation: { type: "string" },
  "rope-layout": { type: "string" },
  weights: { type: "string" },
};

/** Help text for {@link modelOptions}. */
export const modelOptionsHelp = `Model options:
  -m, --model PATH        GGUF file (default: ${defaultModel.name}, downloaded on first use)
  -t, --threads N         threads, the calling one included (default: all logical CPUs)
  -c, --ctx N             context length in tokens (default: the model's, at most 4096)
      --batch N           prompt tokens evaluated per step (default 128)
      --kv-type TYPE      KV cache elements: f16 (default, half the memory) or f32
      --backend NAME      compute backend (default cpu)
      --activation KIND   override the FFN activation: swiglu, relu or drelu
      --rope-layout KIND  override RoPE pairing: interleaved or neox
      --weights MODE      copy (weights copied into memory at load: faster decode), map (read in place
                          from the file's mapping) or auto (default: copy when they take at most half
                          of the available memory; map with --bundles)`;

/** Sampling options. */
export const samplingOptions: OptionSpec = {
  temperature: { type: "string" },
  "top-k": { type: "string" },
  "top-p": { type: "string" },
  "min-p": { type: "string" },
  "repeat-penalty": { type: "string" },
  "repeat-last-n": { type: "string" },
  seed: { type: "string" },
};

/** Help text for {@link samplingOptions}. */
export const samplingOptionsHelp = `Sampling options:
      --temperature T     0 = greedy (default 0.8)
      --top-k K           keep the K most likely tokens, 0 = off (default 40)
      --top-p P           nucleus sampling, 1 = off (default 0.95)
      --min-p P           drop tokens under P x the best one's probability, 0 = off (default 0.05)
      --repeat-penalty R  penalise recently seen tokens, 1 = off (default 1)
      --repeat-last-n N   how many recent tokens the penalty sees (default 64)
      --seed N            random seed (default: random; printed with the stats)`;

/** Reads the sampling options. */
export function samplerOptions(p: Parsed): SamplerOptions {
  return {
    temperature: num(p, "temperature", 0, 100),
    topK: int(p, "top-k", 0, 1 << 24),
    topP: num(p, "top-p", 0, 1),
    minP: num(p, "min-p", 0, 1),
    repeatPenalty: num(p, "repeat-penalty", 0.01, 100),
    repeatLastN: int(p, "repeat-last-n", 0, 1 << 20),
    seed: int(p, "seed", 0, 2 ** 32 - 1),
  };
}

/** Writes a line to stderr. */
export function note(line: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(line + "\n"));
}

/** Resolves --model (fetching the default model when absent) and loads it; prints load time. */
export async function openModel(p: Parsed): Promise<{ model: Model; loadMs: number }> {
  let path = str(p, "model");
  if (path === undefined) {
    const progress = new Progress("fetching default model", 0);
    path = await ensureDefaultModel({ onProgress: (s) => note(`sparrow: ${s.message}`) });
    progress.finish();
  }
  const weights = choice(p, "weights", ["auto", "copy", "map"] as const);
  const offloading = str(p, "bundles") !== undefined;
  if (offloading && weights === "copy") {
    throw new UsageError("--weights copy does not go with --bundles: offloaded FFNs are read from the bundles");
  }
  const t0 = performance.now();
  const model = await loadModel(path, {
    weights: weights ?? (offloading ? "map" : "auto"),
    // Worth a word only where it takes a while (about 1-5 s per 4 GB).
    onWeightsCopy: (bytes) => {
      if (bytes >= 1e9) {
        note(`sparrow: copying ${(bytes / 1e9).toFixed(1)} GB of weights into memory (--weights map skips it)`);
      }
    },
    threads: int(p, "threads", 1, 256),
    contextLength: int(p, "ctx", 1, 1 << 20),
    batchSize: int(p, "batch", 1, 4096),
    kvType: choice(p, "kv-type", ["f16", "f32"] as const),
    backend: str(p, "backend"),
    activation: choice(p, "activation", ["swiglu", "relu", "drelu"] as const),
    ropeLayout: choice(p, "rope-layout", ["interleaved", "neox"] as const),
  });
  const loadMs = performance.now() - t0;
  for (const w of model.tokenizer.warnings) note(`sparrow: warning: ${w}`);
  return { model, loadMs };
}

/** Sparse FFN options of the commands that generate (generate, chat). */
export const sparseOptions: OptionSpec = {
  sparse: { type: "string" },
  sidecar: { type: "string" },
  sparsity: { type: "string" },
  "cluster-size": { type: "string" },
  "verify-every": { type: "string" },
  "down-type": { type: "string" },
  "sparse-prompt": { type: "boolean" },
  bundles: { type: "string" },
  memory: { type: "string" },
  io: { type: "string" },
};

/** Help text for {@link sparseOptions}. */
export const sparseOptionsHelp = `Sparse FFN options (PowerInfer-style activation sparsity):
      --sparse MODE       dense (default), oracle (compute the gate, skip the neurons that do not fire;
                          SwiGLU models apply the sidecar's CATS thresholds) or predictor (the sidecar's
                          low-rank predictors choose the neurons; most of the gate is never read)
      --sidecar PATH      calibration sidecar (sparrow calibrate) or PowerInfer predictor file (magic PWRI);
                          default MODEL.sparsity.gguf beside the model when it exists; alone, it implies
                          --sparse predictor
      --sparsity S        which calibrated target to use, e.g. 0.5 (default: the sidecar's first)
      --cluster-size K    neurons per unit of work (default 32)
      --down-type T       storage of the down rows active neurons read: auto (exact for float models,
                          q8_0 for quantized ones), f16, q8_0 or q4_0 (half of q8_0's bytes, rounded twice)
      --sparse-prompt     compute the prompt sparsely too, token by token (default: prompt batches are
                          dense, which is faster for them; flash offload always does this)
      --verify-every N    compute the true active set every N-th token to measure predictor recall;
                          0 = never (default 8 in predictor mode; costs a dense gate on those tokens)
Flash offload (predictor mode with the FFN neurons on disk, streamed as they are needed):
      --bundles PATH      neuron-bundle file (sparrow pack) made from --sidecar; default MODEL.bundles
                          beside the model is NOT picked up on its own: offload only when asked
      --memory SIZE       the whole process's budget, e.g. 3G or 2500M (default: 80% of the available
                          memory: MemAvailable, or the room under the memory cgroup's limit if less);
                          too small a budget is refused with the minimum it needs
      --io METHOD         auto (default: io_uring, else a pread thread pool), io_uring, pread_pool or mmap
With --sparse, stderr gets one more line: measured sparsity, recall, candidates per active neuron
and FFN megabytes read per token, verification reads excluded (prompt batches stay dense; these
count generated tokens).`;

/** Where `sparrow calibrate` writes a model's sidecar by default: `x.gguf` -> `x.sparsity.gguf`. */
export function defaultSidecarPath(modelPath: string): string {
  return modelPath.replace(/\.gguf$/i, "") + ".sparsity.gguf";
}

/** The sidecar at {@link defaultSidecarPath} when that file exists. */
export function existingSidecar(modelPath: string): string | undefined {
  const path = defaultSidecarPath(modelPath);
  try {
    return Deno.statSync(path).isFile ? path : undefined;
  } catch {
    return undefined;
  }
}

/** The sparse options as given, checked before the model is loaded. */
export interface SparseArgs {
  mode: SparseMode | undefined;
  sidecar: string | undefined;
  sparsity: number | undefined;
  clusterSize: number | undefined;
  verifyEvery: number | undefined;
  downType: DownType | undefined;
  sparsePrompt: boolean;
  bundles: string | undefined;
  memory: number | undefined;
  io: IoMethod | "auto" | undefined;
}

/** Reads --down-type. */
export function downTypeArg(p: Parsed): DownType | undefined {
  return choice(p, "down-type", ["auto", "f32", "f16", "q8_0", "q4_0"] as const);
}

/** Reads and checks {@link sparseOptions} (before loading the model: usage errors come first). */
export function sparseArgs(p: Parsed): SparseArgs {
  return {
    mode: choice(p, "sparse", ["dense", "oracle", "predictor"] as const),
    sidecar: str(p, "sidecar"),
    sparsity: num(p, "sparsity", 0, 1),
    clusterSize: int(p, "cluster-size", 1, 1 << 16),
    verifyEvery: int(p, "verify-every", 0, 1 << 30),
    downType: downTypeArg(p),
    sparsePrompt: p.values["sparse-prompt"] === true,
    bundles: str(p, "bundles"),
    memory: bytesArg(p, "memory"),
    io: choice(p, "io", ["auto", "io_uring", "pread_pool", "mmap"] as const),
  };
}

/** Reads a size option (4G, 512M, bytes). */
function bytesArg(p: Parsed, name: string): number | undefined {
  const raw = str(p, name);
  if (raw === undefined) return undefined;
  try {
    const n = parseBytes(raw);
    if (n > 0) return n;
  } catch {
    // Reported below with the option's name.
  }
  throw new UsageError(`--${name} ${raw}: expected a size such as 3G, 2500M or a number of bytes`);
}

/**
 * Turns {@link SparseArgs} into session options for the model at `modelPath` (undefined: dense):
 * picks up the default sidecar beside the model, and refuses combinations that cannot work.
 */
export function resolveSparse(a: SparseArgs, modelPath: string): SparseOptions | undefined {
  const mode = a.mode ?? (a.sidecar !== undefined || a.bundles !== undefined ? "predictor" : "dense");
  if (a.bundles === undefined && (a.memory !== undefined || a.io !== undefined)) {
    throw new UsageError("--memory and --io need --bundles (flash offload)");
  }
  if (a.bundles !== undefined) {
    if (mode !== "predictor") throw new UsageError(`--bundles needs --sparse predictor, not --sparse ${mode}`);
    if (a.verifyEvery) {
      throw new UsageError("--verify-every: offloaded FFNs never compute the dense gate (it is on disk); leave it out");
    }
    if (a.downType !== undefined) {
      throw new UsageError("--down-type: the bundle file fixes the down type (sparrow pack --down)");
    }
  }
  if (mode === "dense") {
    if (a.sidecar !== undefined || a.sparsity !== undefined || a.downType !== undefined || a.sparsePrompt) {
      throw new UsageError("--sidecar, --sparsity, --down-type and --sparse-prompt need --sparse oracle or predictor");
    }
    return undefined;
  }
  const sidecar = a.sidecar ?? existingSidecar(modelPath);
  if (sidecar === undefined && (mode === "predictor" || a.sparsity !== undefined)) {
    throw new UsageError(
      `--sparse ${mode}${a.sparsity !== undefined ? " --sparsity" : ""} needs a sidecar: give --sidecar, ` +
        `or run 'sparrow calibrate --model ${modelPath}' to write ${defaultSidecarPath(modelPath)}`,
    );
  }
  return {
    mode,
    sidecar,
    sparsity: a.sparsity,
    clusterSize: a.clusterSize,
    downType: a.downType,
    bundles: a.bundles,
    batches: a.sparsePrompt,
    // Oracle mode computes the true active set itself, and offloaded FFNs cannot: nothing to verify.
    verifyEvery: a.verifyEvery ?? (mode === "predictor" && a.bundles === undefined ? 8 : 0),
  };
}

/**
 * Prepares what the session options need: the sidecar's predictors in memory, or the offloaded
 * FFNs within the memory budget (progress and the budget's split on stderr).
 */
export async function prepareSparseCli(model: Model, sparse: SparseOptions, a: SparseArgs): Promise<void> {
  if (sparse.bundles === undefined) return void (await model.prepareSparse(sparse));
  const available = availableMemoryBytes();
  const memory = a.memory ?? (available !== undefined ? Math.floor(available * 0.8) : undefined);
  if (memory === undefined) {
    throw new UsageError(
      "--memory is needed: the available memory cannot be read here (no /proc/meminfo)",
    );
  }
  let bar: Progress | undefined;
  const report = await model.prepareOffload({
    sidecar: sparse.sidecar!,
    bundles: sparse.bundles,
    sparsity: sparse.sparsity,
    memory,
    ioMethod: a.io === "auto" ? undefined : a.io,
    onProgress: (done, total) => {
      bar ??= new Progress("reading hot neurons", total);
      bar.update(done, `layer ${done}/${total}`);
    },
  });
  bar?.finish();
  note(`sparrow: ${report.plan.explanation}`);
  note(`sparrow: reading bundles with ${report.io.method}${report.io.note ? ` (${report.io.note})` : ""}`);
}

/**
 * One stderr line summarising a sparse session's counters.
 *
 * @param stats The session's counters.
 * @param sparse Its settings.
 * @param bytesPerToken FFN bytes per token without verification reads (core/evaluate.ts).
 */
export function sparseStatsLine(stats: SparseStats, sparse: SparseOptions, bytesPerToken: number): string {
  const f = (v: number, digits: number) => (Number.isFinite(v) ? v.toFixed(digits) : "n/a");
  const what = `${sparse.mode}${sparse.sparsity !== undefined ? ` ${sparse.sparsity}` : ""}`;
  const recall = sparse.mode === "oracle" ? "1 (oracle)" : f(stats.recall, 3);
  const line = `sparrow: sparse ${what} | sparsity ${f(stats.sparsity, 3)} | recall ${recall} | ${
    f(stats.candidatesPerActive, 2)
  } candidates/active | FFN ${f(bytesPerToken / 1e6, 2)} MB/token`;
  const ms = stats.msPerToken;
  const verify = ms.verify > 0 ? ` (+ ${f(ms.verify, 2)} verifying recall)` : "";
  if (sparse.bundles === undefined) {
    return `${line} | FFN time select ${f(ms.select, 2)} + rows ${f(ms.rows, 2)} + down ${
      f(ms.down, 2)
    } ms/token${verify}`;
  }
  return `${line} | FFN time select ${f(ms.select, 2)} + pipeline ${f(ms.rows, 2)} ms/token${verify} | cache hit rate ${
    f(stats.hitRate, 3)
  } (hot ${f(stats.hotHitRate, 3)}) | read ${f(stats.readBytesPerToken / 1e6, 2)} MB/token | I/O stall ${
    f(stats.ioStallMsPerToken, 1)
  } ms/token`;
}
