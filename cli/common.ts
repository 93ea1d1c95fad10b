/**
 * Options shared by the commands that run a model (generate, chat, ...): which model, threads,
 * context, sampling; and loading the model with progress and timing on stderr.
 *
 * @module
 */
import { choice, int, num, type OptionSpec, type Parsed, str } from "./args.ts";
import { defaultModel, ensureDefaultModel } from "../core/default_model.ts";
import { loadModel, type Model } from "../core/model.ts";
import type { SamplerOptions } from "../core/sampler.ts";
import { Progress } from "./progress.ts";

/** Options every model-running command takes. */
export const modelOptions: OptionSpec = {
  model: { type: "string", short: "m" },
  threads: { type: "string", short: "t" },
  ctx: { type: "string", short: "c" },
  batch: { type: "string" },
  backend: { type: "string" },
  activation: { type: "string" },
  "rope-layout": { type: "string" },
};

/** Help text for {@link modelOptions}. */
export const modelOptionsHelp = `Model options:
  -m, --model PATH        GGUF file (default: ${defaultModel.name}, downloaded on first use)
  -t, --threads N         threads, the calling one included (default: all logical CPUs)
  -c, --ctx N             context length in tokens (default: the model's, at most 4096)
      --batch N           prompt tokens evaluated per step (default 128)
      --backend NAME      compute backend (default cpu)
      --activation KIND   override the FFN activation: swiglu, relu or drelu
      --rope-layout KIND  override RoPE pairing: interleaved or neox`;

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
  const t0 = performance.now();
  const model = await loadModel(path, {
    threads: int(p, "threads", 1, 256),
    contextLength: int(p, "ctx", 1, 1 << 20),
    batchSize: int(p, "batch", 1, 4096),
    backend: str(p, "backend"),
    activation: choice(p, "activation", ["swiglu", "relu", "drelu"] as const),
    ropeLayout: choice(p, "rope-layout", ["interleaved", "neox"] as const),
  });
  const loadMs = performance.now() - t0;
  for (const w of model.tokenizer.warnings) note(`sparrow: warning: ${w}`);
  return { model, loadMs };
}
