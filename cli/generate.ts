/**
 * `sparrow generate`: complete a prompt; the text goes to stdout, timings to stderr.
 *
 * @module
 */
import { int, parse, type Parsed, str, UsageError } from "./args.ts";
import {
  modelOptions,
  modelOptionsHelp,
  note,
  openModel,
  prepareSparseCli,
  resolveSparse,
  samplerOptions,
  samplingOptions,
  samplingOptionsHelp,
  sparseArgs,
  sparseOptions,
  sparseOptionsHelp,
  sparseStatsLine,
} from "./common.ts";
import { ffnBytesPerToken } from "../core/evaluate.ts";
import { formatChat } from "../core/chat_template.ts";
import type { GenerationStats } from "../core/session.ts";

/** Usage text. */
export const generateHelp = `sparrow generate: complete a prompt

Usage: sparrow generate --prompt TEXT [options]

  -p, --prompt TEXT       the prompt (or --prompt-file)
      --prompt-file PATH  read the prompt from a file
  -n, --max-tokens N      most tokens to generate (default 256)
      --chat              wrap the prompt as a user message in the model's chat template
      --system TEXT       system message for --chat (default: the template's own, if any)
      --no-bos            do not prepend the BOS token
      --echo              print the prompt before the generated text

${modelOptionsHelp}

${samplingOptionsHelp}

${sparseOptionsHelp}

The generated text goes to stdout; load time, prefill and decode speed go to stderr.`;

/** Formats one generation's timings for stderr. */
export function statsLine(stats: GenerationStats, loadMs: number, threads: number, weights: "copy" | "map"): string {
  return `sparrow: load ${loadMs.toFixed(0)} ms (weights ${weights === "copy" ? "copied" : "mapped"}) | prefill ${
    stats.promptTokens - stats.cachedTokens
  } tok in ${stats.prefillMs.toFixed(0)} ms (${
    stats.prefillTokensPerSecond.toFixed(1)
  } tok/s) | decode ${stats.generatedTokens} tok in ${stats.decodeMs.toFixed(0)} ms (${
    stats.decodeTokensPerSecond.toFixed(1)
  } tok/s) | threads ${threads} | seed ${stats.seed} | stop: ${stats.stopReason}`;
}

/** Runs the command. */
export async function generateCommand(args: string[]): Promise<void> {
  const p: Parsed = parse(args, {
    ...modelOptions,
    ...samplingOptions,
    ...sparseOptions,
    prompt: { type: "string", short: "p" },
    "prompt-file": { type: "string" },
    "max-tokens": { type: "string", short: "n" },
    chat: { type: "boolean" },
    system: { type: "string" },
    "no-bos": { type: "boolean" },
    echo: { type: "boolean" },
  });
  if (p.values.help) return void console.log(generateHelp);
  let prompt = str(p, "prompt");
  const promptFile = str(p, "prompt-file");
  if (prompt !== undefined && promptFile !== undefined) {
    throw new UsageError("give --prompt or --prompt-file, not both");
  }
  if (promptFile !== undefined) prompt = await Deno.readTextFile(promptFile);
  if (prompt === undefined) throw new UsageError("--prompt is required");
  const maxTokens = int(p, "max-tokens", 0, 1 << 24) ?? 256;
  const sampling = samplerOptions(p);
  const sparseGiven = sparseArgs(p);

  const { model, loadMs } = await openModel(p);
  try {
    const sparse = resolveSparse(sparseGiven, model.info.path);
    if (sparse) await prepareSparseCli(model, sparse, sparseGiven);
    const chat = p.values.chat === true;
    const system = str(p, "system");
    const text = chat
      ? formatChat([...(system ? [{ role: "system" as const, content: system }] : []), {
        role: "user",
        content: prompt,
      }], {
        template: model.gguf.metadata.get("tokenizer.chat_template") as string | undefined,
        addGenerationPrompt: true,
      })
      : prompt;
    using session = model.createSession({ sparse });
    const out = Deno.stdout;
    const enc = new TextEncoder();
    if (p.values.echo) await out.write(enc.encode(text));
    for await (
      const ev of session.generate(text, {
        ...sampling,
        maxTokens,
        addBos: p.values["no-bos"] ? false : undefined,
        parseSpecial: chat,
      })
    ) {
      if (ev.text) await out.write(enc.encode(ev.text));
      if (ev.type === "done") {
        await out.write(enc.encode("\n"));
        note(statsLine(ev.stats, loadMs, model.defaults.threads, model.info.weights));
        if (sparse) {
          const stats = session.sparseStats();
          note(sparseStatsLine(stats, sparse, ffnBytesPerToken(model, stats, sparse.mode)));
        }
      }
    }
  } finally {
    model.close();
  }
}
