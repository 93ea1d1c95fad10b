/**
 * llama.cpp as the benchmarks' peer: node-llama-cpp 3.22.1 (prebuilt llama.cpp) run by Node in a
 * subprocess on the same GGUF with the same thread count, measuring prefill and greedy decode the
 * way bench/generate_bench.ts measures sparrow. Installed on first use by scripts/install_llamacpp.sh.
 * {@link runLlamaCppInMemoryLimit} runs it in a memory cgroup (bench/_cgroup.ts) and reports how far
 * it got: the flash-offload benchmark's peer.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { dropPageCache, pageCacheResidentBytes, runInMemoryLimit } from "./_cgroup.ts";

const root = fileURLToPath(new URL("..", import.meta.url));

/** What llama.cpp measured, or why it could not run. */
export type LlamaCppResult =
  | { ok: true; prefillTokensPerSecond: number; decodeTokensPerSecond: number; loadMs: number }
  | { ok: false; why: string };

let installed: string | undefined;

async function install(): Promise<string | undefined> {
  if (installed !== undefined) return installed || undefined;
  const out = await new Deno.Command("bash", { args: [join(root, "scripts", "install_llamacpp.sh")], stderr: "piped" })
    .output().catch((e) => ({ success: false, stderr: new TextEncoder().encode(String(e)) }));
  installed = out.success ? "" : new TextDecoder().decode(out.stderr).trim().split("\n").slice(-2).join(" ");
  return installed || undefined;
}

/**
 * Runs llama.cpp on `path`: a prompt of `promptTokens` in one batch, then `decodeTokens` greedy
 * tokens; best of `repeats`.
 */
export async function runLlamaCpp(
  path: string,
  threads: number,
  promptTokens: number,
  decodeTokens: number,
  repeats: number,
): Promise<LlamaCppResult> {
  const failed = await install();
  if (failed) return { ok: false, why: `node-llama-cpp could not be installed: ${failed}` };
  const args = [
    join(root, "bench", "llamacpp", "runner.mjs"),
    join(root, ".tools", "llamacpp"),
    path,
    String(threads),
    String(promptTokens),
    String(decodeTokens),
    String(repeats),
  ];
  try {
    const out = await new Deno.Command("node", { args, stdout: "piped", stderr: "piped" }).output();
    const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
    if (!out.success) {
      return { ok: false, why: `llama.cpp runner failed: ${new TextDecoder().decode(out.stderr).slice(-300)}` };
    }
    const r = JSON.parse(text);
    return {
      ok: true,
      prefillTokensPerSecond: r.prefillTokensPerSecond,
      decodeTokensPerSecond: r.decodeTokensPerSecond,
      loadMs: r.loadMs,
    };
  } catch (e) {
    return { ok: false, why: `cannot run node: ${(e as Error).message}` };
  }
}

/** Options of {@link runLlamaCppInMemoryLimit}. */
export interface LlamaCppLimitOptions {
  /** Threads for llama.cpp. */
  threads: number;
  /** Prompt tokens, evaluated in one batch before decoding. */
  promptTokens: number;
  /** Greedy tokens to decode at most. */
  decodeTokens: number;
  /** The memory group's limit; absent: no limit (the group only measures). */
  limitBytes?: number;
  /** node-llama-cpp's useMmap: true reads weights through the mapping, false into anonymous memory. */
  mmap: boolean | "auto";
  /** Wall-clock budget of the whole run: decoding stops when it has passed, and the process is killed a grace period later. */
  deadlineMs: number;
  /** Drop the page cache first, so the weights are read from disk and charged to the group. */
  dropCache: boolean;
}

/** How far llama.cpp got under the limit. */
export interface LlamaCppLimitedResult {
  /** How it ended: finished its tokens, stopped at the deadline, killed by the OOM killer, killed at the timeout, or failed. */
  outcome: "done" | "deadline" | "oom_killed" | "timed_out" | "failed";
  /** The phase it was in when it ended. */
  phase: "loading" | "prefill" | "decode" | "done";
  loadMs?: number;
  prefillMs?: number;
  /** Tokens decoded (counted from the runner's events, so also those before a kill). */
  tokens: number;
  /** Wall time of those tokens. */
  decodeMs: number;
  /** tokens / decodeMs, when at least one token came. */
  decodeTokensPerSecond?: number;
  /** Time of the first decoded token after prefill. */
  firstTokenMs?: number;
  /** Whether llama.cpp reported mapping the file. */
  useMmap?: boolean;
  /** llama.cpp's log lines about its buffers (CPU_Mapped, CPU_REPACK, ...), as far as they arrived. */
  buffers: string[];
  /** The memory group's peak (anonymous memory plus page cache) and its limit. */
  peakBytes: number;
  limitBytes: number | null;
  /** Largest anonymous memory and page cache sampled in the group. */
  sampledPeakAnonBytes: number;
  sampledPeakCacheBytes: number;
  swap: "limited" | "no_swap" | "unlimited";
  /** Wall time of the whole process. */
  ms: number;
  /** Whether the page cache was dropped first, or why not. */
  cacheDropped: { ok: true } | { ok: false; why: string } | "not asked";
  /**
   * Bytes of the model file in the page cache just before the run (after the drop, when asked):
   * pages another process keeps mapped survive a drop and are then read uncharged and for free.
   */
  residentBeforeBytes: number | { why: string };
  /** Exit code and signal of the runner, and the tail of its stderr when it failed. */
  code: number;
  signal: string | null;
  error?: string;
}

/** Grace after the deadline for the runner to stop decoding and print its summary. */
const deadlineGraceMs = 60_000;

interface RunnerEvent {
  event?: string;
  loadMs?: number;
  ms?: number;
  n?: number;
  line?: string;
  useMmap?: boolean;
  stoppedBy?: string;
}

/**
 * Runs llama.cpp on `path` in a memory cgroup: loads (mapped or not), prefills a short prompt and
 * decodes greedily until `decodeTokens` or the deadline, and reports how far it got, also when the
 * OOM killer or the timeout ended it.
 *
 * @param path The GGUF.
 * @param options Threads, token counts, the limit, mmap, the deadline, whether to drop the page cache.
 * @returns What happened, or `{ ok: false, why }` when it could not be run at all (no node, no
 *   node-llama-cpp, no memory cgroup).
 */
export async function runLlamaCppInMemoryLimit(
  path: string,
  options: LlamaCppLimitOptions,
): Promise<({ ok: true } & LlamaCppLimitedResult) | { ok: false; why: string }> {
  const failed = await install();
  if (failed) return { ok: false, why: `node-llama-cpp could not be installed: ${failed}` };
  const cacheDropped = options.dropCache ? dropPageCache() : "not asked" as const;
  const residentBeforeBytes = pageCacheResidentBytes(path);
  const args = [
    join(root, "bench", "llamacpp", "runner.mjs"),
    join(root, ".tools", "llamacpp"),
    path,
    String(options.threads),
    String(options.promptTokens),
    String(options.decodeTokens),
    "1",
    "--events",
    `--mmap=${options.mmap}`,
    `--deadline-ms=${options.deadlineMs}`,
  ];
  let run;
  try {
    run = await runInMemoryLimit("node", args, {
      limitBytes: options.limitBytes,
      timeoutMs: options.deadlineMs + deadlineGraceMs,
    });
  } catch (e) {
    return { ok: false, why: `cannot run llama.cpp under a memory limit: ${(e as Error).message}` };
  }
  const events: RunnerEvent[] = [];
  for (const line of run.stdout.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      events.push(JSON.parse(line));
    } catch {
      // a line cut by the kill
    }
  }
  const loaded = events.find((e) => e.event === "loaded");
  const prefilled = events.find((e) => e.event === "prefilled");
  const tokens = events.filter((e) => e.event === "token");
  const done = events.find((e) => e.event === "done");
  const decodeMs = tokens.at(-1)?.ms ?? 0;
  const outcome: LlamaCppLimitedResult["outcome"] = run.oomKilled
    ? "oom_killed"
    : run.timedOut
    ? "timed_out"
    : done
    ? (done.stoppedBy === "deadline" ? "deadline" : "done")
    : "failed";
  return {
    ok: true,
    outcome,
    phase: done ? "done" : tokens.length > 0 || prefilled ? "decode" : loaded ? "prefill" : "loading",
    loadMs: loaded?.loadMs,
    prefillMs: prefilled?.ms,
    tokens: tokens.length,
    decodeMs,
    decodeTokensPerSecond: tokens.length > 0 ? tokens.length / (decodeMs / 1000) : undefined,
    firstTokenMs: tokens[0]?.ms,
    useMmap: loaded?.useMmap,
    buffers: events.filter((e) => e.event === "log" && /buffer size|repack/i.test(e.line ?? "")).map((e) => e.line!),
    peakBytes: run.peakBytes,
    limitBytes: run.limitBytes,
    sampledPeakAnonBytes: run.sampledPeakAnonBytes,
    sampledPeakCacheBytes: run.sampledPeakCacheBytes,
    swap: run.swap,
    ms: run.ms,
    cacheDropped,
    residentBeforeBytes,
    code: run.code,
    signal: run.signal,
    error: outcome === "failed" ? run.stderr.trim().slice(-500) : undefined,
  };
}
