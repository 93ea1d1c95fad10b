/**
 * Decode and prefill speed on real and synthetic models, beside llama.cpp (node-llama-cpp 3.22.1)
 * on the same GGUF with the same thread count, measured in the same run.
 *
 *   deno bench -A bench/generate_bench.ts
 *   SPARROW_BENCH_MODELS=smollm2 deno bench -A bench/generate_bench.ts        (quick)
 *
 * Environment: SPARROW_BENCH_MODELS (comma list: smollm2, llama2-7b-q4_0, llama2-7b-q4_k_m),
 * SPARROW_BENCH_THREADS (default: every logical CPU; decode is also measured at 1 thread),
 * SPARROW_BENCH_PROMPT (prompt tokens, default 256), SPARROW_BENCH_NO_LLAMACPP=1 to skip the peer.
 *
 * Decode is one token evaluated after a prompt of SPARROW_BENCH_PROMPT tokens (the KV cache holds the
 * prompt), as llama.cpp's figure is the mean over greedy tokens generated after the same prompt.
 * Prefill is the whole prompt evaluated in batches.
 *
 * @module
 */
import { loadModel } from "../core/model.ts";
import type { Session } from "../core/session.ts";
import { benchModel, benchModelIds } from "./_bench_models.ts";
import { type LlamaCppResult, runLlamaCpp } from "./_llamacpp.ts";
import { machine, table } from "./_report.ts";

const ids = (Deno.env.get("SPARROW_BENCH_MODELS") ?? benchModelIds.join(",")).split(",").filter(Boolean);
const threads = Number(Deno.env.get("SPARROW_BENCH_THREADS") ?? navigator.hardwareConcurrency);
const promptN = Number(Deno.env.get("SPARROW_BENCH_PROMPT") ?? 256);
const decodeN = 32;
const withPeer = Deno.env.get("SPARROW_BENCH_NO_LLAMACPP") !== "1";
const log = (line: string) => console.error(`bench: ${line}`);

/** Median of recorded times (ms) per bench key. */
const times = new Map<string, number[]>();
const record = (key: string, ms: number) => times.set(key, [...(times.get(key) ?? []), ms]);
const median = (key: string) => {
  const xs = [...(times.get(key) ?? [])].sort((a, b) => a - b);
  return xs.length ? xs[Math.floor(xs.length / 2)] : NaN;
};

const results: { label: string; id: string; llama: LlamaCppResult }[] = [];
const text = "The quick brown fox jumps over the lazy dog while the sparrow sings in the old oak tree. ";

for (const id of ids) {
  const m = await benchModel(id, log);
  const big = id !== "smollm2";
  const llama: LlamaCppResult = withPeer
    ? (log(`llama.cpp on ${m.label}, ${threads} threads`),
      await runLlamaCpp(m.path, threads, promptN, decodeN, big ? 1 : 3))
    : { ok: false, why: "skipped (SPARROW_BENCH_NO_LLAMACPP=1)" };
  results.push({ label: m.label, id, llama });

  const model = await loadModel(m.path, {
    threads,
    contextLength: promptN + decodeN + 8,
    batchSize: Math.min(promptN, 256),
  });
  const prompt = model.tokenize(text.repeat(Math.ceil(promptN / 16) + 2)).slice(0, promptN);
  const next = prompt[prompt.length - 1];
  const sessions = new Map<number, Session>();
  for (const t of new Set([threads, 1])) {
    const s = model.createSession({ threads: t });
    await s.evaluate(prompt);
    sessions.set(t, s);
    Deno.bench({
      name: `decode, ${m.label}, ${t} thread(s)`,
      group: `decode ${id}`,
      baseline: t === threads,
      n: big ? 8 : 64,
      warmup: 2,
      async fn(b) {
        // The prompt is cached; each run evaluates one more token at position promptN.
        b.start();
        const t0 = performance.now();
        await s.evaluate([...prompt, next]);
        record(`decode ${id} ${t}`, performance.now() - t0);
        b.end();
      },
    });
  }
  Deno.bench({
    name: `prefill ${promptN} tokens, ${m.label}, ${threads} thread(s)`,
    group: `prefill ${id}`,
    n: big ? 1 : 5,
    warmup: big ? 0 : 1,
    async fn(b) {
      const s = sessions.get(threads)!;
      s.reset();
      b.start();
      const t0 = performance.now();
      await s.evaluate(prompt);
      record(`prefill ${id}`, performance.now() - t0);
      b.end();
    },
  });
}

table(
  `Generation speed (${machine()}); prompt ${promptN} tokens; median of the run`,
  [
    "model",
    "threads",
    "sparrow decode tok/s",
    "llama.cpp decode tok/s",
    "ratio",
    "sparrow prefill tok/s",
    "llama.cpp prefill tok/s",
    "ratio",
  ],
  () =>
    results.flatMap(({ label, id, llama }) => {
      const dec = 1000 / median(`decode ${id} ${threads}`);
      const pre = (promptN * 1000) / median(`prefill ${id}`);
      const peerDec = llama.ok ? llama.decodeTokensPerSecond : NaN;
      const peerPre = llama.ok ? llama.prefillTokensPerSecond : NaN;
      const rows = [[
        label,
        String(threads),
        dec.toFixed(2),
        llama.ok ? peerDec.toFixed(2) : "-",
        llama.ok ? (dec / peerDec).toFixed(2) : "-",
        pre.toFixed(1),
        llama.ok ? peerPre.toFixed(1) : "-",
        llama.ok ? (pre / peerPre).toFixed(2) : "-",
      ]];
      if (threads !== 1) rows.push([label, "1", (1000 / median(`decode ${id} 1`)).toFixed(2), "", "", "", "", ""]);
      if (!llama.ok) rows.push([`  (llama.cpp: ${llama.why})`, "", "", "", "", "", "", ""]);
      return rows;
    }),
);
