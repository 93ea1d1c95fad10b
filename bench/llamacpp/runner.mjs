// Measures llama.cpp (through node-llama-cpp, prebuilt) on a GGUF, the way bench/decode_bench.ts
// measures sparrow: prefill of a prompt of P tokens in one batch, then greedy decode of N tokens.
// Usage: node runner.mjs <node-llama-cpp prefix> <model.gguf> <threads> <prompt tokens> <decode tokens> <repeats>
// Prints one JSON line: { prefillTokensPerSecond, decodeTokensPerSecond, ... } (best of the repeats).
import process from "node:process";
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const [prefix, modelPath, threadsArg, promptArg, decodeArg, repeatsArg] = process.argv.slice(2);
const { getLlama } = await import(
  pathToFileURL(join(prefix, "node_modules", "node-llama-cpp", "dist", "index.js")).href
);
const threads = Number(threadsArg);
const promptTokens = Number(promptArg);
const decodeTokens = Number(decodeArg);
const repeats = Number(repeatsArg);

const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const t0 = performance.now();
const model = await llama.loadModel({ modelPath });
const loadMs = performance.now() - t0;
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
for (let r = 0; r < repeats; r++) {
  const seq = context.getSequence();
  // Prefill: evaluate the prompt without sampling.
  const p0 = performance.now();
  await seq.evaluateWithoutGeneratingNewTokens(prompt);
  const prefillMs = performance.now() - p0;
  // Decode: greedy, N tokens, each a separate evaluation.
  let n = 0;
  const d0 = performance.now();
  for await (const _ of seq.evaluate([prompt[prompt.length - 1]], { temperature: 0 })) {
    if (++n >= decodeTokens) break;
  }
  const decodeMs = performance.now() - d0;
  best = {
    prefillTokensPerSecond: Math.max(best.prefillTokensPerSecond, (prompt.length / prefillMs) * 1000),
    decodeTokensPerSecond: Math.max(best.decodeTokensPerSecond, (n / decodeMs) * 1000),
  };
  seq.dispose();
}
console.log(
  JSON.stringify({
    ...best,
    loadMs,
    threads,
    promptTokens: prompt.length,
    decodeTokens,
    engine: "llama.cpp via node-llama-cpp 3.22.1",
  }),
);
await context.dispose();
await model.dispose();
process.exit(0);
