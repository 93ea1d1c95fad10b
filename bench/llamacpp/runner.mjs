// Measures llama.cpp (through node-llama-cpp, prebuilt) on a GGUF, the way bench/decode_bench.ts
// measures sparrow: prefill of a prompt of P tokens in one batch, then greedy decode of N tokens.
// Usage: node runner.mjs <node-llama-cpp prefix> <model.gguf> <threads> <prompt tokens> <decode tokens> <repeats>
//          [--mmap=auto|true|false] [--mlock] [--deadline-ms=N] [--events]
// Prints one JSON line: { prefillTokensPerSecond, decodeTokensPerSecond, ... } (best of the repeats).
//
// The options are for runs under a memory limit (bench/_llamacpp.ts runLlamaCppInMemoryLimit), where
// the process may be OOM-killed or killed at a wall-clock limit before it can print a summary:
//   --mmap         node-llama-cpp's useMmap (default: its own default, "auto")
//   --mlock        useMlock
//   --deadline-ms  stop decoding once this many ms have passed since the runner started (loading
//                  and prefill cannot be interrupted; the caller's own timeout covers those)
//   --events       print a JSON line as each phase ends ({"event":"loaded"}, "prefilled", one per
//                  "token") and llama.cpp's log lines about buffers, repacking and mmap ("log"), so
//                  what happened before a kill is on stdout. Node writes to a pipe synchronously on
//                  Linux, so a line printed is a line the caller gets; but node-llama-cpp hands
//                  llama.cpp's log to JS asynchronously, so "log" lines can trail the phase they
//                  belong to, and one written just before a kill may never arrive.
// Without options the behaviour and output are what they always were.
import process from "node:process";
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const started = performance.now();
const argv = process.argv.slice(2);
const positional = argv.filter((a) => !a.startsWith("--"));
const flags = new Map(
  argv.filter((a) => a.startsWith("--")).map((a) => {
    const eq = a.indexOf("=");
    return eq < 0 ? [a.slice(2), "true"] : [a.slice(2, eq), a.slice(eq + 1)];
  }),
);
const known = new Set(["mmap", "mlock", "deadline-ms", "events"]);
for (const k of flags.keys()) {
  if (!known.has(k)) {
    console.error(`runner.mjs: unknown option --${k} (known: ${[...known].map((x) => `--${x}`).join(", ")})`);
    process.exit(2);
  }
}
const [prefix, modelPath, threadsArg, promptArg, decodeArg, repeatsArg] = positional;
const mmapFlag = flags.get("mmap");
if (mmapFlag !== undefined && !["auto", "true", "false"].includes(mmapFlag)) {
  console.error(`runner.mjs: --mmap must be auto, true or false, not '${mmapFlag}'`);
  process.exit(2);
}
const deadlineMs = flags.has("deadline-ms") ? Number(flags.get("deadline-ms")) : Infinity;
if (!(deadlineMs > 0)) {
  console.error(`runner.mjs: --deadline-ms must be a positive number, not '${flags.get("deadline-ms")}'`);
  process.exit(2);
}
const events = flags.get("events") === "true";
const emit = (event) => {
  if (events) console.log(JSON.stringify({ event: event.event, atMs: performance.now() - started, ...event }));
};

const { getLlama } = await import(
  pathToFileURL(join(prefix, "node_modules", "node-llama-cpp", "dist", "index.js")).href
);
const threads = Number(threadsArg);
const promptTokens = Number(promptArg);
const decodeTokens = Number(decodeArg);
const repeats = Number(repeatsArg);

// With --events, llama.cpp's info log is read for what it says about where the weights live:
// "CPU_Mapped model buffer size" (read through the mapping) versus "CPU_REPACK model buffer size"
// (copied into anonymous memory in the interleaved layout).
const logPattern = /buffer size|repack|mmap|load_tensors|CPU_/i;
const logs = [];
const llama = await getLlama({
  gpu: false,
  build: "never",
  logLevel: events ? "info" : "error",
  ...(events
    ? {
      logger: (level, message) => {
        const line = message.trim();
        if (level === "error" || level === "fatal") console.error(line);
        if (line !== "" && logPattern.test(line)) {
          logs.push(line);
          emit({ event: "log", level, line });
        }
      },
    }
    : {}),
});
const loadOptions = { modelPath };
if (mmapFlag !== undefined) loadOptions.useMmap = mmapFlag === "auto" ? "auto" : mmapFlag === "true";
if (flags.get("mlock") === "true") loadOptions.useMlock = true;
const t0 = performance.now();
const model = await llama.loadModel(loadOptions);
const loadMs = performance.now() - t0;
emit({ event: "loaded", loadMs, useMmap: model.useMmap });
const context = await model.createContext({
  contextSize: promptTokens + decodeTokens + 8,
  threads,
  batchSize: Math.max(promptTokens, 1),
});
// A prompt of real text tokens: the tokenizer's encoding of a repeated sentence, cut to length.
const text = "The quick brown fox jumps over the lazy dog while the sparrow sings. ".repeat(
  Math.ceil(promptTokens / 8) + 4,
);
const prompt = model.tokenize(text).slice(0, promptTokens);

let best = { prefillTokensPerSecond: 0, decodeTokensPerSecond: 0 };
let last = { tokens: 0, decodeMs: 0, prefillMs: 0, stoppedBy: "count" };
for (let r = 0; r < repeats; r++) {
  const seq = context.getSequence();
  // Prefill: evaluate the prompt without sampling.
  const p0 = performance.now();
  await seq.evaluateWithoutGeneratingNewTokens(prompt);
  const prefillMs = performance.now() - p0;
  emit({ event: "prefilled", tokens: prompt.length, ms: prefillMs });
  // Decode: greedy, N tokens, each a separate evaluation.
  let n = 0;
  let stoppedBy = "count";
  const d0 = performance.now();
  for await (const _ of seq.evaluate([prompt[prompt.length - 1]], { temperature: 0 })) {
    ++n;
    emit({ event: "token", n, ms: performance.now() - d0 });
    if (n >= decodeTokens) break;
    if (performance.now() - started >= deadlineMs) {
      stoppedBy = "deadline";
      break;
    }
  }
  const decodeMs = performance.now() - d0;
  best = {
    prefillTokensPerSecond: Math.max(best.prefillTokensPerSecond, (prompt.length / prefillMs) * 1000),
    decodeTokensPerSecond: Math.max(best.decodeTokensPerSecond, (n / decodeMs) * 1000),
  };
  last = { tokens: n, decodeMs, prefillMs, stoppedBy };
  seq.dispose();
  if (stoppedBy === "deadline") break;
}
console.log(
  JSON.stringify({
    ...best,
    loadMs,
    threads,
    promptTokens: prompt.length,
    decodeTokens,
    engine: "llama.cpp via node-llama-cpp 3.22.1",
    ...(events ? { event: "done", ...last, useMmap: model.useMmap, logs } : {}),
  }),
);
await context.dispose();
await model.dispose();
process.exit(0);
