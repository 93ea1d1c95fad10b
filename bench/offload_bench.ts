/**
 * Flash offload, measured: sparrow decoding a 7B-shape model with part of its FFN neurons on disk
 * (read through the I/O ring into a budgeted neuron cache) inside a memory cgroup the size of its
 * budget, with the page cache dropped first; beside sparrow with everything in memory (sparse and
 * dense), and llama.cpp (node-llama-cpp 3.22.1) (a) with every weight in memory and (b) reading its
 * weights through mmap in the same memory limit, page cache dropped too. Same model, threads,
 * prompt, token count and limit for every run; each run is a process of its own
 * (bench/_sparrow_run.ts, bench/llamacpp/runner.mjs) in a memory group of its own (bench/_cgroup.ts).
 *
 *   deno bench -A bench/offload_bench.ts      (or deno run -A: the same)
 *
 * The runs, by the names SPARROW_OFFLOAD_RUNS takes:
 * - dense: sparrow, dense FFNs, every weight in memory (copied at load: weights "auto"), no limit;
 * - sparse: sparrow, sparse FFNs chosen by the predictors (predictor mode), in memory (weights copied
 *   the same way), no limit;
 * - offload: sparrow, predictor mode with the FFN neurons read from the bundle file through the I/O
 *   ring into a cache, budget = the limit, in a memory group of that limit, page cache dropped;
 * - llama-a: llama.cpp with every weight in anonymous memory, no limit;
 * - llama-b: llama.cpp reading its weights through mmap under the limit, page cache dropped (and
 *   again on the directly mapped twin, see below).
 *
 * The model's calibration sidecar (subspace predictors, Q8_0) and bundle file are made once beside
 * the model when missing (minutes for a 7B shape: calibration records 2048 tokens of the
 * repository's Markdown docs), each written to `<file>.partial` and renamed when complete.
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
 *   repository's .cache, else generated into the model cache). Figures from a synthetic model are
 *   labelled synthetic.
 * - SPARROW_OFFLOAD_SIDECAR, SPARROW_OFFLOAD_BUNDLES: the model's sidecar and bundle file (default:
 *   `<model>.subspace.sparsity.gguf` and `<model>.bundles` beside it, `<model>` without `.gguf`;
 *   made when missing, and the bundles again whenever the sidecar is made); SPARROW_OFFLOAD_ALIGN:
 *   the pack alignment when making them (default 512: the block size O_DIRECT needs on the disks
 *   this was measured on; `sparrow pack`'s 4096 pads a 7B Q4_0 bundle of 8960 bytes to 12288, and
 *   the cache would hold 27% fewer neurons in the same budget).
 * - SPARROW_OFFLOAD_LIMIT: sparrow's budget and the memory limit of the limited runs (offload,
 *   llama-b), bytes or with a K/M/G/T suffix (binary). Default: sparrow's fixed region as
 *   core/offload.ts counts it (non-FFN weights, predictors, KV cache and scratch of the run's
 *   256-position, 32-batch session, and core/memory_budget.ts's headroom) plus the runtime (the
 *   resident size of a child that has just loaded and fingerprinted the model, what the offload
 *   planner measures as its runtime, plus 16 MiB for its variation between processes) plus 50% of
 *   the bundle file's neuron bytes: half of the FFN neurons fit in the cache, half stay on disk.
 * - SPARROW_OFFLOAD_DIRECT_MODEL: the model of a directly mapped type for the second (b) run
 *   (default: the default model's Q4_1 twin, generated once beside it; none for other models, unless
 *   their own type is not repacked, when (b) already is that run). "none" skips it.
 * - SPARROW_OFFLOAD_DEADLINE_S: wall-clock budget per run (default 300): decoding stops there (after
 *   at least one token), and the process is killed a minute later if loading or a token has not
 *   finished.
 * - SPARROW_OFFLOAD_TOKENS: tokens to decode at most (default 32); the prompt is 8 tokens.
 * - SPARROW_OFFLOAD_HOT_SHARE: the offload run's hot share of the neuron cache (default: the
 *   planner's, 0.75).
 * - SPARROW_OFFLOAD_RUNS: the runs to do, comma-separated, of dense, sparse, offload,
 *   offload-cached, llama-a, llama-b (default all of them), e.g. to redo one after a change.
 *   offload-cached is the offload engine with a budget that pins every neuron (no limit, nothing
 *   read while decoding): what the offload run loses against it is what the disk costs, the I/O
 *   stall (waiting with no thread computing) being only part of it.
 * - SPARROW_BENCH_THREADS: threads of both engines (default: every logical CPU).
 *
 * Needs root (or a delegated memory cgroup) and a writable /proc/sys/vm/drop_caches; the offload and
 * each (b) run drop the page cache of the whole machine. Without a memory cgroup only the sparrow
 * in-memory runs happen (unmeasured by a group). Every figure is printed with the machine, model,
 * threads, limit, and how much of the model was still in the page cache when a limited run started.
 *
 * @module
 */
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { calibrate } from "../core/calibrate.ts";
import { readBundleFile } from "../core/bundle_format.ts";
import { readGguf } from "../core/gguf.ts";
import { ggmlTypeName } from "../core/gguf_types.ts";
import { headroomBytes, parseBytes } from "../core/memory_budget.ts";
import { loadModel } from "../core/model.ts";
import { modelFingerprint } from "../core/model_fingerprint.ts";
import { fixedRegion } from "../core/offload.ts";
import { packBundles } from "../core/pack.ts";
import { readSidecar } from "../core/sidecar.ts";
import { llamaHparams, llamaTensors } from "../models/llama.ts";
import { synthesizeModel } from "../models/synth.ts";
import { benchModel } from "./_bench_models.ts";
import { dropPageCache, memoryCgroupAvailable, pageCacheResidentBytes, runInMemoryLimit } from "./_cgroup.ts";
import { type LlamaCppLimitedResult, runLlamaCppInMemoryLimit } from "./_llamacpp.ts";
import { machine, table } from "./_report.ts";
import {
  runBatchSize,
  runContextLength,
  runKvType,
  type SparrowProbeResult,
  type SparrowRunResult,
  type SparrowRunSpec,
} from "./_sparrow_run.ts";

const log = (line: string) => console.error(`bench: ${line}`);
const root = fileURLToPath(new URL("..", import.meta.url));
const sparrowRunner = fileURLToPath(new URL("./_sparrow_run.ts", import.meta.url));
const mib = 1 << 20;

/** Types the bundled llama.cpp repacks on x86-64 with AVX2 (ggml_repack_get_optimal_repack_type). */
const repackedOnAvx2 = new Set(["Q4_0", "Q4_K", "IQ4_NL", "MXFP4"]);

/** The runs, in the order the tables list them. */
const runNames = ["dense", "sparse", "offload", "offload-cached", "llama-a", "llama-b"] as const;
type RunName = typeof runNames[number];

/** Calibration: tokens recorded and the predictor rank (the settings the sidecar is made with). */
const calibrationTokens = 2048;
const predictorRank = 128;
/** Grace after the deadline before a run is killed (loading or a token still going). */
const deadlineGraceMs = 60_000;
/** The runtime allowance of the default limit when the probe child cannot measure it. */
const runtimeFallbackBytes = 128 * mib;
/**
 * Added to the probe's runtime: the resident size of the same steps varies by a few MiB from one
 * process to the next (garbage collection, lazily compiled code; 65 and 67 MiB seen on the tiny
 * model), and a budget that misses the planner's minimum by that much is refused outright.
 */
const runtimeMarginBytes = 16 * mib;
/** The offload-cached run's budget: more than any neuron cache, so every neuron is pinned. */
const allCachedBudget = 2 ** 40;

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** SPARROW_OFFLOAD_RUNS as a set; every run when unset. */
function selectedRuns(): Set<RunName> {
  const raw = Deno.env.get("SPARROW_OFFLOAD_RUNS")?.trim();
  if (!raw) return new Set(runNames);
  const names = raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const unknown = names.filter((n) => !(runNames as readonly string[]).includes(n));
  if (unknown.length > 0 || names.length === 0) {
    throw new Error(
      `SPARROW_OFFLOAD_RUNS '${raw}': unknown run(s) ${unknown.join(", ")} (known: ${runNames.join(", ")})`,
    );
  }
  return new Set(names as RunName[]);
}

/** What the limit formula and the labels need from a GGUF: FFN and other tensor bytes, the matrix types. */
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
  const name = String(g.metadata.get("general.name") ?? "");
  // models/synth.ts names its models "synthetic ..."; bench/_bench_models.ts keeps them in synthetic/.
  const synthetic = /synthetic/i.test(name) || path.split("/").includes("synthetic");
  return { ffn, other, types, main, fileSize: g.fileSize, name, synthetic };
}

const threads = Number(Deno.env.get("SPARROW_BENCH_THREADS") ?? navigator.hardwareConcurrency);
const deadlineMs = Number(Deno.env.get("SPARROW_OFFLOAD_DEADLINE_S") ?? 300) * 1000;
const decodeTokens = Number(Deno.env.get("SPARROW_OFFLOAD_TOKENS") ?? 32);
const hotShareEnv = Deno.env.get("SPARROW_OFFLOAD_HOT_SHARE");
const hotShare = hotShareEnv === undefined ? undefined : Number(hotShareEnv);
if (hotShare !== undefined && !(hotShare >= 0 && hotShare <= 1)) {
  throw new Error(`SPARROW_OFFLOAD_HOT_SHARE '${hotShareEnv}' is not a share in [0, 1]`);
}
const promptTokens = 8;
const alignment = Number(Deno.env.get("SPARROW_OFFLOAD_ALIGN") ?? 512);
const wanted = selectedRuns();
const limitEnv = Deno.env.get("SPARROW_OFFLOAD_LIMIT");
let limitOverride: number | undefined;
try {
  limitOverride = limitEnv ? parseBytes(limitEnv) : undefined;
} catch (e) {
  throw new Error(`SPARROW_OFFLOAD_LIMIT: ${(e as Error).message}`);
}

const repoDefault = join(root, ".cache", "models", "synthetic", "mistral-7b-relu-q4_0.gguf");
const custom = Deno.env.get("SPARROW_OFFLOAD_MODEL");
const modelPath = custom ?? (exists(repoDefault) ? repoDefault : (await benchModel("mistral-7b-relu-q4_0", log)).path);
const isDefault = custom === undefined;
const stem = modelPath.replace(/\.gguf$/i, "");
const sidecarPath = Deno.env.get("SPARROW_OFFLOAD_SIDECAR") ?? `${stem}.subspace.sparsity.gguf`;
const bundlesPath = Deno.env.get("SPARROW_OFFLOAD_BUNDLES") ?? `${stem}.bundles`;

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
const directPath = !wanted.has("llama-b") || directEnv === "none"
  ? undefined
  : directEnv ?? (isDefault && repackedOnAvx2.has(summary.main) ? q4_1Twin() : undefined);

/** The repository's Markdown docs, README.md first: calibration text a model of any vocabulary can read. */
function docsText(): string {
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      // Tools, caches and build outputs hold other projects' docs.
      if (e.name.startsWith(".") || e.name === "node_modules" || e.name === "zig-out") continue;
      const path = join(dir, e.name);
      if (e.isDirectory) walk(path);
      else if (e.isFile && e.name.endsWith(".md")) files.push(path);
    }
  };
  walk(root);
  const readme = join(root, "README.md");
  files.sort((a, b) => a === readme ? -1 : b === readme ? 1 : a.localeCompare(b));
  return files.map((f) => Deno.readTextFileSync(f)).join("\n\n");
}

/**
 * Makes the sidecar and the bundle file when missing (the bundles too when the sidecar is new: they
 * record its fingerprint). Each is written under a temporary name and renamed when complete
 * (calibrate() writes its output in place; packBundles() does this itself), so an interrupted run
 * leaves no file that looks finished.
 */
async function prepareFiles(needSidecar: boolean, needBundles: boolean): Promise<void> {
  const makeSidecar = (needSidecar || needBundles) && !exists(sidecarPath);
  const makeBundles = needBundles && (makeSidecar || !exists(bundlesPath));
  if (!makeSidecar && !makeBundles) return;
  const hp = llamaHparams(readGguf(modelPath));
  // Calibration evaluates the text in chunks of at most 1024 positions: a longer KV cache is unused memory.
  using model = await loadModel(modelPath, { threads, contextLength: Math.min(1024, hp.contextLength) });
  if (makeSidecar) {
    // Q8_0 predictors need a rank that is a multiple of 32; a toy model narrower than 128 gets its width.
    const rank = Math.min(predictorRank, Math.max(32, Math.floor(Math.min(hp.dim, hp.ffnDim) / 32) * 32));
    const docs = docsText();
    const docTokens = model.tokenize(docs, { addBos: false }).length;
    // calibrate() records at most as many tokens as the text has: repeat it until it has enough.
    const text = docs.repeat(Math.max(1, Math.ceil((calibrationTokens * 1.1) / Math.max(1, docTokens))));
    log(
      `calibrating ${modelPath} (once): subspace predictors, rank ${rank}, Q8_0, ${calibrationTokens} tokens of the ` +
        `repository's docs (${docTokens} tokens, ×${Math.round(text.length / docs.length)})`,
    );
    const partial = `${sidecarPath}.partial`;
    const t0 = performance.now();
    const report = await calibrate(model, partial, {
      objective: "subspace",
      rank,
      predictorType: "Q8_0",
      tokens: calibrationTokens,
      text,
      onProgress: (stage, done, total, note) => log(`calibrate ${stage} ${done}/${total}: ${note}`),
    });
    Deno.renameSync(partial, sidecarPath);
    const recall = report.layers.reduce((a, l) => a + l.recall[0], 0) / report.layers.length;
    log(
      `calibrated in ${((performance.now() - t0) / 1000).toFixed(1)} s: sparsity ${
        report.targets.map((t) => t.toFixed(3)).join("/")
      }, mean held-out recall ${recall.toFixed(3)} -> ${sidecarPath}`,
    );
  }
  if (makeBundles) {
    log(`packing ${bundlesPath} (once), alignment ${alignment}`);
    let lastLayer = -1;
    const s = await packBundles(model, sidecarPath, bundlesPath, {
      alignment,
      threads,
      onProgress: (p) => {
        if (p.layer === lastLayer) return;
        lastLayer = p.layer;
        log(
          `pack layer ${p.layer + 1}/${p.layers}: ${(p.bytes / mib).toFixed(0)} of ${
            (p.totalBytes / mib).toFixed(0)
          } MiB`,
        );
      },
    });
    log(
      `packed ${s.neurons} neurons (${s.order}) in ${s.seconds.toFixed(1)} s: ${(s.fileBytes / mib).toFixed(0)} MiB, ` +
        `padding ${(s.paddingOverhead * 100).toFixed(1)}%`,
    );
  }
}

/** The command line of one sparrow child run. */
function sparrowArgs(spec: SparrowRunSpec): string[] {
  return ["run", "-A", sparrowRunner, JSON.stringify(spec)];
}

function spec(mode: SparrowRunSpec["mode"], memory?: number): SparrowRunSpec {
  return {
    model: modelPath,
    mode,
    sidecar: mode === "dense" ? undefined : sidecarPath,
    bundles: mode === "offload" ? bundlesPath : undefined,
    memory,
    hotShare: mode === "offload" ? hotShare : undefined,
    threads,
    promptTokens,
    decodeTokens,
    deadlineMs,
  };
}

/**
 * What the offload planner will count as the runtime: the resident size of a child that has just
 * loaded and fingerprinted the model (Deno, the modules, the native core, the GGUF header and
 * tokenizer), with a margin for how that varies between processes.
 */
async function probeRuntime(): Promise<{ bytes: number; how: string }> {
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: sparrowArgs(spec("probe")),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const line = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
    const r: SparrowProbeResult = JSON.parse(line);
    if (out.success && r.runtimeBytes > 0) {
      return {
        bytes: r.runtimeBytes + runtimeMarginBytes,
        how: `measured ${(r.runtimeBytes / mib).toFixed(0)} + ${runtimeMarginBytes / mib} margin`,
      };
    }
  } catch {
    // the fallback below, said in the limit's description
  }
  return { bytes: runtimeFallbackBytes, how: "not measurable, assumed" };
}

/** The default limit, and how it was made, for the tables. */
async function defaultLimit(): Promise<{ bytes: number; how: string }> {
  const g = readGguf(modelPath);
  const hp = llamaHparams(g);
  const sidecar = readSidecar(sidecarPath, hp, await modelFingerprint(modelPath));
  const fixed = fixedRegion(
    {
      gguf: g,
      hparams: hp,
      tiedEmbeddings: llamaTensors(g, hp).output === undefined,
      contextLength: runContextLength,
      batchSize: runBatchSize,
      kvType: runKvType,
    },
    sidecar.predictors,
  );
  const runtime = await probeRuntime();
  const headroom = headroomBytes(fixed.predictorBytes);
  const fixedBytes = fixed.fixedWeightBytes + fixed.predictorBytes + fixed.kvBytes + fixed.scratchBytes + headroom;
  // Half of the neurons in the cache, half on disk: half of the bundle file's neuron bytes (the
  // bundles are larger than the GGUF's FFN rows: a Q8_0 down column, and padding).
  const bundles = readBundleFile(bundlesPath, hp);
  const neuronBytes = bundles.layout.storedBytes * hp.nLayers * hp.ffnDim;
  const raw = runtime.bytes + fixedBytes + 0.5 * neuronBytes;
  const bytes = Math.ceil(raw / 4096) * 4096;
  const m = (n: number) => (n / mib).toFixed(0);
  return {
    bytes,
    how: `runtime ${m(runtime.bytes)} MiB (${runtime.how}) + fixed ${m(fixedBytes)} MiB (weights ${
      m(fixed.fixedWeightBytes)
    }, predictors ${m(fixed.predictorBytes)}, KV ${m(fixed.kvBytes)}, scratch ${m(fixed.scratchBytes)}, headroom ${
      m(headroom)
    }) + 50% of the bundles' ${m(neuronBytes)} MiB of neurons (the GGUF's FFN: ${m(summary.ffn)} MiB)`,
  };
}

const cgroup = memoryCgroupAvailable();
if (!cgroup.ok) log(`no memory cgroup: only the sparrow in-memory runs, unmeasured by a group (${cgroup.why})`);

const needLimit = wanted.has("offload") || wanted.has("llama-b");
const limitNeedsFiles = needLimit && limitOverride === undefined;
const offloadRuns = wanted.has("offload") || wanted.has("offload-cached");
await prepareFiles(wanted.has("sparse") || offloadRuns || limitNeedsFiles, offloadRuns || limitNeedsFiles);
const limit = !needLimit
  ? undefined
  : limitOverride !== undefined
  ? { bytes: limitOverride, how: "SPARROW_OFFLOAD_LIMIT" }
  : await defaultLimit();
if (limit) log(`limit ${(limit.bytes / mib).toFixed(0)} MiB = ${limit.how}`);

/** How a sparrow run ended, with its figures when it printed them. */
interface SparrowOutcome {
  outcome: "done" | "deadline" | "OOM-killed" | "timeout" | "failed" | "not run";
  why?: string;
  result?: SparrowRunResult;
  /** The memory group's peak (anonymous memory and page cache charged to it). */
  peakBytes?: number;
  ms?: number;
  /** Page cache of the model and bundle file just before the run, after the drop. */
  cacheBefore?: string;
}

/** The line that says why a child failed: its own summary line, else the last line of stderr, if any. */
function failureLine(stderr: string): string | undefined {
  const lines = stderr.trim().split("\n").filter((l) => l.trim() !== "");
  const own = lines.findLast((l) => l.startsWith("sparrow-run failed: "));
  const line = own?.slice("sparrow-run failed: ".length) ?? lines.at(-1);
  return line !== undefined && line.length > 300 ? `${line.slice(0, 300)}…` : line;
}

async function runSparrow(
  mode: "dense" | "sparse" | "offload",
  limitBytes?: number,
  budget = limitBytes,
): Promise<SparrowOutcome> {
  const args = sparrowArgs(spec(mode, budget));
  const timeoutMs = deadlineMs + deadlineGraceMs;
  let cacheBefore: string | undefined;
  let code: number;
  let stdout: string;
  let stderr: string;
  let oom = false;
  let timedOut = false;
  let peakBytes: number | undefined;
  let ms: number;
  if (cgroup.ok) {
    if (limitBytes !== undefined) {
      const dropped = dropPageCache();
      const res = [modelPath, bundlesPath].map((p) => {
        const r = pageCacheResidentBytes(p);
        if (typeof r === "number" && r > 0.05 * Deno.statSync(p).size) {
          log(
            `warning: ${(r / mib).toFixed(0)} MiB of ${p} stayed in the page cache after the drop (another process ` +
              `keeps it mapped?): those pages are neither read from disk nor charged to the limit`,
          );
        }
        return typeof r === "number" ? (r / mib).toFixed(0) : r.why;
      });
      cacheBefore = `${res[0]} / ${res[1]}${dropped.ok ? " (dropped)" : ` (drop failed: ${dropped.why})`}`;
    }
    try {
      const r = await runInMemoryLimit(Deno.execPath(), args, { limitBytes, timeoutMs });
      ({ code, stdout, stderr, ms, peakBytes } = r);
      oom = r.oomKilled;
      timedOut = r.timedOut;
    } catch (e) {
      return { outcome: "failed", why: `cannot run in a memory group: ${(e as Error).message}`, cacheBefore };
    }
  } else {
    if (limitBytes !== undefined) return { outcome: "not run", why: `no memory cgroup: ${cgroup.why}` };
    const t0 = performance.now();
    const child = new Deno.Command(Deno.execPath(), { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .spawn();
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    const out = await child.output();
    clearTimeout(timer);
    ms = performance.now() - t0;
    const dec = new TextDecoder();
    ({ code } = out);
    stdout = dec.decode(out.stdout);
    stderr = dec.decode(out.stderr);
  }
  const base = { peakBytes, ms, cacheBefore };
  if (oom) return { ...base, outcome: "OOM-killed", why: failureLine(stderr) };
  if (timedOut) return { ...base, outcome: "timeout" };
  if (code !== 0) return { ...base, outcome: "failed", why: `exit ${code}: ${failureLine(stderr) ?? "(no output)"}` };
  try {
    const result: SparrowRunResult = JSON.parse(stdout.trim().split("\n").findLast((l) => l.startsWith("{")) ?? "");
    return { ...base, result, outcome: result.tokens < decodeTokens ? "deadline" : "done" };
  } catch {
    return { ...base, outcome: "failed", why: `no result line: ${failureLine(stderr) ?? "(no output)"}` };
  }
}

/** One llama.cpp run. */
interface LlamaRun {
  name: "llama-a" | "llama-b";
  label: string;
  path: string;
  summary: ReturnType<typeof modelSummary>;
  limitBytes?: number;
  mmap: boolean;
  dropCache: boolean;
  result?: Awaited<ReturnType<typeof runLlamaCppInMemoryLimit>>;
}
const llamaRuns: LlamaRun[] = [];
if (wanted.has("llama-a")) {
  llamaRuns.push({
    name: "llama-a",
    label: "llama.cpp (a) in memory, no limit",
    path: modelPath,
    summary,
    mmap: false,
    dropCache: false,
  });
}
if (wanted.has("llama-b")) {
  for (const path of [modelPath, ...(directPath ? [directPath] : [])]) {
    llamaRuns.push({
      name: "llama-b",
      label: "llama.cpp (b) mmap, limited, cache dropped",
      path,
      summary: path === modelPath ? summary : modelSummary(path),
      limitBytes: limit!.bytes,
      mmap: true,
      dropCache: true,
    });
  }
}

async function runLlama(run: LlamaRun): Promise<void> {
  if (!cgroup.ok) return;
  log(
    `${run.label} on ${run.path} (${run.summary.main})` +
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

const mb = (n: number | undefined) => n === undefined ? "-" : (n / mib).toFixed(0);
const s1 = (ms: number | undefined) => ms === undefined ? "-" : (ms / 1000).toFixed(1);
const s2 = (ms: number | undefined) => ms === undefined ? "-" : (ms / 1000).toFixed(2);
const loadAtStart = Deno.loadavg();

// The runs happen when the file is loaded, one after another: each is a single process whose
// outcome (tokens, an OOM kill, a timeout) is the figure, not something deno bench could repeat and
// time. deno bench's own table stays empty; the tables below are printed at the end. The runs in
// memory go first, while the model is still in the page cache from calibration (their load times
// are not disk reads); the limited runs drop the cache themselves.
const sparrow = new Map<"dense" | "sparse" | "offload" | "offload-cached", SparrowOutcome>();
for (const mode of ["dense", "sparse"] as const) {
  if (!wanted.has(mode)) continue;
  log(`sparrow ${mode} in memory on ${modelPath}`);
  sparrow.set(mode, await runSparrow(mode));
  log(JSON.stringify(sparrow.get(mode)));
}
for (const run of llamaRuns.filter((r) => r.name === "llama-a")) await runLlama(run);
if (wanted.has("offload")) {
  log(`sparrow offload on ${modelPath}, budget and limit ${mb(limit!.bytes)} MiB`);
  sparrow.set("offload", await runSparrow("offload", limit!.bytes));
  log(JSON.stringify(sparrow.get("offload")));
}
if (wanted.has("offload-cached")) {
  log(`sparrow offload on ${modelPath}, every neuron cached (no limit)`);
  sparrow.set("offload-cached", await runSparrow("offload", undefined, allCachedBudget));
  log(JSON.stringify(sparrow.get("offload-cached")));
}
for (const run of llamaRuns.filter((r) => r.name === "llama-b")) await runLlama(run);

/** The model buffer sizes llama.cpp reported, e.g. "CPU_Mapped 3815, CPU_REPACK 3814". */
function buffers(r: LlamaCppLimitedResult): string {
  const parts = r.buffers.filter((l) => /model buffer size/.test(l)).map((l) => {
    const m = l.match(/(CPU\S*)\s+model buffer size\s*=\s*([\d.]+)\s*MiB/);
    return m ? `${m[1]} ${Number(m[2]).toFixed(0)}` : l;
  });
  return parts.join(", ") || "(not logged)";
}

function llamaOutcome(r: LlamaCppLimitedResult): string {
  switch (r.outcome) {
    case "done":
      return "done";
    case "deadline":
      return `deadline (${s1(r.ms)} s)`;
    case "oom_killed":
      return `OOM-killed while ${r.phase === "loading" ? "loading" : r.phase} after ${s1(r.ms)} s`;
    case "timed_out":
      return `timeout: killed at ${s1(r.ms)} s while ${r.phase}`;
    case "failed":
      return `failed (code ${r.code}): ${r.error?.split("\n").pop()}`;
  }
}

function modelLabel(path: string, s: ReturnType<typeof modelSummary>, llama: boolean): string {
  const notes = [s.main, ...(llama ? [repackedOnAvx2.has(s.main) ? "repacked" : "mapped"] : [])];
  if (s.synthetic) notes.push("synthetic");
  return `${basename(path)} (${notes.join(", ")})`;
}

const denseSpeed = sparrow.get("dense")?.result?.decodeTokensPerSecond;
const speedup = (tps: number | undefined) =>
  tps === undefined || !(denseSpeed! > 0) || !Number.isFinite(tps) ? "-" : `${(tps / denseSpeed!).toFixed(2)}x`;
const tokS = (tps: number | undefined) => tps === undefined || !Number.isFinite(tps) ? "-" : tps.toFixed(3);
const limitMb = (n: number | undefined) => n === undefined ? "none" : mb(n);
const sparrowLabels = {
  dense: "sparrow dense, in memory",
  sparse: "sparrow sparse (predictor), in memory",
  offload: "sparrow offload (predictor, bundles via I/O ring), limited, cache dropped",
  "offload-cached": "sparrow offload, every neuron cached, no limit",
} as const;

table(
  `Flash offload: sparrow and llama.cpp (node-llama-cpp 3.22.1) on ${
    summary.synthetic ? "a SYNTHETIC model" : "a real model"
  } — ${machine()}, ${threads} thread(s), prompt ${promptTokens} tokens, up to ${decodeTokens} decoded, deadline ${
    deadlineMs / 1000
  } s per run, limit ${limit ? `${mb(limit.bytes)} MiB = ${limit.how}` : "not used"}, load average at start ${
    loadAtStart.map((x) => x.toFixed(2)).join(" ")
  }; cache before run: of the model (sparrow offload: model / bundle file); peak: the memory group's (anonymous ` +
    `and page cache charged to it; sparrow: and the process's resident peak)`,
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
    "vs sparrow dense",
    "peak MiB",
  ],
  () => {
    const rows: string[][] = [];
    const weights = (s: ReturnType<typeof modelSummary>) => `${mb(s.ffn + s.other)} (${mb(s.ffn)})`;
    for (const mode of ["dense", "sparse", "offload", "offload-cached"] as const) {
      const o = sparrow.get(mode);
      if (!o) continue;
      const r = o.result;
      const outcome = o.why ? `${o.outcome}: ${o.why}` : o.outcome;
      rows.push([
        sparrowLabels[mode],
        modelLabel(modelPath, summary, false),
        weights(summary),
        limitMb(mode === "offload" ? limit?.bytes : undefined),
        o.cacheBefore ?? "-",
        outcome,
        r ? s2(r.loadMs + r.prepareMs) : "-",
        r ? String(r.tokens) : "-",
        tokS(r?.decodeTokensPerSecond),
        speedup(r?.decodeTokensPerSecond),
        `${mb(o.peakBytes)}${r ? ` (RSS ${mb(r.peakRssBytes)})` : ""}`,
      ]);
    }
    for (const run of llamaRuns) {
      const head = [run.label, modelLabel(run.path, run.summary, true), weights(run.summary), limitMb(run.limitBytes)];
      const r = run.result;
      if (!r) {
        rows.push([...head, "-", cgroup.ok ? "not run" : `not run: ${cgroup.why}`]);
        continue;
      }
      if (!r.ok) {
        rows.push([...head, "-", `could not run: ${r.why}`]);
        continue;
      }
      const resident = typeof r.residentBeforeBytes === "number"
        ? mb(r.residentBeforeBytes)
        : r.residentBeforeBytes.why;
      const dropped = r.cacheDropped === "not asked" ? "" : r.cacheDropped.ok ? " (dropped)" : " (drop failed)";
      rows.push([
        ...head,
        resident + dropped,
        llamaOutcome(r),
        s2(r.loadMs),
        String(r.tokens),
        tokS(r.decodeTokensPerSecond),
        speedup(r.decodeTokensPerSecond),
        mb(r.peakBytes),
      ]);
    }
    return rows;
  },
);

table(
  "sparrow sparse FFNs, per decoded token (hit rate: candidates found in the neuron cache; stall: time waiting " +
    "on reads with no thread computing, and its share of the token's time; disk cost: the share of the token's " +
    "time that the same engine with every neuron cached does not spend; offloaded: FFN neurons not pinned in memory)",
  [
    "run",
    "sparsity",
    "hit rate (hot)",
    "read MB/token",
    "I/O stall ms/token",
    "stall share",
    "disk cost",
    "offloaded FFN",
    "io method",
    "prepare s",
  ],
  () =>
    (["sparse", "offload", "offload-cached"] as const).flatMap((mode) => {
      const r = sparrow.get(mode)?.result;
      if (!r) return [];
      const pct = (x: number | undefined) => x === undefined || !Number.isFinite(x) ? "-" : `${(x * 100).toFixed(1)}%`;
      const msPerToken = r.tokens > 0 ? r.decodeMs / r.tokens : NaN;
      // In memory nothing is read or waited for: zeros there would read as measurements.
      const offloaded = mode !== "sparse";
      const stall = offloaded ? r.ioStallMsPerToken : undefined;
      const cached = sparrow.get("offload-cached")?.result?.decodeTokensPerSecond;
      const diskCost = mode === "offload" && cached !== undefined && cached > 0
        ? 1 - r.decodeTokensPerSecond / cached
        : undefined;
      return [[
        sparrowLabels[mode],
        pct(r.sparsity),
        r.hitRate === undefined || !Number.isFinite(r.hitRate) ? "-" : `${pct(r.hitRate)} (${pct(r.hotHitRate)})`,
        !offloaded || r.readBytesPerToken === undefined || !Number.isFinite(r.readBytesPerToken)
          ? "-"
          : (r.readBytesPerToken / 1e6).toFixed(3),
        stall === undefined || !Number.isFinite(stall) ? "-" : stall.toFixed(2),
        stall === undefined || !Number.isFinite(stall) ? "-" : pct(stall / msPerToken),
        pct(diskCost),
        pct(r.offloadedShare),
        r.io?.method ?? "-",
        s2(r.prepareMs),
      ]];
    }),
);

table(
  "sparrow offload: the budget's split and the I/O ring",
  ["", "as the offload run decided it"],
  () => {
    const r = sparrow.get("offload")?.result;
    if (!r?.plan) return [];
    return [["memory plan", r.plan], ...(r.io ? [["I/O", `${r.io.method}: ${r.io.note}`]] : [])];
  },
);

table(
  "llama.cpp memory (sampled peaks of the group; the buffers llama.cpp reported)",
  ["run", "model", "1st token s", "anon / cache MiB", "llama.cpp buffers MiB"],
  () =>
    llamaRuns.flatMap((run) => {
      const r = run.result;
      if (!r?.ok) return [];
      return [[
        run.label,
        basename(run.path),
        s1(r.firstTokenMs),
        `${mb(r.sampledPeakAnonBytes)} / ${mb(r.sampledPeakCacheBytes)}`,
        buffers(r),
      ]];
    }),
);
