/**
 * `sparrow chat`: an interactive conversation using the model's chat template. Each turn re-sends
 * the whole conversation; the session reuses the part already in its KV cache, so only the new
 * turn is evaluated.
 *
 * @module
 */
import { int, parse, type Parsed, str } from "./args.ts";
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
import { statsLine } from "./generate.ts";
import { type ChatMessage, formatChat } from "../core/chat_template.ts";

/** Usage text. */
export const chatHelp = `sparrow chat: talk with an instruct model

Usage: sparrow chat [options]

Type a message and press Enter. Commands: /reset (forget the conversation), /exit (or Ctrl-D).
Reads lines from stdin, so it also works with piped input.

      --system TEXT       system message (default: the template's own, if any)
  -n, --max-tokens N      most tokens per reply (default 512)
      --stats             print timings (and sparse FFN statistics) after each reply

${modelOptionsHelp}

${samplingOptionsHelp}

${sparseOptionsHelp.replace("stderr gets one more line", "--stats prints one more line")}`;

async function* lines(): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of Deno.stdin.readable) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) yield buf;
}

/** Runs the command. */
export async function chatCommand(args: string[]): Promise<void> {
  const p: Parsed = parse(args, {
    ...modelOptions,
    ...samplingOptions,
    ...sparseOptions,
    system: { type: "string" },
    "max-tokens": { type: "string", short: "n" },
    stats: { type: "boolean" },
  });
  if (p.values.help) return void console.log(chatHelp);
  const maxTokens = int(p, "max-tokens", 1, 1 << 24) ?? 512;
  const sampling = samplerOptions(p);
  const sparseGiven = sparseArgs(p);
  const { model, loadMs } = await openModel(p);
  const template = model.gguf.metadata.get("tokenizer.chat_template") as string | undefined;
  const system = str(p, "system");
  const enc = new TextEncoder();
  const tty = Deno.stdin.isTerminal();
  const prompt = () => tty && Deno.stdout.writeSync(enc.encode("> "));
  try {
    const sparse = resolveSparse(sparseGiven, model.info.path);
    if (sparse) await prepareSparseCli(model, sparse, sparseGiven);
    using session = model.createSession({ sparse });
    note(`sparrow: ${model.info.name} loaded in ${loadMs.toFixed(0)} ms; /exit to quit, /reset to start over`);
    let messages: ChatMessage[] = system ? [{ role: "system", content: system }] : [];
    prompt();
    for await (const line of lines()) {
      const text = line.trim();
      if (text === "/exit" || text === "/quit") break;
      if (text === "/reset") {
        messages = system ? [{ role: "system", content: system }] : [];
        session.reset();
        prompt();
        continue;
      }
      if (text === "") {
        prompt();
        continue;
      }
      messages.push({ role: "user", content: text });
      const formatted = formatChat(messages, { template, addGenerationPrompt: true });
      let reply = "";
      for await (const ev of session.generate(formatted, { ...sampling, maxTokens, parseSpecial: true })) {
        if (ev.text) {
          reply += ev.text;
          await Deno.stdout.write(enc.encode(ev.text));
        }
        if (ev.type === "done") {
          await Deno.stdout.write(enc.encode("\n"));
          if (p.values.stats) {
            note(statsLine(ev.stats, loadMs, model.defaults.threads, model.info.weights));
            if (sparse) {
              const stats = session.sparseStats(true);
              note(sparseStatsLine(stats, sparse, ffnBytesPerToken(model, stats, sparse.mode)));
            }
          }
          if (ev.stats.stopReason === "context_full") note("sparrow: the context is full; /reset to start over");
        }
      }
      messages.push({ role: "assistant", content: reply });
      prompt();
    }
  } finally {
    model.close();
  }
}
